"""The single writer of the event log, with group commit, and how followers read it.

Two lanes feed the writer:

- the *urgent* lane (:meth:`LogWriter.append`): requests from clients, which wait until
  their events are durable. They go first into every transaction;
- the *background* lane (:meth:`LogWriter.submit`): events the queue actors emit. The
  submitter does not wait for durability, only for room (the lane is bounded), so the
  cycle writer → broadcaster → actor → writer cannot deadlock: the writer never waits
  on an actor.

What goes into each transaction, and whether it is *durable* (fsynced), is the model's
decision (:class:`kumo.model.commit_plan.CommitPlanner`): everything waiting when a
transaction starts goes in (up to bounds), so many concurrent appenders share one fsync;
transactions made only of the actors' ``Bounced`` events may commit without an fsync
and become durable with the next durable one. A power failure can undo those; the
restart then finds those bounces unfinished and decides them again
(:func:`kumo.model.recovery.owed_bounces`). :attr:`LogWriter.durable` tells
how far the log is durable: the delivery log follows it, so that it never records a
bounce the log could still lose. While admin requests are answered, clients that
arrive during a commit are committed by the same worker thread right after it
(:meth:`LogWriter._express`), in the transaction the next plan would have made of them
alone, without a trip through a busy event loop in between. After each commit the
writer calls ``on_commit``
(the engine's projections, synchronously, so that a reply sent after ``append``
returns sees its own effect), wakes the appenders, and wakes the followers.

Followers (the broadcaster, the delivery-log writer, a lagging actor) read with
:meth:`LogWriter.read_after`: recent events come from an in-memory tail, older ones
from the database through a reader connection of their own.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import attrs
import trio

from kumo.model.commit_plan import CommitPlan, CommitPlanner
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.events import Bounced, Committed, Event
from kumo.model.requests import Content
from kumo.model.settings import EngineSettings
from kumo.model.statistics import Histogram, counter, gauge, histogram
from kumo.runtime.admin_gate import AdminGate
from kumo.runtime.blocking import RunBlocking, in_thread
from kumo.runtime.clock import EngineClock
from kumo.runtime.refusal import RefusedError
from kumo.runtime.watermark import Watermark
from kumo.store.event_log import EventStore, LogDamagedError, LogFullError

logger = logging.getLogger("kumo.log")

BODIES_PER_READ: Final = 64
"""Message contents :meth:`LogWriter.read_bodies` reads per trip to a worker thread."""


class LogClosedError(RefusedError):
    """The log no longer takes events: the engine is shutting down."""


class DiskFullError(RefusedError):
    """The event log's disk is full: the request's events were not written."""


class WritesStoppedError(RefusedError):
    """A write met a damaged store: writes are stopped until a restart on a checked
    store (reads from memory go on)."""


@attrs.frozen
class LogStatistics:
    """The log writer's progress and queues."""

    last_seq: int = gauge("Sequence number of the last committed event.")
    durable_seq: int = gauge(
        "Sequence number up to which the log is fsynced (survives a power failure)."
    )
    commits: int = counter("Transactions committed by this process.")
    durable_commits: int = counter("Transactions committed and fsynced by this process.")
    events_committed: int = counter("Events committed by this process.")
    urgent_waiting: int = gauge("Client requests waiting to be committed now.")
    background_waiting: int = gauge("Bounced events waiting to be committed now.")
    background_messages_waiting: int = gauge(
        "Messages carried by the Bounced events waiting to be committed now."
    )
    tail_events: int = gauge("Recent events held in memory for the followers.")
    disk_reads: int = counter(
        "Times a follower fell behind the in-memory tail and read the database."
    )
    disk_full: int = counter(
        "Transactions refused because the disk was full (their clients got a 503)."
    )
    commit_seconds: Histogram = histogram(
        "Seconds each commit of the store took, fsync included when it was durable."
    )
    damaged: bool = gauge(
        "1 once a write met a damaged store: writes are stopped (clients get a 503) "
        "until kumo is restarted on a checked store."
    )
    spool_owed: int = gauge("Contents of messages that left, still in the spool, owed a purge.")
    spool_purges: int = counter("Purge transactions of the spool by this process.")
    spool_purged: int = counter("Contents of messages that left purged by this process.")


@attrs.define(eq=False)
class _Append:
    events: Sequence[Event]
    bodies: Mapping[int, Content]
    done: trio.Event = attrs.Factory(trio.Event)
    committed: list[Committed] | None = None
    error: BaseException | None = None


@attrs.frozen
class _Express:
    """What :meth:`LogWriter._express` did in the worker thread, to settle in Trio's."""

    plan: CommitPlan
    requests: list[_Append]
    committed: list[Committed] | None
    error: BaseException | None
    seconds: float


def _weight(event: Event) -> int:
    return len(event.messages) if isinstance(event, Bounced) else 1


class LogWriter:
    """Owns the store for writing; see the module docstring for the guarantees."""

    def __init__(
        self,
        store: EventStore,
        reader: EventStore,
        clock: EngineClock,
        settings: EngineSettings,
        *,
        on_commit: Callable[[list[Committed]], None],
        run_blocking: RunBlocking = in_thread,
        admin_gate: AdminGate | None = None,
    ) -> None:
        """``admin_gate``: while it is closed, the background lane waits
        (:class:`kumo.model.commit_plan.CommitPlanner`, ``admin_first``)."""
        self._run_blocking = run_blocking
        self._admin_gate = admin_gate or AdminGate.never_closed()
        self._settings = settings
        self._planner = CommitPlanner(settings)
        self._store = store
        self._reader = reader
        self._clock = clock
        self._on_commit = on_commit
        self._urgent: deque[_Append] = deque()
        self._background: deque[Event] = deque()
        self._background_messages = 0
        self._background_in_flight = 0
        self._clients_in_flight = False
        self._work = trio.Event()
        self._room = trio.lowlevel.ParkingLot()
        self._tail: deque[list[Committed]] = deque()
        self._tail_events = 0
        self._closed = False
        self.committed = Watermark(store.last_seq)
        self.durable = Watermark(store.last_seq)
        """The last seq that survives a power failure (see the module docstring)."""
        self._commits = 0
        self._durable_commits = 0
        self._events_committed = 0
        self._disk_reads = 0
        self._disk_full = 0
        self.damage: LogDamagedError | None = None
        """What the write that met a damaged store said (None while none did)."""
        self.damaged = trio.Event()
        """Set once a write met a damaged store: from then on no write is tried."""
        self._commit_seconds = Histogram.empty()
        self._reading = trio.Lock()
        self._purge_asked = False
        self._purged = trio.Event()
        self._purges = 0
        self._purged_contents = 0

    @property
    def last_seq(self) -> int:
        return self.committed.value

    # -- writing ---------------------------------------------------------------------

    async def append(
        self, events: Sequence[Event], *, bodies: Mapping[int, Content] | None = None
    ) -> list[Committed]:
        """Append ``events`` (in order, contiguously) and return once they are durable.

        ``bodies`` maps an index into ``events`` to a ``MessageReceived``'s content.
        Raises :class:`LogClosedError` after :meth:`close`. If the caller is cancelled
        while waiting, the events may or may not be committed.
        """
        if self._closed:
            raise LogClosedError("the event log is closed")
        if self.damage is not None:
            raise self._damaged_error()
        request = _Append(events, bodies or {})
        self._urgent.append(request)
        self._work.set()
        await request.done.wait()
        if isinstance(request.error, LogFullError):
            raise DiskFullError(
                "the event log's disk is full: nothing of this request was written; "
                "retry once space is freed"
            ) from request.error
        if isinstance(request.error, LogDamagedError):
            raise self._damaged_error() from request.error
        if request.error is not None:
            raise LogClosedError("the event log failed") from request.error
        assert request.committed is not None
        return request.committed

    def _damaged_error(self) -> WritesStoppedError:
        return WritesStoppedError(
            f"the event log's store is damaged ({self.damage}): nothing of this request "
            "was written, and writes are stopped until kumo is restarted on a store that "
            "`kumo replay --verify` passes"
        )

    async def submit(self, events: Sequence[Event]) -> None:
        """Queue ``events`` for the next transactions without waiting for durability.

        Waits only while the background lane is full. Events of one call stay in order
        and after those of earlier calls.
        """
        await self.wait_room()
        for event in events:
            self._background.append(event)
            self._background_messages += _weight(event)
        self._work.set()

    async def wait_room(self) -> None:
        """Return once the background lane has room (always a checkpoint).

        Raises :class:`LogClosedError` after :meth:`close`.
        """
        await trio.lowlevel.checkpoint()
        # A damaged store takes nothing more: the lane stays as full as it is (what
        # waits there is re-derived by the next start, kumo.model.recovery).
        while (
            self._background_messages >= self._settings.background_capacity
            or self.damage is not None
        ):
            if self._closed:
                break
            await self._room.park()
        if self._closed:
            raise LogClosedError("the event log is closed")

    def close(self) -> None:
        """Refuse new events; :meth:`run` commits what is queued, then returns."""
        self._closed = True
        self._work.set()
        self._room.unpark_all()
        self._purged.set()  # the writer purges what is owed before it returns

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: commit what waits, in batches, until closed and drained."""
        task_status.started()
        now_in_thread = self._clock.reader()
        while True:
            if self.damage is not None:
                await self._refuse_while_damaged()
                return
            idle = not self._urgent and not self._background
            if idle and self._closed:
                await self._purge_all()
                return
            if self._store.owed:
                count, window_ends = self._planner.purge(
                    self._clock.now(),
                    self._store.owed,
                    clients=bool(self._urgent),
                    background=bool(self._background),
                    admin_first=self._admin_gate.closed,
                    asked=self._purge_asked,
                )
                if count:
                    await self._purge(count)
                    continue
                if idle:
                    await self._idle_while_owed(window_ends)
                    continue
            if idle:
                self._work = trio.Event()
                await self._work.wait()
                continue
            now = self._clock.now()
            plan = self._planner.plan(
                now,
                [len(request.events) for request in self._urgent],
                map(_weight, self._background),
                len(self._background),
                # Closing: what waits is committed now, admin requests or not.
                admin_first=not self._closed and self._admin_gate.closed,
            )
            if plan.empty:
                self._work = trio.Event()
                await self._admin_gate.until_open(self._work)
                continue
            requests, events, bodies = self._take(plan.requests, plan.background)
            self._background_in_flight = len(events) - sum(len(r.events) for r in requests)
            durable = plan.durable
            time = max(self._store.last_time, now)
            self._clients_in_flight = bool(requests)
            try:
                committed, express = await self._run_blocking(
                    functools.partial(self._commit, events, time, bodies, durable, now_in_thread)
                )
            except LogFullError as exc:
                # Nothing was written. The clients hear it now; the actors' events go
                # back to the front of their lane, to be committed once there is room.
                self._disk_full += 1
                for request in requests:
                    request.error = exc
                    request.done.set()
                background = events[len(events) - self._background_in_flight :]
                self._background.extendleft(reversed(background))
                self._background_messages += sum(map(_weight, background))
                self._background_in_flight = 0
                self._clients_in_flight = False
                await trio.sleep(self._settings.disk_full_retry)
                continue
            except LogDamagedError as exc:
                # Nothing was written, and no write will be tried again: the clients
                # hear it now, the actors' events stay behind (the next start decides
                # them again), reads from memory and metrics go on.
                self.note_damage(exc)
                for request in requests:
                    request.error = exc
                    request.done.set()
                self._background_in_flight = 0
                self._clients_in_flight = False
                continue
            except BaseException as exc:
                for request in requests:
                    request.error = exc
                    request.done.set()
                raise
            self._background_in_flight = 0
            self._settled(plan, requests, committed, (self._clock.now() - now) / NANOS_PER_SECOND)
            if express is not None:
                self._settle_express(express)

    async def _purge(self, count: int) -> None:
        """Purge ``count`` owed contents in a worker thread (:meth:`EventStore.purge_spool`)."""
        try:
            purged = await self._run_blocking(functools.partial(self._store.purge_spool, count))
        except LogFullError:
            # Nothing was deleted (deleting needs room in the WAL): try again later.
            await trio.sleep(self._settings.disk_full_retry)
            return
        except LogDamagedError as exc:
            self.note_damage(exc)
            return
        self._purged_contents += purged
        self._purges += 1
        if not self._store.owed:
            self._purge_asked = False
            self._purged.set()
            self._purged = trio.Event()

    async def _purge_all(self) -> None:
        """Closing: purge what is owed, whatever waits (a shutdown cut short leaves the
        rest to the next start)."""
        while self._store.owed and self.damage is None:
            await self._purge(self._settings.spool_purge_batch)

    async def _idle_while_owed(self, window_ends: int | None) -> None:
        """Nothing to commit, purges deferred: wait for work, or until the reason to
        defer them passes (the admin gate opens, the client window ends)."""
        self._work = trio.Event()
        if window_ends is None:  # deferred while the admin gate is closed
            await self._admin_gate.until_open(self._work)
            return
        with trio.move_on_after(max(window_ends - self._clock.now(), 0) / NANOS_PER_SECOND):
            await self._work.wait()

    async def wait_purged(self) -> None:
        """Return once no content of a message that left is owed a purge, asking for
        the purges now rather than after the client window (always a checkpoint)."""
        await trio.lowlevel.checkpoint()
        while self._store.owed and self.damage is None and not self._closed:
            self._purge_asked = True
            self._work.set()
            await self._purged.wait()

    def _commit(
        self,
        events: list[Event],
        time: int,
        bodies: dict[int, Content],
        durable: bool,
        now: Callable[[], int],
    ) -> tuple[list[Committed], _Express | None]:
        """In the worker thread: commit one planned transaction, then the express one
        (:meth:`_express`)."""
        committed = self._store.commit(events, time=time, bodies=bodies, durable=durable)
        return committed, self._express(now)

    def _express(self, now: Callable[[], int]) -> _Express | None:
        """In the worker thread, right after a commit: while admin requests are
        answered, the next plan takes the clients' events alone; if clients wait, plan
        and commit that transaction here and now, rather than after a trip to the event
        loop and back (which, while the loop is busy, costs a POST more than its
        commit). One at most, so that the background lane keeps its turn.

        The Trio thread meanwhile only appends to the urgent lane (and reads nothing
        this changes until the worker returns): the lane is copied in one step and
        taken from its front.
        """
        if self._closed or not self._admin_gate.closed_hint:
            return None
        waiting = list(self._urgent)
        if not waiting:
            return None
        started = now()
        plan = self._planner.plan(
            started, [len(request.events) for request in waiting], (), 0, admin_first=True
        )
        requests, events, bodies = self._take(plan.requests, 0)
        self._clients_in_flight = True
        time = max(self._store.last_time, started)
        try:
            committed = self._store.commit(events, time=time, bodies=bodies, durable=plan.durable)
        except BaseException as exc:  # settled in the Trio thread, as a planned commit is
            return _Express(plan, requests, None, exc, 0.0)
        return _Express(plan, requests, committed, None, (now() - started) / NANOS_PER_SECOND)

    def _settle_express(self, express: _Express) -> None:
        """Hand the outcome of an express transaction to its clients, as
        :meth:`run` does a planned one's (it held no background events)."""
        error = express.error
        if error is None:
            assert express.committed is not None
            self._settled(express.plan, express.requests, express.committed, express.seconds)
            return
        self._clients_in_flight = False
        if isinstance(error, LogFullError):
            self._disk_full += 1
        elif isinstance(error, LogDamagedError):
            self.note_damage(error)
        for request in express.requests:
            request.error = error
            request.done.set()
        if not isinstance(error, LogFullError | LogDamagedError):
            raise error

    def _settled(
        self,
        plan: CommitPlan,
        requests: list[_Append],
        committed: list[Committed],
        seconds: float,
    ) -> None:
        """A transaction is committed: publish it and wake its clients."""
        self._planner.committed(plan)
        self._commit_seconds = self._commit_seconds.observe(seconds)
        self._clients_in_flight = False
        self._published(committed, durable=plan.durable)
        offset = 0
        for request in requests:
            request.committed = committed[offset : offset + len(request.events)]
            offset += len(request.events)
            request.done.set()

    def note_damage(self, exc: LogDamagedError) -> None:
        """A write or a read met a damaged store: stop writing, say so once."""
        if self.damage is not None:
            return
        logger.error(
            "the event log's store is damaged: %s; writes are stopped (clients get a "
            "503), reads from memory and /metrics go on. Stop kumo and run `kumo replay "
            "--verify --data-dir DIR` to see what is damaged",
            exc,
        )
        self.damage = exc
        self.damaged.set()
        self._work.set()
        self._purged.set()  # no purge will be made: nobody waits for one

    async def _refuse_while_damaged(self) -> None:
        """Answer every client request that still waits with the damage, until closed."""
        while True:
            while self._urgent:
                request = self._urgent.popleft()
                request.error = self.damage
                request.done.set()
            if self._closed:
                return
            self._work = trio.Event()
            await self._work.wait()

    def _take(
        self, request_count: int, background_count: int
    ) -> tuple[list[_Append], list[Event], dict[int, Content]]:
        requests: list[_Append] = []
        events: list[Event] = []
        bodies: dict[int, Content] = {}
        for _ in range(request_count):
            request = self._urgent.popleft()
            requests.append(request)
            base = len(events)
            bodies.update({base + index: body for index, body in request.bodies.items()})
            events.extend(request.events)
        for _ in range(background_count):
            event = self._background.popleft()
            self._background_messages -= _weight(event)
            events.append(event)
        # Wake about as many submitters as events left the lane, not all of them: in a
        # sweep thousands of actors wait here, and waking every one of them per commit
        # costs more than the commit.
        if background_count:
            self._room.unpark(count=background_count)
        return requests, events, bodies

    def _published(self, committed: list[Committed], *, durable: bool) -> None:
        self._commits += 1
        if durable:
            self._durable_commits += 1
        self._events_committed += len(committed)
        self._on_commit(committed)
        self._tail.append(committed)
        self._tail_events += len(committed)
        while self._tail_events - len(self._tail[0]) >= self._settings.tail_events:
            self._tail_events -= len(self._tail.popleft())
        self.committed.advance(committed[-1].seq)
        if durable:
            self.durable.advance(committed[-1].seq)

    # -- following -------------------------------------------------------------------

    async def read_after(self, seq: int, limit: int | None = None) -> list[Committed]:
        """Committed events after ``seq`` (at most ``limit``), in order.

        Returns ``[]`` when nothing is committed after ``seq`` yet; use
        :meth:`wait_beyond` to wait. Recent events come from memory. ``limit``
        defaults to ``EngineSettings.read_limit``. If the events must be read from a
        damaged store, writes stop (:meth:`note_damage`) and this waits for the log to
        close, then raises :class:`LogClosedError`.
        """
        if limit is None:
            limit = self._settings.read_limit
        if seq >= self.committed.value:
            return []
        if self._tail and self._tail[0][0].seq <= seq + 1:
            # From the newest batch back to the first one wanted: a follower is usually
            # near the end of a tail of thousands of small commits.
            wanted: list[list[Committed]] = []
            for batch in reversed(self._tail):
                if batch[-1].seq <= seq:
                    break
                wanted.append(batch)
            wanted.reverse()
            out: list[Committed] = []
            for batch in wanted:
                start = max(0, seq + 1 - batch[0].seq)
                out.extend(batch[start:] if start else batch)
                if len(out) >= limit:
                    return out[:limit]
            return out
        async with self._reading:
            self._disk_reads += 1
            try:
                return await self._run_blocking(functools.partial(self._reader.read, seq, limit))
            except LogDamagedError as exc:
                self.note_damage(exc)
        # The events a follower needs cannot be read: it waits for the shutdown, as
        # writes do (what it had still to do is the next start's).
        while not self._closed:
            await self._room.park()
        raise LogClosedError("the event log is closed")

    async def read_bodies(self, seqs: Sequence[int]) -> list[bytes | None]:
        """The spooled content of the messages received at ``seqs``, in order (None for
        one no longer spooled: bounced, or never received).

        Read through the followers' reader connection in worker threads,
        :data:`BODIES_PER_READ` at a time, so that neither the event loop nor a follower
        that fell behind the in-memory tail waits on a large read. Raises
        :class:`WritesStoppedError` (and stops writes) if the spool is damaged.
        """
        bodies: list[bytes | None] = []
        for start in range(0, len(seqs), BODIES_PER_READ):
            read = functools.partial(_spooled, self._reader, seqs[start : start + BODIES_PER_READ])
            async with self._reading:
                try:
                    bodies += await self._run_blocking(read)
                except LogDamagedError as exc:
                    self.note_damage(exc)
                    raise self._damaged_error() from exc
        return bodies

    async def wait_beyond(self, seq: int) -> None:
        """Return once an event after ``seq`` is committed."""
        await self.committed.wait_for(seq + 1)

    def clients_waiting(self) -> bool:
        """Whether clients' events wait for a transaction or are in the one under way:
        a durable commit follows."""
        return self._clients_in_flight or bool(self._urgent)

    def background_pending(self) -> bool:
        """Whether background events wait or are being committed."""
        return bool(self._background) or self._background_in_flight > 0

    def statistics(self) -> LogStatistics:
        return LogStatistics(
            last_seq=self.committed.value,
            durable_seq=self.durable.value,
            commits=self._commits,
            durable_commits=self._durable_commits,
            events_committed=self._events_committed,
            urgent_waiting=len(self._urgent),
            background_waiting=len(self._background),
            background_messages_waiting=self._background_messages,
            tail_events=self._tail_events,
            spool_owed=self._store.owed,
            spool_purges=self._purges,
            spool_purged=self._purged_contents,
            disk_reads=self._disk_reads,
            disk_full=self._disk_full,
            damaged=self.damage is not None,
            commit_seconds=self._commit_seconds,
        )


def _spooled(store: EventStore, seqs: Sequence[int]) -> list[bytes | None]:
    return [store.spool_body(seq) for seq in seqs]

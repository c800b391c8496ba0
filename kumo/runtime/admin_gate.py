"""The Trio side of :class:`kumo.model.admin_first.AdminFirst`: admin requests enter
with :meth:`AdminGate.request`; the work that waits its turn meanwhile calls
:meth:`AdminGate.mail_turn` (the mail path's sessions after each read),
:meth:`AdminGate.turn` (the broadcaster between two slices of a rule's hand-out, sweeps
before each chunk, the delivery-log writer before it encodes and before it writes, the
WAL checkpointer) or, for the log writer's background lane, :meth:`AdminGate.until_open`;
a worker thread polls :attr:`AdminGate.closed_hint` between two slices of its work."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import attrs
import trio

from kumo.model.admin_first import AdminFirst, WritesFirst
from kumo.model.statistics import counter, gauge


@attrs.frozen
class AdminGateStatistics:
    """How often the background work gave way to admin requests, in this process."""

    closed: int = gauge("1 while the background work waits for admin requests in flight.")
    closures: int = counter("Times the background work began to wait for admin requests.")
    waits: int = counter(
        "Times an SMTP session (after a read), the broadcaster, a sweep (before a chunk), "
        "the delivery-log writer or the WAL checkpointer waited for its turn."
    )
    gave_way: int = counter(
        "Times a GET's listing waited, between two slices, for the writes in flight."
    )


class _Lane:
    """The work that waits at one policy: the event that opens it for them."""

    __slots__ = ("closures", "opened", "policy")

    def __init__(self, policy: AdminFirst) -> None:
        self.policy = policy
        self.opened = trio.Event()
        self.opened.set()
        self.closures = 0

    def follow(self) -> None:
        """A lane that has just closed gets an event of its own to open."""
        if self.policy.closed and self.opened.is_set():
            self.opened = trio.Event()
            self.closures += 1

    def begin(self, now: float) -> None:
        """A request came in at ``now``."""
        self.policy.begin(now)
        self.follow()

    def end(self, now: float) -> bool:
        """A request was answered at ``now``; whether that opened the lane (its
        waiters are woken)."""
        if not self.policy.end(now):
            return False
        self.opened.set()
        return True


class AdminGate:
    """``hold`` seconds at most closed at a time (0: never closes); ``read_yield``
    seconds at most that one long read gives way to writes, in all.

    Two policies, which every request enters: the mail path's sessions wait at one
    that then stays open as long as it was closed (:meth:`mail_turn`); the rest of the
    work waits at one that stays open ``rest`` times as long (:meth:`turn`,
    :meth:`until_open`, :attr:`closed_hint`): the mail path keeps half of the time
    under a stream of requests, a sweep the share ``rest`` gives it
    (:mod:`kumo.model.admin_first`)."""

    @classmethod
    def never_closed(cls) -> AdminGate:
        """A gate no request closes: what a part built without the engine's waits on."""
        return cls(0.0)

    def __init__(self, hold: float, read_yield: float = 0.0, rest: float = 1.0) -> None:
        self._work = _Lane(AdminFirst(hold, rest))
        self._mail = _Lane(AdminFirst(hold))
        self._read_yield = read_yield
        self._writes = WritesFirst()
        self._write_answered = trio.Event()
        self._gave_way = 0
        self._watchers: set[trio.Event] = set()
        self._waits = 0

    @property
    def closed(self) -> bool:
        """Whether the work of the module docstring (but the mail path's sessions)
        waits now."""
        return self._work.policy.opens_at(trio.current_time()) is not None

    @contextmanager
    def request(self, *, writes: bool = False) -> Iterator[None]:
        """Hold the work back (within the policies' bounds) while the block runs;
        ``writes``: the request changes something, and long reads give way to it."""
        now = trio.current_time()
        self._work.begin(now)
        self._mail.begin(now)
        ticket = self._writes.begin() if writes else None
        try:
            yield
        finally:
            if ticket is not None:
                self._writes.end(ticket)
                self._write_answered.set()
                self._write_answered = trio.Event()
            now = trio.current_time()
            self._mail.end(now)
            if self._work.end(now):
                for watcher in self._watchers:
                    watcher.set()

    @property
    def closed_hint(self) -> bool:
        """Whether the gate was closed as of the last request's start or end, or the
        last turn: a plain read, for a worker thread to poll between two slices of its
        work (the gate's bound on how long it stays closed is applied in the Trio
        thread, by :meth:`turn`)."""
        return self._work.policy.closed

    async def turn(self) -> None:
        """Return once the work may go on: at once while the gate is open, without a
        checkpoint (the callers call it right after a read or a step, which was one).

        Not cancellable (it waits ``hold`` at most): its callers may hold bytes they
        have read and not yet acted on, which a cancellation here would lose.
        """
        await self._turn(self._work)

    async def mail_turn(self) -> None:
        """:meth:`turn` for the mail path's sessions, at the policy that rests as long
        as it was closed."""
        await self._turn(self._mail)

    async def _turn(self, lane: _Lane) -> None:
        opens_at = lane.policy.opens_at(trio.current_time())
        if opens_at is None:
            return
        lane.follow()
        self._waits += 1
        with trio.CancelScope(deadline=opens_at, shield=True):
            await lane.opened.wait()

    async def until_open(self, wake: trio.Event) -> None:
        """Return once the gate is open or ``wake`` is set, whichever comes first
        (always a checkpoint; cancellable, unlike :meth:`turn`: the caller holds
        nothing it could lose)."""
        opens_at = self._work.policy.opens_at(trio.current_time())
        if opens_at is None or wake.is_set():
            await trio.lowlevel.checkpoint()
            return
        self._work.follow()
        self._watchers.add(wake)
        try:
            with trio.move_on_at(opens_at):
                await wake.wait()
        finally:
            self._watchers.discard(wake)

    def reader(self) -> Callable[[], Awaitable[None]]:
        """For one long read: what it awaits between two slices of its work. Each call
        waits until the writes in flight at that moment are answered (always a
        checkpoint); the read waits ``read_yield`` seconds at most in all: a write
        lasts as long as its commit, and a GET that waited for every write would take
        a POST's time more (measured: docs/benchmarks.md)."""
        deadline = trio.current_time() + self._read_yield

        async def give_way() -> None:
            barrier = self._writes.barrier()
            if barrier is None or trio.current_time() >= deadline:
                await trio.lowlevel.checkpoint()
                return
            self._gave_way += 1
            with trio.move_on_at(deadline):
                while not self._writes.passed(barrier):
                    await self._write_answered.wait()

        return give_way

    def statistics(self) -> AdminGateStatistics:
        return AdminGateStatistics(
            closed=int(self._work.policy.closed),
            closures=self._work.closures,
            waits=self._waits,
            gave_way=self._gave_way,
        )

"""One scheduled queue as a Trio task: holds its messages, decides and emits bounces,
and, with the mail path, hands due messages to their destination and logs what became
of each."""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Callable
from typing import Final, TypeAlias

import attrs
import trio

from kumo.model.events import (
    Bounced,
    BounceIssued,
    Committed,
    Event,
    Expired,
    RebindIssued,
    Rebound,
    SuspendIssued,
)
from kumo.model.ready_queue import PlanFailure, ReadyEntry
from kumo.model.settings import EngineSettings
from kumo.model.smtp_reply import Disposition
from kumo.model.state import Handed, QueueState
from kumo.model.statistics import counter, gauge, info
from kumo.runtime.clock import EngineClock
from kumo.runtime.delivery import Deliveries, Dispatcher, attempt_of, plan_failure_attempt
from kumo.runtime.log_writer import LogClosedError, LogWriter, WritesStoppedError
from kumo.runtime.smtp_connection import MessageOutcome
from kumo.runtime.sweep_turns import SweepTurns, Ticket
from kumo.runtime.watermark import Watermark

logger = logging.getLogger("kumo.queue")

_TAKE_BACK_FOR: Final = frozenset({BounceIssued, SuspendIssued, RebindIssued})
"""The events before which a queue takes back its ready messages (a rebind moves those
too, where KumoMTA leaves what sits in a ready queue where it is)."""

Decision: TypeAlias = Bounced | Expired | Rebound
"""What a queue decides on applying an event, for the log."""


@attrs.frozen(eq=False)
class MailPath:
    """What a queue actor delivers with: the destinations and the engine's clock."""

    deliveries: Deliveries
    clock: EngineClock


@attrs.frozen
class ActorStatistics:
    """One queue actor's holdings and progress."""

    queue: str = info("The scheduled queue the actor holds.")
    queued: int = gauge("Messages the actor holds.")
    live_rules: int = gauge("Live rules that match the actor's queue.")
    mailbox_used: int = gauge("Deliveries waiting in the actor's mailbox.")
    lagging: bool = gauge("1 while the actor catches up from the log after its mailbox overflowed.")
    catch_ups: int = counter("Times the actor's mailbox overflowed and it caught up from the log.")
    processed_seq: int = gauge("Sequence number of the last event the actor has processed.")
    bounced: int = counter("Messages the actor bounced in this process.")
    waiting: int = gauge("Messages waiting for their next attempt.")
    handed: int = gauge("Messages handed to a ready queue or a connection.")


def merge_bounces(decisions: list[Decision]) -> list[Decision]:
    """Fold consecutive bounces of the same rule into one event (order kept)."""
    merged: list[Decision] = []
    for decision in decisions:
        last = merged[-1] if merged else None
        if (
            isinstance(decision, Bounced)
            and isinstance(last, Bounced)
            and last.rule_id == decision.rule_id
        ):
            merged[-1] = Bounced(last.rule_id, last.queue, last.messages + decision.messages)
        else:
            merged.append(decision)
    return merged


class MissedDeliveries:
    """What the broadcaster could not hand over because a mailbox was full.

    The broadcaster records, per queue, the first and the last seq it could not deliver;
    from then on it hands that queue nothing (so that order is kept) and only extends the
    range, until the actor takes the range with :meth:`take` and reads those events from
    the log itself. A slow actor therefore never stalls the broadcaster or the others.
    """

    __slots__ = ("_missed", "_reading")

    def __init__(self) -> None:
        self._missed: dict[str, tuple[int, int]] = {}
        self._reading: dict[str, int] = {}

    def __contains__(self, queue: str) -> bool:
        return queue in self._missed

    def __len__(self) -> int:
        return len(self._missed)

    def record(self, queue: str, first: int, last: int) -> None:
        """The events of ``queue`` from ``first`` to ``last`` were not handed over."""
        previous = self._missed.get(queue)
        self._missed[queue] = (previous[0] if previous else first, last)

    def take(self, queue: str) -> tuple[int, int] | None:
        """The range ``queue``'s actor must read from the log, if any; forgotten here,
        but counted in :meth:`first_needed` until the actor calls :meth:`read`."""
        missed = self._missed.pop(queue, None)
        if missed is not None:
            self._reading[queue] = missed[0]
        return missed

    def read(self, queue: str) -> None:
        """``queue``'s actor has read the range it took (or stopped reading)."""
        self._reading.pop(queue, None)

    def first_needed(self) -> int | None:
        """The first seq an actor still has to read from the log (None: none): the
        archive must keep it (:meth:`~kumo.runtime.broadcaster.Broadcaster.needed_after`)."""
        firsts = [first for first, _ in self._missed.values()]
        firsts += self._reading.values()
        return min(firsts, default=None)


class QueueActor:
    """The task that owns one :class:`QueueState`.

    The broadcaster hands it the committed events that concern its queue with
    :meth:`deliver_nowait`, which never blocks; what a full mailbox could not take is
    recorded in :class:`MissedDeliveries`, and the actor reads it from the log once its
    mailbox is empty. A sweep takes its queue's messages a chunk at a time, each in its
    turn among the sweeping actors (:class:`~kumo.runtime.sweep_turns.SweepTurns`) and
    once the log's background lane has room, so that thousands of queues swept at once
    do not hold the event loop (see ``EngineSettings.sweep_chunk``).
    """

    __slots__ = (
        "_abort_wait",
        "_bounced",
        "_capacity",
        "_catch_ups",
        "_chunk",
        "_closed",
        "_log",
        "_mail",
        "_mailbox",
        "_missed",
        "_outcomes",
        "_parked",
        "_passed_over",
        "_reported",
        "_sweep_turns",
        "_sweep_upto",
        "_turn_ticket",
        "processed",
        "settled",
        "state",
    )

    def __init__(
        self,
        state: QueueState,
        log: LogWriter,
        missed: MissedDeliveries,
        settings: EngineSettings,
        mail: MailPath | None = None,
        passed_over: Callable[[Event], bool] = lambda _: False,
        sweep_turns: SweepTurns | None = None,
    ) -> None:
        """``passed_over``: the router's word on an event read from the log to catch up
        that it routed to no queue although the queue's state would take it (the issue
        of a rule that lost to an equal rule of another node, :meth:`Router.passed_over`).
        ``sweep_turns``: where a sweep waits before each chunk (the engine's, shared by
        every actor; a turn of its own without it)."""
        self.state = state
        self._sweep_turns = sweep_turns or SweepTurns()
        self._passed_over = passed_over
        self._mail = mail
        self._outcomes: deque[tuple[ReadyEntry, MessageOutcome | None]] = deque()
        """Outcomes of handed messages, from the dispatchers (None: not attempted)."""
        self._reported = 0
        self.settled = Watermark()
        """How many reported outcomes the actor has decided on and submitted."""
        self._log = log
        self._missed = missed
        self._chunk = settings.sweep_chunk
        # A bounded mailbox of its own rather than a trio memory channel: an arrival costs
        # one append and, if the actor waits, one wake-up (a channel's send and receive
        # cost three times that, and inject delivers to an actor per message).
        self._mailbox: deque[tuple[list[Committed], int]] = deque()
        self._capacity = settings.mailbox_capacity
        self._closed = False
        self._parked: trio.lowlevel.Task | None = None
        """The actor's task while it waits for a delivery."""
        self._abort_wait = self._unpark
        self._sweep_upto: int | None = None
        """The last seq of the delivery whose rule :meth:`deliver_nowait` decided a
        sweep for, while the sweep is owed (None: none owed)."""
        self._turn_ticket = self._wake
        """What the sweep turns call when this actor's turn comes (bound once)."""
        self.processed = Watermark()
        """The last seq whose events this actor has applied (and whose bounces it has
        submitted to the log)."""
        self._bounced = 0
        self._catch_ups = 0

    @property
    def name(self) -> str:
        return self.state.name

    def deliver_nowait(self, events: list[Committed], upto: int) -> bool:
        """Hand over ``events`` (in order; ``upto`` is their batch's last seq).

        Never blocks: returns False, handing nothing, when the mailbox is full.

        While the actor's task is parked on an empty mailbox its state is at rest, and
        events that ask for no decision (:meth:`QueueState.settle`: arrivals into a
        queue that holds no rule) are folded here, in order, without waking the task:
        what the task would do, without a task switch per arrival (inject delivers to
        an actor per message). So is a rule delivered alone (:meth:`_decide_sweep`):
        its sweep is decided here and waits its turn without the task. Anything else
        goes through the mailbox; while a sweep decided here is owed, without waking
        the task (its turn does, and the sweep comes first).
        """
        if self._closed:
            raise RuntimeError(f"the actor of {self.name!r} is closed")
        if self._parked is not None and not self._mailbox and self._sweep_upto is None:
            if self.state.settle(events):
                self.processed.advance(upto)
                if self._mail is not None:
                    self._wake()  # what arrived is due: hand it over
                return True
            if len(events) == 1 and type(events[0].event) is BounceIssued:
                self._decide_sweep(events[0], upto)
                return True
        if len(self._mailbox) >= self._capacity:
            return False
        self._mailbox.append((events, upto))
        if self._sweep_upto is None:
            self._wake()
        return True

    def _decide_sweep(self, committed: Committed, upto: int) -> None:
        """Apply a rule while at rest, as the task would, and queue for the turn of the
        sweep it decides without waking the task: its turn will (a rule that matches
        10,000 queues would otherwise wake 10,000 tasks at once, only for each to join
        the line)."""
        state = self.state
        self._take_back_ready()
        decided = state.apply(committed, limit=0)
        assert decided is None, "a rule's sweep takes nothing with limit=0"
        if state.sweeping is None:
            self.processed.advance(upto)
            return
        self._sweep_upto = upto
        self._sweep_turns.queue(self._turn_ticket)

    def report_nowait(self, entry: ReadyEntry, outcome: MessageOutcome | None) -> None:
        """What became of a message this actor handed over (None: it was not attempted
        and comes back). Never blocks."""
        self._outcomes.append((entry, outcome))
        self._reported += 1
        self._wake()

    @property
    def reported(self) -> int:
        """How many outcomes the dispatchers have reported to this actor."""
        return self._reported

    def close(self) -> None:
        """No more deliveries: the actor finishes its mailbox, then returns."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        task, self._parked = self._parked, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    async def _wait(self) -> None:
        """Park until a delivery or :meth:`close` wakes the task."""
        self._parked = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort_wait)

    def _unpark(self, _: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        # Bound once (``_abort_wait``), not a closure made per wait: a sweep parks 10,000
        # actors at once, and every object their waits allocate is one more the garbage
        # collector walks (50 ms for 200,000 of them, docs/benchmarks.md).
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                if self._sweep_upto is not None:
                    await self._owed_sweep(self._sweep_upto)
                    continue
                if self._mailbox:
                    await self._process(*self._mailbox.popleft())
                    continue
                if self._outcomes:
                    await self._settle_outcomes()
                    continue
                # The mailbox is empty: what it could not take comes next, from the log.
                missed = self._missed.take(self.name)
                if missed is not None:
                    try:
                        await self._catch_up(*missed)
                    finally:
                        self._missed.read(self.name)
                elif self._closed:
                    return
                else:
                    deadline = math.inf
                    mail = self._mail
                    if mail is not None and not mail.deliveries.stopping:
                        due = await self._dispatch(mail)
                        if self._mailbox or self._outcomes:
                            continue
                        if due is not None:
                            deadline = mail.clock.deadline(due)
                    if deadline == math.inf:
                        await self._wait()  # no cancel scope to allocate (see _unpark)
                    else:
                        with trio.move_on_at(deadline):
                            await self._wait()
        except LogClosedError:
            # Shutting down past its deadline: what this actor had not yet emitted is
            # found again by the restart (kumo.model.recovery).
            return
        finally:
            if self._sweep_upto is not None:
                # Leaves the line, or hands on a turn that came and was never taken.
                self._sweep_turns.leave(self._turn_ticket)

    async def _process(self, events: list[Committed], upto: int, *, filtered: bool = True) -> None:
        bounces: list[Decision] = []
        state = self.state
        if self._mail is not None and any(
            type(c.event) in _TAKE_BACK_FOR and state.concerns(c.event) for c in events
        ):
            self._take_back_ready()
        for committed in events:
            if not filtered and (
                not state.concerns(committed.event) or self._passed_over(committed.event)
            ):
                continue
            bounce = state.apply(committed, limit=0)
            if bounce is not None:
                bounces.append(bounce)
            await self._sweep(bounces)
        await self._submit(bounces)
        self.processed.advance(upto)

    def _take_back_ready(self) -> None:
        """A rule's sweep (a suspension's hold) reaches ready messages too: take back
        what no connection holds, before the rule applies (with the mail path)."""
        if self._mail is not None:
            self.state.take_back(self._mail.deliveries.withdraw(self.name))

    async def _owed_sweep(self, upto: int) -> None:
        """The sweep :meth:`deliver_nowait` decided, from the turn it queued for."""
        bounces: list[Decision] = []
        await self._sweep(bounces, self._turn_ticket)
        await self._submit(bounces)
        self._sweep_upto = None
        self.processed.advance(upto)

    async def _sweep(self, bounces: list[Decision], ticket: Ticket | None = None) -> None:
        """Take the sweep under way a chunk at a time, each in its turn (the first with
        ``ticket``, if the actor queued with it), into ``bounces``."""
        state = self.state
        while state.sweeping is not None:
            await self._submit(bounces)
            await self._sweep_turns.take(ticket)
            ticket = None
            try:
                await self._log.wait_room()
                bounce = state.continue_sweep(self._chunk)
            finally:
                self._sweep_turns.give()
            assert bounce is not None
            bounces.append(bounce)

    async def _submit(self, decisions: list[Decision]) -> None:
        if decisions:
            merged = merge_bounces(decisions)
            decisions.clear()
            self._bounced += sum(len(d.messages) for d in merged if isinstance(d, Bounced))
            await self._log.submit(merged)

    async def _dispatch(self, mail: MailPath) -> int | None:
        """Hand the messages due now to their destination, as far as its ready queue
        has room (or fail them all, if it cannot be reached; or hold them all, if a
        suspension holds it or their ready queue); return when the next waiting
        message is due."""
        state = self.state
        now = mail.clock.now()
        state.wake(now)
        held = state.hold(now)
        if held:
            await self._submit_outcomes(held)
        if state.messages and state.sweeping is None:
            target, site = await mail.deliveries.target(self.name)
            if isinstance(target, PlanFailure):
                await self._fail_due(mail, target, site)
            else:
                # The destination is known only now: a suspension of its ready queue,
                # as this queue's view of the log has it, holds what is due.
                held = state.hold_ready(target.name, mail.clock.now())
                if held:
                    await self._submit_outcomes(held)
                handed = state.hand(target.room())
                if handed:
                    await self._push(target, handed)
                if state.messages:
                    target.want_room(self.name, self._wake)
        return state.next_due()

    async def _push(self, target: Dispatcher, handed: list[Handed]) -> None:
        """Read the contents of ``handed`` from the spool, then push them to ``target``."""
        try:
            contents = await self._log.read_bodies([h.message.seq for h in handed])
        except BaseException as exc:
            self.state.take_back(h.message.id for h in handed)
            if isinstance(exc, WritesStoppedError):
                # Writes are stopped: nothing more is delivered (an outcome could not be
                # logged). Wait for the shutdown, which this raises as LogClosedError.
                await self._log.wait_room()
            raise
        entries = []
        for entry, content in zip(handed, contents, strict=True):
            if content is None:
                # No content for a message the queue holds: the spool lost it. Kept as
                # handed (counted, inspectable) rather than sent empty or dropped.
                logger.error(
                    "message %s of queue %s has no content in the spool; not delivered",
                    entry.message.id,
                    self.name,
                )
                continue
            entries.append(ReadyEntry(self.name, entry.message, entry.attempts, content))
        target.push(entries)

    async def _fail_due(self, mail: MailPath, failure: PlanFailure, site: str) -> None:
        """Every due message gets ``failure`` (no connection could be tried)."""
        state = self.state
        disposition = Disposition.BOUNCE if failure.permanent else Disposition.TRANSIENT_FAILURE
        attempt = plan_failure_attempt(failure, site)
        policy = mail.deliveries.settings_for(self.name).retry
        now = mail.clock.now()
        events: list[Event] = []
        for handed in state.hand(len(state.messages)):
            events += state.attempted(
                handed.message.id,
                disposition,
                attempt,
                now=now,
                policy=policy,
                uniform=random.random(),
            )
        await self._submit_outcomes(events)

    async def _settle_outcomes(self) -> None:
        """Decide and log what follows each outcome the dispatchers reported."""
        mail = self._mail
        assert mail is not None
        state = self.state
        policy = mail.deliveries.settings_for(self.name).retry
        now = mail.clock.now()
        events: list[Event] = []
        returned: list[str] = []
        settled = self.settled.value
        while self._outcomes:
            entry, outcome = self._outcomes.popleft()
            settled += 1
            if outcome is None:
                returned.append(entry.message.id)
                continue
            events += state.attempted(
                entry.message.id,
                outcome.disposition,
                attempt_of(outcome),
                now=now,
                policy=policy,
                uniform=random.random(),
            )
        state.take_back(returned)
        await self._submit_outcomes(events)
        self.settled.advance(settled)

    async def _submit_outcomes(self, events: list[Event]) -> None:
        if events:
            self._bounced += sum(len(e.messages) for e in events if isinstance(e, Bounced))
            await self._log.submit(events)

    async def _catch_up(self, first: int, last: int) -> None:
        """Read from the log and apply what the broadcaster could not hand over."""
        self._catch_ups += 1
        position = first - 1
        while position < last:
            events = [c for c in await self._log.read_after(position) if c.seq <= last]
            await self._process(events, events[-1].seq, filtered=False)
            position = events[-1].seq

    def statistics(self) -> ActorStatistics:
        return ActorStatistics(
            queue=self.state.name,
            queued=len(self.state),
            live_rules=len(self.state.rules),
            mailbox_used=len(self._mailbox),
            lagging=self.name in self._missed,
            catch_ups=self._catch_ups,
            processed_seq=self.processed.value,
            bounced=self._bounced,
            waiting=len(self.state.waiting),
            handed=len(self.state.handed),
        )

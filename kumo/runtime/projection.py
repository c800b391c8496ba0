"""The running fold that the API reads: rules, counters, queue gauges, where messages are."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import repeat
from typing import Final

import trio

from kumo.model.criteria import Criteria
from kumo.model.dry_run import DryRun, RebindDryRun, dry_run, rebind_dry_run
from kumo.model.events import (
    Bounced,
    Committed,
    MessageReceived,
    ReadySuspendCancelled,
    ReadySuspendExpired,
    ReadySuspendIssued,
    RebindIssued,
    Rebound,
)
from kumo.model.message_locations import MessageLocations
from kumo.model.message_queue import MessageQueue
from kumo.model.queue_index import QueueIndex
from kumo.model.queue_name import QueueName
from kumo.model.state import RULE_ENDS, RULE_ISSUES, RuleBook, State
from kumo.runtime.watermark import Watermark

_READY_SUSPENSION_EVENTS: Final = frozenset(
    {ReadySuspendIssued, ReadySuspendCancelled, ReadySuspendExpired}
)

_COUNTED_KEPT: Final = 64
"""Criteria whose ``pending`` :meth:`Projection.pending` keeps up to date before it
first forgets those of rules that ended (then: twice as many as it kept)."""

INDEX_CHUNK: Final = 10_000
"""Messages :meth:`Projection.locate` indexes between two checkpoints (about 10 ms)."""


class Projection:
    """:class:`State` without messages, folded by the log writer after each commit.

    The writer calls :meth:`apply` synchronously, before it wakes the appenders, so
    whatever an API call reads after its append returned already shows that append.

    Beside the state it keeps what inspection needs and the queue actors do not: which
    queue each message was received into (:attr:`locations`, a hint that the actor
    holding the queue confirms; read it with :meth:`locate`), and when each queue last
    had an arrival (:attr:`arrivals`), and every queue it has seen by the parts of its
    name (:attr:`queue_index`), so that a dry run or a rule's ``pending`` count costs
    the queues it matches.
    """

    __slots__ = (
        "_counting",
        "_indexing",
        "_pending",
        "_prune_at",
        "_unindexed",
        "admin_events",
        "arrivals",
        "changed",
        "locations",
        "queue_index",
        "ready_suspension_events",
        "rule_events",
        "rules_issued",
        "state",
    )

    def __init__(self, state: State, queued: Mapping[str, MessageQueue] | None = None) -> None:
        """``queued``: the messages the queues hold at start
        (:func:`kumo.model.recovery.recover`), the very objects their actors hold."""
        self.state = state
        self.changed = trio.lowlevel.ParkingLot()
        """Unparked after every fold: where :meth:`Engine.wait_until` waits."""
        self.rules_issued = Watermark()
        """How many rules (of any kind) have been issued: the rule expiry waits on it."""
        self.rule_events = Watermark()
        """How many events that issue or end a rule (of any kind: bounce, suspension)
        have been folded: :meth:`Engine.wait_rule` waits on it."""
        self.admin_events = Watermark()
        """How many admin events have been folded (a rule's issue or end of any kind,
        a ready-queue suspension's, a rebind): fleet mode's publisher waits on it, and
        a test on what the follower appends."""
        self.ready_suspension_events = Watermark()
        """How many ``ReadySuspendIssued``, ``ReadySuspendCancelled`` and
        ``ReadySuspendExpired`` have been folded: the dispatchers look again at which
        ready queues are suspended each time it moves."""
        self.locations = MessageLocations()
        """Spool id -> the queue it was received (or rebound) into, while that queue
        holds messages."""
        self.arrivals: dict[str, int] = {}
        """Queue name -> commit time of its last ``MessageReceived`` (at start: of the
        newest message it holds)."""
        self._unindexed = dict(queued or {})
        """The queues as they were at start, whose messages :meth:`locate` indexes the
        first time it is asked: a start does not pay for it (a second at a million
        messages), nor does a server nobody asks."""
        self._indexing = trio.Lock()
        for name, messages in self._unindexed.items():
            newest = messages.last_received_at()
            if newest is not None:
                self.arrivals[name] = newest
        self.queue_index: QueueIndex[str] = QueueIndex()
        """Every queue that held messages since the start (an emptied one stays, with
        no count), for :meth:`preview` and :meth:`pending`."""
        for name in (*self._unindexed, *state.queue_counts):
            if name not in self.queue_index:
                self.queue_index.add(name, QueueName.parse(name), name)
        self._pending: dict[Criteria, int] = {}
        """Criteria -> the messages held in the queues they match, kept up to date as
        those queues' gauges move (:meth:`apply`): a live rule's ``pending``, which every
        GET lists, costs a look-up, not a sum over its queues (a rule matching every
        queue: 10,000 names, a third of a GET). Emptied when the index gains a queue."""
        self._counting: dict[Criteria, frozenset[str]] = {}
        """The criteria in :attr:`_pending` that match some queue -> the queues they
        match (one set per criteria, not an entry per queue: a sweep's first GET would
        otherwise make 10,000 objects for the garbage collector to walk)."""
        self._prune_at = _COUNTED_KEPT

    def preview(
        self,
        criteria: Criteria,
        *,
        book: RuleBook | None,
        now: int,
        expires_at: int | None = None,
    ) -> DryRun:
        """What a request with ``criteria`` would match now (:func:`kumo.model.dry_run.dry_run`
        over this fold's queues and gauges). Never blocks; costs the queues matched."""
        return dry_run(
            criteria,
            index=self.queue_index,
            counts=self.state.queue_counts,
            book=book,
            now=now,
            expires_at=expires_at,
        )

    def preview_rebind(
        self, criteria: Criteria, data: Mapping[str, str], *, always_flush: bool
    ) -> RebindDryRun:
        """What a rebind would move now (:func:`kumo.model.dry_run.rebind_dry_run` over
        this fold's queues and gauges). Never blocks; costs the queues matched."""
        return rebind_dry_run(
            criteria,
            data,
            always_flush=always_flush,
            index=self.queue_index,
            counts=self.state.queue_counts,
        )

    def pending(self, criteria: Criteria) -> int:
        """Messages held now in the queues ``criteria`` match (a live bounce rule's
        ``pending``: 0 once its sweep and the attempts it waits for are done)."""
        total = self._pending.get(criteria)
        if total is not None:
            return total
        if len(self._pending) >= self._prune_at:
            self._prune()
        names = self.queue_index.matching(criteria)
        total = self._pending[criteria] = sum(map(self.state.queue_counts.get, names, repeat(0)))
        if names:
            self._counting[criteria] = frozenset(names)
        return total

    def _prune(self) -> None:
        """Forget the criteria of rules that ended; keep the live ones'."""
        book = self.state.rules
        kept = {c for c in self._pending if book.live_equal(c) is not None}
        self._pending = {c: total for c, total in self._pending.items() if c in kept}
        self._counting = {c: names for c, names in self._counting.items() if c in kept}
        self._prune_at = max(_COUNTED_KEPT, 2 * len(self._pending))

    def _forget_pending(self) -> None:
        """The index gained a queue, which criteria counted may match: count again.
        New dicts, not cleared ones: :meth:`apply` sees the change mid-batch."""
        self._pending = {}
        self._counting = {}

    async def locate(self, message_id: str) -> list[str]:
        """The queues that may hold ``message_id`` (a hint: see
        :class:`~kumo.model.message_locations.MessageLocations`).

        The first call after a start indexes first what the queues held at start, from
        the queues themselves as they are now, :data:`INDEX_CHUNK` messages between two
        checkpoints; calls made meanwhile wait for it. A call cancelled meanwhile leaves
        the queue it was indexing to the next call, which indexes all of it again (the
        index names each queue once per id, however often it holds the entry).
        """
        if self._unindexed:
            async with self._indexing:
                while self._unindexed:
                    name, messages = next(iter(self._unindexed.items()))
                    ids = messages.ids()
                    for start in range(0, len(ids), INDEX_CHUNK):
                        chunk = ids[start : start + INDEX_CHUNK]
                        self.locations.add_many((message, name) for message in chunk)
                        await trio.lowlevel.checkpoint()
                    del self._unindexed[name]
        return self.locations.queues_of(message_id)

    def apply(self, committed: list[Committed]) -> None:
        apply = self.state.apply
        counts = self.state.queue_counts
        issued = ended = ready = ready_issued = rebinds = 0
        received: list[tuple[str, str]] = []
        arrivals = self.arrivals
        index = self.queue_index
        # While some criteria's pending is counted: the gauges, before this batch, of
        # the queues its events name. An event moves only the gauges of the queues it
        # names (``queue``, and a ``Rebound``'s ``to_queue``).
        counting = self._counting
        before: dict[str, int] = {}
        for item in committed:
            event = item.event
            if counting:
                queue = getattr(event, "queue", None)
                if queue is not None and queue not in before:
                    before[queue] = counts.get(queue, 0)
                if type(event) is Rebound and event.to_queue not in before:
                    before[event.to_queue] = counts.get(event.to_queue, 0)
            apply(item)
            if type(event) is MessageReceived:
                received.append((event.message_id, event.queue))
                arrivals[event.queue] = item.time
                if event.queue not in index:
                    index.add(event.queue, QueueName.parse(event.queue), event.queue)
                    self._forget_pending()
            elif type(event) in RULE_ISSUES:
                issued += 1
            elif type(event) in _READY_SUSPENSION_EVENTS:
                ready += 1
                ready_issued += type(event) is ReadySuspendIssued
            elif type(event) in RULE_ENDS:
                ended += 1
            elif type(event) is RebindIssued:
                rebinds += 1
            elif type(event) is Bounced and event.queue not in self.state.queue_counts:
                # The queue is empty: all its entries die at once, none one by one (a
                # sweep would otherwise pay a lookup for each message it bounces).
                self.locations.add_many(received)
                received.clear()
                self.locations.retire(event.queue)
            elif type(event) is Rebound:
                # The messages are found in their new queue from now on.
                received.extend((mid, event.to_queue) for mid in event.messages.ids())
                arrivals[event.to_queue] = item.time
                if event.to_queue not in index:
                    index.add(event.to_queue, QueueName.parse(event.to_queue), event.to_queue)
                    self._forget_pending()
                if event.queue not in self.state.queue_counts:
                    self.locations.add_many(received)
                    received.clear()
                    self.locations.retire(event.queue)
        if received:
            self.locations.add_many(received)
        if before and counting is self._counting:
            pending = self._pending
            for queue, count in before.items():
                moved = counts.get(queue, 0) - count
                if moved:
                    for criteria, names in counting.items():
                        if queue in names:
                            pending[criteria] += moved
        if issued or ready_issued:
            # A ready-queue suspension's expiry is the rule expiry's too.
            self.rules_issued.advance(self.rules_issued.value + issued + ready_issued)
        if issued or ended:
            self.rule_events.advance(self.rule_events.value + issued + ended)
        if ready:
            self.ready_suspension_events.advance(self.ready_suspension_events.value + ready)
        if issued or ended or ready or rebinds:
            self.admin_events.advance(self.admin_events.value + issued + ended + ready + rebinds)
        self.changed.unpark_all()

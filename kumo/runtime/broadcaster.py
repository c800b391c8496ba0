"""Routes committed events, in log order, to the queue actors they concern.

Routing is by index, never by fan-out to every actor: a message goes to its queue's
actor; a rule goes to the actors whose queue name it matches (a pure function of the
name, evaluated once per rule and candidate queue, found through a
:class:`~kumo.model.queue_index.QueueIndex`); a cancellation or expiry goes to the actors
that were given the rule. The broadcaster keeps its own :class:`RuleBook`, folded in
log order, so that an actor it starts for a new queue gets exactly the rules that are
live at that point of the log.
"""

from __future__ import annotations

import attrs
import trio

from kumo.model.events import (
    BounceCancelled,
    BounceExpired,
    BounceIssued,
    Committed,
    MessageReceived,
)
from kumo.model.queue_index import QueueIndex
from kumo.model.state import QueueState, RuleBook, SweepRule
from kumo.model.statistics import counter, gauge
from kumo.runtime.log_writer import LogWriter
from kumo.runtime.queue_actor import QueueActor
from kumo.runtime.watermark import Watermark


@attrs.frozen
class BroadcasterStatistics:
    """How far the broadcaster has routed, and to how many actors."""

    position: int = gauge("Sequence number of the last event routed to the queue actors.")
    actors: int = gauge("Queue actors running: one per queue that has held messages.")
    lagging_actors: int = gauge("Actors whose mailbox overflowed, catching up from the log.")
    events_routed: int = counter("Events routed by this process.")
    deliveries: int = counter("Batches of events handed to queue actors by this process.")


class Broadcaster:
    def __init__(
        self,
        log: LogWriter,
        rules: RuleBook,
        nursery: trio.Nursery,
        *,
        position: int,
    ) -> None:
        self._log = log
        self._rules = rules
        self._nursery = nursery
        self.position = Watermark(position)
        self.actors: dict[str, QueueActor] = {}
        self._index: QueueIndex[QueueActor] = QueueIndex()
        self._rule_actors: dict[str, set[QueueActor]] = {}
        self._scope = trio.CancelScope()
        self._events_routed = 0
        self._deliveries = 0

    async def start_actor(self, state: QueueState) -> QueueActor:
        """Start the actor of a queue (at startup, or when its first message arrives)."""
        actor = QueueActor(state, self._log, lambda: self.position.value)
        self.actors[state.name] = actor
        self._index.add(state.name, state.parsed, actor)
        for rule in state.rules:
            self._rule_actors.setdefault(rule.id, set()).add(actor)
        await self._nursery.start(actor.run)
        return actor

    def close(self) -> None:
        """Stop routing; every actor then finishes its mailbox and returns."""
        self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        with self._scope:
            try:
                while True:
                    batch = await self._log.read_after(self.position.value)
                    if batch:
                        await self._route(batch)
                    else:
                        await self._log.wait_beyond(self.position.value)
            finally:
                for actor in self.actors.values():
                    actor.close()

    async def _route(self, batch: list[Committed]) -> None:
        deliveries: dict[QueueActor, list[Committed]] = {}
        for committed in batch:
            event = committed.event
            match event:
                case MessageReceived():
                    actor = self.actors.get(event.queue)
                    if actor is None:
                        actor = await self._spawn(event.queue)
                    deliveries.setdefault(actor, []).append(committed)
                case BounceIssued():
                    rule = self._rules.apply(committed)
                    assert rule is not None
                    holders = self._rule_actors.setdefault(rule.id, set())
                    for actor in self._index.matching(event.criteria):
                        deliveries.setdefault(actor, []).append(committed)
                        if not rule.issued_expired:
                            holders.add(actor)
                    if rule.issued_expired:
                        del self._rule_actors[rule.id]
                case BounceCancelled() | BounceExpired():
                    self._rules.apply(committed)
                    for actor in self._rule_actors.pop(event.rule_id, ()):
                        deliveries.setdefault(actor, []).append(committed)
                case _:
                    self._rules.apply(committed)
        upto = batch[-1].seq
        for actor, events in deliveries.items():
            actor.deliver_nowait(events, upto)
        self._events_routed += len(batch)
        self._deliveries += len(deliveries)
        self.position.advance(upto)

    async def _spawn(self, queue: str) -> QueueActor:
        rules = [SweepRule.of(rule) for rule in self._rules.matching_live(queue)]
        return await self.start_actor(QueueState(queue, rules=rules))

    def statistics(self) -> BroadcasterStatistics:
        return BroadcasterStatistics(
            position=self.position.value,
            actors=len(self.actors),
            lagging_actors=sum(a.lagging_from is not None for a in self.actors.values()),
            events_routed=self._events_routed,
            deliveries=self._deliveries,
        )

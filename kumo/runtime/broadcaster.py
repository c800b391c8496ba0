"""Carries committed events, in log order, to the queue actors they concern.

Where each event goes is decided by the model's :class:`~kumo.model.router.Router`; the
broadcaster only carries the answer out: it has the supervisor start the queues the
router opens and hands each actor its events with ``deliver_nowait``, which never
blocks (a full mailbox is recorded in :class:`MissedDeliveries` and the actor reads
the log itself). Handing one event to thousands of actors is work for thousands of them
(an actor at rest takes a rule without waking, but its sweep is decided in the hand-out),
so it yields every ``EngineSettings.deliveries_per_yield`` deliveries: the event loop
then serves requests between them instead of after all of them, and while admin
requests are answered it waits its turn (:mod:`kumo.runtime.admin_gate`) before the
next slice.
"""

from __future__ import annotations

import attrs
import trio

from kumo.model.events import Committed
from kumo.model.router import Router
from kumo.model.settings import EngineSettings
from kumo.model.state import QueueState
from kumo.model.statistics import counter, gauge
from kumo.runtime.admin_gate import AdminGate
from kumo.runtime.log_writer import LogWriter
from kumo.runtime.queue_actor import MailPath, MissedDeliveries, QueueActor
from kumo.runtime.supervisor import QueueSupervisor
from kumo.runtime.sweep_turns import SweepTurns
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
    """Follows the log from ``position``; see the module docstring."""

    def __init__(
        self,
        log: LogWriter,
        router: Router,
        supervisor: QueueSupervisor,
        settings: EngineSettings,
        *,
        position: int,
        mail: MailPath | None = None,
        sweep_turns: SweepTurns | None = None,
        admin_gate: AdminGate | None = None,
    ) -> None:
        """``mail``: how the actors deliver (None: they hold their messages).
        ``sweep_turns``: what the actors' sweeps share (:class:`SweepTurns`).
        ``admin_gate``: what the hand-out of one event to thousands of actors waits on
        between two slices of ``deliveries_per_yield`` (never closed without it)."""
        self._admin_gate = admin_gate or AdminGate.never_closed()
        self._log = log
        self._sweep_turns = sweep_turns or SweepTurns()
        self._mail = mail
        self._router = router
        self._supervisor = supervisor
        self._settings = settings
        self._missed = MissedDeliveries()
        self._assigned: dict[str, int] = {}
        self.position = Watermark(position)
        """The last seq routed: every actor it concerns has it in hand (or in
        :class:`MissedDeliveries`)."""
        self._scope = trio.CancelScope()
        self._events_routed = 0
        self._deliveries = 0

    async def open_queue(self, state: QueueState) -> None:
        """Start the actor of a queue known at start (the router already opened it)."""
        await self._supervisor.start(
            QueueActor(
                state,
                self._log,
                self._missed,
                self._settings,
                self._mail,
                passed_over=self._router.passed_over,
                sweep_turns=self._sweep_turns,
            )
        )

    def assigned(self, queue: str) -> int:
        """The last seq the broadcaster made ``queue``'s actor responsible for."""
        return self._assigned.get(queue, 0)

    def needed_after(self) -> int:
        """The last seq no follower in memory will read again: the broadcaster's
        position, or the seq before the first one a lagging actor still has to read
        from the log. Compaction archives nothing after it (a follower that fell behind
        the in-memory tail reads the live store)."""
        first = self._missed.first_needed()
        position = self.position.value
        return position if first is None else min(position, first - 1)

    def close(self) -> None:
        """Stop routing; then close the supervisor for the actors to finish."""
        self._scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        with self._scope:
            while True:
                batch = await self._log.read_after(self.position.value, self._settings.read_limit)
                if batch:
                    await self._route(batch)
                else:
                    await self._log.wait_beyond(self.position.value)

    async def _route(self, batch: list[Committed]) -> None:
        routing = self._router.route(batch)
        for queue in routing.new_queues:
            await self.open_queue(
                QueueState(
                    queue.name,
                    rules=queue.rules,
                    suspensions=queue.suspensions,
                    ready_suspensions=queue.ready_suspensions,
                )
            )
        upto = batch[-1].seq
        per_yield = self._settings.deliveries_per_yield
        for count, (name, events) in enumerate(routing.deliveries.items(), start=1):
            self._assigned[name] = upto
            actor = self._supervisor.get(name)
            assert actor is not None
            if name in self._missed or not actor.deliver_nowait(events, upto):
                self._missed.record(name, events[0].seq, upto)
            if count % per_yield == 0:
                await trio.lowlevel.checkpoint()
                await self._admin_gate.turn()
        self._events_routed += len(batch)
        self._deliveries += len(routing.deliveries)
        self.position.advance(upto)

    def statistics(self) -> BroadcasterStatistics:
        return BroadcasterStatistics(
            position=self.position.value,
            actors=len(self._supervisor),
            lagging_actors=len(self._missed),
            events_routed=self._events_routed,
            deliveries=self._deliveries,
        )

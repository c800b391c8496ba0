"""The engine: opens a data directory, replays it, runs every task, answers the API.

Task tree (one root nursery, opened by :func:`open_engine`; :func:`_run` starts it in
this order)::

    open_engine
    ├── LogWriter.run              the single writer of the event log
    ├── QueueSupervisor.run        owns the actors' nursery
    │   └── QueueActor.run ×N      one per scheduled queue
    ├── Deliveries.run             the mail path's dispatchers (with ``mail`` only)
    │   ├── ConnectionLeases.run   [fleet], from the first fleet-limited ready queue: its leases
    │   └── Dispatcher.run ×R      one per ready queue, its SMTP connections
    ├── followers                  a nursery cancelled last at shutdown
    │   ├── DeliveryLogWriter.run  Reception / AdminBounce JSON lines, checkpointed
    │   ├── RuleExpiry.run         appends BounceExpired when a rule's time is up
    │   ├── WalCheckpointer.run    copies the SQLite WAL back, beside the writer
    │   ├── Snapshotter.run        snapshots the state every so many events
    │   ├── FleetLink.run_publisher  [fleet] only: this node's actions -> Redis stream
    │   ├── FleetLink.run_follower   [fleet] only: the other nodes' actions -> the log
    │   └── FleetLink.run_counters   [fleet] only: this node's rule counters -> Redis
    └── Broadcaster.run            carries committed events to the queue actors

The projections (rules, counters, queue gauges) are folded synchronously by the
writer's ``on_commit``, so whatever an API call returns after an append already shows
that append's effect. Every policy (routing, commit batches and fsyncs, recovery, bounce
decisions) is the model's; the tasks here carry out what it decides.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

from kumo.model.criteria import Criteria
from kumo.model.dry_run import DryRun, RebindDryRun
from kumo.model.events import (
    BounceCancelled,
    BounceIssued,
    Committed,
    Event,
    MessageReceived,
    ReadySuspendCancelled,
    ReadySuspendIssued,
    RebindIssued,
    Rejected,
    SuspendCancelled,
    SuspendIssued,
)
from kumo.model.fleet import FleetFigures, FleetSettings, fleet_views
from kumo.model.inspection import InspectedMessage, InspectedQueue
from kumo.model.message import Message
from kumo.model.ready_queue import ReadyEntry
from kumo.model.ready_queue_state import ReadyQueueState
from kumo.model.ready_suspension import ReadySuspensionView
from kumo.model.recovery import Recovery, left_behind, recover
from kumo.model.requests import BounceRequest, NewMessage, ReadySuspendRequest, RebindRequest
from kumo.model.router import Router
from kumo.model.settings import EngineSettings
from kumo.model.state import LiveRules, QueueState, RuleKind, RuleView, State
from kumo.model.statistics import counter, gauge, record
from kumo.runtime.admin_gate import AdminGate, AdminGateStatistics
from kumo.runtime.blocking import BackgroundThread, RunBlocking, in_thread, inline
from kumo.runtime.broadcaster import Broadcaster, BroadcasterStatistics
from kumo.runtime.clock import EngineClock
from kumo.runtime.connection_leases import ConnectionLeases, LeaseStatistics
from kumo.runtime.delivery import (
    Deliveries,
    DispatcherStatistics,
    MailSettings,
    SuspendedReadyQueues,
)
from kumo.runtime.delivery_log import DeliveryLogStatistics, DeliveryLogWriter
from kumo.runtime.fleet import FleetLink, FleetMeta, FleetStatistics
from kumo.runtime.log_writer import LogStatistics, LogWriter
from kumo.runtime.message_rates import MessageRates, MessageRateStatistics
from kumo.runtime.projection import Projection
from kumo.runtime.queue_actor import ActorStatistics, MailPath, QueueActor
from kumo.runtime.refusal import RefusedError
from kumo.runtime.rule_expiry import RuleExpiry
from kumo.runtime.smtp_connection import MessageOutcome
from kumo.runtime.snapshotter import SnapshotStatistics, Snapshotter
from kumo.runtime.supervisor import QueueSupervisor
from kumo.runtime.sweep_turns import SweepTurns
from kumo.runtime.wal_checkpointer import CheckpointStatistics, WalCheckpointer
from kumo.store.data_dir import open_event_log, structure_checked
from kumo.store.event_log import EventStore, LogCorruptError
from kumo.store.ids import random_ids
from kumo.store.layout import LOGS
from kumo.store.lock import DataDirectoryLock
from kumo.store.lock import DataDirectoryLockedError as DataDirectoryLockedError
from kumo.store.snapshots import fold_from_snapshot

logger = logging.getLogger("kumo.engine")


class DeliveryLogAheadError(LogCorruptError):
    """The delivery log's checkpoint stands beyond the end of the event log."""


class EngineClosedError(RefusedError):
    """The engine is shutting down and takes no more requests."""


@attrs.frozen
class EngineStatistics:
    """What the engine has done and holds now; ``/metrics`` exports every field."""

    received_total: int = counter("Messages received since the log began.")
    bounced_total: int = counter("Messages bounced by an administrator.")
    delivered_total: int = counter("Messages delivered since the log began.")
    failed_total: int = counter(
        "Messages refused for good by their destination (or before any connection)."
    )
    expired_total: int = counter("Messages that expired unsent since the log began.")
    transient_failures_total: int = counter(
        "Attempts that failed transiently since the log began (or before any connection)."
    )
    rebound_total: int = counter(
        "Messages moved to another scheduled queue by a rebind since the log began."
    )
    injected: int = counter("Messages received through HTTP inject by this process.")
    queued_total: int = gauge(
        "Messages held, all scheduled queues (waiting, ready or in a connection)."
    )
    queues: int = gauge("Non-empty scheduled queues.")
    live_rules: int = gauge("Bounce rules that GET would list.")
    log: LogStatistics = record("The event log writer.")
    broadcaster: BroadcasterStatistics = record("The broadcaster and its queue actors.")
    delivery_log: DeliveryLogStatistics = record("The delivery-log writer.")
    wal: CheckpointStatistics = record("The checkpointer of the event log's WAL.")
    snapshots: SnapshotStatistics = record("The snapshots of the state.")
    fleet: FleetStatistics = record("Fleet mode: this node's link to the fleet's stream.")
    leases: LeaseStatistics = record(
        "Fleet mode: this node's connection leases (fleet-wide connection limits)."
    )
    message_rates: MessageRateStatistics = record(
        "The mail path's message rates (max_message_rate), local and fleet-wide."
    )
    admin_gate: AdminGateStatistics = record(
        "Admin requests first: SMTP sessions waiting while admin requests are answered."
    )


@attrs.frozen
class EngineParts:
    """The components an engine is built from, each built once by :func:`open_engine`."""

    clock: EngineClock
    settings: EngineSettings
    admin_gate: AdminGate
    """Where admin requests go first and the mail path's sessions wait their turn."""
    projection: Projection
    log: LogWriter
    supervisor: QueueSupervisor
    broadcaster: Broadcaster
    delivery: DeliveryLogWriter
    expiry: RuleExpiry
    checkpointer: WalCheckpointer
    snapshotter: Snapshotter
    deliveries: Deliveries | None
    """The mail path; None when the engine holds every message (no ``mail``)."""
    fleet: FleetLink | None = None
    """This node's link to its fleet (``[fleet]``); None when it runs alone."""


class Engine:
    """The API the HTTP layer, the CLI and the tests call. Build it with :func:`open_engine`."""

    def __init__(self, parts: EngineParts, node_id: str) -> None:
        self.clock = parts.clock
        self.node_id = node_id
        self.admin_gate = parts.admin_gate
        """Admin requests enter it (the HTTP app), the mail path's sessions wait on it."""
        self._parts = parts
        self._projection = parts.projection.state
        self._log = parts.log
        self._cancelling: set[str] = set()
        self._closed = False
        self._injected = 0
        # The shutdown's wait for work under way: made now so that it can be cut short
        # before the shutdown begins (cancelling a scope not yet entered is kept).
        self._shutdown_wait = trio.CancelScope(shield=True)

    # -- the API ---------------------------------------------------------------------

    def now(self) -> int:
        """The engine clock's reading, ns since the epoch (every time kumo stamps)."""
        return self.clock.now()

    async def inject(self, messages: Sequence[NewMessage]) -> list[str]:
        """Receive ``messages``; return their spool ids once they are durable."""
        self._check_open()
        ids = random_ids(len(messages))
        events: list[Event] = [
            MessageReceived(
                message_id=message_id,
                queue=message.queue,
                sender=message.sender,
                recipient=message.recipient,
                size=message.size,
            )
            for message_id, message in zip(ids, messages, strict=True)
        ]
        bodies = {index: message.content for index, message in enumerate(messages)}
        await self._log.append(events, bodies=bodies)
        self._injected += len(events)
        return ids

    async def receive(
        self, events: Sequence[MessageReceived], bodies: Sequence[bytes]
    ) -> list[Committed]:
        """Receive messages whose events are already made (the SMTP listener's: spool
        ids, queues and peers decided by :mod:`kumo.model.smtp_reception`), ``bodies[i]``
        the content of ``events[i]``; return once they are durable, in one group commit
        with whatever else waits.

        Raises :class:`RefusedError` when the engine is closing or its log failed;
        then none of them is acknowledged (cancelled while waiting, they may or may not
        be committed, as with :meth:`inject`).
        """
        self._check_open()
        return await self._log.append(events, bodies=dict(enumerate(bodies)))

    async def record_rejections(self, events: Sequence[Rejected]) -> None:
        """Queue ``Rejected`` events for the log without waiting for them to be durable:
        the replies they record are not held back for them. Waits only while the log's
        background lane is full. Raises :class:`RefusedError` when the engine is closing.
        """
        self._check_open()
        await self._log.submit(events)

    async def issue_bounce(self, request: BounceRequest, *, issued_by: str) -> str:
        """Issue a rule; return its id once its ``BounceIssued`` is durable.

        The sweep and the counting happen afterwards; read progress with
        :meth:`list_bounces`.
        """
        return await self._issue("bounce", request, issued_by)

    async def cancel_bounce(self, rule_id: str, *, cancelled_by: str) -> bool:
        """Cancel a live rule. False if it is unknown, replaced, cancelled or expired."""
        return await self._cancel("bounce", rule_id, cancelled_by)

    async def wait_rule(
        self, rule_id: str, *, ended: bool = False, kind: RuleKind = "bounce"
    ) -> None:
        """Return once this node's log holds the issue of rule ``rule_id`` of ``kind``
        (with ``ended``, and an event that ended it: cancel, replacement or expiry).
        Always a checkpoint. A rule issued on another node of the fleet comes through
        the fleet follower: this is how a caller waits for it without polling."""
        events = self._parts.projection.rule_events
        book = self._projection.book(kind)
        while True:
            seen = events.value
            rule = book.rules.get(rule_id)
            if rule is not None and (not ended or rule.end is not None):
                await trio.lowlevel.checkpoint()
                return
            await events.wait_for(seen + 1)

    def list_bounces(self) -> list[RuleView]:
        """Live rules, oldest first, with their counters, remaining lifetime and the
        messages their sweep still owes (``pending``, from the projection's gauges)."""
        return self.live_bounces().views()

    def live_bounces(self) -> LiveRules:
        """What :meth:`list_bounces` lists, without making the views: for a listing
        that encodes again only the rules whose figures moved."""
        return self._projection.rules.live(self.clock.now(), self._parts.projection.pending)

    def preview(
        self,
        criteria: Criteria,
        *,
        replacing: RuleKind | None = None,
        expires_at: int | None = None,
    ) -> DryRun:
        """What a request with ``criteria`` would match now, changing nothing: the
        matching scheduled queues that hold messages, with their counts, and the live
        rule of kind ``replacing`` it would replace (none if ``expires_at`` is not
        after now). From the projection, so it covers every event committed before the
        call; it costs the queues matched, never the messages, and never blocks."""
        book = {"bounce": self._projection.rules, "suspend": self._projection.suspends}
        return self._parts.projection.preview(
            criteria,
            book=None if replacing is None else book[replacing],
            now=self.clock.now(),
            expires_at=expires_at,
        )

    def preview_rebind(self, request: RebindRequest) -> RebindDryRun:
        """What ``request`` would move now, changing nothing: the matching scheduled
        queues that hold messages, each with the queue its messages would move to (or
        staying, and whether ``always_flush`` would make them due). As :meth:`preview`:
        from the projection, it costs the queues matched and never blocks."""
        return self._parts.projection.preview_rebind(
            request.criteria, request.data, always_flush=request.always_flush
        )

    @property
    def connection_leases(self) -> ConnectionLeases | None:
        """This node's connection leases (a node in a fleet that delivers mail), for
        tests and tools that wait on them; None otherwise."""
        deliveries = self._parts.deliveries
        return None if deliveries is None else deliveries.leases

    @property
    def message_rates(self) -> MessageRates | None:
        """This node's message rates (``max_message_rate``; a node that delivers mail),
        for tests and tools that wait on them; None otherwise."""
        deliveries = self._parts.deliveries
        return None if deliveries is None else deliveries.rates

    async def wait_fleet_counters(self) -> None:
        """Return once this node's rule counters, as they are now, are published for
        the fleet's figures (at once without a fleet). For tests and tools."""
        if self._parts.fleet is not None:
            await self._parts.fleet.wait_counters_published()

    async def fleet_bounces(self) -> FleetFigures:
        """:meth:`list_bounces` with each rule's counters summed over the nodes of the
        fleet that published theirs (``GET ?scope=fleet``). Waits for Redis at most
        ``counters_wait`` seconds; without an answer (or without a fleet) the figures
        are this node's alone, and :attr:`FleetFigures.scope` says so."""
        fleet = self._parts.fleet
        if fleet is None:
            return FleetFigures(self.list_bounces(), "off", 1)
        others = await fleet.read_counters()
        if others is None:
            return FleetFigures(self.list_bounces(), "unavailable", 1)
        return FleetFigures(fleet_views(self.list_bounces(), others), "fleet", 1 + len(others))

    async def issue_suspend(self, request: BounceRequest, *, issued_by: str) -> str:
        """Suspend delivery from the scheduled queues ``request`` matches (its
        ``suppress_logging`` is not used); return the suspension's id once its
        ``SuspendIssued`` is durable."""
        return await self._issue("suspend", request, issued_by)

    async def cancel_suspend(self, rule_id: str, *, cancelled_by: str) -> bool:
        """Lift a live suspension: its messages are due at once. False if it is not live."""
        return await self._cancel("suspend", rule_id, cancelled_by)

    def list_suspends(self) -> list[RuleView]:
        """Live suspensions, oldest first, with their remaining lifetime."""
        return self._projection.suspends.views(self.clock.now())

    async def rebind(self, request: RebindRequest, *, issued_by: str) -> str:
        """Rebind the scheduled messages of the queues ``request`` matches; return the
        rebind's id once its ``RebindIssued`` is durable. The queues move their
        messages afterwards (``Rebound`` events), asynchronously, as KumoMTA does."""
        if request.dry_run:
            raise ValueError("a dry-run request issues nothing: ask preview_rebind() instead")
        self._check_open()
        rebind_id = str(uuid.uuid4())
        event = RebindIssued(
            rebind_id=rebind_id,
            criteria=request.criteria,
            data=request.data,
            reason=request.reason,
            always_flush=request.always_flush,
            suppress_logging=request.suppress_logging,
            issued_by=issued_by,
            issued_at=self.clock.now(),
        )
        await self._log.append([event])
        return rebind_id

    async def issue_ready_suspend(self, request: ReadySuspendRequest, *, issued_by: str) -> str:
        """Suspend the ready queue ``request.name`` (replacing a live suspension of that
        name); return the suspension's id once its ``ReadySuspendIssued`` is durable.
        Its connections then finish their transaction and close, and what would go to
        it waits in its scheduled queues until the suspension ends."""
        self._check_open()
        rule_id = str(uuid.uuid4())
        now = self.clock.now()
        event = ReadySuspendIssued(
            rule_id=rule_id,
            name=request.name,
            reason=request.reason,
            expires_at=request.expiry(now),
            issued_by=issued_by,
            issued_at=now,
        )
        await self._log.append([event])
        return rule_id

    async def cancel_ready_suspend(self, rule_id: str, *, cancelled_by: str) -> bool:
        """Lift a live ready-queue suspension: what it held is due at once. False if it
        is not live."""
        self._check_open()
        book = self._projection.ready_suspends
        if rule_id in self._cancelling or not book.is_live(rule_id, self.clock.now()):
            return False
        self._cancelling.add(rule_id)
        try:
            await self._log.append([ReadySuspendCancelled(rule_id, cancelled_by=cancelled_by)])
        finally:
            self._cancelling.discard(rule_id)
        return True

    def list_ready_suspends(self) -> list[ReadySuspensionView]:
        """Live ready-queue suspensions, oldest first, with their remaining lifetime."""
        return self._projection.ready_suspends.views(self.clock.now())

    async def _issue(self, kind: RuleKind, request: BounceRequest, issued_by: str) -> str:
        if request.dry_run:
            # A dry run must never reach the log: the caller wanted :meth:`preview`.
            raise ValueError("a dry-run request issues nothing: ask preview() instead")
        self._check_open()
        rule_id = str(uuid.uuid4())
        now = self.clock.now()
        event: Event
        if kind == "bounce":
            event = BounceIssued(
                rule_id=rule_id,
                criteria=request.criteria,
                reason=request.reason,
                expires_at=request.expiry(now),
                suppress_logging=request.suppress_logging,
                issued_by=issued_by,
                issued_at=now,
            )
        else:
            event = SuspendIssued(
                rule_id=rule_id,
                criteria=request.criteria,
                reason=request.reason,
                expires_at=request.expiry(now),
                issued_by=issued_by,
                issued_at=now,
            )
        await self._log.append([event])
        return rule_id

    async def _cancel(self, kind: RuleKind, rule_id: str, cancelled_by: str) -> bool:
        self._check_open()
        book = self._projection.rules if kind == "bounce" else self._projection.suspends
        if rule_id in self._cancelling or not book.is_live(rule_id, self.clock.now()):
            return False
        self._cancelling.add(rule_id)
        event: Event = (
            BounceCancelled(rule_id=rule_id, cancelled_by=cancelled_by)
            if kind == "bounce"
            else SuspendCancelled(rule_id=rule_id, cancelled_by=cancelled_by)
        )
        try:
            await self._log.append([event])
        finally:
            self._cancelling.discard(rule_id)
        return True

    def queue_counts(self) -> Mapping[str, int]:
        """Scheduled queue name -> messages waiting there (non-empty queues only)."""
        return self._projection.queue_counts

    def projection(self) -> State:
        """The running fold (rules, counters, gauges; no messages). Read-only."""
        return self._projection

    def queued_messages(self) -> dict[str, list[str]]:
        """Message ids held by each actor (tests and audits; a copy)."""
        return {
            actor.name: actor.state.held_ids() for actor in self._parts.supervisor if actor.state
        }

    async def inspect_message(self, message_id: str, *, want_body: bool) -> InspectedMessage | None:
        """The message ``message_id`` (a spool id) if a scheduled queue holds it, with
        its content from the spool if ``want_body``; None otherwise.

        The answer covers every event committed before the call (see
        :meth:`_settled_actor`). The queue is found through the projection's
        :class:`~kumo.model.message_locations.MessageLocations`, not by asking every
        queue; the content is read in a worker thread.
        """
        self._check_open()
        await self._parts.broadcaster.position.wait_for(self._log.last_seq)
        for queue in await self._parts.projection.locate(message_id):
            actor = await self._settled_actor(queue)
            found = None if actor is None else actor.state.find(message_id)
            if found is not None:
                inspected = await self._inspected(queue, [found], want_body=want_body)
                return inspected[0] if inspected else None
        return None

    async def inspect_queue(
        self, name: str, *, want_body: bool, limit: int | None
    ) -> InspectedQueue | None:
        """The scheduled queue ``name`` and its first ``limit`` messages (all with None),
        with their content if ``want_body``; None if kumo has no such queue (one that
        has held messages since the start; an empty one stays known until the restart).

        Covers every event committed before the call, as :meth:`inspect_message` does.
        """
        self._check_open()
        await self._parts.broadcaster.position.wait_for(self._log.last_seq)
        actor = await self._settled_actor(name)
        if actor is None:
            return None
        state = actor.state
        # In the scheduled queue: due, waiting, or back from a failed attempt (not the
        # messages handed to a ready queue or a connection). The sample: those due first.
        scheduled = len(state) - len(state.handed)
        waiting = [message for message, _ in state.waiting.values()]
        waiting += [message for message, _ in state.returning.values()]
        wanted = scheduled if limit is None else limit
        sample = state.messages.head(wanted)
        sample += waiting[: max(wanted - len(sample), 0)]
        inspected = await self._inspected(name, sample, want_body=want_body)
        now = self.clock.now()
        return InspectedQueue(
            name=name,
            messages=tuple(inspected),
            scheduled=scheduled,
            last_changed=self._parts.projection.arrivals.get(name, now),
            now=now,
        )

    async def _settled_actor(self, queue: str) -> QueueActor | None:
        """``queue``'s actor once it has applied every event routed to it so far (at
        once, unless it is busy: a sweep of it is then waited for); None if the queue
        has none. The caller has waited for the broadcaster to route what it must see."""
        actor = self._parts.supervisor.get(queue)
        if actor is not None:
            await actor.processed.wait_for(self._parts.broadcaster.assigned(queue))
        return actor

    async def _inspected(
        self, queue: str, messages: Sequence[Message], *, want_body: bool
    ) -> list[InspectedMessage]:
        """``messages`` of ``queue`` as inspection shows them, with their due time and
        attempts as the queue's actor holds them; with ``want_body``, read from the
        spool, leaving out any that left it meanwhile."""
        actor = self._parts.supervisor.get(queue)
        state = None if actor is None else actor.state

        def of(message: Message, body: bytes | None = None) -> InspectedMessage:
            if state is None:
                return InspectedMessage.of(queue, message, body)
            due, attempts = state.schedule_of(message.id)
            return InspectedMessage.of(queue, message, body, due=due, attempts=attempts)

        if not want_body:
            return [of(message) for message in messages]
        bodies = await self._log.read_bodies([message.seq for message in messages])
        return [
            of(message, body)
            for message, body in zip(messages, bodies, strict=True)
            if body is not None
        ]

    def statistics(self) -> EngineStatistics:
        projection = self._projection
        fleet = self._parts.fleet
        leases = self.connection_leases
        rates = self.message_rates
        now = self.clock.now()
        return EngineStatistics(
            received_total=projection.received_total,
            bounced_total=projection.bounced_total,
            delivered_total=projection.delivered_total,
            failed_total=projection.failed_total,
            expired_total=projection.expired_total,
            transient_failures_total=projection.transient_failures_total,
            rebound_total=projection.rebound_total,
            injected=self._injected,
            queued_total=sum(projection.queue_counts.values()),
            queues=len(projection.queue_counts),
            # Counted, not listed: views would copy every live rule's bounced map.
            live_rules=sum(1 for rule in projection.rules.live_rules() if rule.live_at(now)),
            log=self._log.statistics(),
            broadcaster=self._parts.broadcaster.statistics(),
            delivery_log=self._parts.delivery.statistics(),
            wal=self._parts.checkpointer.statistics(),
            snapshots=self._parts.snapshotter.statistics(),
            fleet=FleetStatistics.off() if fleet is None else fleet.statistics(),
            leases=LeaseStatistics.off() if leases is None else leases.statistics(),
            message_rates=MessageRateStatistics.off() if rates is None else rates.statistics(),
            admin_gate=self.admin_gate.statistics(),
        )

    def actor_statistics(self, start: int = 0, stop: int | None = None) -> list[ActorStatistics]:
        """The statistics of the actors ``start`` to ``stop`` (all by default), in the
        order their queues opened: a reader of 10,000 actors takes them a slice at a
        time, letting the event loop run in between."""
        return [
            actor.statistics() for actor in itertools.islice(self._parts.supervisor, start, stop)
        ]

    def dispatcher_statistics(
        self, start: int = 0, stop: int | None = None
    ) -> list[DispatcherStatistics]:
        """The statistics of the ready queues' dispatchers ``start`` to ``stop`` (all by
        default), in the order they were made (none without the mail path): read a
        slice at a time, as :meth:`actor_statistics`."""
        deliveries = self._parts.deliveries
        if deliveries is None:
            return []
        return deliveries.dispatcher_statistics(start, stop)

    def ready_queue_states(self, queues: Collection[str] | None = None) -> list[ReadyQueueState]:
        """The states the ready queues named in ``queues`` (all when None) are in now
        (``connection_limited``; see :mod:`kumo.model.ready_queue_state`), in the order
        their dispatchers were made; a ready queue in no state has none, and without the
        mail path there are none. Read from this process's dispatchers: another node of
        the fleet has its own."""
        deliveries = self._parts.deliveries
        if deliveries is None:
            return []
        return deliveries.states(queues)

    async def wait_idle(self) -> None:
        """Return once every committed event has been fully processed.

        That is: routed by the broadcaster, applied by every actor, their bounces
        committed, the delivery log written and the spool purged — with nothing left
        to do.
        """
        log, broadcaster = self._log, self._parts.broadcaster
        while True:
            target = log.last_seq
            await broadcaster.position.wait_for(target)
            for actor in self._parts.supervisor:
                # Only those behind: a checkpoint for each of 10,000 idle actors costs more
                # than the bounce being waited for.
                assigned = broadcaster.assigned(actor.name)
                if actor.processed.value < assigned:
                    await actor.processed.wait_for(assigned)
                if actor.settled.value < actor.reported:
                    await actor.settled.wait_for(actor.reported)
            while log.background_pending():
                await log.wait_beyond(log.last_seq)
            await self._parts.delivery.position.wait_for(target)
            await log.wait_purged()
            if log.last_seq == target and not log.background_pending():
                return

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, asking it now and after each commit: a
        condition on the projection or the statistics (what actors decide after a
        commit, a failed attempt coming back to its queue, needs :meth:`wait_idle`
        after it)."""
        while not condition():
            await self._parts.projection.changed.park()
        await trio.lowlevel.checkpoint()

    async def wait_snapshot(self, seq: int) -> None:
        """Return once a snapshot of the state at ``seq`` or later is written."""
        await self._parts.snapshotter.position.wait_for(seq)

    def close(self) -> None:
        """Refuse new requests (:class:`EngineClosedError`) from now on."""
        self._closed = True

    def cut_shutdown_short(self) -> None:
        """Do not wait (any longer) for work under way when the engine shuts down.

        The shutdown still stops the actors, commits what the log holds and closes the
        database cleanly; the work it did not wait for (a sweep, delivery-log records)
        is redone by the next start, as after a crash. May be called at any time,
        before the shutdown too; it never blocks.
        """
        self._shutdown_wait.cancel()

    @property
    def shutdown_cut_short(self) -> bool:
        """Whether the shutdown stopped waiting before the work under way was done (cut
        short by :meth:`cut_shutdown_short`, or by ``shutdown_deadline``)."""
        return self._shutdown_wait.cancelled_caught

    async def _wait_idle_at_shutdown(self, seconds: float) -> None:
        """:meth:`wait_idle`, shielded from the caller's cancellation, for at most
        ``seconds`` and until :meth:`cut_shutdown_short`."""
        wait = self._shutdown_wait
        wait.deadline = min(wait.deadline, trio.current_time() + seconds)
        deliveries = self._parts.deliveries
        with wait:
            if deliveries is not None:
                # Connections finish the transaction under way, and their outcomes
                # are logged, before the rest of the engine stops.
                await deliveries.stop()
            await self._idle_or_damaged()
        if deliveries is not None:
            deliveries.close()

    async def _idle_or_damaged(self) -> None:
        """:meth:`wait_idle`, or until the log finds its store damaged: then nothing
        more will be committed, and what is owed is the next start's."""
        async with trio.open_nursery() as race:

            async def first(wait: Callable[[], Awaitable[None]]) -> None:
                await wait()
                race.cancel_scope.cancel()

            race.start_soon(first, self.wait_idle)
            race.start_soon(first, self._log.damaged.wait)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("kumo is shutting down")


@asynccontextmanager
async def open_engine(
    data_dir: Path,
    *,
    clock: EngineClock | None = None,
    node_id: str | None = None,
    settings: EngineSettings | None = None,
    threads: bool = True,
    mail: MailSettings | None = None,
    fleet: FleetSettings | None = None,
) -> AsyncIterator[Engine]:
    """Open (or create) ``data_dir``, replay its log, and run the engine inside.

    Replay rebuilds the queues, the rules and their counters, finishes the bounces a
    crash cut short, and lets the delivery log catch up from its checkpoint. A log
    whose database pages are damaged is refused (a
    :class:`~kumo.store.event_log.StoreDamagedError`, checked beside the replay)
    before anything is served. Leaving the block shuts down: new requests are refused,
    the actors and followers get up to ``settings.shutdown_deadline`` seconds to finish
    (less if :meth:`Engine.cut_shutdown_short` is called), the log commits what is
    queued, and the database is closed. Work cut off is redone by the next start.

    ``mail``: deliver due messages over SMTP (docs/mail-path.md); without it every
    message stays in its scheduled queue until a rule bounces it.

    ``threads=False`` runs SQLite and file I/O in the Trio thread: slower, but
    deterministic under ``MockClock(autojump_threshold=0)``, where a wait on a worker
    thread would let virtual time jump (see :mod:`kumo.runtime.blocking`).

    ``fleet`` joins the node to a fleet (docs/fleet.md): its admin actions are published
    to the fleet's Redis stream, and the other nodes' are appended to its log.
    """
    clock = clock or EngineClock()
    settings = settings or EngineSettings()
    run_blocking = in_thread if threads else inline

    def lock() -> DataDirectoryLock:
        data_dir.mkdir(parents=True, exist_ok=True)
        return DataDirectoryLock(data_dir)

    @structure_checked(data_dir)
    def open_and_replay() -> tuple[
        EventStore, EventStore, EventStore, EventStore | None, State, int, str
    ]:
        store = open_event_log(data_dir, settings=settings, auto_checkpoint=False)
        stored_id = store.get_meta("node_id")
        chosen = node_id or stored_id or str(uuid.uuid4())
        if chosen != stored_id:
            store.set_meta("node_id", chosen)
        reader = open_event_log(data_dir, readonly=True, settings=settings)
        checkpoints = open_event_log(data_dir, settings=settings)
        # The fleet's positions are written beside the writer, on a connection of their
        # own that leaves checkpoints to the WalCheckpointer, as the writer's does.
        fleet_meta = (
            None
            if fleet is None
            else open_event_log(data_dir, settings=settings, auto_checkpoint=False)
        )
        state, snapshot_seq = _fold_without_collecting(data_dir, store)
        if store.owing:  # it may hold contents of messages that left: owe their purge
            queues = (state.queues or {}).values()
            store.owe(left_behind(store.spool_seqs(), (queue.seqs() for queue in queues)))
        return store, reader, checkpoints, fleet_meta, state, snapshot_seq, chosen

    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.callback((await run_blocking(lock)).release)
        (
            store,
            reader,
            checkpoints,
            fleet_meta,
            state,
            snapshot_seq,
            chosen_id,
        ) = await run_blocking(open_and_replay)
        # The writer last: the last connection to close checkpoints the WAL into the
        # database file and removes it, which a read-only connection cannot do.
        extra = () if fleet_meta is None else (fleet_meta,)
        cleanup.push_async_callback(
            run_blocking, functools.partial(_close_all, reader, checkpoints, *extra, store)
        )
        recovery = recover(state, chunk=settings.resume_chunk)
        router = Router(state.rules.copy(), state.suspends.copy(), state.ready_suspends.copy())
        projection = Projection(state, recovery.queues)
        admin_gate = AdminGate(settings.admin_hold, settings.admin_read_yield, settings.admin_rest)
        # The background writers, each in a thread of its own at a lower CPU priority.
        delivery_blocking: RunBlocking = run_blocking
        checkpoint_blocking: RunBlocking = run_blocking
        if threads:
            lanes = [
                BackgroundThread(name, settings.background_niceness)
                for name in ("kumo delivery log", "kumo WAL checkpoints")
            ]
            for lane in lanes:
                cleanup.callback(lane.close)
            delivery_blocking, checkpoint_blocking = lanes
        log = LogWriter(
            store,
            reader,
            clock,
            settings,
            on_commit=projection.apply,
            run_blocking=run_blocking,
            admin_gate=admin_gate,
        )
        supervisor = QueueSupervisor()
        deliveries = None
        if mail is not None:

            def report(entry: ReadyEntry, outcome: MessageOutcome | None) -> None:
                actor = supervisor.get(entry.queue)
                assert actor is not None, f"no actor holds queue {entry.queue!r}"
                actor.report_nowait(entry, outcome)

            suspended = SuspendedReadyQueues(
                state.ready_suspends, clock, projection.ready_suspension_events
            )
            deliveries = Deliveries(
                mail,
                report,
                clock,
                suspended,
                None if fleet is None else ConnectionLeases(fleet, node_id=chosen_id),
                admin_gate,
            )
        broadcaster = Broadcaster(
            log,
            router,
            supervisor,
            settings,
            position=state.last_seq,
            mail=None if deliveries is None else MailPath(deliveries, clock),
            sweep_turns=SweepTurns(admin_gate),
            admin_gate=admin_gate,
        )
        parts = EngineParts(
            clock=clock,
            settings=settings,
            admin_gate=admin_gate,
            projection=projection,
            log=log,
            supervisor=supervisor,
            broadcaster=broadcaster,
            delivery=DeliveryLogWriter(
                log,
                data_dir / LOGS,
                state.rules,
                chosen_id,
                settings,
                run_blocking=delivery_blocking,
                admin_gate=admin_gate,
            ),
            expiry=RuleExpiry(log, projection, clock, retry=settings.disk_full_retry),
            checkpointer=WalCheckpointer(
                checkpoints,
                log,
                settings,
                run_blocking=checkpoint_blocking,
                admin_gate=admin_gate,
            ),
            snapshotter=Snapshotter(
                data_dir,
                log,
                settings,
                clock,
                start_seq=snapshot_seq,
                run_blocking=None if threads else run_blocking,
                followers_at=broadcaster.needed_after,
            ),
            deliveries=deliveries,
            fleet=None
            if fleet is None or fleet_meta is None
            else FleetLink(
                fleet,
                node_id=chosen_id,
                log=log,
                projection=projection,
                clock=clock,
                meta=FleetMeta(fleet_meta, run_blocking=run_blocking),
            ),
        )
        written = await run_blocking(parts.delivery.recover)
        if written > state.last_seq:
            # The delivery log describes events the log no longer holds: the log lost
            # them (an emptied or replaced database). Serving it would silently forget
            # that history and never log the new events (their seqs are "written").
            raise DeliveryLogAheadError(
                state.last_seq + 1,
                f"the delivery log is written up to seq {written} but the event log ends at "
                f"seq {state.last_seq}: events {state.last_seq + 1}..{written} are missing "
                "from the log (restore the data directory from a backup)",
            )
        engine = Engine(parts, chosen_id)
        async with trio.open_nursery() as nursery:
            followers = await _run(nursery, parts, router, recovery)
            try:
                yield engine
            finally:
                engine.close()
                await engine._wait_idle_at_shutdown(settings.shutdown_deadline)
                parts.broadcaster.close()
                supervisor.close()
                followers.cancel()
                log.close()


async def _run(
    nursery: trio.Nursery, parts: EngineParts, router: Router, recovery: Recovery
) -> trio.CancelScope:
    """Start the task tree of the module docstring; return the followers' scope."""
    await nursery.start(parts.log.run)
    await nursery.start(parts.supervisor.run)
    if parts.deliveries is not None:
        await nursery.start(parts.deliveries.run)
    for name, messages in recovery.queues.items():
        rules = router.open_queue(name)
        await parts.broadcaster.open_queue(
            QueueState(
                name,
                messages,
                rules,
                recovery.schedule,
                router.suspensions_of(name),
                router.ready_suspensions(),
            )
        )
    followers = trio.CancelScope()

    async def run_followers(
        *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with followers:
            async with trio.open_nursery() as inner:
                await inner.start(parts.delivery.run)
                await inner.start(parts.expiry.run)
                await inner.start(parts.checkpointer.run)
                await inner.start(parts.snapshotter.run)
                if parts.deliveries is not None:
                    inner.start_soon(_stop_delivering_if_damaged, parts.log, parts.deliveries)
                if parts.fleet is not None:
                    await inner.start(parts.fleet.run_publisher)
                    await inner.start(parts.fleet.run_follower)
                    await inner.start(parts.fleet.run_counters)
                task_status.started()

    await nursery.start(run_followers)
    await nursery.start(parts.broadcaster.run)
    if recovery.owed:
        await parts.log.submit(recovery.owed)
    return followers


async def _stop_delivering_if_damaged(log: LogWriter, deliveries: Deliveries) -> None:
    """No outcome can be logged once the store is damaged: deliver nothing more (what
    a connection has under way finishes; its outcome is the next start's to find)."""
    await log.damaged.wait()
    await deliveries.stop()


def _fold_without_collecting(data_dir: Path, store: EventStore) -> tuple[State, int]:
    """The newest usable snapshot and the events after it, the cyclic collector paused.

    A replay allocates a million long-lived messages and nothing cyclic; collecting
    while it runs only rescans them (a third of a start's time at full size).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return fold_from_snapshot(data_dir, store, report=logger.warning)
    finally:
        if was_enabled:
            gc.enable()


def _close_all(*stores: EventStore) -> None:
    for store in stores:
        store.close()

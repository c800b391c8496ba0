"""The mail path's tasks: where each scheduled queue delivers, and a dispatcher per
ready queue that runs its connections (docs/mail-path.md).

Task tree (under the engine's root nursery, only when mail delivery is configured)::

    Deliveries.run           owns the dispatchers' nursery
    └── Dispatcher.run ×N    one per ready queue: up to connection_limit connections
        └── SmtpConnection.run ×M

A queue actor asks :meth:`Deliveries.target` where its due messages go: a
:class:`Dispatcher` (its destination resolved, by MX or ``mx_list``, and cached for
``resolution_ttl``) or a :class:`~kumo.model.ready_queue.PlanFailure` that every due
message gets (a DNS failure, a null MX, a prohibited host). It pushes what the ready
queue has room for, their contents read from the spool in one go; the dispatcher keeps
as many connections as :func:`~kumo.model.ready_queue.ideal_connection_count` asks for,
each taking messages from the ready queue, and hands
each outcome back to the actor that owns the message, which decides and logs what
follows (:meth:`kumo.model.state.QueueState.attempted`). The decisions are the model's;
this module carries messages and outcomes between tasks.

A suspended ready queue (``/api/admin/suspend-ready-q/v1``; :class:`SuspendedReadyQueues`)
takes nothing: its connections finish the transaction under way and close with QUIT,
what waits in it goes back to its scheduled queues unattempted, and it has no room
for more, until the suspension ends.

A fleet-limited ready queue (``[egress] fleet_limits``) takes a lease from the fleet's
Redis before it opens each connection and gives it back when the connection ends
(:mod:`kumo.runtime.connection_leases`). Refused, it is ``connection_limited`` (context
``TooManyLeases for kumomta.connection_limit.<ready queue>``, since the engine clock's
time of the first refusal; :meth:`Dispatcher.states`) and asks again after a
back-off, or as soon as one of its own connections ends; its messages wait in it. A
connection takes a new message only while its lease is usable; one whose lease could
not be renewed in time (or was lost) finishes the transaction under way and closes.

A ready queue with a ``max_message_rate`` (:mod:`kumo.runtime.message_rates`) asks its
throttle before each message leaves it: the message stays in the ready queue until the
throttle grants it (so that a rule's sweep or a suspension still withdraws it). The
connections ask in turn, the one whose turn it is for every connection waiting (one
request to a fleet-wide rate's Redis serves them all). A connection sleeps through a
wait shorter than its ``idle_timeout``; a longer one ends it with QUIT, and no
connection opens to that ready queue before the wait is over. Nothing is logged for a
wait (no attempt was made); ``/metrics`` counts the messages delayed.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import random
from collections.abc import Callable, Collection
from typing import Protocol

import attrs
import trio

from kumo.model.cidr_set import CidrSet
from kumo.model.connection_lease import refusal_context, retry_delay
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.events import Attempt
from kumo.model.mx_resolution import Destination, ResolutionFailure
from kumo.model.queue_name import QueueName
from kumo.model.ready_queue import PlanFailure, ReadyEntry, ReadyQueue, ideal_connection_count
from kumo.model.ready_queue_state import CONNECTION_LIMITED, ReadyQueueState, select_states
from kumo.model.ready_suspension import ReadySuspensionBook
from kumo.model.retry import RetryPolicy
from kumo.model.statistics import counter, gauge, info
from kumo.model.throttle import ThrottleSpec
from kumo.runtime.admin_gate import AdminGate
from kumo.runtime.clock import EngineClock
from kumo.runtime.connection_leases import ConnectionLeases, HeldLease, Refused
from kumo.runtime.message_rates import MessageRates
from kumo.runtime.mx import MxResolver
from kumo.runtime.smtp_connection import (
    DELIVERY_PROTOCOL,
    ConnectionSettings,
    MessageOutcome,
    OutgoingMessage,
    SmtpConnection,
)
from kumo.runtime.watermark import Watermark

logger = logging.getLogger("kumo.delivery")


@attrs.frozen(eq=False)
class DestinationSettings:
    """Everything the mail path needs to know of one destination domain (``[queue]``
    and ``[egress]`` with the domain's ``[domains."..."]`` keys applied)."""

    retry: RetryPolicy
    mx_list: tuple[str, ...]
    connection: ConnectionSettings
    connection_limit: int
    max_ready: int
    prohibited_hosts: CidrSet
    fleet_limits: bool = False
    """``connection_limit`` holds across the fleet (leases in its Redis), and so does
    ``max_message_rate`` unless it is ``local:``; ignored when the engine is in no fleet
    (the configuration refuses that)."""
    max_message_rate: ThrottleSpec | None = None
    """Messages the ready queue sends at most (KumoMTA's egress-path throttle); None:
    no limit."""


@attrs.frozen(eq=False)
class MailSettings:
    """Mail delivery's settings: without them (``open_engine(mail=None)``) kumo holds
    every message in its scheduled queue until a rule bounces it."""

    destination: Callable[[str], DestinationSettings]
    """Destination domain (lower case) -> its settings. Called often: cache inside."""
    resolver: MxResolver
    resolution_ttl: float = 300.0
    """Seconds a resolved destination is used before it is resolved again."""
    failure_ttl: float = 10.0
    """Seconds a failed resolution is reused before DNS is asked again."""


def destination_domain(queue: str) -> str:
    """The domain a scheduled queue delivers to: its routing domain, else its domain."""
    name = QueueName.parse(queue)
    return (name.routing_domain or name.domain).lower()


def attempt_of(outcome: MessageOutcome) -> Attempt:
    """The log's record of a connection's outcome for one message."""
    response = outcome.response
    enhanced = response.enhanced_code
    return Attempt(
        site=outcome.site,
        code=response.code,
        enhanced_code=None
        if enhanced is None
        else (enhanced.class_, enhanced.subject, enhanced.detail),
        content=response.to_json()["content"],
        command=response.command,
        peer=outcome.peer_address,
        source_address=outcome.source_address,
        session_id=outcome.session_id,
        protocol=DELIVERY_PROTOCOL,
        tls_cipher=None if outcome.tls is None else outcome.tls.cipher,
        tls_protocol_version=None if outcome.tls is None else outcome.tls.protocol_version,
    )


def plan_failure_attempt(failure: PlanFailure, site: str) -> Attempt:
    """The record of a failure decided before any connection (no peer, no protocol)."""
    return Attempt(
        site=site,
        code=failure.code,
        enhanced_code=failure.enhanced_code,
        content=failure.content,
        command=None,
    )


@attrs.frozen(eq=False)
class SuspendedReadyQueues:
    """Which ready queues are suspended: the engine's projection of the log's
    ready-queue suspensions, read-only, on the engine's clock.

    One source of truth, in log order: the projection folds each commit before any
    other task sees it, so the dispatchers never learn of a suspension (or of its end)
    later than a queue actor does. An actor holds its due messages when *its* view of
    the log says their ready queue is suspended (and logs why, one ``Suspended`` each);
    until its view catches up, the dispatcher, ahead of it, only has no room, so the
    actor's messages wait for that view rather than going back and forth. Expiry is by
    the clock on both sides, so both see it at the same instant.
    """

    book: ReadySuspensionBook
    clock: EngineClock
    changes: Watermark
    """Moves with every ready-queue suspension event folded (issue, cancel, expiry)."""

    def until(self, ready_queue: str) -> float | None:
        """The trio time until which ``ready_queue`` is suspended, None if it is not."""
        suspension = self.book.suspended(ready_queue, self.clock.now())
        return None if suspension is None else self.clock.deadline(suspension.expires_at)


def _never_suspended() -> float | None:
    return None


class OutcomeSink(Protocol):
    """Where a dispatcher hands what became of a message: the owner of its queue."""

    def __call__(self, entry: ReadyEntry, outcome: MessageOutcome | None) -> None:
        """``outcome`` None: the message was not attempted and goes back to its queue."""


@attrs.frozen
class DispatcherStatistics:
    """One ready queue and its connections (SPEC 8.6's per-service figures)."""

    ready_queue: str = info("The ready queue.")
    ready: int = gauge("Messages waiting in the ready queue.")
    connections: int = gauge("Connections open or opening.")
    in_flight: int = gauge("Messages taken by a connection, their outcome not yet known.")
    delivered: int = counter("Messages delivered by this process.")
    transient_failures: int = counter("Attempts that failed transiently in this process.")
    failed: int = counter("Messages the destination refused for good in this process.")
    connection_limited: int = gauge(
        "1 while the ready queue wants a connection and the fleet's leases are all taken."
    )
    message_rate: str = info("The ready queue's max_message_rate ('' when it has none).")
    rate_delayed: int = counter(
        "Message delays due to the ready queue's max_message_rate in this process: a "
        "connection that waited before taking a message counts one; a wait that closed "
        "the connections counts every message waiting then."
    )


class Dispatcher:
    """One ready queue: its messages and its connections (see the module docstring)."""

    def __init__(
        self,
        destination: Destination,
        settings: DestinationSettings,
        sink: OutcomeSink,
        rng: random.Random,
        clock: EngineClock,
        suspended_until: Callable[[], float | None] = _never_suspended,
        leases: ConnectionLeases | None = None,
        rates: MessageRates | None = None,
        admin_gate: AdminGate | None = None,
    ) -> None:
        """``clock``: the engine's, which stamps when a state began (back-offs are
        trio time). ``suspended_until``: until when (trio time) a suspension holds this
        ready queue now, None when none does (:meth:`SuspendedReadyQueues.until`).
        ``leases``: the fleet's connection leases, taken for each connection when
        ``settings.fleet_limits`` is set. ``rates``: the node's message rates, which
        ``settings.max_message_rate`` is kept in (a throttle of its own when None).
        ``admin_gate``: what its connections wait on while admin requests are answered."""
        self.destination = destination
        self._admin_gate = admin_gate
        self.settings = settings
        self.ready = ReadyQueue(destination.ready_queue, settings.max_ready)
        self._sink = sink
        self._rng = rng
        self._clock = clock
        self._in_flight: dict[str, ReadyEntry] = {}
        self._connections = 0
        self._changed = trio.lowlevel.ParkingLot()
        """Where the dispatcher and idle feeds wait for a push (or a connection's end)."""
        self._room_wanted: dict[str, Callable[[], None]] = {}
        """Scheduled queue -> how to wake its actor when the ready queue has room."""
        self._stopping = False
        self._suspended_until = suspended_until
        self._suspended = False
        """Whether the run loop has found this ready queue suspended (and given back
        what waited in it), until it finds the suspension over."""
        self._counts = {"Delivery": 0, "TransientFailure": 0, "Bounce": 0}
        self._leases = leases
        self._refusals = 0
        """Lease requests refused (or unanswered) in a row."""
        self._asking = 0
        """Connections started that have no answer to their lease request yet."""
        self._limited: ReadyQueueState | None = None
        """The ``connection_limited`` state while the fleet's leases are all taken and
        this ready queue wants another connection (:meth:`states`)."""
        self._ask_after = -math.inf
        """Trio time before which no lease is asked for (the back-off after a refusal;
        reset when one of this queue's connections ends)."""
        self._rates = rates if rates is not None else MessageRates(leases)
        self._rate_waits = trio.lowlevel.ParkingLot()
        """Where connections sleep through a throttle's short wait (woken early when
        the ready queue stops or is suspended, not by each push)."""
        self._rate_closed_until = -math.inf
        """Trio time before which no connection opens: a throttle's wait was longer
        than a connection idles (or Redis, asked for a fleet-wide rate, is away)."""
        self._rate_turn = trio.Lock()
        """Held by the one connection that asks the message rate (and sleeps through
        its wait); the others queue for it, in turn."""
        self._rate_credits = 0
        """Messages the rate granted for connections waiting their turn, not taken yet."""
        self._rate_failures = 0
        """Fleet-wide throttle requests Redis did not answer, in a row."""
        self._rate_delayed = 0
        self.done = trio.Event()
        """Set once :meth:`run` has returned: stopped, every connection ended."""

    @property
    def name(self) -> str:
        return self.ready.name

    @property
    def stopping(self) -> bool:
        return self._stopping

    def states(self) -> list[ReadyQueueState]:
        """The states the ready queue is in now: ``connection_limited`` (KumoMTA's
        context ``TooManyLeases for kumomta.connection_limit.<ready queue>``) from the
        first refusal of a lease until the ready queue has every connection it wants
        (or wants none: empty, suspended), its lease requests all answered; none
        otherwise."""
        return [] if self._limited is None else [self._limited]

    def _fleet_leases(self) -> ConnectionLeases | None:
        return self._leases if self.settings.fleet_limits else None

    def room(self) -> int:
        """How many more messages may be pushed now: none while suspended."""
        return 0 if self._suspended_until() is not None else self.ready.room()

    def push(self, entries: list[ReadyEntry]) -> None:
        """Messages handed over by a scheduled queue (within :meth:`room`). Stopping or
        suspended, they go back to their queues at once, unattempted."""
        if self._stopping or self._suspended_until() is not None:
            for entry in entries:
                self._sink(entry, None)
            return
        self.ready.push(entries)
        self._changed.unpark_all()

    def wake(self) -> None:
        """Look again at whether the ready queue is suspended (a suspension began or
        ended)."""
        self._changed.unpark_all()
        self._rate_waits.unpark_all()

    def want_room(self, queue: str, wake: Callable[[], None]) -> None:
        """Call ``wake`` once the ready queue has room again."""
        self._room_wanted[queue] = wake

    def withdraw(self, queue: str) -> list[str]:
        """Take back what ``queue`` handed over and no connection took yet."""
        withdrawn = self.ready.withdraw(queue)
        if withdrawn:
            self._room_freed()
            self._wanted_less()
        return withdrawn

    def stop(self) -> None:
        """Take no more messages: what waits goes back to its queue, connections end
        once their transaction under way is done."""
        self._stopping = True
        self._give_back()

    def _give_back(self) -> None:
        """What waits goes back to its queues unattempted; the connections waiting for
        a message find none (and close with QUIT)."""
        for entry in self.ready.drain():
            self._sink(entry, None)
        self._changed.unpark_all()
        self._rate_waits.unpark_all()

    def _room_freed(self) -> None:
        wanted, self._room_wanted = self._room_wanted, {}
        for wake in wanted.values():
            wake()

    async def run(self) -> None:
        """Keep the connections the ready queue needs until :meth:`stop`, then wait
        for those open to end. While suspended it keeps none: each connection ends
        after its transaction under way, what waits goes back to its queues, and the
        queues waiting for room are woken when the suspension ends."""
        try:
            async with trio.open_nursery() as nursery:
                while not self._stopping:
                    until = self._suspended_until()
                    if until is not None:
                        if not self._suspended:
                            self._suspended = True
                            self._give_back()
                        self._no_connection_wanted()
                        with trio.move_on_at(until):
                            await self._changed.park()
                        continue
                    if self._suspended:
                        self._suspended = False
                        self._room_freed()
                    if self._wants_connection():
                        not_before = max(self._ask_after, self._rate_closed_until)
                        if trio.current_time() >= not_before:
                            self._connections += 1
                            leases = self._fleet_leases()
                            if leases is not None:
                                self._asking += 1  # until its lease request is answered
                            nursery.start_soon(self._connection, leases)
                            continue
                        # Refused a lease a moment ago: ask again after the back-off,
                        # sooner if one of this queue's connections ends. Or the
                        # message rate's wait outlasts a connection's idle time.
                        with trio.move_on_at(not_before):
                            await self._changed.park()
                        continue
                    self._no_connection_wanted()
                    await self._changed.park()
        finally:
            self.done.set()

    def _wants_connection(self) -> bool:
        """Whether the ready queue wants one more connection than it has."""
        wanted = ideal_connection_count(
            len(self.ready) + len(self._in_flight), self.settings.connection_limit
        )
        return self._connections < wanted and bool(self.ready)

    def _wanted_less(self) -> None:
        """Messages left the ready queue or their connection (taken, withdrawn, done):
        while ``connection_limited``, the run loop looks again now if no further
        connection is wanted, so that the state ends then, not when the back-off of its
        last refusal is over (the loop waits out the back-off, woken by nothing else)."""
        if self._limited is not None and not self._wants_connection():
            self._changed.unpark_all()

    def _no_connection_wanted(self) -> None:
        """Every connection wanted has its lease (or none is wanted): the
        ``connection_limited`` state ends, unless a lease request is still unanswered
        (whose refusal would only start it again, with a new ``since``)."""
        if self._asking == 0:
            self._limited = None

    def _refused(self, answer: Refused, leases: ConnectionLeases) -> None:
        """No lease for a connection: ``connection_limited`` (when the fleet's leases
        are all taken), and no new ask before the policy's back-off."""
        self._refusals += 1
        if answer is Refused.TOO_MANY_LEASES and self._limited is None:
            # Since the first refusal: a later one is the same state going on.
            self._limited = ReadyQueueState(
                self.name, CONNECTION_LIMITED, refusal_context(self.name), self._clock.now()
            )
        delay = retry_delay(self._refusals, leases.settings)
        self._ask_after = max(self._ask_after, trio.current_time() + delay)

    async def _connection(self, leases: ConnectionLeases | None) -> None:
        """One connection: with fleet ``leases``, first its lease (asked here, so that
        several connections may ask at once), given back when it ends."""
        held: HeldLease | None = None
        try:
            if leases is not None:
                try:
                    answer = await leases.acquire(
                        self.name, self.settings.connection_limit, self.wake
                    )
                finally:
                    self._asking -= 1
                if not isinstance(answer, HeldLease):
                    self._refused(answer, leases)
                    return
                held = answer
                self._refusals = 0
                # Whether that was the last connection wanted (and the state ends) is
                # the run loop's to say: it looks again.
                self._changed.unpark_all()
                if self._stopping or self._suspended_until() is not None or not self.ready:
                    return  # changed while Redis was asked: no connection after all
            connection = SmtpConnection(
                self.settings.connection,
                self.destination.plan(self._rng),
                site=self.name,
                messages=_Feed(self, held),
                report=self._report,
                turn=None if self._admin_gate is None else self._admin_gate.mail_turn,
            )
            await connection.run()
        finally:
            # The connection's place is free once its lease is back, not before: a
            # replacement asked for earlier would find the lease still taken.
            if held is not None and leases is not None:
                await leases.release(held)
                self._ask_after = -math.inf  # one of ours ended: a lease may be free
            self._connections -= 1
            self._changed.unpark_all()

    async def take(self, held: HeldLease | None = None) -> OutgoingMessage | None:
        """The next message for a connection, once there is one and the ready queue's
        message rate grants it; None when stopping, suspended, when the connection's
        lease ``held`` is no longer usable, or when the rate's wait is as long as the
        connection's ``idle_timeout`` or longer (the connection then closes)."""
        while True:
            if self._stopping or self._suspended_until() is not None:
                return None
            now = trio.current_time()
            usable_until = math.inf
            if held is not None and self._leases is not None:
                usable_until = self._leases.usable_until(held)
                if now >= usable_until:
                    return None
            if now < self._rate_closed_until:
                return None
            if not self.ready:
                # A renewal moves usable_until on: looked at again when it passes.
                with trio.move_on_at(usable_until):
                    await self._changed.park()
                continue
            spec = self.settings.max_message_rate
            if spec is None:
                entry = self.ready.pop()
            else:
                entry, closing = None, False
                # One connection of the ready queue asks the rate at a time: the others
                # wait their turn, rather than all wake at each slot and ask together
                # (a round trip each to Redis for a fleet-wide rate).
                with trio.move_on_at(usable_until):
                    async with self._rate_turn:
                        try:
                            entry, closing = await self._take_rated(spec, usable_until)
                        finally:
                            if self._rate_turn.statistics().tasks_waiting == 0:
                                # Granted for connections that were waiting their turn
                                # then: none waits now, so the rest lapse (used later,
                                # they would bunch up with later grants).
                                self._rate_credits = 0
                if closing:
                    return None
            if entry is None:
                continue  # looked at again from the start
            self._room_freed()
            message = entry.message
            self._in_flight[message.id] = entry
            self._wanted_less()
            return OutgoingMessage(message.id, message.sender, message.recipient, entry.content)

    async def _take_rated(
        self, spec: ThrottleSpec, usable_until: float
    ) -> tuple[ReadyEntry | None, bool]:
        """In the rate's turn: take a message granted to a connection that waited its
        turn, or ask the rate until it grants one (and as many more as connections wait
        their turn, so that one request serves them all), sleeping through each short
        wait; then take the message. ``(entry, False)``: taken;
        ``(None, False)``: nothing to take now (stopping, suspended, empty, the lease no
        longer usable; :meth:`take` looks again); ``(None, True)``: the wait reaches the
        connection's ``idle_timeout``, and it closes."""
        delayed = False
        while True:
            now = trio.current_time()
            if (
                self._stopping
                or self._suspended_until() is not None
                or not self.ready
                or now >= usable_until
                or now < self._rate_closed_until
            ):
                return None, False
            if self._rate_credits:
                self._rate_credits -= 1
                return self.ready.pop(), False
            wanted = min(len(self.ready), 1 + self._rate_turn.statistics().tasks_waiting)
            granted, wait = await self._rate_wait(spec, wanted)
            if granted:
                entry = self.ready.pop()
                self._rate_credits = granted - 1
                if entry is not None and delayed:
                    self._rate_delayed += 1
                return entry, False
            delayed = True
            if wait >= self._idle_timeout():
                self._close_for_rate(wait)
                return None, True
            with trio.move_on_at(min(trio.current_time() + wait, usable_until)):
                await self._rate_waits.park()

    async def _rate_wait(self, spec: ThrottleSpec, wanted: int) -> tuple[int, float]:
        """Ask the message rate for up to ``wanted`` messages: how many it granted
        (each counts against the rate: the caller takes them at once; a local rate
        answers with no checkpoint, so the messages are still there) and, when none,
        the seconds to wait before asking again (while Redis does not answer a
        fleet-wide rate, the leases' back-off)."""
        if not self._rates.fleet_wide(spec, self.settings.fleet_limits):
            grant = self._rates.request_here(self.name, spec, wanted)
            return grant.granted, grant.seconds
        fleet_grant = await self._rates.request_fleet(self.name, spec, wanted)
        if fleet_grant is None:
            assert self._leases is not None
            self._rate_failures += 1
            return 0, retry_delay(self._rate_failures, self._leases.settings)
        self._rate_failures = 0
        return fleet_grant.granted, fleet_grant.seconds

    def _idle_timeout(self) -> float:
        return self.settings.connection.client.timeouts.idle / NANOS_PER_SECOND

    def _close_for_rate(self, wait: float) -> None:
        """The message rate's wait outlasts a connection's idle time: this connection
        closes, the others do when they next look, and none opens before it is over.
        Every message waiting then is delayed by it (KumoMTA sends each back to its
        scheduled queue, and counts each)."""
        now = trio.current_time()
        if now >= self._rate_closed_until:
            self._rates.closed_a_connection()
            self._rate_delayed += len(self.ready)
        self._rate_closed_until = max(self._rate_closed_until, now + wait)
        self._changed.unpark_all()

    async def _report(self, outcome: MessageOutcome) -> None:
        entry = self._in_flight.pop(outcome.message.id)
        self._counts[outcome.disposition.value] += 1
        self._wanted_less()
        self._sink(entry, outcome)

    def statistics(self) -> DispatcherStatistics:
        return DispatcherStatistics(
            ready_queue=self.name,
            ready=len(self.ready),
            connections=self._connections,
            in_flight=len(self._in_flight),
            delivered=self._counts["Delivery"],
            transient_failures=self._counts["TransientFailure"],
            failed=self._counts["Bounce"],
            connection_limited=int(self._limited is not None),
            message_rate=str(self.settings.max_message_rate or ""),
            rate_delayed=self._rate_delayed,
        )


class _Feed:
    """One connection's source of messages (an async iterator, cancel-safe: a message
    taken as the wait is cancelled goes back to the front of the ready queue)."""

    def __init__(self, dispatcher: Dispatcher, held: HeldLease | None) -> None:
        self._dispatcher = dispatcher
        self._held = held

    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> OutgoingMessage:
        message = await self._dispatcher.take(self._held)
        if message is None:
            raise StopAsyncIteration
        return message


@attrs.frozen
class DeliveriesStatistics:
    """The mail path's destinations."""

    dispatchers: int = gauge("Ready queues with a dispatcher.")
    resolutions: int = counter("Destinations resolved by this process.")


class Deliveries:
    """Resolves destinations and owns the dispatchers (see the module docstring)."""

    def __init__(
        self,
        settings: MailSettings,
        sink: OutcomeSink,
        clock: EngineClock,
        suspended: SuspendedReadyQueues | None = None,
        leases: ConnectionLeases | None = None,
        admin_gate: AdminGate | None = None,
    ) -> None:
        """``clock``: the engine's, which stamps the dispatchers' states.
        ``suspended``: the ready-queue suspensions the dispatchers obey (None: none).
        ``leases``: the fleet's connection leases (a node in a fleet), which the
        dispatchers of fleet-limited destinations take; :meth:`run` keeps them.
        ``admin_gate``: where the connections wait their turn while admin requests are
        answered (None: they never wait)."""
        self._settings = settings
        self._admin_gate = admin_gate
        self._sink = sink
        self._clock = clock
        self._suspended = suspended
        self.leases = leases
        self.rates = MessageRates(leases)
        """This node's message rates (each destination's ``max_message_rate``)."""
        self._leasing = False
        """Whether :attr:`leases` runs (started with the first fleet-limited dispatcher)."""
        self._rng = random.Random()
        self._nursery: trio.Nursery | None = None
        self._dispatchers: dict[str, Dispatcher] = {}
        """Ready queue name -> its dispatcher."""
        self._targets: dict[str, tuple[float, Dispatcher | PlanFailure]] = {}
        """Destination domain -> (trio time it expires, where its mail goes)."""
        self._resolving: dict[str, trio.Event] = {}
        self._resolutions = 0
        self._stopping = False

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called: no message is handed over any more."""
        return self._stopping

    def settings_for(self, queue: str) -> DestinationSettings:
        return self._settings.destination(destination_domain(queue))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the dispatchers (and the fleet's connection leases, from the first
        fleet-limited destination on); wake them whenever a ready-queue suspension event
        is folded, so that each looks again at whether it is suspended."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            if self._suspended is None:
                await trio.sleep_forever()
            changes = self._suspended.changes
            while True:
                await changes.wait_for(changes.value + 1)
                for dispatcher in self._dispatchers.values():
                    dispatcher.wake()

    def dispatchers(self) -> list[Dispatcher]:
        return list(self._dispatchers.values())

    def dispatcher_statistics(
        self, start: int = 0, stop: int | None = None
    ) -> list[DispatcherStatistics]:
        """The statistics of the dispatchers ``start`` to ``stop``, in the order they
        were made (a dispatcher, once made, stays: a slice read later finds the same
        ones at the same places)."""
        return [
            dispatcher.statistics()
            for dispatcher in itertools.islice(self._dispatchers.values(), start, stop)
        ]

    def states(self, queues: Collection[str] | None = None) -> list[ReadyQueueState]:
        """The states of the ready queues named in ``queues`` (all when None), in the
        order their dispatchers were made (:meth:`Dispatcher.states`)."""
        every = (
            state for dispatcher in self._dispatchers.values() for state in dispatcher.states()
        )
        return select_states(every, queues)

    async def target(self, queue: str) -> tuple[Dispatcher | PlanFailure, str]:
        """Where the due messages of scheduled queue ``queue`` go, and the site their
        records name: a dispatcher, or the failure every one of them gets."""
        domain = destination_domain(queue)
        while True:
            cached = self._targets.get(domain)
            if cached is not None and cached[0] > trio.current_time():
                target = cached[1]
                if isinstance(target, Dispatcher):
                    return target, target.name
                return target, ""
            pending = self._resolving.get(domain)
            if pending is None:
                break
            await pending.wait()
        done = self._resolving[domain] = trio.Event()
        try:
            resolved = await self._resolve(domain, queue)
        finally:
            del self._resolving[domain]
            done.set()
        return resolved

    async def _resolve(self, domain: str, queue: str) -> tuple[Dispatcher | PlanFailure, str]:
        settings = self._settings.destination(domain)
        self._resolutions += 1
        resolution = await self._settings.resolver.resolve(domain, mx_list=settings.mx_list)
        now = trio.current_time()
        if isinstance(resolution, ResolutionFailure):
            failure = resolution.response(queue)
            self._targets[domain] = (now + self._settings.failure_ttl, failure)
            return failure, ""
        plan = resolution.plan(self._rng)
        refused = resolution.check(plan, settings.prohibited_hosts)
        if refused is not None:
            self._targets[domain] = (now + self._settings.failure_ttl, refused)
            return refused, resolution.ready_queue
        dispatcher = self._dispatchers.get(resolution.ready_queue)
        if dispatcher is None:
            suspended = self._suspended
            dispatcher = Dispatcher(
                resolution,
                settings,
                self._sink,
                self._rng,
                self._clock,
                _never_suspended
                if suspended is None
                else functools.partial(suspended.until, resolution.ready_queue),
                self.leases,
                self.rates,
                self._admin_gate,
            )
            self._dispatchers[dispatcher.name] = dispatcher
            if self._stopping:
                # Found while delivery stops: it takes nothing (pushes go back).
                dispatcher.stop()
                dispatcher.done.set()
            else:
                assert self._nursery is not None
                if settings.fleet_limits and self.leases is not None and not self._leasing:
                    # A node with no fleet-limited destination keeps no lease client
                    # (nor says anything of Redis for it).
                    self._leasing = True
                    self._nursery.start_soon(self.leases.run)
                self._nursery.start_soon(dispatcher.run)
        else:
            dispatcher.destination = resolution
        self._targets[domain] = (now + self._settings.resolution_ttl, dispatcher)
        return dispatcher, dispatcher.name

    def withdraw(self, queue: str) -> list[str]:
        """Take back from every ready queue what ``queue`` handed over and no
        connection holds."""
        withdrawn: list[str] = []
        for dispatcher in self._dispatchers.values():
            withdrawn += dispatcher.withdraw(queue)
        return withdrawn

    async def stop(self) -> None:
        """Stop delivering: ready messages go back to their queues, and this returns
        once every connection has ended (a transaction under way finishes first)."""
        self._stopping = True
        for dispatcher in self._dispatchers.values():
            dispatcher.stop()
        for dispatcher in list(self._dispatchers.values()):
            await dispatcher.done.wait()

    def close(self) -> None:
        """End every connection now (after :meth:`stop`, or when it took too long)."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def statistics(self) -> DeliveriesStatistics:
        return DeliveriesStatistics(
            dispatchers=len(self._dispatchers), resolutions=self._resolutions
        )

"""Fleet-wide connection limits: the leases of this node's connections, in the fleet's
Redis (``[egress] fleet_limits = true``; docs/fleet.md, "Fleet-wide connection limits").

A dispatcher of a fleet-limited ready queue asks :meth:`ConnectionLeases.acquire` for a
lease before it opens each connection, and gives it back with
:meth:`ConnectionLeases.release` when the connection ends; :meth:`ConnectionLeases.run`
renews the leases this node holds. Every decision (the key, how long a lease counts as
held, when it is renewed, what a lost one means, how long a refused queue waits) is
:mod:`kumo.model.connection_lease`'s; this module runs its Lua scripts on Redis and
keeps the leases held, nothing more.

Strict while Redis is unreachable: a lease that cannot be renewed stops being usable
``margin`` seconds before its deadline (its connection finishes the transaction under
way and closes with QUIT), and no new lease is granted, so no new connection to a
fleet-limited ready queue opens, until Redis answers again. Mail waits in its queues;
nothing is lost. The node says so once in its log (``kumo.fleet``, a warning) and in
``/metrics`` (:class:`LeaseStatistics`, ``kumo_engine_leases_*``).
"""

from __future__ import annotations

import enum
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any, Final

import attrs
import trio

from kumo.model.connection_lease import (
    ACQUIRE_SCRIPT,
    RELEASE_SCRIPT,
    RENEW_SCRIPT,
    Lease,
    LeaseSettings,
    Renewal,
    after_renewal,
    lease_key,
    lease_member,
    retry_delay,
)
from kumo.model.fleet import FleetSettings
from kumo.model.statistics import counter, gauge
from kumo.runtime.fleet import REDIS_FAILURES, Connect, connect_coredis, redis_failure
from kumo.runtime.watermark import Watermark

logger = logging.getLogger("kumo.fleet")

RELEASE_WAIT: Final = 1.0
"""Seconds a connection's end waits for Redis to take its lease back (shielded from
cancellation); a lease not given back in time expires there by itself."""

_CAUGHT: Final = (*REDIS_FAILURES, BaseExceptionGroup)


class Refused(enum.Enum):
    """Why :meth:`ConnectionLeases.acquire` granted no lease."""

    TOO_MANY_LEASES = "too many leases"
    """Every lease of the ready queue is held (by this node or others)."""
    UNAVAILABLE = "unavailable"
    """Redis did not answer: no lease is granted until it does."""


class HeldLease:
    """One lease this node holds for one connection; :attr:`lease` moves with each
    renewal. Owned by :class:`ConnectionLeases`; a connection only reads it."""

    def __init__(self, lease: Lease, wake: Callable[[], None]) -> None:
        self.lease = lease
        self.lost = False
        """Redis no longer holds it (set once; the lease is then given up)."""
        self.wake = wake
        """Called when the lease is lost, so that its connection looks again."""


@attrs.frozen
class LeaseStatistics:
    """This node's connection leases (all zero while fleet limits are off)."""

    enabled: int = gauge("1 when this node is in a fleet and can hold connection leases.")
    up: int = gauge("1 while the last lease command sent to Redis succeeded.")
    held: int = gauge("Connection leases this node holds now (one per fleet-limited connection).")
    acquired: int = counter("Connection leases Redis granted to this node.")
    refused: int = counter(
        "Lease requests refused because the ready queue's fleet-wide limit was reached."
    )
    renewed: int = counter("Connection leases renewed.")
    lost: int = counter(
        "Connection leases Redis no longer held at renewal (expired there, or Redis lost them)."
    )
    released: int = counter("Connection leases given back when their connection ended.")
    redis_failures: int = counter("Lease commands that failed or timed out (Redis unreachable).")

    @classmethod
    def off(cls) -> LeaseStatistics:
        return cls(**{field.name: 0 for field in attrs.fields(cls)})


class ConnectionLeases:
    """This node's connection leases (see the module docstring)."""

    def __init__(
        self, fleet: FleetSettings, *, node_id: str, connect: Connect = connect_coredis
    ) -> None:
        self.settings: LeaseSettings = fleet.leases
        self._fleet = fleet
        self._node_id = node_id
        self._connect = connect
        self._redis: Any = None
        """The client, while :meth:`run` holds one open and Redis answered it."""
        self._held: dict[str, HeldLease] = {}
        """Member -> the lease, for every lease this node holds."""
        self._changed = trio.lowlevel.ParkingLot()
        """Where :meth:`run` waits for a new lease (a renewal may be due sooner)."""
        self._up = False
        self._said_down = False
        self._counts = dict.fromkeys(
            ("acquired", "refused", "renewed", "lost", "released", "redis_failures"), 0
        )
        self.changes = Watermark()
        """Moves whenever :meth:`statistics` may have changed (:meth:`wait_until`)."""

    @property
    def prefix(self) -> str:
        """The fleet's stream name, before the key of every limit the fleet shares (two
        fleets on one Redis keep their own)."""
        return self._fleet.stream

    def key(self, ready_queue: str) -> str:
        return lease_key(ready_queue, self.prefix)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold a client of the fleet's Redis and renew every held lease when due, for
        ever; reconnect, backing off, while Redis fails. Ready at once (a node whose
        Redis is away starts, and opens no fleet-limited connection until it answers)."""
        task_status.started()
        failures = 0
        while True:
            try:
                async with self._connect(self._fleet) as redis:
                    with trio.fail_after(self._command_timeout()):
                        await redis.ping()
                    self._redis = redis
                    self._answered()
                    failures = 0
                    await self._renew_for_ever(redis)
            except _CAUGHT as caught:
                failure = redis_failure(caught, REDIS_FAILURES)
                if failure is None:
                    raise
                self._redis = None
                failures += 1
                self._failed(failure)
                await trio.sleep(retry_delay(failures, self.settings))

    async def _renew_for_ever(self, redis: Any) -> None:
        while True:
            now = trio.current_time()
            for member, held in list(self._held.items()):
                if held.lease.renew_at(self.settings) <= now and member in self._held:
                    await self._renew(redis, held)
            due = min(
                (held.lease.renew_at(self.settings) for held in self._held.values()),
                default=math.inf,
            )
            with trio.move_on_at(due):
                await self._changed.park()

    async def _renew(self, redis: Any, held: HeldLease) -> None:
        lease = held.lease
        sent_at = trio.current_time()
        # A failure raises to run(), which reconnects and tries again: the lease's
        # deadline stands meanwhile (Renewal.FAILED changes nothing).
        with trio.fail_after(self._command_timeout()):
            answer = await redis.eval(
                RENEW_SCRIPT,
                [lease.key.encode()],
                [self.settings.duration_ms, lease.member.encode()],
            )
        self._answered()
        if lease.member not in self._held:
            return  # given back while the renewal was under way: nothing to keep
        outcome = Renewal.RENEWED if int(answer) == 1 else Renewal.GONE
        renewed = after_renewal(held.lease, outcome, sent_at, self.settings)
        if renewed is None:
            self._count("lost")
            held.lost = True
            self._held.pop(lease.member, None)
            logger.warning(
                "connection lease %s of %s lost: Redis no longer holds it; its connection "
                "closes after the transaction under way",
                lease.member,
                lease.key,
            )
            held.wake()
        else:
            self._count("renewed")
            held.lease = renewed

    async def acquire(
        self, ready_queue: str, limit: int, wake: Callable[[], None]
    ) -> HeldLease | Refused:
        """A lease of ``ready_queue``'s connections if fewer than ``limit`` are held
        fleet-wide, else :attr:`Refused.TOO_MANY_LEASES`; :attr:`Refused.UNAVAILABLE`
        when Redis does not answer. ``wake`` is called if the lease is lost later.

        Cancelled while Redis runs the script, the lease may have been granted and not
        recorded: it expires in Redis after ``duration`` (a connection fewer until then)."""
        key = self.key(ready_queue)
        member = lease_member(self._node_id, uuid.uuid4().hex)
        sent_at = trio.current_time()
        answer = await self.run_script(
            ACQUIRE_SCRIPT, [key.encode()], [limit, self.settings.duration_ms, member.encode()]
        )
        if answer is Refused.UNAVAILABLE:
            return answer
        if int(answer) != 1:
            self._count("refused")
            return Refused.TOO_MANY_LEASES
        self._count("acquired")
        held = HeldLease(Lease.acquired(key, member, sent_at, self.settings), wake)
        self._held[member] = held
        self._changed.unpark_all()
        return held

    async def run_script(self, script: str, keys: list[bytes], args: list[int | bytes]) -> Any:
        """Run ``script`` on the fleet's Redis over this node's lease client, as a lease
        command is (its time-out, its up and down bookkeeping and log lines): the
        answer, or :attr:`Refused.UNAVAILABLE` when Redis does not answer. For the
        fleet's other shared limits (:mod:`kumo.runtime.message_rates`), so that a node
        keeps one connection to Redis for all of them."""
        redis = self._redis
        if redis is None:
            await trio.lowlevel.checkpoint()
            return Refused.UNAVAILABLE
        try:
            with trio.fail_after(self._command_timeout()):
                answer = await redis.eval(script, keys, args)
        except _CAUGHT as caught:
            failure = redis_failure(caught, REDIS_FAILURES)
            if failure is None:
                raise
            self._failed(failure)
            return Refused.UNAVAILABLE
        self._answered()
        return answer

    def usable_until(self, held: HeldLease) -> float:
        """Trio time from which ``held``'s connection takes no new message (at once
        if the lease is lost)."""
        return -math.inf if held.lost else held.lease.usable_until(self.settings)

    async def release(self, held: HeldLease) -> None:
        """Give ``held`` back: it counts as held no more here, then Redis drops it.
        Shielded from cancellation for :data:`RELEASE_WAIT` seconds at most; a
        lease Redis did not drop then expires there by itself."""
        lease = held.lease
        if self._held.pop(lease.member, None) is None:
            await trio.lowlevel.checkpoint()
            return  # lost: Redis holds it no more
        self._count("released")
        redis = self._redis
        with trio.move_on_after(RELEASE_WAIT) as scope:
            scope.shield = True
            if redis is None:
                return
            try:
                await redis.eval(RELEASE_SCRIPT, [lease.key.encode()], [lease.member.encode()])
            except _CAUGHT as caught:
                failure = redis_failure(caught, REDIS_FAILURES)
                if failure is None:
                    raise
                self._failed(failure)
                return
            self._answered()

    async def wait_until(self, condition: Callable[[LeaseStatistics], bool]) -> None:
        """Return once ``condition`` holds of :meth:`statistics`, asking it now and after
        each change (for tests and tools). Always a checkpoint."""
        await self.changes.wait_until(lambda: condition(self.statistics()))

    def _count(self, name: str) -> None:
        self._counts[name] += 1
        self.changes.advance(self.changes.value + 1)

    def _command_timeout(self) -> float:
        # A Redis that accepts connections and never answers must not hold a lease's
        # renewal past the point where the lease stops being usable.
        return min(5.0, self.settings.renew_interval)

    def _answered(self) -> None:
        if not self._up:
            self._up = True
            self.changes.advance(self.changes.value + 1)
        if self._said_down:
            self._said_down = False
            logger.warning(
                "connection leases: Redis at %s answers again; fleet-limited connections "
                "open again, and fleet-wide message rates are asked again",
                self._fleet.redis,
            )

    def _failed(self, failure: BaseException) -> None:
        self._up = False
        self._count("redis_failures")
        if not self._said_down:
            self._said_down = True
            text = str(failure)
            logger.warning(
                "connection leases: Redis at %s failed (%s); no new connection to a "
                "fleet-limited ready queue opens until it answers, and open ones close "
                "once their leases can no longer be renewed in time (%d held); no "
                "message goes to a ready queue with a fleet-wide max_message_rate",
                self._fleet.redis,
                f"{type(failure).__name__}: {text}" if text else type(failure).__name__,
                len(self._held),
            )

    def statistics(self) -> LeaseStatistics:
        counts = self._counts
        return LeaseStatistics(
            enabled=1,
            up=int(self._up),
            held=len(self._held),
            acquired=counts["acquired"],
            refused=counts["refused"],
            renewed=counts["renewed"],
            lost=counts["lost"],
            released=counts["released"],
            redis_failures=counts["redis_failures"],
        )

"""Message rates: the ``max_message_rate`` throttles of this node's ready queues, kept
here or in the fleet's Redis (docs/mail-path.md, "Message rates"; docs/fleet.md,
"Fleet-wide message rates").

A connection asks :meth:`MessageRates.request_here` (or
:meth:`~MessageRates.request_fleet`) for each message before it takes it from its ready
queue (:meth:`kumo.runtime.delivery.Dispatcher.take`). Every rule is
:mod:`kumo.model.throttle`'s (the spec, the GCRA, the key names, the script); this
module only keeps the state or has Redis keep it:

- **local** (a spec with ``local:``, a destination without ``fleet_limits``, a node in
  no fleet): a :class:`~kumo.model.throttle.ThrottleTable` on Trio's clock, so that
  virtual time (``MockClock``) runs a throttle as it runs everything else;
- **fleet-wide** (``fleet_limits = true``, a spec without ``local:``): the GCRA script
  on the fleet's Redis, on Redis's clock, over the connection-lease client (one
  connection to Redis for both shared limits, one up/down state, one pair of log lines:
  :meth:`~kumo.runtime.connection_leases.ConnectionLeases.run_script`). The key is
  KumoMTA's, behind the fleet's stream name as the leases' are:
  ``<stream>:kumomta.max_message_rate.<ready queue>:<limit>:<burst>:<period>``.

Strict while Redis is unreachable: a fleet-wide request gets no answer (None), and the
caller sends nothing to that ready queue until Redis answers again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

import attrs
import trio

from kumo.model.statistics import counter
from kumo.model.throttle import (
    GCRA_SCRIPT,
    MICROS_PER_SECOND,
    Grant,
    ThrottleSpec,
    ThrottleTable,
    throttle_label,
)
from kumo.runtime.connection_leases import ConnectionLeases, Refused
from kumo.runtime.watermark import Watermark

PRUNE_EVERY: Final = 60.0
"""Seconds (Trio's) between two sweeps of the local states the clock has passed."""


@attrs.frozen
class MessageRateStatistics:
    """This node's message-rate throttles, summed over its ready queues (all zero
    without the mail path)."""

    requests: int = counter(
        "Requests to a max_message_rate (each for one message or more), granted or not."
    )
    granted: int = counter("Messages a max_message_rate let go.")
    refused: int = counter(
        "Requests a max_message_rate refused: the messages waited in their ready queue."
    )
    fleet_requests: int = counter("Requests sent to the fleet's Redis (fleet-wide rates).")
    unavailable: int = counter(
        "Fleet-wide requests Redis did not answer: nothing was sent for them."
    )
    closed: int = counter(
        "Times a max_message_rate's wait (idle_timeout or longer) closed a ready queue's "
        "connections: none opens to it before the wait is over."
    )

    @classmethod
    def off(cls) -> MessageRateStatistics:
        return cls(**{field.name: 0 for field in attrs.fields(cls)})


def now_micros() -> int:
    """Trio's time in whole microseconds (the local throttles' clock)."""
    return math.floor(trio.current_time() * MICROS_PER_SECOND)


class MessageRates:
    """This node's throttles (see the module docstring)."""

    def __init__(self, leases: ConnectionLeases | None = None) -> None:
        """``leases``: the fleet's lease client (a node in a fleet), over which the
        fleet-wide throttles run, behind its prefix (the fleet's stream name)."""
        self._leases = leases
        self._table = ThrottleTable()
        self._pruned_at = -math.inf
        self._counts = dict.fromkeys(
            ("requests", "granted", "refused", "fleet_requests", "unavailable", "closed"), 0
        )
        self.changes = Watermark()
        """Moves whenever :meth:`statistics` may have changed (:meth:`wait_until`)."""

    def fleet_wide(self, spec: ThrottleSpec, fleet_limits: bool) -> bool:
        """Whether ``spec`` of a destination with ``fleet_limits`` is kept in Redis."""
        return fleet_limits and not spec.local and self._leases is not None

    def key(self, ready_queue: str, spec: ThrottleSpec, *, fleet: bool) -> str:
        """Where ``ready_queue``'s state under ``spec`` lives: KumoMTA's key and spec
        (:meth:`ThrottleSpec.storage_key`), behind the fleet's prefix when ``fleet``."""
        key = spec.storage_key(throttle_label(ready_queue))
        return f"{self._leases.prefix}:{key}" if fleet and self._leases is not None else key

    def request_here(self, ready_queue: str, spec: ThrottleSpec, quantity: int = 1) -> Grant:
        """Up to ``quantity`` messages of ``ready_queue`` under a local ``spec``: how
        many may go now (each counted against the rate), or the wait before one would.
        No checkpoint: the caller takes the messages before any other task runs."""
        self._count("requests")
        now = now_micros()
        if trio.current_time() >= self._pruned_at + PRUNE_EVERY:
            self._pruned_at = trio.current_time()
            self._table.prune(now)
        key = self.key(ready_queue, spec, fleet=False)
        return self._counted(self._table.request(key, spec.interval, spec.burst, quantity, now))

    async def request_fleet(
        self, ready_queue: str, spec: ThrottleSpec, quantity: int = 1
    ) -> Grant | None:
        """As :meth:`request_here`, from the fleet's Redis (:meth:`fleet_wide` specs);
        None when Redis did not answer (nothing may go). Cancelled while Redis runs the
        script, a grant may have been counted there and not used (the rate is then
        lower for a moment, never higher)."""
        assert self._leases is not None
        self._count("requests")
        self._count("fleet_requests")
        key = self.key(ready_queue, spec, fleet=True)
        answer = await self._leases.run_script(
            GCRA_SCRIPT, [key.encode()], [spec.interval, spec.burst, quantity]
        )
        if answer is Refused.UNAVAILABLE:
            self._count("unavailable")
            return None
        granted, retry_after, _ = answer
        return self._counted(Grant(int(granted), int(retry_after)))

    def _counted(self, grant: Grant) -> Grant:
        if grant.allowed:
            self._counts["granted"] += grant.granted
        else:
            self._count("refused")
        return grant

    def closed_a_connection(self) -> None:
        """Count a wait of ``idle_timeout`` or more that closed a ready queue's
        connections."""
        self._count("closed")

    async def wait_until(self, condition: Callable[[MessageRateStatistics], bool]) -> None:
        """Return once ``condition`` holds of :meth:`statistics`, asking it now and after
        each change (for tests and tools). Always a checkpoint."""
        await self.changes.wait_until(lambda: condition(self.statistics()))

    def _count(self, name: str) -> None:
        self._counts[name] += 1
        self.changes.advance(self.changes.value + 1)

    def statistics(self) -> MessageRateStatistics:
        return MessageRateStatistics(**self._counts)

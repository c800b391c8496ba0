"""Fleet-wide connection limits: the policy of the connection leases kept in Redis.

With ``[egress] fleet_limits = true`` (and ``[fleet]``), a ready queue's
``connection_limit`` holds across the fleet: every node takes a *lease* from Redis
before it opens a connection to that ready queue, and gives it back when the connection
ends (docs/fleet.md, "Fleet-wide connection limits"). The leases of one ready queue are
the members of one sorted set, named after KumoMTA's lease
(``kumomta.connection_limit.<ready queue>``, :func:`lease_key`), each member
``<node id>:<token>`` scored with the millisecond at which it expires by Redis's clock.
Three atomic Lua scripts carry out what this module decides (:data:`ACQUIRE_SCRIPT`,
:data:`RENEW_SCRIPT`, :data:`RELEASE_SCRIPT`); :class:`LeaseTable` is their pure twin,
which the tests run against the policy.

What a node may do with a lease is decided here, on the node's own clock only, so that
the nodes' clocks need not agree with each other nor with Redis's:

- **Held locally, conservatively.** A lease counts as held until its *deadline*: the
  node's time just *before* it sent the command that took (or last renewed) it, plus
  the lease's duration. Redis sets the lease's expiry from its own time when it runs
  the script, which is later, so (clocks running at the same rate) the deadline never
  falls after the moment Redis lets another node take the lease.
- **Used with a margin.** A connection takes a new message only while at least
  ``margin`` seconds remain before the deadline (:meth:`Lease.usable`), so that the
  transaction under way can finish (and the connection close with QUIT) before the
  lease could be anyone else's.
- **Renewed early.** A held lease is renewed ``renew_interval`` seconds after it was
  last confirmed (:meth:`Lease.renew_at`); a renewal that Redis does not answer is
  tried again (:func:`retry_delay`) until the lease is no longer usable.
- **Lost when Redis no longer has it** (it expired there, or Redis restarted empty):
  the connection finishes the transaction under way and closes; the lease is not
  taken again behind the limit's back (:func:`after_renewal`).
- **Refused** (the set holds ``connection_limit`` live leases): the ready queue is
  ``connection_limited`` (context :func:`refusal_context`, as KumoMTA words it) and
  tries again after :func:`retry_delay`, earlier when one of its own connections ends.

Pure: no trio, no I/O. Times are seconds on the node's clock (trio's), durations are
given to Redis in milliseconds.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Final

import attrs

__all__ = [
    "ACQUIRE_SCRIPT",
    "LEASE_PREFIX",
    "RELEASE_SCRIPT",
    "RENEW_SCRIPT",
    "Lease",
    "LeaseSettings",
    "LeaseTable",
    "Renewal",
    "after_renewal",
    "lease_key",
    "lease_label",
    "lease_member",
    "refusal_context",
    "retry_delay",
]

LEASE_PREFIX: Final = "kumomta.connection_limit."
"""KumoMTA's name for the lease of a ready queue's connections, before the queue's name."""


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{attribute.name} must be a positive number of seconds, got {value!r}")


@attrs.frozen
class LeaseSettings:
    """How long a connection lease lives and how a node keeps it (seconds; all have a
    default, none is in the configuration file). The defaults keep a connection going
    through a Redis outage of up to ``duration - margin - renew_interval`` (30 s)
    before it closes, and give a transaction ``margin`` (20 s) to finish."""

    duration: float = attrs.field(default=60.0, converter=float, validator=_positive)
    """A lease lives this long in Redis after it was taken or last renewed; a node that
    dies holding it frees it when it expires."""
    renew_interval: float = attrs.field(default=10.0, converter=float, validator=_positive)
    """A held lease is renewed this long after it was last confirmed."""
    margin: float = attrs.field(default=20.0, converter=float, validator=_positive)
    """A connection takes no new message once less than this is left before its lease's
    deadline (the time a transaction under way has to finish)."""
    retry_initial: float = attrs.field(default=0.05, converter=float, validator=_positive)
    """Seconds before a ready queue asks again after a refusal (or a failed Redis);
    doubled at each refusal in a row."""
    retry_max: float = attrs.field(default=2.0, converter=float, validator=_positive)
    """The longest wait between two asks of a refused ready queue."""

    def __attrs_post_init__(self) -> None:
        if self.duration < 0.01:
            raise ValueError(f"duration must be 10 ms or more, got {self.duration!r}")
        if self.renew_interval + self.margin >= self.held_for:
            raise ValueError(
                f"renew_interval + margin ({self.renew_interval} + {self.margin} s) must be "
                f"shorter than the lease's duration ({self.duration} s): a lease must be "
                "renewed while it is still usable"
            )
        if self.retry_initial > self.retry_max:
            raise ValueError("retry_initial must not exceed retry_max")

    @property
    def duration_ms(self) -> int:
        """The duration as Redis takes it (whole milliseconds, rounded down: never longer
        than the local deadline assumes)."""
        return max(1, math.floor(self.duration * 1000))

    @property
    def held_for(self) -> float:
        """Seconds a lease counts as held on the node after the command that took (or
        renewed) it was sent: :attr:`duration_ms`, less the millisecond that Redis's
        clock loses when a script reads it in whole milliseconds."""
        return (self.duration_ms - 1) / 1000


def lease_label(ready_queue: str) -> str:
    """KumoMTA's label of a ready queue's connection lease:
    ``kumomta.connection_limit.<ready queue>``."""
    return LEASE_PREFIX + ready_queue


def lease_key(ready_queue: str, prefix: str) -> str:
    """The Redis key of ``ready_queue``'s leases: the label after the fleet's ``prefix``
    (its stream name), so that two fleets sharing one Redis keep their own limits:
    ``kumo:admin:kumomta.connection_limit.<ready queue>``."""
    return f"{prefix}:{lease_label(ready_queue)}"


def lease_member(node_id: str, token: str) -> str:
    """One lease's member in the set: the node that holds it, and a token of its own
    (a uuid), so that an operator can tell whose leases a set holds."""
    return f"{node_id}:{token}"


def refusal_context(ready_queue: str) -> str:
    """The context of a ready queue's ``connection_limited`` state, KumoMTA's words:
    ``TooManyLeases for kumomta.connection_limit.<ready queue>``."""
    return f"TooManyLeases for {lease_label(ready_queue)}"


def retry_delay(refusals: int, settings: LeaseSettings) -> float:
    """Seconds a ready queue waits after ``refusals`` refusals (or failures of Redis)
    in a row (1 or more) before it asks again: doubling from ``retry_initial``, capped
    at ``retry_max``."""
    doublings = min(max(refusals - 1, 0), 30)
    return float(min(settings.retry_max, settings.retry_initial * 2.0**doublings))


@attrs.frozen
class Lease:
    """One lease this node holds, as the node knows it."""

    key: str
    member: str
    deadline: float
    """The node's time until which the lease is surely held: when the command that took
    or last renewed it was sent, plus :attr:`LeaseSettings.held_for`."""
    confirmed: float
    """When the command that took or last renewed it was sent."""

    @classmethod
    def acquired(cls, key: str, member: str, sent_at: float, settings: LeaseSettings) -> Lease:
        """A lease Redis granted to the acquire sent at ``sent_at``."""
        return cls(key, member, sent_at + settings.held_for, sent_at)

    def usable(self, now: float, settings: LeaseSettings) -> bool:
        """Whether a connection under this lease may take a new message at ``now``."""
        return now < self.usable_until(settings)

    def usable_until(self, settings: LeaseSettings) -> float:
        """The node's time from which a connection under this lease takes no new message."""
        return self.deadline - settings.margin

    def renew_at(self, settings: LeaseSettings) -> float:
        """When the lease is due for renewal."""
        return self.confirmed + settings.renew_interval


class Renewal(enum.Enum):
    """What a renewal of a lease came to."""

    RENEWED = "renewed"
    """Redis held the lease and extended it."""
    GONE = "gone"
    """Redis no longer holds it (it expired there, or Redis lost it)."""
    FAILED = "failed"
    """Redis did not answer (or failed): the lease may or may not be extended."""


def after_renewal(
    lease: Lease, outcome: Renewal, sent_at: float, settings: LeaseSettings
) -> Lease | None:
    """The lease after a renewal sent at ``sent_at``; None when it is lost (the
    connection finishes its transaction and closes, and the lease is not taken again).

    A renewal that failed leaves the lease as it was: its deadline still stands, and a
    renewal that Redis may have run unseen only extends it there, never shortens it.
    """
    match outcome:
        case Renewal.RENEWED:
            return attrs.evolve(
                lease,
                deadline=max(lease.deadline, sent_at + settings.held_for),
                confirmed=max(lease.confirmed, sent_at),
            )
        case Renewal.GONE:
            return None
        case Renewal.FAILED:
            return lease


# -- the Redis side -------------------------------------------------------------------
#
# Each script reads Redis's own clock (TIME; allowed in scripts since Redis 5, whose
# replication sends the script's effects, not the script), so the expiry of every member
# is on one clock whatever the nodes' clocks say. A member is live while now < its score.
# The key itself expires with its latest member, so an idle ready queue leaves nothing.

_NOW: Final = (
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)\n"
)

ACQUIRE_SCRIPT: Final = _NOW + (
    "if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then\n"
    "  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])\n"
    "  redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
    "  return 1\n"
    "end\n"
    "return 0\n"
)
"""``KEYS[1]`` the set, ``ARGV`` limit, duration (ms), member: 1 if the member now holds
a lease, 0 if ``limit`` live leases are held (expired ones are dropped first)."""

RENEW_SCRIPT: Final = _NOW + (
    "if redis.call('ZSCORE', KEYS[1], ARGV[2]) then\n"
    "  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])\n"
    "  redis.call('PEXPIRE', KEYS[1], ARGV[1])\n"
    "  return 1\n"
    "end\n"
    "return 0\n"
)
"""``KEYS[1]`` the set, ``ARGV`` duration (ms), member: 1 if the member was live and now
expires ``duration`` from now, 0 if it is gone (an expired member is dropped first, so
a lease that another node may have taken since is never revived)."""

RELEASE_SCRIPT: Final = "return redis.call('ZREM', KEYS[1], ARGV[1])\n"
"""``KEYS[1]`` the set, ``ARGV`` member: gives the lease back (1 if it was there)."""


@attrs.define
class LeaseTable:
    """The pure twin of the three scripts on one Redis: the sets, by key, member ->
    expiry (Redis's milliseconds). For tests of the policy: the runtime runs the
    scripts on a real Redis."""

    sets: dict[str, dict[str, int]] = attrs.field(factory=dict)

    def _live(self, key: str, now_ms: int) -> dict[str, int]:
        members = self.sets.setdefault(key, {})
        for member in [m for m, expiry in members.items() if expiry <= now_ms]:
            del members[member]
        return members

    def acquire(self, key: str, limit: int, duration_ms: int, member: str, now_ms: int) -> bool:
        members = self._live(key, now_ms)
        if len(members) < limit:
            members[member] = now_ms + duration_ms
            return True
        return False

    def renew(self, key: str, duration_ms: int, member: str, now_ms: int) -> bool:
        members = self._live(key, now_ms)
        if member in members:
            members[member] = now_ms + duration_ms
            return True
        return False

    def release(self, key: str, member: str) -> bool:
        return self.sets.get(key, {}).pop(member, None) is not None

    def live(self, key: str, now_ms: int) -> int:
        """How many leases of ``key`` are live at ``now_ms``."""
        return sum(1 for expiry in self.sets.get(key, {}).values() if expiry > now_ms)

"""Message rates: KumoMTA's ``max_message_rate`` throttle of an egress path, sans-io.

A ready queue with ``max_message_rate = "100/s"`` sends at most that many messages a
second, with bursts of up to ``max_burst`` (default: the limit), on this node, or
across the fleet with ``[egress] fleet_limits = true`` (docs/mail-path.md, "Message
rates"; docs/fleet.md, "Fleet-wide message rates"). This module holds every rule of it:

- :class:`ThrottleSpec`: the spec's text, parsed and written back as KumoMTA does
  (``"[local:]LIMIT/[N]PERIOD[,max_burst=B]"``), with refusals that say what is wrong;
- :func:`gcra`: the Generic Cell Rate Algorithm over times passed in. Its *theoretical
  arrival time* ``tat`` is all the state there is: one message costs ``interval``
  (``period / limit``); up to ``burst`` may pass at once, then one per interval; a
  request asks for up to ``quantity`` and gets as many as may pass now;
- the names of the state: KumoMTA's key ``kumomta.max_message_rate.<ready queue>``
  (:func:`throttle_label`), stored as ``<key>:<limit>:<burst>:<period>``
  (:meth:`ThrottleSpec.storage_key`) so that two specs never share a state;
- :data:`GCRA_SCRIPT`, the algorithm as a Lua script that Redis runs atomically on its
  own clock (``TIME``), so that the nodes' clocks never matter, and
  :class:`ThrottleTable`, its pure twin, which the tests hold against the script and
  which keeps a node's local throttles.

Times are whole microseconds (Redis's ``TIME`` gives no finer), so the interval is
rounded *up* to a microsecond: a throttle never lets more pass than its spec allows,
and only a rate above a million a second is slowed by it.

Pure: no trio, no I/O.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

__all__ = [
    "GCRA_SCRIPT",
    "MICROS_PER_SECOND",
    "THROTTLE_PREFIX",
    "Grant",
    "ThrottleSpec",
    "ThrottleSpecError",
    "ThrottleTable",
    "gcra",
    "throttle_label",
]

MICROS_PER_SECOND: Final = 1_000_000

THROTTLE_PREFIX: Final = "kumomta.max_message_rate."
"""KumoMTA's name of an egress path's message-rate throttle, before the ready queue's."""

_UNITS: Final = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
"""The period names a spec may use, in seconds."""

_CANONICAL_UNITS: Final = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
"""How a period is written back: in the largest unit that divides it."""

_LOCAL: Final = "local:"
_BURST: Final = "max_burst="
_NUMBER: Final = re.compile(r"[0-9][0-9_,]*\Z")
_PERIOD: Final = re.compile(r"([0-9]*)([a-z]+)\Z")


class ThrottleSpecError(ValueError):
    """A throttle spec that cannot be parsed; the message says what is wrong."""


def _whole_number(text: str, what: str, spec: str) -> int:
    """``text`` as a whole number, its digits maybe grouped with ``_`` or ``,``."""
    if not _NUMBER.match(text):
        raise ThrottleSpecError(f"{what} must be a whole number in {spec!r}, got {text!r}")
    return int(text.replace("_", "").replace(",", ""))


def _positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value <= 0:
        raise ThrottleSpecError(f"{attribute.name} must be greater than 0, got {value!r}")


def _optional_positive(
    _: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and (type(value) is not int or value <= 0):
        raise ThrottleSpecError(f"{attribute.name} must be greater than 0, got {value!r}")


@attrs.frozen
class ThrottleSpec:
    """A message rate: ``limit`` messages per ``period`` seconds, ``max_burst`` at once.

    Text (:meth:`parse`, ``str()``): ``"[local:]LIMIT/[N]PERIOD[,max_burst=B]"``, as
    KumoMTA writes it: ``"10/s"``, ``"1,000/hr"``, ``"5/30s"``, ``"local:50/m"``,
    ``"20/s,max_burst=5"``. An invalid spec cannot be made (:class:`ThrottleSpecError`).
    """

    limit: int = attrs.field(validator=_positive)
    """Messages per period."""
    period: int = attrs.field(validator=_positive)
    """Seconds."""
    max_burst: int | None = attrs.field(default=None, validator=_optional_positive)
    """Messages that may pass at once after a quiet spell; None: :attr:`limit`."""
    local: bool = False
    """``local:``: kept by each node alone, even where throttles are fleet-wide."""

    @classmethod
    def parse(cls, text: str) -> ThrottleSpec:
        """The spec ``text`` writes. LIMIT may group its digits with ``_`` or ``,``
        (``"1_000/h"``); PERIOD is ``s``/``sec``/``second``, ``m``/``min``/``minute``,
        ``h``/``hr``/``hour`` or ``d``/``day``, optionally after a whole number that
        multiplies it (``"5/30s"``). Raises :class:`ThrottleSpecError` naming what is
        wrong (``limit must be greater than 0``, an unknown period, ...)."""
        if not isinstance(text, str):
            raise ThrottleSpecError(f"a throttle spec must be a string, got {text!r}")
        rest = text
        local = rest.startswith(_LOCAL)
        if local:
            rest = rest[len(_LOCAL) :]
        if "/" not in rest:
            raise ThrottleSpecError(
                f"a throttle spec is LIMIT/PERIOD (such as '100/s'), got {text!r}"
            )
        limit_text, _, period_text = rest.partition("/")
        limit = _whole_number(limit_text, "the limit", text)
        if limit == 0:
            raise ThrottleSpecError(f"limit must be greater than 0 in {text!r}")
        period_text, comma, options = period_text.partition(",")
        max_burst: int | None = None
        if comma:
            if not options.startswith(_BURST):
                raise ThrottleSpecError(
                    f"the only option after the period is max_burst=N, got {options!r} in {text!r}"
                )
            max_burst = _whole_number(options[len(_BURST) :], "max_burst", text)
            if max_burst == 0:
                raise ThrottleSpecError(f"max_burst must be greater than 0 in {text!r}")
        match = _PERIOD.match(period_text)
        unit = None if match is None else _UNITS.get(match.group(2))
        if match is None or unit is None:
            raise ThrottleSpecError(
                f"the period must be s, sec, second, m, min, minute, h, hr, hour, d or day, "
                f"optionally after a whole number (such as 30s), got {period_text!r} "
                f"in {text!r}"
            )
        scale = int(match.group(1)) if match.group(1) else 1
        if scale == 0:
            raise ThrottleSpecError(f"the period must be longer than 0 in {text!r}")
        return cls(limit, scale * unit, max_burst, local)

    def __str__(self) -> str:
        unit, seconds = next((u, s) for u, s in _CANONICAL_UNITS if self.period % s == 0)
        count = self.period // seconds
        period = f"{unit}" if count == 1 else f"{count}{unit}"
        burst = "" if self.max_burst is None else f",{_BURST}{self.max_burst}"
        return f"{_LOCAL if self.local else ''}{self.limit}/{period}{burst}"

    @property
    def burst(self) -> int:
        """Messages that may pass at once: :attr:`max_burst`, else :attr:`limit`."""
        return self.limit if self.max_burst is None else self.max_burst

    @property
    def interval(self) -> int:
        """Microseconds one message costs: ``period / limit``, rounded up."""
        return max(1, -(-self.period * MICROS_PER_SECOND // self.limit))

    def storage_key(self, key: str) -> str:
        """Where the state of throttle ``key`` under this spec lives:
        ``<key>:<limit>:<burst>:<period>`` (KumoMTA's), so that a changed spec starts
        afresh instead of reading a state kept under other terms."""
        return f"{key}:{self.limit}:{self.burst}:{self.period}"


def throttle_label(ready_queue: str) -> str:
    """KumoMTA's key of a ready queue's message rate:
    ``kumomta.max_message_rate.<ready queue>``."""
    return THROTTLE_PREFIX + ready_queue


@attrs.frozen
class Grant:
    """What a throttle answered a request for up to ``quantity`` messages."""

    granted: int
    """How many may pass now, from 0 to the quantity asked for: as many as the rate
    allows at once, each counted against it."""
    retry_after: int
    """Microseconds until one would be granted, when none was (0 otherwise); the state
    did not move for a refused request."""

    @property
    def allowed(self) -> bool:
        """At least one may pass now."""
        return self.granted > 0

    @property
    def seconds(self) -> float:
        """:attr:`retry_after` in seconds."""
        return self.retry_after / MICROS_PER_SECOND


def gcra(
    tat: int | None, now: int, interval: int, burst: int, quantity: int = 1
) -> tuple[Grant, int | None]:
    """A request for up to ``quantity`` messages at ``now`` against the state ``tat``
    (None: no state, as after a quiet spell): the answer, and the state after it (the
    same when none is granted). Microseconds throughout.

    The rule, for one message: ``tat`` moves up to ``now`` if it lags; the message
    would move it on by ``interval``; it may pass if ``now`` is no earlier than that
    new ``tat`` less ``burst * interval``. A request for several grants as many as
    that many requests for one at the same ``now`` would, in one step. So no window of
    ``w`` microseconds lets more than ``burst + floor(w / interval)`` messages pass,
    and steady demand gets exactly that many.
    """
    if interval <= 0 or burst <= 0 or quantity <= 0:
        raise ValueError("interval, burst and quantity must be positive")
    start = now if tat is None or tat < now else tat
    # The k-th message may pass iff now >= start + k * interval - burst * interval.
    room = (now - start) // interval + burst
    granted = min(quantity, room)
    if granted <= 0:
        return Grant(0, start + interval - burst * interval - now), tat
    return Grant(granted, 0), start + interval * granted


# -- the Redis side -------------------------------------------------------------------
#
# Redis's own clock (TIME, seconds and microseconds; allowed in scripts since Redis 5,
# which replicates a script's effects, not the script), so every node's requests are on
# one clock. Lua numbers are doubles: microseconds since the epoch (about 2^51) are
# exact in them, and '%.0f' writes them back without the exponent tostring() would use.
# The key lives until its tat: a state at or behind the clock means nothing (gcra moves
# it up to now), so an idle throttle leaves nothing behind.

GCRA_SCRIPT: Final = (
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local interval = tonumber(ARGV[1])\n"
    "local burst = tonumber(ARGV[2])\n"
    "local quantity = tonumber(ARGV[3])\n"
    "local start = tonumber(redis.call('GET', KEYS[1]) or now)\n"
    "if start < now then start = now end\n"
    "local granted = math.min(quantity, math.floor((now - start) / interval) + burst)\n"
    "if granted <= 0 then\n"
    "  local wait = start + interval - burst * interval - now\n"
    "  return {0, string.format('%.0f', wait), string.format('%.0f', now)}\n"
    "end\n"
    "local moved = start + interval * granted\n"
    "redis.call('SET', KEYS[1], string.format('%.0f', moved), 'PX',\n"
    "  string.format('%.0f', math.ceil((moved - now) / 1000)))\n"
    "return {granted, '0', string.format('%.0f', now)}\n"
)
"""``KEYS[1]`` the state (:meth:`ThrottleSpec.storage_key`), ``ARGV`` interval (µs),
burst, quantity: ``{granted (0 to quantity), retry after (µs, as text), Redis's now (µs,
as text)}``, as :func:`gcra` decides at Redis's time ``now``."""


@attrs.define
class ThrottleTable:
    """The pure twin of :data:`GCRA_SCRIPT` on one Redis (key -> tat, microseconds),
    and the store of a node's local throttles, on the node's clock. A state at or
    behind the clock is dropped when its key is next asked for, or by :meth:`prune`,
    as Redis expires it."""

    states: dict[str, int] = attrs.field(factory=dict)

    def request(self, key: str, interval: int, burst: int, quantity: int, now: int) -> Grant:
        tat = self.states.get(key)
        if tat is not None and tat <= now:
            del self.states[key]
            tat = None
        grant, after = gcra(tat, now, interval, burst, quantity)
        if after is not None:
            self.states[key] = after
        return grant

    def prune(self, now: int) -> None:
        """Forget every state at or behind ``now`` (the key expired)."""
        for key in [key for key, tat in self.states.items() if tat <= now]:
            del self.states[key]

"""When a message that failed transiently is next due, and when it expires instead.

KumoMTA's rule, reproduced to the second (times and durations are integer nanoseconds,
as everywhere in the model):

* After the k-th transient failure the base delay is ``retry_interval * 2**(k-1)`` in
  **whole seconds** (the sub-second part of ``retry_interval`` is dropped), computed
  with unsigned 64-bit saturation and then capped by ``max_retry_interval`` when set.
  With the defaults: 1200, 2400, 4800, ... 307200 s; with 2 s capped at 8 s: 2, 4, 8, 8.
* A jitter is added: ``m = min(retry_interval / 20, 60 s)``, jitter ``U*m - m/2`` with
  ``U`` uniform in [0, 1), truncated toward zero to whole seconds. It is computed in
  single precision, as KumoMTA does: always 0 for a ``retry_interval`` of 39 s or less,
  within [-30, 29] s from 20 minutes up. The jitter is not capped.
* The delay counts from the failure, not from the previous due time.
* The message expires at the failure whose *next* due time would fall more than
  ``max_age`` after its creation (early expiry): with the defaults the 9th failure,
  about 85 h after reception, would be next due at about 170 h > 168 h, so the message
  expires then, with ``551 5.4.7 Next delivery time would be 7days 2h 20m after
  creation, which exceeds max_age=7days``.

A requeue that does not count as an attempt (a full ready queue) is due again after
``U * 60`` whole seconds instead, and expires when it would be due ``max_age`` or more
after creation (KumoMTA words that one differently: :func:`requeue_without_attempt`).

The random number is an argument, so that every function here is pure: the runtime
draws it, a test or a scenario chooses it.
"""

from __future__ import annotations

import math
import struct
from typing import Final

import attrs

from kumo.model.duration import NANOS_PER_SECOND, format_duration

__all__ = [
    "MAX_DELAY_SECONDS",
    "Expired",
    "Rescheduled",
    "RetryPolicy",
    "backoff_seconds",
    "jitter_seconds",
    "requeue_jitter_seconds",
    "requeue_without_attempt",
    "reschedule_after_failure",
    "retry_delay",
]

_U64_MAX: Final = 2**64 - 1

MAX_DELAY_SECONDS: Final = (2**63 - 1) // 1_000
"""The longest base delay, in seconds: KumoMTA clamps it to what its time type holds."""

_JITTER_CAP_SECONDS: Final = 60.0
_REQUEUE_JITTER_SECONDS: Final = 60.0


def f32(value: float) -> float:
    """``value`` rounded to the nearest single-precision float, as Rust's ``as f32``."""
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def _uniform_f32(uniform: float) -> float:
    """``uniform`` in [0, 1) as the single-precision draw ``rand::random::<f32>()``
    would be: a multiple of 2**-24 below 1 (rounding to nearest could reach 1.0)."""
    if not 0.0 <= uniform < 1.0:
        raise ValueError(f"uniform must be in [0, 1), got {uniform!r}")
    return math.floor(uniform * 2**24) / 2**24


def _check_nanos(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{attribute.name} must be a non-negative number of nanoseconds")


def _check_optional_nanos(
    _: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and (type(value) is not int or value < 0):
        raise ValueError(f"{attribute.name} must be None or a non-negative number of nanoseconds")


@attrs.frozen(slots=True)
class RetryPolicy:
    """The three settings of a scheduled queue that decide retries (KumoMTA's defaults)."""

    retry_interval: int = attrs.field(default=20 * 60 * NANOS_PER_SECOND, validator=_check_nanos)
    """Base of the exponential backoff. Only its whole seconds count for the backoff;
    the jitter takes all of it."""
    max_retry_interval: int | None = attrs.field(default=None, validator=_check_optional_nanos)
    """Cap on the backoff before the jitter (whole seconds count); None: no cap."""
    max_age: int = attrs.field(default=7 * 86_400 * NANOS_PER_SECOND, validator=_check_nanos)
    """How long after its creation a message may still be due."""


def backoff_seconds(policy: RetryPolicy, failures: int) -> int:
    """The delay after the ``failures``-th transient failure before jitter, in seconds.

    ``failures`` counts this one: 1 after the first failed attempt (KumoMTA's
    ``num_attempts`` before it increments is ``failures - 1``). The doubling saturates
    at ``2**64 - 1`` as KumoMTA's unsigned arithmetic does, the cap applies next, and
    the result is at most :data:`MAX_DELAY_SECONDS`. Never decreases as ``failures``
    grows. Raises ValueError if ``failures`` is below 1.
    """
    if failures < 1:
        raise ValueError(f"failures counts from 1, got {failures}")
    doublings = failures - 1
    factor = 2**doublings if doublings < 64 else _U64_MAX
    base = min(policy.retry_interval // NANOS_PER_SECOND * factor, _U64_MAX)
    if policy.max_retry_interval is not None:
        base = min(base, policy.max_retry_interval // NANOS_PER_SECOND)
    return min(base, MAX_DELAY_SECONDS)


def jitter_seconds(policy: RetryPolicy, uniform: float) -> int:
    """KumoMTA's jitter for ``policy``, whole seconds, from ``uniform`` in [0, 1).

    ``m = min(retry_interval / 20, 60 s)``; the jitter is ``uniform*m - m/2``, in single
    precision, truncated toward zero: ``abs(jitter) <= m/2``. Raises ValueError if
    ``uniform`` is outside [0, 1).
    """
    draw = _uniform_f32(uniform)
    whole, nanos = divmod(policy.retry_interval, NANOS_PER_SECOND)
    # Rust's Duration::as_secs_f32: each part to f32, then the f32 sum.
    interval = f32(f32(float(whole)) + f32(f32(float(nanos)) / f32(1e9)))
    magnitude = min(f32(interval / 20.0), _JITTER_CAP_SECONDS)
    jitter = f32(f32(draw * magnitude) - f32(magnitude / 2.0))
    return int(jitter)  # int() truncates toward zero, as Rust's `as i64`


def retry_delay(policy: RetryPolicy, failures: int, uniform: float) -> int:
    """The delay after the ``failures``-th transient failure, in nanoseconds.

    :func:`backoff_seconds` plus :func:`jitter_seconds`, never below zero (KumoMTA
    would date the message up to 30 s in the past when ``max_retry_interval`` is under
    a fortieth of ``retry_interval``: due at once either way). Always a whole number of
    seconds.
    """
    seconds = backoff_seconds(policy, failures) + jitter_seconds(policy, uniform)
    return max(seconds, 0) * NANOS_PER_SECOND


@attrs.frozen(slots=True)
class Rescheduled:
    """The message stays, due again at ``due`` (ns since the epoch)."""

    due: int
    delay: int
    """``due`` minus the time of the failure (or requeue), in nanoseconds."""


@attrs.frozen(slots=True)
class Expired:
    """The message leaves the queue with an ``Expiration`` record carrying this reply.

    ``site`` is the record's ``site``: ``""`` when a failure expired it, ``"localhost"``
    when a requeue did (KumoMTA writes those so).
    """

    content: str
    site: str = ""
    code: int = 551
    enhanced_code: tuple[int, int, int] = (5, 4, 7)


def reschedule_after_failure(
    policy: RetryPolicy, *, created_at: int, failed_at: int, failures: int, uniform: float
) -> Rescheduled | Expired:
    """What follows the ``failures``-th transient failure of a message, at ``failed_at``.

    Due again at ``failed_at + retry_delay(...)``, unless that is more than
    ``policy.max_age`` after ``created_at``: then :class:`Expired` with
    ``Next delivery time would be <A> after creation, which exceeds max_age=<M>``, A the
    age the message would have when next due and M ``max_age``, both in humantime form
    (``7days 2h 20m 12ms 3us 5ns``). Times are ns since the epoch.
    """
    delay = retry_delay(policy, failures, uniform)
    age_at_due = failed_at - created_at + delay
    if age_at_due > policy.max_age:
        return Expired(
            f"Next delivery time would be {format_duration(age_at_due)} after creation, "
            f"which exceeds max_age={format_duration(policy.max_age)}"
        )
    return Rescheduled(failed_at + delay, delay)


def requeue_jitter_seconds(uniform: float) -> int:
    """The delay of a requeue that is not an attempt: ``uniform * 60`` in single
    precision, truncated to whole seconds (0 to 59). Raises ValueError if ``uniform`` is
    outside [0, 1)."""
    return int(f32(_uniform_f32(uniform) * _REQUEUE_JITTER_SECONDS))


def _chrono_text(nanos: int) -> str:
    """``nanos`` as chrono's ``TimeDelta`` displays it: ``PT604812.5S``, ``P0D``."""
    sign = "-" if nanos < 0 else ""
    seconds, fraction = divmod(abs(nanos), NANOS_PER_SECOND)
    if seconds == 0 and fraction == 0:
        return "P0D"
    digits = f".{fraction:09d}".rstrip("0") if fraction else ""
    return f"{sign}PT{seconds}{digits}S"


def requeue_without_attempt(
    policy: RetryPolicy, *, created_at: int, now: int, delay: int
) -> Rescheduled | Expired:
    """A requeue that is not an attempt (the ready queue was full), ``delay`` ns from ``now``.

    Expires when the message would be ``policy.max_age`` old or older when due
    (``>=``, where a failure compares with ``>``), with KumoMTA's
    ``Next delivery time <age at due> > <max_age>`` in chrono's ISO form
    (``PT604812.5S > PT604800S``) and ``site`` ``"localhost"``. A requeue jittered as
    KumoMTA does passes ``requeue_jitter_seconds(uniform) * NANOS_PER_SECOND``.
    """
    due = now + delay
    age_at_due = due - created_at
    if age_at_due >= policy.max_age:
        return Expired(
            f"Next delivery time {_chrono_text(age_at_due)} > {_chrono_text(policy.max_age)}",
            site="localhost",
        )
    return Rescheduled(due, delay)

"""RFC 3339 date-times: written as chrono prints them, read as the ``expires`` field of a
bounce carries them.

:func:`format_rfc3339` writes UTC with ``Z`` and 0, 3, 6 or 9 fraction digits, as chrono
does (the delivery-log records, the API's replies, the audit). KumoMTA reads ``expires``
with chrono; :func:`parse_rfc3339` accepts what docs/rules.md states
(``Z`` or a numeric offset, upper- or lower-case ``T``/``Z``, a space for the ``T`` as
RFC 3339 allows, any number of fraction digits, of which the first nine count) and
refuses with chrono's own texts. Times are integer nanoseconds since the Unix epoch,
limited to what a signed 64-bit count of nanoseconds holds (years 1677 to 2262), since
that is how the event log stores them.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Final

from kumo.model.duration import NANOS_PER_SECOND

_EPOCH_ORDINAL: Final = dt.date(1970, 1, 1).toordinal()
_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1
_DIGITS: Final = "0123456789"

OUT_OF_RANGE: Final = "input is out of range"
IMPOSSIBLE: Final = "no possible date and time matching input"
INVALID: Final = "input contains invalid characters"
TOO_SHORT: Final = "premature end of input"
TOO_LONG: Final = "trailing input"


def format_rfc3339(nanos: int) -> str:
    """UTC time as RFC 3339 with 0, 3, 6 or 9 fraction digits, as chrono prints it.

    :func:`parse_rfc3339` reads it back exactly, for every signed 64-bit ``nanos``.
    """
    return _format_rfc3339(nanos)


# Records of one commit share its time, and a sweep writes a million of them; GET
# formats each live rule's two times again and again (a least-recently-used cache
# smaller than two entries a rule misses every one of them when it cycles).
@lru_cache(maxsize=65_536)
def _format_rfc3339(nanos: int) -> str:
    seconds, fraction = divmod(nanos, NANOS_PER_SECOND)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if fraction == 0:
        return stamp + "Z"
    if fraction % 1_000_000 == 0:
        return f"{stamp}.{fraction // 1_000_000:03d}Z"
    if fraction % 1_000 == 0:
        return f"{stamp}.{fraction // 1_000:06d}Z"
    return f"{stamp}.{fraction:09d}Z"


class TimestampError(ValueError):
    """Text that is not an RFC 3339 date-time kumo can hold; the message says why."""


class _Cursor:
    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self, allowed: str) -> str:
        char = self.peek()
        if not char:
            raise TimestampError(TOO_SHORT)
        if char not in allowed:
            raise TimestampError(INVALID)
        self.pos += 1
        return char

    def number(self, width: int) -> int:
        value = 0
        for _ in range(width):
            value = value * 10 + int(self.take(_DIGITS))
        return value

    def digit_run(self) -> str:
        start = self.pos
        while (char := self.peek()) and char in _DIGITS:
            self.pos += 1
        if self.pos == start:
            raise TimestampError(TOO_SHORT if not self.peek() else INVALID)
        return self.text[start : self.pos]


def parse_rfc3339(text: str) -> int:
    """Nanoseconds since the epoch of the RFC 3339 date-time ``text``.

    Raises :class:`TimestampError` (a ValueError) with chrono's description of what is
    wrong, and nothing else, whatever the input. A leap second (``:60``) counts as the
    first instant of the next minute, as chrono's timestamps do.
    """
    cursor = _Cursor(text)
    year = cursor.number(4)
    cursor.take("-")
    month = cursor.number(2)
    cursor.take("-")
    day = cursor.number(2)
    cursor.take("Tt ")
    hour = cursor.number(2)
    cursor.take(":")
    minute = cursor.number(2)
    cursor.take(":")
    second = cursor.number(2)
    nanos = 0
    if cursor.peek() == ".":
        cursor.pos += 1
        nanos = int(cursor.digit_run()[:9].ljust(9, "0"))
    sign = cursor.take("Zz+-")
    offset = 0
    if sign in "+-":
        offset_hours = cursor.number(2)
        cursor.take(":")
        offset_minutes = cursor.number(2)
        if offset_hours > 23 or offset_minutes > 59:
            raise TimestampError(OUT_OF_RANGE)
        offset = (offset_hours * 60 + offset_minutes) * 60
        if sign == "-":
            offset = -offset
    if cursor.pos != len(text):
        raise TimestampError(TOO_LONG)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        raise TimestampError(OUT_OF_RANGE)
    try:
        ordinal = dt.date(year, month, day).toordinal()
    except ValueError:
        # Year 0 or a day past the month's end (2023-02-29).
        raise TimestampError(IMPOSSIBLE if year else OUT_OF_RANGE) from None
    seconds = (ordinal - _EPOCH_ORDINAL) * 86_400 + hour * 3600 + minute * 60 + second - offset
    result = seconds * NANOS_PER_SECOND + nanos
    if not _I64_MIN <= result <= _I64_MAX:
        raise TimestampError(OUT_OF_RANGE)
    return result

"""Durations in humantime syntax, held as integer nanoseconds.

KumoMTA reads every duration of its admin API with the Rust crate humantime 2.4.0, so
kumo must accept exactly the texts it accepts, give them the same value, and refuse the
rest. The grammar is a run of ``<number><unit>`` spans that are summed (``1h 30m``,
``1h30m``, ``20 min 17 nsec``, ``1.5h``); the bare text ``0`` is zero. Its quirks are
reproduced on purpose, because a client must not be able to tell kumo from KumoMTA:

* whitespace is skipped inside a number as well as between spans, so ``5 5s`` is 55 s;
* only ASCII digits count as digits, and units are case-sensitive (``m`` is minutes,
  ``M`` months, ``H`` is unknown);
* a fraction must come to a whole number of the unit it is summed in: nanoseconds for
  ``us``, ``ms``, ``s`` and ``min``, *seconds* for ``h`` and longer units (``82.32h`` is
  fine, ``75.676h`` is refused although it is a whole number of nanoseconds), and never
  on ``ns``;
* arithmetic is humantime's unsigned 64-bit arithmetic: a number, a number times its
  unit, or the sum's whole seconds above ``2**64 - 1`` is refused, checked as the text
  is read, so the first problem met from the left is the one reported;
* error offsets count UTF-8 bytes, as Rust does (``µ`` is two bytes).

Durations are plain ``int`` nanoseconds: exact, hashable, cheap to compare and sum.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Final, NamedTuple

__all__ = [
    "MAX_NANOS",
    "NANOS_PER_DAY",
    "NANOS_PER_HOUR",
    "NANOS_PER_MICROSECOND",
    "NANOS_PER_MILLISECOND",
    "NANOS_PER_MINUTE",
    "NANOS_PER_MONTH",
    "NANOS_PER_SECOND",
    "NANOS_PER_WEEK",
    "NANOS_PER_YEAR",
    "SECONDS_PER_DAY",
    "SECONDS_PER_HOUR",
    "SECONDS_PER_MINUTE",
    "SECONDS_PER_MONTH",
    "SECONDS_PER_WEEK",
    "SECONDS_PER_YEAR",
    "DurationError",
    "format_duration",
    "format_duration_ascii",
    "parse_duration",
]

SECONDS_PER_MINUTE: Final = 60
SECONDS_PER_HOUR: Final = 3_600
SECONDS_PER_DAY: Final = 86_400
SECONDS_PER_WEEK: Final = 7 * SECONDS_PER_DAY
SECONDS_PER_MONTH: Final = 2_630_016
"""30.44 days, humantime's month."""
SECONDS_PER_YEAR: Final = 31_557_600
"""365.25 days, humantime's year."""

NANOS_PER_MICROSECOND: Final = 1_000
NANOS_PER_MILLISECOND: Final = 1_000_000
NANOS_PER_SECOND: Final = 1_000_000_000
NANOS_PER_MINUTE: Final = SECONDS_PER_MINUTE * NANOS_PER_SECOND
NANOS_PER_HOUR: Final = SECONDS_PER_HOUR * NANOS_PER_SECOND
NANOS_PER_DAY: Final = SECONDS_PER_DAY * NANOS_PER_SECOND
NANOS_PER_WEEK: Final = SECONDS_PER_WEEK * NANOS_PER_SECOND
NANOS_PER_MONTH: Final = SECONDS_PER_MONTH * NANOS_PER_SECOND
NANOS_PER_YEAR: Final = SECONDS_PER_YEAR * NANOS_PER_SECOND

_U64_MAX: Final = 2**64 - 1

MAX_NANOS: Final = (_U64_MAX + 1) * NANOS_PER_SECOND - 1
"""The longest duration humantime can hold (``2**64 - 1`` s and 999,999,999 ns)."""

_OVERFLOW: Final = (
    "number is too large or cannot be represented without a lack of precision "
    "(values below 1ns are not supported)"
)
_UNITS_HINT: Final = (
    "supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years "
    "(and few variations)"
)

# Rust's char::is_whitespace is Unicode's White_Space property. str.isspace() is not the
# same set (it also takes U+001C..U+001F), so the set is spelled out.
_WHITESPACE: Final = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
# The characters a unit is made of; "µ" is U+00B5 MICRO SIGN, the one humantime knows.
_UNIT_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZµ")
# str.isdigit() would take "٣" and "１"; humantime takes ASCII digits only.
_DIGITS: Final = {str(d): d for d in range(10)}


class DurationError(ValueError):
    """A text is not a duration; ``str(error)`` says why in plain words.

    The messages are humantime's, so they read the same as KumoMTA's.
    """


class _Unit(NamedTuple):
    """How a span's number turns into a duration.

    The whole part is ``number * whole_factor`` nanoseconds or seconds (as
    ``whole_in_seconds`` says); the fraction ``numerator / 10**k`` is
    ``numerator * fraction_factor / 10**k`` nanoseconds or seconds, and must divide
    exactly. ``fraction_factor`` 0 means the unit takes no fraction.
    """

    whole_factor: int
    whole_in_seconds: bool
    fraction_factor: int
    fraction_in_seconds: bool


def _unit_table() -> dict[str, _Unit]:
    nanos = _Unit(1, False, 0, False)
    micros = _Unit(NANOS_PER_MICROSECOND, False, NANOS_PER_MICROSECOND, False)
    millis = _Unit(NANOS_PER_MILLISECOND, False, NANOS_PER_MILLISECOND, False)
    seconds = _Unit(1, True, NANOS_PER_SECOND, False)
    # Minutes are the last unit whose fraction humantime counts in nanoseconds.
    minutes = _Unit(SECONDS_PER_MINUTE, True, NANOS_PER_MINUTE, False)
    hours = _Unit(SECONDS_PER_HOUR, True, SECONDS_PER_HOUR, True)
    days = _Unit(SECONDS_PER_DAY, True, SECONDS_PER_DAY, True)
    weeks = _Unit(SECONDS_PER_WEEK, True, SECONDS_PER_WEEK, True)
    months = _Unit(SECONDS_PER_MONTH, True, SECONDS_PER_MONTH, True)
    years = _Unit(SECONDS_PER_YEAR, True, SECONDS_PER_YEAR, True)
    spellings = {
        nanos: ("nanos", "nsec", "ns"),
        micros: ("usec", "us", "µs"),
        millis: ("millis", "msec", "ms"),
        seconds: ("seconds", "second", "secs", "sec", "s"),
        minutes: ("minutes", "minute", "min", "mins", "m"),
        hours: ("hours", "hour", "hr", "hrs", "h"),
        days: ("days", "day", "d"),
        weeks: ("weeks", "week", "wk", "wks", "w"),
        months: ("months", "month", "M"),
        years: ("years", "year", "yr", "yrs", "y"),
    }
    return {name: unit for unit, names in spellings.items() for name in names}


_UNITS: Final = _unit_table()


def _byte_offset(text: str, index: int) -> int:
    # humantime reports offsets in UTF-8 bytes. "surrogatepass" keeps a lone surrogate
    # (which JSON can smuggle in) from turning a DurationError into a UnicodeError.
    return len(text[:index].encode("utf-8", "surrogatepass"))


def _invalid_character(text: str, index: int) -> DurationError:
    return DurationError(f"invalid character at {_byte_offset(text, index)}")


def _add(total: int, amount: int, in_seconds: bool) -> int:
    """Add ``amount`` (seconds or nanoseconds) to ``total`` nanoseconds, as humantime does.

    humantime sums a sub-second amount onto the running nanosecond remainder in a u64
    before carrying whole seconds, so that sum has a bound of its own; the whole seconds
    of the total must fit a u64 as well.
    """
    if in_seconds:
        total += amount * NANOS_PER_SECOND
    else:
        if total % NANOS_PER_SECOND + amount > _U64_MAX:
            raise DurationError(_OVERFLOW)
        total += amount
    if total > MAX_NANOS:
        raise DurationError(_OVERFLOW)
    return total


def _add_span(
    total: int, text: str, start: int, end: int, whole: int, fraction: tuple[int, int] | None
) -> int:
    """Add the span ``whole[.fraction] text[start:end]`` to ``total`` nanoseconds."""
    name = text[start:end]
    unit = _UNITS.get(name)
    if unit is None:
        if not name:
            raise DurationError(f"time unit needed, for example {whole}sec or {whole}ms")
        # Unit names are ASCII letters and "µ", so quoting needs no escapes.
        raise DurationError(f'unknown time unit "{name}", {_UNITS_HINT}')
    amount = whole * unit.whole_factor
    if amount > _U64_MAX:
        raise DurationError(_OVERFLOW)
    total = _add(total, amount, unit.whole_in_seconds)
    if fraction is not None:
        numerator, digits = fraction
        amount = numerator * unit.fraction_factor
        if unit.fraction_factor == 0 or amount > _U64_MAX:
            raise DurationError(_OVERFLOW)
        amount, remainder = divmod(amount, 10**digits)
        if remainder:
            raise DurationError(_OVERFLOW)
        total = _add(total, amount, unit.fraction_in_seconds)
    return total


def _first_digit(text: str, pos: int) -> tuple[int, int] | None:
    """Skip whitespace from ``pos`` to a span's first digit: (index after it, digit).

    None at the end of the text. If anything else comes first, a DurationError that
    names ``pos``, where the skipping began, rather than the offending character:
    humantime reports it so.
    """
    for index in range(pos, len(text)):
        char = text[index]
        digit = _DIGITS.get(char)
        if digit is not None:
            return index + 1, digit
        if char not in _WHITESPACE:
            raise DurationError(f"expected number at {_byte_offset(text, pos)}")
    return None


def _fraction(text: str, pos: int, mark: int) -> tuple[int, int, int, int]:
    """Read the digits after a decimal point at ``mark`` (``pos`` is just past it).

    Returns (numerator, number of digits, index after the stop, unit start). Reading
    stops after the first unit character or at the end of the text; whitespace is
    skipped. ``mark`` follows the last character read before the stop, and is both
    where an invalid character is reported and where the unit starts.
    """
    numerator = 0
    digits = 0
    length = len(text)
    while pos < length:
        char = text[pos]
        pos += 1
        digit = _DIGITS.get(char)
        if digit is not None:
            digits += 1
            # The denominator 10**digits is a u64 in humantime: 20 digits overflow it.
            if digits > 19:
                raise DurationError(_OVERFLOW)
            numerator = numerator * 10 + digit
        elif char in _UNIT_CHARS:
            break
        elif char not in _WHITESPACE:
            raise _invalid_character(text, mark)
        mark = pos
    if digits == 0:
        raise _invalid_character(text, mark)
    return numerator, digits, pos, mark


def parse_duration(text: str) -> int:
    """Return the duration ``text`` spells, in nanoseconds, exactly as humantime 2.4.0 does.

    Guarantees: the result is a non-negative int no greater than :data:`MAX_NANOS`; any
    text humantime refuses raises :class:`DurationError` (a ``ValueError``) and nothing
    else is raised, whatever the input. Runs in time linear in ``len(text)`` and keeps
    no state between calls.
    """
    if text == "0":
        return 0
    found = _first_digit(text, 0)
    if found is None:
        raise DurationError("value was empty")
    pos, whole = found
    length = len(text)
    total = 0
    while True:
        # The number: digits (whitespace between them is skipped), up to the first unit
        # character, or through a fraction. `mark` trails one character behind `pos`
        # so that it ends on the unit's first character.
        fraction: tuple[int, int] | None = None
        mark = pos
        while pos < length:
            char = text[pos]
            pos += 1
            digit = _DIGITS.get(char)
            if digit is not None:
                whole = whole * 10 + digit
                if whole > _U64_MAX:
                    raise DurationError(_OVERFLOW)
            elif char in _UNIT_CHARS:
                break
            elif char == ".":
                numerator, digits, pos, mark = _fraction(text, pos, mark)
                fraction = numerator, digits
                break
            elif char not in _WHITESPACE:
                raise _invalid_character(text, mark)
            mark = pos
        # The unit: letters up to whitespace, a digit (the next span, glued on) or the
        # end. The unit's first character, if any, has been read already.
        start = mark
        end = pos
        next_digit: int | None = None
        while pos < length:
            char = text[pos]
            pos += 1
            next_digit = _DIGITS.get(char)
            if next_digit is not None or char in _WHITESPACE:
                break
            if char not in _UNIT_CHARS:
                raise _invalid_character(text, end)
            end = pos
        total = _add_span(total, text, start, end, whole, fraction)
        if next_digit is not None:
            whole = next_digit
            continue
        found = _first_digit(text, pos)
        if found is None:
            return total
        pos, whole = found


def _counted(value: int, singular: str) -> str:
    return f"{value}{singular}" if value == 1 else f"{value}{singular}s"


def format_duration(nanos: int) -> str:
    """Spell ``nanos`` nanoseconds as humantime 2.4.0 does: ``4m 59s 998ms 52us 371ns``.

    ``0s`` for zero; otherwise the non-zero parts, largest first, space separated:
    ``Nyears``/``1year``, ``Nmonths``/``1month``, ``Ndays``/``1day``, then ``h``, ``m``,
    ``s``, ``ms``, ``us``, ``ns``. ``parse_duration`` of the result gives ``nanos`` back
    for any value up to :data:`MAX_NANOS` (larger values format too, with more years).
    Raises ValueError if ``nanos`` is negative.
    """
    return format_duration_ascii(nanos).decode("ascii")


def format_duration_ascii(nanos: int) -> bytes:
    """:func:`format_duration` as ASCII bytes, the form GET's listing joins.

    GET lists every live rule's remaining duration each time it is asked (thousands of
    rules, every few ms under a probe): the fraction of a second is read from tables of
    bytes, and the whole seconds of one rule's remaining time, which repeat from one GET
    to the next, are formatted once (docs/benchmarks.md, "GET's listing a quarter
    cheaper")."""
    if nanos <= 0:
        if nanos == 0:
            return b"0s"
        raise ValueError(f"a duration cannot be negative, got {nanos} ns")
    seconds, subsecond = divmod(nanos, NANOS_PER_SECOND)
    micros, subsecond = divmod(subsecond, NANOS_PER_MICROSECOND)
    millis, micros = divmod(micros, 1_000)
    text = _seconds_ascii(seconds) + _MILLIS[millis] + _MICROS[micros] + _NANOS[subsecond]
    # Each part of a fraction comes with the space before it: none before the first.
    return text if seconds else text[1:]


def _subsecond_parts(unit: str) -> tuple[bytes, ...]:
    """The part for 0-999 of ``unit``, after its space (``b""`` for 0)."""
    return (b"", *(f" {value}{unit}".encode() for value in range(1, 1_000)))


_MILLIS: Final = _subsecond_parts("ms")
_MICROS: Final = _subsecond_parts("us")
_NANOS: Final = _subsecond_parts("ns")


@lru_cache(maxsize=65_536)
def _seconds_ascii(seconds: int) -> bytes:
    """The whole-second parts of :func:`format_duration` (``b""`` for 0)."""
    years, seconds = divmod(seconds, SECONDS_PER_YEAR)
    months, seconds = divmod(seconds, SECONDS_PER_MONTH)
    days, seconds = divmod(seconds, SECONDS_PER_DAY)
    hours, seconds = divmod(seconds, SECONDS_PER_HOUR)
    minutes, seconds = divmod(seconds, SECONDS_PER_MINUTE)
    parts: list[str] = []
    if years:
        parts.append(_counted(years, "year"))
    if months:
        parts.append(_counted(months, "month"))
    if days:
        parts.append(_counted(days, "day"))
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if seconds:
        parts.append(f"{seconds}s")
    return " ".join(parts).encode()

"""Tests for kumo.model.duration: humantime 2.4.0 vectors, documented examples, properties."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kumo.model.duration import (
    MAX_NANOS,
    NANOS_PER_SECOND,
    NANOS_PER_YEAR,
    DurationError,
    format_duration,
    parse_duration,
)

# What humantime 2.4.0 itself does with each input; tests/data/README.md says how it was made.
HUMANTIME = Path(__file__).resolve().parents[1] / "data" / "humantime-2.4.0.jsonl"


def _load() -> list[tuple[int, dict[str, Any]]]:
    with HUMANTIME.open(encoding="utf-8") as lines:
        return [(number, json.loads(line)) for number, line in enumerate(lines, 1)]


_VECTORS = _load()
PARSED = [
    pytest.param(v["parse"], v["secs"] * NANOS_PER_SECOND + v["nanos"], id=f"line{n}")
    for n, v in _VECTORS
    if "parse" in v and "error" not in v
]
REFUSED = [
    pytest.param(v["parse"], v["error"], id=f"line{n}")
    for n, v in _VECTORS
    if "parse" in v and "error" in v
]
FORMATTED = [
    pytest.param(v["format_secs"] * NANOS_PER_SECOND + v["format_nanos"], v["text"], id=f"line{n}")
    for n, v in _VECTORS
    if "format_secs" in v
]


def test_every_vector_line_is_used() -> None:
    # Guards against a vector file that changed shape and silently loads fewer cases.
    assert len(_VECTORS) == 497
    assert len(PARSED) + len(REFUSED) + len(FORMATTED) == len(_VECTORS)


@pytest.mark.parametrize(("text", "nanos"), PARSED)
def test_parse_accepts_as_humantime(text: str, nanos: int) -> None:
    assert parse_duration(text) == nanos


@pytest.mark.parametrize(("text", "message"), REFUSED)
def test_parse_refuses_as_humantime(text: str, message: str) -> None:
    with pytest.raises(DurationError) as refused:
        parse_duration(text)
    # kumo keeps humantime's wording, offsets included.
    assert str(refused.value) == message


@pytest.mark.parametrize(("nanos", "text"), FORMATTED)
def test_format_as_humantime(nanos: int, text: str) -> None:
    assert format_duration(nanos) == text
    assert parse_duration(text) == nanos


# --- docs/rules.md, "Durations" ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("1h 30m", 5_400 * NANOS_PER_SECOND),
        ("1h30m", 5_400 * NANOS_PER_SECOND),
        ("20 min 17 nsec", 1_200 * NANOS_PER_SECOND + 17),
        ("0", 0),
        ("1.5h", 5_400 * NANOS_PER_SECOND),
        ("5 5s", 55 * NANOS_PER_SECOND),
        ("1M", 2_630_016 * NANOS_PER_SECOND),
        ("1m", 60 * NANOS_PER_SECOND),
        ("1y", 31_557_600 * NANOS_PER_SECOND),
    ],
)
def test_spec_examples(text: str, nanos: int) -> None:
    assert parse_duration(text) == nanos


@pytest.mark.parametrize(
    ("names", "seconds", "nanos"),
    [
        ("nanos nsec ns", 0, 1),
        ("usec us µs", 0, 1_000),
        ("millis msec ms", 0, 1_000_000),
        ("seconds second secs sec s", 1, 0),
        ("minutes minute min mins m", 60, 0),
        ("hours hour hr hrs h", 3_600, 0),
        ("days day d", 86_400, 0),
        ("weeks week wk wks w", 604_800, 0),
        ("months month M", 2_630_016, 0),
        ("years year yr yrs y", 31_557_600, 0),
    ],
)
def test_spec_units(names: str, seconds: int, nanos: int) -> None:
    for name in names.split():
        assert parse_duration(f"3{name}") == 3 * (seconds * NANOS_PER_SECOND + nanos), name
        # Units are case-sensitive: "M" is months, and no other spelling has a capital.
        if name.isascii() and name not in ("m", "M"):
            with pytest.raises(DurationError, match="unknown time unit"):
                parse_duration(f"3{name.upper()}")


def test_spec_format_example() -> None:
    assert format_duration(299 * NANOS_PER_SECOND + 998_052_371) == "4m 59s 998ms 52us 371ns"


@pytest.mark.parametrize("text", ["", "  ", "5", "00", "1.5ns", "0.5ns", "1.s", "-5m", "5Y"])
def test_spec_refusals(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


# --- Beyond the vectors: humantime's u64 arithmetic and Rust's notion of text ---------


def test_largest_duration_parses_and_one_more_nanosecond_does_not() -> None:
    most = "18446744073709551615s 999999999ns"
    assert parse_duration(most) == MAX_NANOS
    assert format_duration(MAX_NANOS).startswith("584542046090years ")
    assert parse_duration(format_duration(MAX_NANOS)) == MAX_NANOS
    with pytest.raises(DurationError, match="too large"):
        parse_duration(most + " 1ns")


def test_sub_second_amounts_overflow_in_the_order_humantime_adds_them() -> None:
    # humantime adds a sub-second amount to the nanosecond remainder in a u64 before
    # carrying seconds, so a remainder already present can push it over.
    assert parse_duration("18446744073709551615ns 1ns") == 18446744073709551616
    with pytest.raises(DurationError, match="too large"):
        parse_duration("1ns 18446744073709551615ns")


def test_hour_fractions_must_be_whole_seconds() -> None:
    assert parse_duration("0.5h") == 1_800 * NANOS_PER_SECOND
    with pytest.raises(DurationError, match="too large"):
        parse_duration("0.0000001h")  # 0.36 ms: whole nanoseconds, but not whole seconds
    assert parse_duration("0.0000001m") == 6_000  # minutes are summed in nanoseconds


def test_twenty_fraction_digits_overflow_before_a_later_bad_character() -> None:
    assert parse_duration("1.0000000000000000000s") == NANOS_PER_SECOND
    with pytest.raises(DurationError, match="too large"):
        parse_duration("1.00000000000000000000s,")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("µ", "expected number at 0"),
        ("1µ,", "invalid character at 3"),  # offsets count UTF-8 bytes: µ is two
        ("\u2003\u20035s", None),  # Unicode White_Space is whitespace
        ("5\x1cs", "invalid character at 1"),  # str.isspace() says yes; Rust says no
        ("5\ud800s", "invalid character at 1"),  # a lone surrogate is no crash
        ("5μs", "invalid character at 1"),  # Greek mu is not the micro sign
    ],
)
def test_characters_as_rust_sees_them(text: str, message: str | None) -> None:
    if message is None:
        assert parse_duration(text) == 5 * NANOS_PER_SECOND
    else:
        with pytest.raises(DurationError) as refused:
            parse_duration(text)
        assert str(refused.value) == message


def test_format_refuses_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        format_duration(-1)


# --- Properties ------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=100 * NANOS_PER_YEAR))
@example(0)
@example(100 * NANOS_PER_YEAR)
def test_format_then_parse_round_trips(nanos: int) -> None:
    assert parse_duration(format_duration(nanos)) == nanos


@given(st.integers(min_value=0, max_value=MAX_NANOS))
def test_format_then_parse_round_trips_up_to_the_largest(nanos: int) -> None:
    assert parse_duration(format_duration(nanos)) == nanos


# Texts dense in what the parser cares about, where plain st.text() rarely goes.
_NEAR_DURATIONS = st.lists(
    st.sampled_from([*"0123456789 .:-,\tµ", "ns", "us", "ms", "s", "m", "M", "h", "y", "9" * 20]),
    max_size=30,
).map("".join)


@given(st.one_of(st.text(), _NEAR_DURATIONS))
@example("")
@example("0")
@example("5 5s 5")
def test_parse_returns_a_duration_or_raises_duration_error(text: str) -> None:
    # Like h11's fuzzing: garbage in may only produce the declared error.
    try:
        nanos = parse_duration(text)
    except DurationError:
        return
    assert 0 <= nanos <= MAX_NANOS

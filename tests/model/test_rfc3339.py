"""RFC 3339: formatting as chrono prints it; parsing of ``expires`` (accepted forms,
chrono's refusals, a fuzz); and the two agreeing."""

from __future__ import annotations

import contextlib
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.rfc3339 import (
    IMPOSSIBLE,
    INVALID,
    OUT_OF_RANGE,
    TOO_LONG,
    TOO_SHORT,
    TimestampError,
    format_rfc3339,
    parse_rfc3339,
)

SECOND = 1_000_000_000


def test_format_fraction_digits() -> None:
    assert format_rfc3339(0) == "1970-01-01T00:00:00Z"
    assert format_rfc3339(1_000_000) == "1970-01-01T00:00:00.001Z"
    assert format_rfc3339(1_000) == "1970-01-01T00:00:00.000001Z"
    assert format_rfc3339(1) == "1970-01-01T00:00:00.000000001Z"


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01t00:00:00z", 0),
        ("1970-01-01 00:00:00Z", 0),
        ("1970-01-01T01:00:00+01:00", 0),
        ("1969-12-31T23:00:00-01:00", 0),
        ("1970-01-01T00:00:00.1Z", SECOND // 10),
        ("1970-01-01T00:00:00.123456789Z", 123_456_789),
        ("1970-01-01T00:00:00.1234567899999Z", 123_456_789),
        ("1969-12-31T23:59:59Z", -SECOND),
        ("1970-01-01T00:00:60Z", 60 * SECOND),
        ("2024-02-29T12:00:00Z", 1709208000 * SECOND),
        ("2262-04-11T23:47:16.854775807Z", 2**63 - 1),
        ("1677-09-21T00:12:43.145224192Z", -(2**63)),
    ],
)
def test_accepted(text: str, nanos: int) -> None:
    assert parse_rfc3339(text) == nanos


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", TOO_SHORT),
        ("2030", TOO_SHORT),
        ("2030-01-01T00:00:00", TOO_SHORT),
        ("2030-01-01T00:00:00.Z", INVALID),
        ("2030-01-01T00:00:00.", TOO_SHORT),
        ("2030-01-01T00:00", TOO_SHORT),
        ("2030-01-01X00:00:00Z", INVALID),
        ("2030-1-01T00:00:00Z", INVALID),
        ("２０３０-01-01T00:00:00Z", INVALID),
        ("2030-01-01T00:00:00+0100", INVALID),
        ("2030-01-01T00:00:00ZZ", TOO_LONG),
        ("2030-01-01T00:00:00Z ", TOO_LONG),
        ("2030-00-01T00:00:00Z", OUT_OF_RANGE),
        ("2030-01-32T00:00:00Z", OUT_OF_RANGE),
        ("2030-01-01T24:00:00Z", OUT_OF_RANGE),
        ("2030-01-01T00:60:00Z", OUT_OF_RANGE),
        ("2030-01-01T00:00:61Z", OUT_OF_RANGE),
        ("2030-01-01T00:00:00+24:00", OUT_OF_RANGE),
        ("2023-02-29T00:00:00Z", IMPOSSIBLE),
        ("0000-01-01T00:00:00Z", OUT_OF_RANGE),
        ("2262-04-11T23:47:16.854775808Z", OUT_OF_RANGE),
        ("1677-09-21T00:12:43.145224191Z", OUT_OF_RANGE),
    ],
)
def test_refused_with_chronos_words(text: str, why: str) -> None:
    with pytest.raises(TimestampError) as caught:
        parse_rfc3339(text)
    assert str(caught.value) == why


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_reads_what_the_log_records_write(nanos: int) -> None:
    assert parse_rfc3339(format_rfc3339(nanos)) == nanos


@given(st.datetimes(timezones=st.timezones()))
def test_agrees_with_datetime(moment: dt.datetime) -> None:
    offset = moment.utcoffset()
    assert offset is not None
    if offset.seconds % 60 or abs(offset) >= dt.timedelta(days=1):
        return  # RFC 3339 offsets are whole minutes under a day
    text = moment.isoformat(timespec="microseconds")
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    delta = moment - epoch
    expected = (delta.days * 86_400 + delta.seconds) * SECOND + delta.microseconds * 1000
    if -(2**63) <= expected < 2**63:
        assert parse_rfc3339(text) == expected


@given(st.text(alphabet="0123456789-:.TtZz +", max_size=40) | st.text(max_size=40))
def test_garbage_only_raises_timestamp_error(text: str) -> None:
    with contextlib.suppress(TimestampError):
        parse_rfc3339(text)

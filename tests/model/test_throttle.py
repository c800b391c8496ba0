"""Message-rate throttles (kumo/model/throttle.py): the spec's text, the GCRA and its
twin of the Redis script (the script itself runs on a real Redis in
tests/runtime/test_message_rates.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kumo.model.throttle import (
    GCRA_SCRIPT,
    Grant,
    ThrottleSpec,
    ThrottleSpecError,
    ThrottleTable,
    gcra,
    throttle_label,
)

READY = "unspecified->mx_list:127.0.0.1:2525@smtp_client"


@pytest.mark.parametrize(
    ("text", "spec", "canonical"),
    [
        ("10/s", ThrottleSpec(10, 1), "10/s"),
        ("10/sec", ThrottleSpec(10, 1), "10/s"),
        ("10/second", ThrottleSpec(10, 1), "10/s"),
        ("50/m", ThrottleSpec(50, 60), "50/m"),
        ("50/min", ThrottleSpec(50, 60), "50/m"),
        ("50/minute", ThrottleSpec(50, 60), "50/m"),
        ("1000/h", ThrottleSpec(1000, 3600), "1000/h"),
        ("1,000/hr", ThrottleSpec(1000, 3600), "1000/h"),
        ("1_000/hour", ThrottleSpec(1000, 3600), "1000/h"),
        ("10/d", ThrottleSpec(10, 86400), "10/d"),
        ("10/day", ThrottleSpec(10, 86400), "10/d"),
        ("5/30s", ThrottleSpec(5, 30), "5/30s"),
        ("5/120s", ThrottleSpec(5, 120), "5/2m"),
        ("5/90min", ThrottleSpec(5, 5400), "5/90m"),
        ("local:50/m", ThrottleSpec(50, 60, local=True), "local:50/m"),
        ("20/s,max_burst=5", ThrottleSpec(20, 1, 5), "20/s,max_burst=5"),
        (
            "local:1,000/2h,max_burst=10",
            ThrottleSpec(1000, 7200, 10, True),
            "local:1000/2h,max_burst=10",
        ),
    ],
)
def test_kumomtas_examples(text: str, spec: ThrottleSpec, canonical: str) -> None:
    assert ThrottleSpec.parse(text) == spec
    assert str(spec) == canonical
    assert ThrottleSpec.parse(canonical) == spec


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0/s", "limit must be greater than 0"),
        ("0_000/h", "limit must be greater than 0"),
        ("10", "LIMIT/PERIOD"),
        ("ten/s", "the limit must be a whole number"),
        ("-1/s", "the limit must be a whole number"),
        ("/s", "the limit must be a whole number"),
        ("10/", "the period must be"),
        ("10/week", "the period must be"),
        ("10/S", "the period must be"),
        ("10/0s", "the period must be longer than 0"),
        ("10/s,burst=3", "the only option after the period is max_burst=N"),
        ("10/s,max_burst=0", "max_burst must be greater than 0"),
        ("10/s,max_burst=", "max_burst must be a whole number"),
        ("local:", "LIMIT/PERIOD"),
        (" 10/s", "the limit must be a whole number"),
    ],
)
def test_a_bad_spec_says_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(ThrottleSpecError, match=problem):
        ThrottleSpec.parse(text)


def test_an_invalid_spec_cannot_be_made() -> None:
    with pytest.raises(ThrottleSpecError, match="limit must be greater than 0"):
        ThrottleSpec(0, 1)
    with pytest.raises(ThrottleSpecError, match="period must be greater than 0"):
        ThrottleSpec(1, 0)
    with pytest.raises(ThrottleSpecError, match="max_burst must be greater than 0"):
        ThrottleSpec(1, 1, 0)


def test_burst_interval_and_keys() -> None:
    assert ThrottleSpec(10, 1).burst == 10
    assert ThrottleSpec(10, 1, 3).burst == 3
    assert ThrottleSpec(10, 1).interval == 100_000
    assert ThrottleSpec(3, 1).interval == 333_334  # rounded up: never faster
    assert ThrottleSpec(10**9, 1).interval == 1
    assert throttle_label(READY) == f"kumomta.max_message_rate.{READY}"
    key = throttle_label(READY)
    assert ThrottleSpec(20, 1, 5).storage_key(key) == f"{key}:20:5:1"
    assert ThrottleSpec.parse("100/h").storage_key("k") == "k:100:100:3600"


specs = st.builds(
    ThrottleSpec,
    limit=st.integers(1, 10**12),
    period=st.integers(1, 10**9),
    max_burst=st.none() | st.integers(1, 10**12),
    local=st.booleans(),
)


@given(specs)
def test_text_round_trips(spec: ThrottleSpec) -> None:
    text = str(spec)
    assert ThrottleSpec.parse(text) == spec
    assert str(ThrottleSpec.parse(text)) == text


@given(st.text(alphabet="0123456789_,/:smhdlocaxburtin=ey ", max_size=30) | st.text(max_size=30))
def test_garbage_only_raises_the_declared_error(text: str) -> None:
    try:
        spec = ThrottleSpec.parse(text)
    except ThrottleSpecError:
        return
    assert ThrottleSpec.parse(str(spec)) == spec


def test_gcra_lets_a_burst_pass_then_one_per_interval() -> None:
    interval, burst = 100, 3
    tat: int | None = None
    granted = []
    for _ in range(5):
        grant, tat = gcra(tat, 0, interval, burst)
        granted.append(grant)
    assert granted == [Grant(1, 0)] * 3 + [Grant(0, 100)] * 2
    assert (granted[0].allowed, granted[3].allowed) == (True, False)
    grant, tat = gcra(tat, 100, interval, burst)
    assert grant == Grant(1, 0)
    assert tat == 400
    grant, after = gcra(tat, 150, interval, burst)
    assert (grant, after) == (Grant(0, 50), tat)
    assert grant.seconds == 50e-6
    # After a quiet spell the whole burst is back, and no more than it.
    grant, after = gcra(tat, 10_000, interval, burst, quantity=3)
    assert (grant, after) == (Grant(3, 0), 10_300)
    assert gcra(None, 0, interval, burst, quantity=4) == (Grant(3, 0), 300)
    # Part of a request: what has accrued since.
    assert gcra(300, 250, interval, burst, quantity=5) == (Grant(2, 0), 500)
    with pytest.raises(ValueError, match="positive"):
        gcra(None, 0, 0, burst)


@given(
    interval=st.integers(1, 1_000),
    burst=st.integers(1, 8),
    tat=st.none() | st.integers(0, 20_000),
    now=st.integers(0, 20_000),
    quantity=st.integers(1, 12),
)
def test_a_request_for_several_gets_what_as_many_single_requests_would(
    interval: int, burst: int, tat: int | None, now: int, quantity: int
) -> None:
    grant, after = gcra(tat, now, interval, burst, quantity)
    state, singles = tat, 0
    for _ in range(quantity):
        one, state = gcra(state, now, interval, burst)
        singles += one.granted
    assert (grant.granted, after) == (singles, state)
    if not grant.allowed:
        assert grant == gcra(tat, now, interval, burst)[0]


requests = st.lists(st.tuples(st.integers(0, 5_000), st.integers(1, 10)), min_size=1, max_size=80)


@settings(max_examples=300)
@given(
    interval=st.integers(1, 1_000),
    burst=st.integers(4, 8),
    gaps=requests,
)
def test_no_window_lets_more_pass_than_the_burst_and_the_rate(
    interval: int, burst: int, gaps: list[tuple[int, int]]
) -> None:
    """Whatever the requests (of up to 10 at once), in any window of w microseconds no
    more than ``burst + floor(w / interval)`` messages pass; a refusal's retry_after
    is exact (a request then, the state unchanged, passes; one a microsecond earlier
    does not)."""
    tat: int | None = None
    now = 0
    passed: list[tuple[int, int]] = []
    for gap, quantity in gaps:
        now += gap
        grant, after = gcra(tat, now, interval, burst, quantity)
        if grant.allowed:
            passed.append((now, grant.granted))
        else:
            assert after == tat
            assert grant.retry_after > 0
            assert gcra(tat, now + grant.retry_after, interval, burst, quantity)[0].allowed
            later = gcra(tat, now + grant.retry_after - 1, interval, burst, quantity)[0]
            assert not later.allowed
        tat = after
    for i, (start, _) in enumerate(passed):
        count = 0
        for end, quantity in passed[i:]:
            count += quantity
            assert count <= burst + (end - start) // interval


@settings(deadline=None)  # up to 5,000 requests a case, on a shared machine
@given(
    interval=st.integers(1, 1_000),
    burst=st.integers(1, 20),
    start=st.integers(0, 10**15),
    horizon=st.integers(0, 5_000),
)
def test_steady_demand_gets_exactly_the_bound(
    interval: int, burst: int, start: int, horizon: int
) -> None:
    """A sender that asks whenever it may, from a quiet start: ``burst`` pass at once,
    then one per interval, so a window of w gets exactly ``burst + floor(w / interval)``."""
    table = ThrottleTable()
    now, passed = start, 0
    while now <= start + horizon:
        grant = table.request("k", interval, burst, 1, now)
        if grant.allowed:
            passed += 1
        else:
            now += grant.retry_after
    assert passed == burst + horizon // interval


def test_the_table_forgets_a_state_the_clock_has_passed() -> None:
    table = ThrottleTable()
    assert table.request("a", 100, 2, 2, 1_000).allowed
    assert not table.request("a", 100, 2, 1, 1_000).allowed
    assert table.states == {"a": 1_200}
    assert table.request("b", 100, 1, 1, 1_000).allowed
    table.prune(1_100)
    assert table.states == {"a": 1_200}
    table.prune(1_200)
    assert table.states == {}
    # A state at the clock means no more than no state.
    assert table.request("a", 100, 2, 2, 1_200).allowed


def test_the_script_reads_redis_time_and_expires_the_key() -> None:
    assert "redis.call('TIME')" in GCRA_SCRIPT
    assert "'PX'" in GCRA_SCRIPT

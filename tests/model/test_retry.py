"""Tests for kumo.model.retry: KumoMTA's backoff, jitter and early expiry, to the second."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.duration import NANOS_PER_DAY, NANOS_PER_HOUR, NANOS_PER_SECOND
from kumo.model.retry import (
    MAX_DELAY_SECONDS,
    Expired,
    Rescheduled,
    RetryPolicy,
    backoff_seconds,
    jitter_seconds,
    requeue_jitter_seconds,
    requeue_without_attempt,
    reschedule_after_failure,
    retry_delay,
)

S = NANOS_PER_SECOND
DEFAULTS = RetryPolicy()
NO_JITTER = 0.5  # uniform*m - m/2 is 0 at the middle of the range


def test_defaults_are_kumomta_s() -> None:
    assert DEFAULTS.retry_interval == 20 * 60 * S
    assert DEFAULTS.max_retry_interval is None
    assert DEFAULTS.max_age == 7 * NANOS_PER_DAY


def test_default_backoff_doubles_from_twenty_minutes() -> None:
    # KumoMTA's calc_due_defaults, carried on to the ninth failure.
    assert [backoff_seconds(DEFAULTS, k) for k in range(1, 10)] == [
        1200,
        2400,
        4800,
        9600,
        19200,
        38400,
        76800,
        153600,
        307200,
    ]


def test_cap_applies_to_the_backoff() -> None:
    # KumoMTA's calc_due_capped: retry 2s, cap 8s.
    policy = RetryPolicy(2 * S, 8 * S)
    assert [backoff_seconds(policy, k) for k in range(1, 7)] == [2, 4, 8, 8, 8, 8]


def test_only_whole_seconds_of_the_intervals_count() -> None:
    policy = RetryPolicy(2 * S + S // 2, 9 * S + S - 1)
    assert [backoff_seconds(policy, k) for k in range(1, 5)] == [2, 4, 8, 9]


def test_backoff_saturates() -> None:
    assert backoff_seconds(RetryPolicy(S), 54) == 2**53
    assert backoff_seconds(RetryPolicy(S), 55) == MAX_DELAY_SECONDS
    assert backoff_seconds(RetryPolicy(S), 70_000) == MAX_DELAY_SECONDS
    assert backoff_seconds(RetryPolicy(S, NANOS_PER_HOUR), 70_000) == 3600


def test_failures_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        backoff_seconds(DEFAULTS, 0)


@pytest.mark.parametrize(
    ("retry_interval", "uniform", "jitter"),
    [
        (20 * 60 * S, 0.0, -30),
        (20 * 60 * S, 0.5, 0),
        (20 * 60 * S, 0.75, 15),
        (20 * 60 * S, 0.999999, 29),
        (20 * 60 * S, 0.9999999999, 29),  # below 1 in single precision too
        (8 * NANOS_PER_HOUR, 0.0, -30),  # the magnitude is capped at 60 s
        (100 * S, 0.0, -2),  # m = 5 s: -2.5 truncates to -2
        (100 * S, 0.99, 2),
        (40 * S, 0.0, -1),
        (40 * S, 0.6, 0),
        (39 * S, 0.0, 0),  # under 40 s the jitter is always 0
        (5 * S, 0.0, 0),
        (0, 0.0, 0),
    ],
)
def test_jitter(retry_interval: int, uniform: float, jitter: int) -> None:
    assert jitter_seconds(RetryPolicy(retry_interval), uniform) == jitter


@pytest.mark.parametrize("uniform", [-0.1, 1.0, math.nan, math.inf])
def test_jitter_needs_a_uniform_number(uniform: float) -> None:
    with pytest.raises(ValueError, match="uniform"):
        jitter_seconds(DEFAULTS, uniform)


def test_the_jitter_is_not_capped() -> None:
    policy = RetryPolicy(20 * 60 * S, 20 * 60 * S)
    assert retry_delay(policy, 5, 0.99) == (1200 + 29) * S


def test_the_delay_is_never_negative() -> None:
    # A cap below a fortieth of retry_interval leaves the jitter alone: KumoMTA would
    # date the message in the past; kumo makes it due at once.
    assert retry_delay(RetryPolicy(20 * 60 * S, 0), 3, 0.0) == 0


def test_retry_schedule_of_five_seconds() -> None:
    # KumoMTA's integration test retry_schedule: the gaps between failures fall in
    # [5, 7.5], [10, 15], [20, 30]...; with 5 s there is no jitter, so exactly those.
    policy = RetryPolicy(5 * S)
    failed_at, gaps = 0, []
    for failures in range(1, 6):
        outcome = reschedule_after_failure(
            policy, created_at=0, failed_at=failed_at, failures=failures, uniform=0.3
        )
        assert isinstance(outcome, Rescheduled)
        gaps.append((outcome.due - failed_at) // S)
        failed_at = outcome.due
    assert gaps == [5, 10, 20, 40, 80]


def test_ninth_failure_at_85_hours_expires() -> None:
    failed_at = 0
    for failures in range(1, 9):
        outcome = reschedule_after_failure(
            DEFAULTS, created_at=0, failed_at=failed_at, failures=failures, uniform=NO_JITTER
        )
        assert isinstance(outcome, Rescheduled)
        failed_at = outcome.due
    assert failed_at == 85 * NANOS_PER_HOUR
    outcome = reschedule_after_failure(
        DEFAULTS, created_at=0, failed_at=failed_at, failures=9, uniform=NO_JITTER
    )
    assert outcome == Expired(
        "Next delivery time would be 7days 2h 20m after creation, which exceeds max_age=7days"
    )
    assert (outcome.code, outcome.enhanced_code, outcome.site) == (551, (5, 4, 7), "")


def test_expiry_text_keeps_every_nanosecond() -> None:
    # The reference's example: a failure 12.003005 ms after the 85 h mark.
    created_at = 1_700_000_000 * S
    late = 12 * 1_000_000 + 3 * 1_000 + 5
    outcome = reschedule_after_failure(
        DEFAULTS,
        created_at=created_at,
        failed_at=created_at + 85 * NANOS_PER_HOUR + late,
        failures=9,
        uniform=NO_JITTER,
    )
    assert isinstance(outcome, Expired)
    assert outcome.content == (
        "Next delivery time would be 7days 2h 20m 12ms 3us 5ns after creation, "
        "which exceeds max_age=7days"
    )


def test_the_delay_counts_from_the_failure() -> None:
    # A failure long after the due time (a slow connection) starts its backoff then.
    outcome = reschedule_after_failure(
        DEFAULTS, created_at=0, failed_at=7_777 * S, failures=2, uniform=NO_JITTER
    )
    assert outcome == Rescheduled(due=(7_777 + 2_400) * S, delay=2_400 * S)


def test_landing_exactly_on_max_age_is_not_expiry() -> None:
    policy = RetryPolicy(60 * S, None, 100 * S)
    assert reschedule_after_failure(
        policy, created_at=0, failed_at=40 * S, failures=1, uniform=NO_JITTER
    ) == Rescheduled(100 * S, 60 * S)
    assert isinstance(
        reschedule_after_failure(
            policy, created_at=0, failed_at=40 * S + 1, failures=1, uniform=NO_JITTER
        ),
        Expired,
    )


def test_requeue_jitter_is_under_a_minute() -> None:
    assert requeue_jitter_seconds(0.0) == 0
    assert requeue_jitter_seconds(0.5) == 30
    assert requeue_jitter_seconds(0.9999999999) == 59


def test_requeue_without_attempt() -> None:
    assert requeue_without_attempt(DEFAULTS, created_at=0, now=100 * S, delay=30 * S) == (
        Rescheduled(130 * S, 30 * S)
    )
    # The reference's example of chrono's form, and `>=` rather than `>`.
    outcome = requeue_without_attempt(
        DEFAULTS, created_at=0, now=7 * NANOS_PER_DAY - 10 * S, delay=22 * S + S // 2
    )
    assert outcome == Expired("Next delivery time PT604812.5S > PT604800S", site="localhost")
    outcome = requeue_without_attempt(
        DEFAULTS, created_at=0, now=7 * NANOS_PER_DAY - 10 * S, delay=10 * S
    )
    assert outcome == Expired("Next delivery time PT604800S > PT604800S", site="localhost")


@pytest.mark.parametrize(
    ("age", "text"),
    [
        (0, "P0D"),
        (1, "PT0.000000001S"),
        (S // 4, "PT0.25S"),
        (S + 1_000, "PT1.000001S"),
        (90 * S, "PT90S"),
    ],
)
def test_requeue_expiry_writes_ages_as_chrono_does(age: int, text: str) -> None:
    outcome = requeue_without_attempt(RetryPolicy(max_age=0), created_at=0, now=0, delay=age)
    assert outcome == Expired(f"Next delivery time {text} > P0D", site="localhost")


# -- properties ----------------------------------------------------------------------

seconds = st.integers(min_value=0, max_value=10 * 365 * 86_400)
policies = st.builds(
    RetryPolicy,
    retry_interval=st.integers(min_value=0, max_value=2 * NANOS_PER_DAY),
    max_retry_interval=st.none() | st.integers(min_value=0, max_value=30 * NANOS_PER_DAY),
    max_age=st.integers(min_value=0, max_value=60 * NANOS_PER_DAY),
)
uniforms = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
failure_counts = st.integers(min_value=1, max_value=80)


@given(policies, failure_counts)
def test_backoff_doubles_until_the_cap(policy: RetryPolicy, failures: int) -> None:
    this, following = backoff_seconds(policy, failures), backoff_seconds(policy, failures + 1)
    assert following >= this
    cap = MAX_DELAY_SECONDS
    if policy.max_retry_interval is not None:
        cap = min(cap, policy.max_retry_interval // S)
    assert following == min(2 * this, cap) or this * 2 > 2**64 - 1


@given(policies, failure_counts, uniforms)
def test_delay_is_monotone_for_one_draw(policy: RetryPolicy, failures: int, u: float) -> None:
    assert retry_delay(policy, failures + 1, u) >= retry_delay(policy, failures, u)


@given(policies, failure_counts, uniforms)
def test_jitter_within_bounds(policy: RetryPolicy, failures: int, uniform: float) -> None:
    magnitude = min(policy.retry_interval / S / 20, 60.0)
    jitter = jitter_seconds(policy, uniform)
    # Single precision may round the magnitude up by a hair, never by a second.
    assert abs(jitter) <= math.floor(magnitude / 2 * (1 + 1e-6))
    delay = retry_delay(policy, failures, uniform)
    assert delay % S == 0
    assert delay == max(backoff_seconds(policy, failures) + jitter, 0) * S


@given(
    policies,
    failure_counts,
    uniforms,
    st.integers(min_value=0, max_value=2**62),
    st.integers(min_value=-NANOS_PER_DAY, max_value=90 * NANOS_PER_DAY),
)
def test_expiry_iff_next_due_past_max_age(
    policy: RetryPolicy, failures: int, uniform: float, created_at: int, age: int
) -> None:
    failed_at = created_at + age
    outcome = reschedule_after_failure(
        policy, created_at=created_at, failed_at=failed_at, failures=failures, uniform=uniform
    )
    delay = retry_delay(policy, failures, uniform)
    if age + delay > policy.max_age:
        assert isinstance(outcome, Expired)
        assert outcome.content.startswith("Next delivery time would be ")
    else:
        assert outcome == Rescheduled(failed_at + delay, delay)

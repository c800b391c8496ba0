"""The admin-first gate's policy: requests close it, it opens when they are answered,
never stays closed longer than ``hold``, and rests ``rest`` times as long as it was
closed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.admin_first import AdminFirst, WritesFirst


def test_a_request_closes_the_gate_until_it_is_answered() -> None:
    gate = AdminFirst(0.1)
    assert gate.opens_at(0.0) is None
    gate.begin(1.0)
    assert gate.closed
    assert gate.opens_at(1.05) == pytest.approx(1.1)
    assert gate.end(1.02) is True
    assert gate.opens_at(1.02) is None


def test_the_gate_opens_after_hold_however_long_requests_take() -> None:
    gate = AdminFirst(0.1)
    gate.begin(0.0)
    assert gate.opens_at(0.1) is None  # a slow request no longer holds the mail back
    assert gate.end(5.0) is False  # it had opened already


def test_the_gate_rests_as_long_as_it_was_closed() -> None:
    gate = AdminFirst(0.1)
    gate.begin(0.0)
    gate.end(0.04)
    gate.begin(0.05)  # within the rest: the gate stays open for the mail
    assert gate.opens_at(0.06) is None
    assert gate.opens_at(0.08) == pytest.approx(0.18)  # rest over, a request in flight
    gate.end(0.09)
    assert gate.opens_at(0.09) is None


def test_the_gate_rests_rest_times_as_long_as_it_was_closed() -> None:
    gate = AdminFirst(0.1, rest=0.25)
    gate.begin(0.0)
    gate.end(0.04)
    gate.begin(0.045)  # within the rest of 0.01
    assert gate.opens_at(0.045) is None
    assert gate.opens_at(0.05) == pytest.approx(0.15)  # rested: closed again


def test_a_rest_of_zero_is_refused() -> None:
    """The work that waits would never go on under a stream of requests."""
    with pytest.raises(ValueError, match="rest"):
        AdminFirst(0.1, rest=0.0)


def test_a_hold_of_zero_never_closes() -> None:
    gate = AdminFirst(0.0)
    gate.begin(0.0)
    assert not gate.closed
    assert gate.opens_at(0.0) is None
    assert gate.end(1.0) is False


def test_answering_a_request_that_never_came_is_an_error() -> None:
    with pytest.raises(ValueError, match="no admin request is in flight"):
        AdminFirst(0.1).end(0.0)


_steps = st.lists(
    st.tuples(st.sampled_from(["begin", "end", "ask"]), st.floats(0.0, 0.2)),
    max_size=60,
)


@given(st.sampled_from([0.0, 0.01, 0.1]), st.sampled_from([0.25, 1.0, 2.0]), _steps)
def test_the_bounds_hold_for_any_traffic(
    hold: float, rest: float, steps: list[tuple[str, float]]
) -> None:
    """Over any sequence of requests and questions at non-decreasing times: the gate is
    closed only while a request is in flight, never longer than ``hold`` at a time, and
    stays open at least ``rest`` times as long as it was closed before it closes again;
    a request that comes while the gate is open and rested closes it."""
    gate = AdminFirst(hold, rest)
    now = 0.0
    in_flight = 0
    closed_at: float | None = None
    opened_at = closed_for = -1.0
    for action, step in steps:
        now += step
        if action == "begin":
            rested = closed_at is None and now - opened_at >= rest * closed_for
            gate.begin(now)
            in_flight += 1
            if rested and hold:
                assert gate.closed
        elif action == "end" and in_flight:
            gate.end(now)
            in_flight -= 1
        else:
            opens_at = gate.opens_at(now)
            assert (opens_at is None) == (not gate.closed)
            if opens_at is not None:
                assert now < opens_at <= now + hold
        since = gate.closed_since
        if closed_at is not None and since != closed_at:
            # That closure ended: when its requests were answered, or by its deadline
            # (then, if the gate closed again in this same step, at the deadline).
            opened_at = min(now, closed_at + hold) if since is None else closed_at + hold
            closed_for = opened_at - closed_at
            closed_at = None
        if since is not None:
            assert in_flight
            assert hold
            if closed_at is None:
                closed_at = since
                assert since - opened_at >= rest * closed_for - 1e-9
                assert since <= now
            assert now - closed_at < hold


def test_a_read_waits_for_the_writes_in_flight_when_it_gives_way_only() -> None:
    writes = WritesFirst()
    assert writes.barrier() is None
    first, second = writes.begin(), writes.begin()
    barrier = writes.barrier()
    assert barrier == second
    later = writes.begin()  # began while the read waits: not waited for
    writes.end(second)
    assert not writes.passed(barrier)
    writes.end(first)
    assert writes.passed(barrier)
    assert writes.writes_in_flight == 1
    writes.end(later)
    assert writes.barrier() is None


def test_answering_a_write_that_is_not_in_flight_is_an_error() -> None:
    writes = WritesFirst()
    ticket = writes.begin()
    writes.end(ticket)
    with pytest.raises(ValueError, match="no write 1 is in flight"):
        writes.end(ticket)


@given(st.lists(st.tuples(st.sampled_from(["begin", "end", "barrier"]), st.integers(0, 30))))
def test_passed_means_no_write_up_to_the_barrier_is_in_flight(
    steps: list[tuple[str, int]],
) -> None:
    """Against a plain list of the writes in flight: a barrier is the newest of them, and
    it is passed exactly when none of them up to it is left."""
    writes = WritesFirst()
    in_flight: list[int] = []
    barriers: list[int] = []
    for action, pick in steps:
        if action == "begin":
            in_flight.append(writes.begin())
        elif action == "end" and in_flight:
            writes.end(in_flight.pop(pick % len(in_flight)))
        elif action == "barrier":
            barrier = writes.barrier()
            assert barrier == (max(in_flight) if in_flight else None)
            if barrier is not None:
                barriers.append(barrier)
        for barrier in barriers:
            assert writes.passed(barrier) == all(ticket > barrier for ticket in in_flight)
        assert writes.writes_in_flight == len(in_flight)

"""Declared statistics fields and the fixed-bucket histogram."""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.statistics import (
    LATENCY_BOUNDS,
    DeclaredField,
    Histogram,
    Kind,
    counter,
    declared_fields,
    gauge,
    histogram,
    info,
    is_statistics_record,
    record,
)


@attrs.frozen
class Inner:
    seen: int = counter("Things seen.")


@attrs.frozen
class Outer:
    level: float = gauge("The level now.")
    name: str = info("A name.")
    times: Histogram = histogram("Times taken.")
    inner: Inner = record("The inner part.")


def test_field_makers_declare_kind_and_help() -> None:
    assert declared_fields(Outer) == (
        DeclaredField("level", Kind.GAUGE, "The level now."),
        DeclaredField("name", Kind.INFO, "A name."),
        DeclaredField("times", Kind.HISTOGRAM, "Times taken."),
        DeclaredField("inner", Kind.RECORD, "The inner part."),
    )
    assert declared_fields(Inner) == (DeclaredField("seen", Kind.COUNTER, "Things seen."),)
    assert is_statistics_record(Outer)
    assert is_statistics_record(Inner)


def test_fields_without_declaration_are_refused() -> None:
    @attrs.frozen
    class Partly:
        declared: int = counter("Declared.")
        plain: int = 0

    assert not is_statistics_record(Partly)
    assert not is_statistics_record(int)
    with pytest.raises(TypeError, match=r"Partly\.plain declares no kind"):
        declared_fields(Partly)
    with pytest.raises(TypeError, match="not a statistics record"):
        declared_fields(int)


def test_a_declaration_needs_help() -> None:
    with pytest.raises(ValueError, match="help text"):
        gauge("  ")


def test_fields_stay_required() -> None:
    with pytest.raises(TypeError):
        Inner()  # mypy sees a default in the field maker; attrs does not


def test_histogram_buckets() -> None:
    empty = Histogram.empty((0.1, 1.0))
    assert (empty.counts, empty.count, empty.total) == ((0, 0, 0), 0, 0.0)
    filled = empty.observe(0.1).observe(0.5).observe(1.0).observe(7.0)
    # A bucket counts what is up to and including its bound, as Prometheus's ``le``.
    assert filled.counts == (1, 2, 1)
    assert filled.count == 4
    assert filled.total == pytest.approx(8.6)
    assert list(filled.cumulative()) == [(0.1, 1), (1.0, 3), (math.inf, 4)]
    assert empty.counts == (0, 0, 0)  # a value: observing made a new one
    assert filled == Histogram((0.1, 1.0), (1, 2, 1), filled.total)


def test_histogram_refuses_what_no_histogram_holds() -> None:
    with pytest.raises(ValueError, match="increase"):
        Histogram((1.0, 1.0), (0, 0, 0))
    with pytest.raises(TypeError, match="finite"):
        Histogram((1.0, math.inf), (0, 0, 0))
    with pytest.raises(ValueError, match="need 3 counts"):
        Histogram((1.0, 2.0), (0, 0))
    with pytest.raises(TypeError, match="non-negative"):
        Histogram((1.0,), (0, -1))
    with pytest.raises(TypeError, match="total"):
        Histogram((1.0,), (0, 0), math.nan)
    with pytest.raises(ValueError, match="cannot observe"):
        Histogram.empty().observe(math.nan)


@given(st.lists(st.floats(0, 100, allow_nan=False), max_size=50))
def test_observing_keeps_a_valid_histogram(values: list[float]) -> None:
    histogram = Histogram.empty()
    for value in values:
        histogram = histogram.observe(value)
    # The validators accept what observe built without them.
    rebuilt = Histogram(histogram.bounds, histogram.counts, histogram.total)
    assert rebuilt == histogram
    assert histogram.count == len(values)
    assert histogram.bounds == LATENCY_BOUNDS
    for bound, seen in histogram.cumulative():
        assert seen == sum(value <= bound for value in values)

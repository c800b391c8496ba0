"""Random ids drawn in bulk, and the log's time-ordered event ids."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from kumo.store.ids import ordered_ids, random_ids

TIMES = st.integers(min_value=0, max_value=2**64 - 1)


def test_ids_are_32_lowercase_hex_digits_and_distinct() -> None:
    ids = random_ids(1_000)
    assert len(ids) == 1_000
    assert all(re.fullmatch("[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == 1_000
    assert random_ids(0) == []


def test_ordered_ids_are_32_hex_digits_distinct_and_sorted() -> None:
    ids = ordered_ids(1_000, 1_763_000_000_000_000_000)
    assert all(re.fullmatch("[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == 1_000
    assert ids == sorted(ids)
    assert all(i.startswith(f"{1_763_000_000_000_000_000:016x}") for i in ids)
    assert ordered_ids(0, 5) == []


@given(TIMES, TIMES, st.integers(1, 50), st.integers(1, 50))
def test_ids_of_a_later_commit_sort_after_an_earlier_ones(
    first: int, second: int, first_count: int, second_count: int
) -> None:
    earlier, later = sorted((first, second))
    before = ordered_ids(first_count, earlier)
    after = ordered_ids(second_count, later)
    if earlier < later:
        assert max(before) < min(after)
    assert all(len(i) == 32 for i in before + after)

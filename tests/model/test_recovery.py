"""What a crash left owed: here, the spool's contents of messages that left."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kumo.model.recovery import left_behind


@given(
    st.sets(st.integers(1, 200)),
    st.lists(st.sets(st.integers(1, 200)), max_size=5),
    st.integers(1, 7),
)
def test_left_behind_is_the_spool_less_what_the_queues_hold(
    spooled: set[int], queues: list[set[int]], chunk: int
) -> None:
    ordered = sorted(spooled)
    chunks = [ordered[start : start + chunk] for start in range(0, len(ordered), chunk)]
    held = [sorted(queue, reverse=True) for queue in queues]  # in any order
    assert list(left_behind(chunks, held)) == sorted(spooled - set().union(*queues))

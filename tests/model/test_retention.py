"""The retention decision: which archive segments are old enough to delete."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kumo.model.retention import SegmentAge, past_retention

DAY = 86_400 * 1_000_000_000
NOW = 1_000 * DAY


def segments_of(ages_in_days: list[int], *, size: int = 10) -> list[SegmentAge]:
    """Contiguous segments of ``size`` events whose newest events are that many days old."""
    return [
        SegmentAge(index * size + 1, (index + 1) * size, NOW - age * DAY)
        for index, age in enumerate(ages_in_days)
    ]


def test_keep_forever_deletes_nothing() -> None:
    segments = segments_of([500, 400, 300])
    assert past_retention(segments, now=NOW, retention=None, newest_snapshot=10**9) == ()


def test_segments_older_than_the_retention_are_deleted_oldest_first() -> None:
    segments = segments_of([120, 100, 91, 90, 10])
    deleted = past_retention(segments, now=NOW, retention=90 * DAY, newest_snapshot=10**9)
    assert deleted == tuple(segments[:3])


def test_a_segment_whose_newest_event_is_exactly_at_the_cut_is_kept() -> None:
    segments = segments_of([90])
    assert past_retention(segments, now=NOW, retention=90 * DAY, newest_snapshot=10**9) == ()
    assert past_retention(
        segments, now=NOW + 1, retention=90 * DAY, newest_snapshot=10**9
    ) == tuple(segments)


def test_nothing_beyond_the_newest_snapshot_is_deleted() -> None:
    segments = segments_of([300, 200, 100])
    assert past_retention(segments, now=NOW, retention=DAY, newest_snapshot=20) == tuple(
        segments[:2]
    )
    assert past_retention(segments, now=NOW, retention=DAY, newest_snapshot=19) == tuple(
        segments[:1]
    )
    assert past_retention(segments, now=NOW, retention=DAY, newest_snapshot=0) == ()


def test_it_stops_at_a_hole_between_segments() -> None:
    first, second, third = segments_of([300, 200, 100])
    moved = SegmentAge(second.first_seq + 1, second.last_seq, second.last_time)
    assert past_retention([first, moved, third], now=NOW, retention=DAY, newest_snapshot=10**9) == (
        first,
    )


@st.composite
def archives(draw: st.DrawFn) -> list[SegmentAge]:
    """Contiguous segments with commit times that never go back (as the log's are)."""
    sizes = draw(st.lists(st.integers(1, 50), max_size=12))
    gaps = draw(st.lists(st.integers(0, 40 * DAY), min_size=len(sizes), max_size=len(sizes)))
    segments, first, time = [], 1, NOW - 400 * DAY
    for size, gap in zip(sizes, gaps, strict=True):
        time += gap
        segments.append(SegmentAge(first, first + size - 1, time))
        first += size
    return segments


@given(
    archives(),
    st.one_of(st.none(), st.integers(0, 500 * DAY)),
    st.integers(0, 700),
)
def test_the_decision_keeps_its_guarantees(
    segments: list[SegmentAge], retention: int | None, newest_snapshot: int
) -> None:
    deleted = past_retention(
        segments, now=NOW, retention=retention, newest_snapshot=newest_snapshot
    )
    # A prefix: what is kept follows what is deleted, without a hole.
    assert list(deleted) == segments[: len(deleted)]
    if retention is None:
        assert deleted == ()
        return
    cut = NOW - retention
    for segment in deleted:
        assert segment.last_time < cut
        assert segment.last_seq <= newest_snapshot
    # As much as it may: the first segment kept is too young or beyond the snapshot.
    if len(deleted) < len(segments):
        kept = segments[len(deleted)]
        assert kept.last_time >= cut or kept.last_seq > newest_snapshot

"""Archive retention: which archive segments are old enough to delete. Pure.

``[log] archive_retention`` (SPEC section 11) bounds how long the history is kept: an
archive segment whose newest event was committed longer ago than that is deleted by
the next compaction. What is left is a log that starts at a *cut*: the first kept
event, with a base state (the fold of everything before it) from which every check
and audit goes on (:mod:`kumo.store.retention` keeps that base).

The decision is :func:`past_retention`, a function of the segments' ages, the time and
the newest snapshot only, so that the compaction pass executes it and the tests check
it without a data directory.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from kumo.model.state import State


@attrs.frozen
class SegmentAge:
    """What the decision needs to know of one archive segment."""

    first_seq: int
    last_seq: int
    last_time: int
    """Commit time of its newest (last) event, ns since the epoch."""


def past_retention(
    segments: Sequence[SegmentAge],
    *,
    now: int,
    retention: int | None,
    newest_snapshot: int,
) -> tuple[SegmentAge, ...]:
    """The segments to delete: the oldest of ``segments`` (given in log order) whose
    newest event was committed more than ``retention`` ns before ``now``.

    Guarantees, whatever the input:

    - ``retention`` None (keep forever) deletes nothing;
    - the result is a prefix of ``segments``, contiguous in seq (the first segment
      kept follows the last one deleted, so the kept log has no hole): it stops at
      the first segment that is too young, or that does not follow its predecessor;
    - a segment holding any event committed at or after ``now - retention`` (the
      cut in time) is kept, even if most of its events are older;
    - no segment reaching beyond ``newest_snapshot`` (the seq of the newest snapshot;
      0: none) is deleted: the state after the cut must stay derivable without the
      deleted events.
    """
    if retention is None:
        return ()
    cut = now - retention
    deleted: list[SegmentAge] = []
    for segment in segments:
        if segment.last_time >= cut or segment.last_seq > newest_snapshot:
            break
        if deleted and segment.first_seq != deleted[-1].last_seq + 1:
            break
        deleted.append(segment)
    return tuple(deleted)


def base_projection(base: State) -> State:
    """The projection (rules, counters, gauges; no messages) of the base state at a
    cut, on its own: folding events into it leaves ``base`` as it was."""
    projection = State(keep_messages=False)
    projection.rules = base.rules.copy()
    projection.suspends = base.suspends.copy()
    projection.ready_suspends = base.ready_suspends.copy()
    projection.rebinds = dict(base.rebinds)
    projection.queue_counts = dict(base.queue_counts)
    projection.received_total = base.received_total
    projection.bounced_total = base.bounced_total
    projection.last_seq = base.last_seq
    projection.last_time = base.last_time
    return projection

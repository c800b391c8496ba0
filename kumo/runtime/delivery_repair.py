"""Where a damaged delivery log resumes: the last record it still holds whole, found in
the event log, and the tail after it moved aside.

Recovery cuts the delivery log back to its checkpoint (:mod:`kumo.store.delivery_files`).
That is only safe when the checkpointed segment ends a record exactly there. When it
does not (a line before the checkpoint was damaged, removed or repeated, or the segment
is gone), or when there is no checkpoint to trust (deleted, unreadable), cutting at the
checkpoint would cut into a record or pad the segment with zeros. Instead:

1. The last whole lines before the cut point (the checkpoint's offset, or the end of
   the last segment) are read backwards until one is a record the event log calls
   for, between the segment's first seq and the last event the files may cover: its
   event, and its place among that event's records (:func:`locate`).
2. The segment is cut just after that line; what followed it is moved to
   ``<segment>.<offset>.stale``, synced before the cut, never deleted.
3. The writer writes the records after that one again, from the event log (archive
   segments included), up to the checkpoint's seq (or the log's end), and moves the
   checkpoint there.

A repair that would have to write records of events that retention deleted (no record
of the kept log is left whole in a segment begun before the cut) is refused, before
anything is touched: those records can no longer be written again.

So no record is cut in two, none is written twice, and none is lost: a record damaged
before the last one kept stays where it is, for ``kumo replay --verify`` to name.
Blocking, like the files' own I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import attrs
import orjson

from kumo.model.events import EVENT_TYPES, Bounced
from kumo.model.log_record import record_position
from kumo.store.delivery_files import (
    DeliveryFiles,
    line_digest,
    segment_first_seq,
    whole_lines_before,
)
from kumo.store.history import HistoryView
from kumo.store.layout import LOGS
from kumo.store.log_view import decode_row

ANCHORS_TRIED: Final = 16
"""Whole lines, from the cut point backwards, tried as the last record kept; a line
that is no record the log calls for (damaged, foreign) goes with the tail."""


class RepairError(Exception):
    """The delivery log cannot be repaired from the event log; the message says why."""


@attrs.frozen
class Resumption:
    """Where the delivery log goes on after :func:`cut_damaged_tail`."""

    segment: str
    offset: int
    """Bytes of :attr:`segment` kept: it was cut there."""
    last_line: str | None
    """The digest of the line kept last (``None``: none kept)."""
    first_seq: int
    """The first event whose records (some of them) are to be written again."""
    skip: int
    """How many of that event's records the files hold already."""
    kept: str | None
    """The record kept last, in words (``None``: none)."""
    moved: tuple[str, int] | None
    """The ``.stale`` file that took the bytes cut off, and how many (``None``: none)."""


def record_key(line: bytes) -> tuple[str, str] | None:
    """``(type, message id)`` of a Reception or AdminBounce line, else ``None``."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    kind, message_id = record.get("type"), record.get("id")
    if kind in ("Reception", "AdminBounce") and isinstance(message_id, str) and message_id:
        return kind, message_id
    return None


def locate(
    history: HistoryView,
    kind: str,
    message_id: str,
    *,
    after: int,
    through: int,
    suppressed: Callable[[str], bool],
) -> tuple[int, int] | None:
    """The event after seq ``after`` and up to ``through`` that calls for the ``kind``
    record of ``message_id`` (the last one, if a damaged log has two), and the record's
    place among that event's records; ``None`` if none does. Reads only the rows whose
    body mentions the id (SQLite's ``instr``; an archive segment's id filter).
    ``suppressed(rule_id)``: whether that rule's bounces are logged."""
    found = None
    rows = history.rows(
        skip=EVENT_TYPES, unless_containing=message_id.encode(), after=after, through=through
    )
    for batch in rows:
        for row in batch:
            committed = decode_row(row)
            event = committed.event
            quiet = isinstance(event, Bounced) and suppressed(event.rule_id)
            position = record_position(event, kind, message_id, suppressed=quiet)
            if position is not None:
                found = committed.seq, position
    return found


def cut_damaged_tail(
    files: DeliveryFiles,
    history: HistoryView,
    *,
    segment: str,
    limit: int,
    through: int,
    suppressed: Callable[[str], bool],
) -> Resumption:
    """Cut ``segment`` just after the last whole record before byte ``limit`` that the
    log calls for (an event from the segment's first seq to ``through``), or to
    nothing if there is none; move the bytes cut off, and the segments after it, aside.
    Raises :class:`RepairError`, touching nothing, for a segment whose name does not
    say its first seq, and for one that would have to be written again from an event
    that retention deleted."""
    first = segment_first_seq(segment)
    if first is None:
        raise RepairError(
            f"the delivery log cannot be repaired: {LOGS}/{segment} is not named after its "
            f"first seq, so which events its records are for is unknown (move it out of "
            f"{LOGS}/ and start again)"
        )
    path = files.directory / segment
    lines = whole_lines_before(path, limit, ANCHORS_TRIED) if path.is_file() else []
    for end, line in lines:
        key = record_key(line)
        if key is None:
            continue
        kind, message_id = key
        found = locate(
            history, kind, message_id, after=first - 1, through=through, suppressed=suppressed
        )
        if found is not None:
            seq, position = found
            moved = files.cut(segment, end)
            return Resumption(
                segment=segment,
                offset=end,
                last_line=line_digest(line),
                first_seq=seq,
                skip=position + 1,
                kept=f"the {kind} record of {message_id} (seq {seq})",
                moved=moved,
            )
    cut = history.cut
    if cut is not None and first <= cut.seq:
        raise RepairError(
            f"the delivery log cannot be repaired: {LOGS}/{segment} would have to be "
            f"written again from seq {first}, but the events up to seq {cut.seq} were "
            f"deleted by retention (restore {LOGS}/ from a backup)"
        )
    moved = files.cut(segment, 0)
    return Resumption(
        segment=segment,
        offset=0,
        last_line=None,
        first_seq=first,
        skip=0,
        kept=None,
        moved=moved,
    )

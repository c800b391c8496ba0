"""The whole log of a data directory, archives and live store read as one.

Audits and ``kumo replay --verify`` read the story of a message or a rule from any
time, whether its events still sit in the live store or were moved to archive segments
(:mod:`kumo.store.archive`). :class:`HistoryView` has the reading interface of
:class:`~kumo.store.log_view.LogView` over both: the segments in order, then the live
store's rows after the last archived seq (an archive pass that was cut short between
writing a segment and deleting its rows from the live store leaves them in both; the
segment's copy is read).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

from kumo.model.events import Committed
from kumo.store.archive import ArchiveSegment, archive_segments
from kumo.store.layout import ARCHIVE, DATABASE
from kumo.store.log_view import ChainedRow, LogView, Row, decode_row


class HistoryView:
    """A consistent, read-only view of a data directory's whole log. Never writes.

    Raises ``FileNotFoundError`` without an event log and
    :class:`~kumo.store.archive.ArchiveCorruptError` for an unreadable segment.
    """

    def __init__(self, data_dir: Path) -> None:
        self.segments: list[ArchiveSegment] = archive_segments(data_dir / ARCHIVE)
        self.live = LogView(data_dir / DATABASE)
        self.archived_through = self.segments[-1].last_seq if self.segments else 0
        """The last seq held by an archive segment (0: none)."""
        archived = sum(s.last_seq - s.first_seq + 1 for s in self.segments)
        self.first_seq: int = self.segments[0].first_seq if self.segments else self.live.first_seq
        self.last_seq: int = max(self.live.last_seq, self.archived_through)
        self.event_count: int = archived + self.live.count_after(self.archived_through)
        self.last_time: int = max(
            self.live.last_time, self.segments[-1].last_time if self.segments else 0
        )
        self.node_id = self.live.node_id

    def __enter__(self) -> HistoryView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.live.close()

    def segment_of(self, seq: int) -> ArchiveSegment | None:
        """The segment holding ``seq``, if one does."""
        for segment in self.segments:
            if segment.first_seq <= seq <= segment.last_seq:
                return segment
        return None

    def rows(
        self,
        *,
        until: int | None = None,
        skip: Collection[str] = (),
        unless_containing: bytes | None = None,
        after: int = 0,
        through: int | None = None,
    ) -> Iterator[list[Row]]:
        """As :meth:`LogView.rows`, over the whole log."""
        for segment in self.segments:
            if segment.last_seq <= after:
                continue
            if through is not None and segment.first_seq > through:
                return
            for chunk in segment.chunks(
                after=after, until=until, skip=skip, unless_containing=unless_containing
            ):
                rows = [row[:4] for row in chunk if through is None or row[0] <= through]
                if rows:
                    yield rows
        yield from self.live.rows(
            until=until,
            skip=skip,
            unless_containing=unless_containing,
            after=max(after, self.archived_through),
            through=through,
        )

    def chained_rows(self) -> Iterator[list[ChainedRow]]:
        """As :meth:`LogView.chained_rows`, over the whole log."""
        for segment in self.segments:
            yield from segment.chunks()
        yield from self.live.chained_rows(after=self.archived_through)

    def committed(
        self,
        *,
        until: int | None = None,
        skip: Collection[str] = (),
        unless_containing: bytes | None = None,
        after: int = 0,
        through: int | None = None,
    ) -> Iterator[list[Committed]]:
        """As :meth:`LogView.committed`, over the whole log (``after`` and ``through``
        as :meth:`rows` takes them)."""
        for batch in self.rows(
            until=until,
            skip=skip,
            unless_containing=unless_containing,
            after=after,
            through=through,
        ):
            yield [decode_row(row) for row in batch]

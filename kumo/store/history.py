"""The whole log of a data directory, archives and live store read as one.

Audits and ``kumo replay --verify`` read the story of a message or a rule from any
time, whether its events still sit in the live store or were moved to archive segments
(:mod:`kumo.store.archive`). :class:`HistoryView` has the reading interface of
:class:`~kumo.store.log_view.LogView` over both: the segments in order, then the live
store's rows after the last archived seq (an archive pass that was cut short between
writing a segment and deleting its rows from the live store leaves them in both; the
segment's copy is read).

After retention deleted the oldest segments (:mod:`kumo.store.retention`), the log
begins at a cut (:attr:`HistoryView.cut`): the rows start after it, and the base there
(:meth:`HistoryView.base`) is the state every fold of the kept log starts from.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from pathlib import Path

from kumo.model.events import Committed
from kumo.model.state import State
from kumo.store.archive import ArchiveSegment, HistoryCut, open_archive
from kumo.store.layout import ARCHIVE, DATABASE
from kumo.store.log_view import ChainedRow, LogView, Row, decode_row


class HistoryView:
    """A consistent, read-only view of a data directory's whole log. Never writes.

    Raises ``FileNotFoundError`` without an event log and
    :class:`~kumo.store.archive.ArchiveCorruptError` for an unreadable segment.
    """

    def __init__(self, data_dir: Path) -> None:
        archive = open_archive(data_dir / ARCHIVE)
        self.cut: HistoryCut | None = archive.cut
        """Where retention cut the log (``None``: it holds every event from seq 1)."""
        self.segments: list[ArchiveSegment] = archive.segments
        self.chain_before = archive.chain_before
        """The chain value the first event read links to (the cut's, or the genesis)."""
        self.live = LogView(data_dir / DATABASE)
        self.archived_through = archive.through
        """The last seq held by an archive segment or deleted by retention (0: none)."""
        archived = sum(s.last_seq - s.first_seq + 1 for s in self.segments)
        if self.segments:
            self.first_seq: int = self.segments[0].first_seq
        elif self.cut is not None:
            self.first_seq = self.cut.seq + 1
        else:
            self.first_seq = self.live.first_seq
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

    def base(self) -> State | None:
        """The state at the cut, queued messages included (a new copy each call;
        ``None`` without a cut); :class:`~kumo.store.archive.ArchiveCorruptError` if
        the base is damaged."""
        return self.cut.base() if self.cut is not None else None

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

"""A read-only, consistent view of a data directory's event log, for audits.

Audits read the log of a running server or of a copy, and must never change it. The
view is one SQLite read transaction opened with ``mode=ro``: every query sees the log as
it was when the view was opened, whatever a running server appends meanwhile. When no
write-ahead log file is present (no server has the database open), the database is
opened ``immutable`` as well, so that SQLite does not create the ``-wal`` and ``-shm``
files that a read-only WAL reader would otherwise leave in the data directory.

Rows are read with one lean query, in chunks, and decoded only when asked: a caller can
leave out whole event types (the timeline does not need ``MessageReceived``), or keep
only the rows whose body mentions a message id (SQLite's ``instr``, in C).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import TypeAlias

from kumo.model.events import Committed, EventDecodeError, decode_event
from kumo.store.event_log import LogCorruptError
from kumo.store.sqlite_log import SPOOL_OWED

Row: TypeAlias = tuple[int, int, str, bytes]
"""``(seq, time, type, body)`` as stored."""
ChainedRow: TypeAlias = tuple[int, int, str, bytes, bytes]
"""``(seq, time, type, body, chain)`` as stored."""

CHUNK = 2_000
"""Rows per fetch: enough to amortise the calls, few enough that a chunk of decoded
sweep events (thousands of messages each) stays small."""


class LogView:
    """The events table of ``path`` as it was when this was opened. Never writes.

    Raises ``FileNotFoundError`` if ``path`` does not exist (SQLite would otherwise
    refuse with a vague message) and ``sqlite3.DatabaseError`` if it is not an event
    log. Not thread-safe; close it when done (or use it as a context manager).
    """

    def __init__(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"no event log at {path}")
        uri = path.resolve().as_uri() + "?mode=ro"
        if not path.with_name(path.name + "-wal").exists():
            uri += "&immutable=1"
        self.path = path
        self._db = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            self._db.execute("PRAGMA cache_size=-65536")
            self._db.execute("BEGIN")
            first, last, count, last_time = self._db.execute(
                "SELECT min(seq), max(seq), count(*), max(time) FROM events"
            ).fetchone()
            meta = self._db.execute("SELECT value FROM meta WHERE key = 'node_id'").fetchone()
        except BaseException:
            self._db.close()
            raise
        self.first_seq: int = first or 0
        self.last_seq: int = last or 0
        self.event_count: int = count
        self.last_time: int = last_time or 0
        self.node_id: str | None = str(meta[0]) if meta else None

    def __enter__(self) -> LogView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def count_after(self, seq: int) -> int:
        """How many stored rows have a seq beyond ``seq``."""
        (count,) = self._db.execute("SELECT count(*) FROM events WHERE seq > ?", (seq,)).fetchone()
        return int(count)

    def _query(
        self,
        columns: str,
        *,
        until: int | None,
        skip: Collection[str],
        unless_containing: bytes | None,
        after: int = 0,
        through: int | None = None,
    ) -> sqlite3.Cursor:
        where: list[str] = []
        params: list[object] = []
        if after:
            where.append("seq > ?")
            params.append(after)
        if through is not None:
            where.append("seq <= ?")
            params.append(through)
        if until is not None:
            where.append("time <= ?")
            params.append(until)
        if skip:
            marks = ", ".join("?" * len(skip))
            if unless_containing is not None:
                where.append(f"(type NOT IN ({marks}) OR instr(body, ?) > 0)")
                params.extend([*skip, unless_containing])
            else:
                where.append(f"type NOT IN ({marks})")
                params.extend(skip)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._db.execute(f"SELECT {columns} FROM events{clause} ORDER BY seq", params)

    def rows(
        self,
        *,
        until: int | None = None,
        skip: Collection[str] = (),
        unless_containing: bytes | None = None,
        after: int = 0,
        through: int | None = None,
    ) -> Iterator[list[Row]]:
        """Stored rows in log order, in chunks, undecoded.

        ``until`` keeps rows committed at or before that time (ns since the epoch);
        ``skip`` leaves out rows of those event types, except those whose body contains
        ``unless_containing``; ``after`` leaves out rows up to that seq, ``through``
        those after that one.
        """
        cursor = self._query(
            "seq, time, type, body",
            until=until,
            skip=skip,
            unless_containing=unless_containing,
            after=after,
            through=through,
        )
        while batch := cursor.fetchmany(CHUNK):
            yield batch

    def chained_rows(
        self, after: int = 0, through: int | None = None
    ) -> Iterator[list[ChainedRow]]:
        """The stored rows after seq ``after`` (up to ``through``) with their hash-chain
        values, in log order, in chunks."""
        cursor = self._query(
            "seq, time, type, body, chain",
            until=None,
            skip=(),
            unless_containing=None,
            after=after,
            through=through,
        )
        while batch := cursor.fetchmany(CHUNK):
            yield batch

    def spool_owed(self) -> bool:
        """Whether the spool may hold contents of messages that left, owed a purge
        (``spool_owed`` in ``meta``: :mod:`kumo.store.sqlite_log`)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (SPOOL_OWED,)).fetchone()
        return row is not None and row[0] == "1"

    def spool_seqs(self) -> Iterator[list[int]]:
        """The seqs of the spooled contents (the ``MessageReceived`` of each message
        still spooled), in order, in chunks; read in the view's transaction, so that
        they agree with its events."""
        cursor = self._db.execute("SELECT seq FROM spool ORDER BY seq")
        while batch := cursor.fetchmany(CHUNK * 10):
            yield [seq for (seq,) in batch]

    def committed(
        self,
        *,
        until: int | None = None,
        skip: Collection[str] = (),
        unless_containing: bytes | None = None,
    ) -> Iterator[list[Committed]]:
        """Like :meth:`rows`, decoded. Does not check the sequence for gaps.

        Raises :class:`LogCorruptError` at the first body that does not decode.
        """
        for batch in self.rows(until=until, skip=skip, unless_containing=unless_containing):
            yield [decode_row(row) for row in batch]


def decode_row(row: Row) -> Committed:
    """The committed event of a stored row; :class:`LogCorruptError` if it is unreadable."""
    seq, time, _, body = row
    try:
        return Committed(seq, time, decode_event(body))
    except EventDecodeError as exc:
        raise LogCorruptError(seq, str(exc)) from None

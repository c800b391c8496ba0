"""The embedded event log: one SQLite database (WAL; ``synchronous=FULL`` when durable).

Tables:

- ``events(seq, id, type, time, body, chain)``: the log. ``seq`` is gapless and assigned
  here; ``id`` is a unique event id (commit time, then random bits: see
  :func:`kumo.store.ids.ordered_ids`); ``body`` is the JSON of
  :func:`kumo.model.events.encode_event`; ``chain`` is a hash over the previous row's
  chain and this row, so that an edited, removed or reordered row is detectable.
- ``spool(seq, body)``: message contents, keyed by the ``seq`` of their
  ``MessageReceived``, written in the same transaction as that event. The event that
  removes a message (``Bounced``, ``Delivered``, ``PermanentlyFailed``, ``Expired``)
  does not delete its content: the store keeps its seq as *owed a purge*, and
  :meth:`SqliteEventStore.purge_spool` deletes owed contents later, many at a time, in
  transactions of their own (a client's commit waits for the transaction under way,
  and a sweep's took a third of the time without their deletions).
- ``meta(key, value)``: the node id and other small facts; ``spool_owed`` is ``1`` from
  the transaction that first owes a purge until the one that purges the last owed
  content. A store opened with ``1`` may hold contents of messages that left (a crash
  lost what was owed): the engine finds them again (:meth:`SqliteEventStore.owe`).
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from time import monotonic, sleep
from typing import Final

import orjson

from kumo.model.events import (
    DEPARTURES,
    Bounced,
    Committed,
    Event,
    EventDecodeError,
    MessageReceived,
    decode_event,
    encode_event,
    event_type,
)
from kumo.model.requests import Content
from kumo.model.settings import EngineSettings
from kumo.store.event_log import LogCorruptError, LogDamagedError, LogFullError
from kumo.store.ids import ordered_ids

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq   INTEGER PRIMARY KEY,
    id    TEXT    NOT NULL UNIQUE,
    type  TEXT    NOT NULL,
    time  INTEGER NOT NULL,
    body  BLOB    NOT NULL,
    chain BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS spool (
    seq  INTEGER PRIMARY KEY,
    body BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

GENESIS = b"\x00" * 16
SPOOL_OWED: Final = "spool_owed"
"""The ``meta`` key of the module docstring."""

_WAL_SIZE_KEPT = 256 * 1024 * 1024
"""Bytes of WAL kept on disk when it restarts: SQLite cuts it back to this at the first
commit after a restart, and that commit waits while the file system frees the rest
(100 ms and more for a few hundred MB), so the WAL keeps what a busy interval writes."""
WRITE_LOCK_POLL: Final = 0.0005
"""Seconds between two tries of the writer's ``BEGIN IMMEDIATE`` while another
connection holds the write lock (:meth:`SqliteEventStore._begin`)."""
RESTART_LEFT_FRAMES: Final = 64
"""Frames committed during a checkpoint's PASSIVE copy few enough for its RESTART to copy
(:meth:`SqliteEventStore.checkpoint`)."""
RESTART_TRIES: Final = 3
"""PASSIVE copies after the first, at most, to get the frames left below that."""
_SQLITE_BUSY = 5
_SQLITE_FULL = 13
_SQLITE_DAMAGE: Final = {
    3: "SQLITE_PERM",
    8: "SQLITE_READONLY",
    10: "SQLITE_IOERR",
    11: "SQLITE_CORRUPT",
    14: "SQLITE_CANTOPEN",
    26: "SQLITE_NOTADB",
}
"""Primary result codes (the low byte of an extended one) of a write that met a
damaged or vanished store, rather than a full one or a mistake of ours."""


def chain_link(previous: bytes, seq: int, time: int, kind: str, body: bytes) -> bytes:
    """The ``chain`` value of a row, given the previous row's (``GENESIS`` first)."""
    digest = hashlib.blake2b(previous, digest_size=16)
    digest.update(seq.to_bytes(8, "big"))
    digest.update(time.to_bytes(8, "big", signed=True))
    digest.update(kind.encode())
    digest.update(body)
    return digest.digest()


def drop_events(path: Path, through: int, *, chunk: int = 500, pause: float = 0.002) -> int:
    """Delete the events up to seq ``through`` from the log at ``path`` (they are in an
    archive segment), in small transactions beside a running writer; give the freed
    pages back to the disk where the database allows it. Returns the rows deleted.

    Each transaction deletes ``chunk`` rows and is followed by a ``pause`` (seconds), so
    that the engine's writer, whose clients wait on their commits, takes the write lock
    between two of them and never waits for more than one short transaction. No fsync:
    rows a power failure brings back are in the archive already, and a reader skips
    them (:class:`kumo.store.history.HistoryView`); the next pass deletes them again.
    The spool is left alone: a queued message's content stays.
    """
    db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    try:
        db.execute("PRAGMA synchronous=NORMAL")
        deleted = 0
        while True:
            db.execute("BEGIN IMMEDIATE")
            cursor = db.execute(
                "DELETE FROM events WHERE seq IN "
                "(SELECT seq FROM events WHERE seq <= ? ORDER BY seq LIMIT ?)",
                (through, chunk),
            )
            db.execute("COMMIT")
            deleted += cursor.rowcount
            if cursor.rowcount < chunk:
                break
            sleep(pause)
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:  # INCREMENTAL
            # A MB at a time, for the same reason as the deletes.
            while db.execute("PRAGMA freelist_count").fetchone()[0]:
                db.execute("PRAGMA incremental_vacuum(256)").fetchall()
                sleep(pause)
        return deleted
    finally:
        db.close()


def vacuum(path: Path) -> None:
    """Rewrite the log at ``path`` to hold only its live pages (no writer may run), and
    turn on incremental vacuum for the future if it was off (a store created before
    archives existed)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()


class SqliteEventStore:
    """The SQLite implementation of :class:`kumo.store.event_log.EventStore`.

    Not thread-safe: one thread at a time (the runtime's writer or a reader it owns).
    Readers that run beside the writer open their own store on the same file.
    """

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool = False,
        settings: EngineSettings | None = None,
        auto_checkpoint: bool = True,
    ) -> None:
        settings = settings or EngineSettings()
        self.path = path
        self._restart_pages = settings.wal_restart_pages
        self._write_lock_timeout = settings.write_lock_timeout
        if readonly:
            uri = f"file:{path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            self._db = sqlite3.connect(
                path,
                isolation_level=None,
                check_same_thread=False,
                # Room for the INSERTs of every size up to EVENTS_PER_STATEMENT, and more.
                cached_statements=2 * EVENTS_PER_STATEMENT,
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            if not auto_checkpoint:
                # The engine's writer: commits never copy the WAL back themselves (a
                # client would wait for it); a checkpointer beside it calls checkpoint().
                self._db.execute("PRAGMA wal_autocheckpoint=0")
            # A WAL that grew large (a long stretch of writes) shrinks back to this when
            # it restarts, rather than keeping its largest size on disk for good.
            self._db.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_KEPT}")
            # Only takes on a new database (before its first table): events moved to
            # the archive free pages that drop_events then gives back to the disk.
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.executescript(_SCHEMA)
            # A killed process can leave commits that were never fsynced (see
            # ``commit(durable=False)``) in the WAL, in the page cache only. The runtime
            # counts everything it finds here as durable, so make it so: a checkpoint
            # syncs the WAL before it copies it into the database (and syncs that).
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        # The page cache is memory the engine holds for as long as it runs, per
        # connection; appends and sequential reads need little of it.
        self._db.execute(f"PRAGMA cache_size=-{settings.cache_kib}")
        row = self._db.execute(
            "SELECT seq, time, chain FROM events ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        self._last_seq: int = row[0] if row else 0
        self._last_time: int = row[1] if row else 0
        self._chain: bytes = row[2] if row else GENESIS
        self._synchronous = "FULL"
        if not readonly and not auto_checkpoint:
            # The engine's writer waits for the write lock in _begin, not in SQLite's
            # busy handler (set last: opening may wait for a lock like any connection).
            self._db.execute("PRAGMA busy_timeout=0")
        self._owed = array("q")
        self._owing = not readonly and self.get_meta(SPOOL_OWED) == "1"

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def last_time(self) -> int:
        return self._last_time

    def commit(
        self,
        events: Sequence[Event],
        *,
        time: int,
        bodies: Mapping[int, Content],
        durable: bool = True,
    ) -> list[Committed]:
        """See :meth:`kumo.store.event_log.EventStore.commit`."""
        rows: list[tuple[int, str, str, int, bytes, bytes]] = []
        spooled: list[tuple[int, Content]] = []
        unspooled = array("q")
        committed: list[Committed] = []
        chain = self._chain
        seq = self._last_seq
        event_ids = ordered_ids(len(events), time)
        for index, event in enumerate(events):
            seq += 1
            kind = event_type(event)
            body = encode_event(event)
            chain = chain_link(chain, seq, time, kind, body)
            rows.append((seq, event_ids[index], kind, time, body, chain))
            committed.append(Committed(seq, time, event))
            if isinstance(event, MessageReceived):
                spooled.append((seq, bodies.get(index, b"")))
            elif isinstance(event, Bounced):
                unspooled.extend(event.messages.seqs())
            elif isinstance(event, DEPARTURES):
                unspooled.append(event.message.seq)
        owes = bool(unspooled) and not self._owing
        # WAL with synchronous=NORMAL: the commit appends to the WAL without an fsync;
        # the next FULL commit's fsync of the WAL (or a checkpoint) makes it durable.
        with self._transaction("FULL" if durable else "NORMAL") as db:
            _insert_events(db, rows)
            if spooled:
                db.executemany("INSERT INTO spool VALUES (?, ?)", _joined(spooled))
            if owes:
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, '1')", (SPOOL_OWED,))
        self._last_seq, self._last_time, self._chain = seq, time, chain
        self._owed.extend(unspooled)
        self._owing = self._owing or owes
        return committed

    @contextlib.contextmanager
    def _transaction(self, synchronous: str) -> Iterator[sqlite3.Connection]:
        """A write transaction on the writer's connection at ``synchronous``, committed
        after the block; on any error rolled back, a full disk raised as
        :class:`LogFullError` and a damaged store as :class:`LogDamagedError`."""
        db = self._db
        try:
            if synchronous != self._synchronous:
                db.execute(f"PRAGMA synchronous={synchronous}")
                self._synchronous = synchronous
            self._begin()
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            # SQLite may have rolled back already (it does on a full disk). On a damaged
            # store the rollback may fail too: the first error is the one to tell.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode == _SQLITE_FULL:
                raise LogFullError(str(exc)) from exc
            damage = self._damage(exc)
            if damage is not None:
                raise damage from exc
            raise

    def _begin(self) -> None:
        """``BEGIN IMMEDIATE``, asking again every :data:`WRITE_LOCK_POLL` seconds while
        another connection holds the write lock, for ``write_lock_timeout`` seconds at
        most. The engine's writer has no busy handler (SQLite's sleeps 1, 2, 5, 10, 15
        ms in turn: a lock held 9 ms cost a wait of 18, one held 20 ms, 33); any other
        connection waits in its busy handler first, as before."""
        deadline = monotonic() + self._write_lock_timeout
        while True:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != _SQLITE_BUSY or monotonic() >= deadline:
                    raise
            sleep(WRITE_LOCK_POLL)

    @property
    def owed(self) -> int:
        """How many contents of messages that left wait for :meth:`purge_spool`."""
        return len(self._owed)

    @property
    def owing(self) -> bool:
        """Whether the store may hold contents of messages that left: some are owed a
        purge, or it was opened with ``spool_owed`` set (see the module docstring)."""
        return self._owing

    def owe(self, seqs: Iterable[int]) -> None:
        """Owe a purge of the contents spooled at ``seqs`` as well (those a crash left
        behind, found by the engine at its start)."""
        self._owed.extend(seqs)

    def purge_spool(self, limit: int) -> int:
        """Delete the owed contents, the oldest ``limit`` at most, in one transaction
        of their own; return how many. Not fsynced: what a power failure undoes is owed
        again at the next start. The transaction that purges the last one clears
        ``spool_owed``."""
        taken = self._owed[:limit]
        last = len(taken) == len(self._owed)
        with self._transaction("NORMAL") as db:
            # One statement for all of them, which SQLite runs in seq order (executemany
            # would take the GIL back once per row).
            db.execute(
                "DELETE FROM spool WHERE seq IN (SELECT value FROM json_each(?))",
                (orjson.dumps(taken.tolist()),),
            )
            if last:
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, '0')", (SPOOL_OWED,))
        del self._owed[:limit]
        if last:
            self._owing = False
        return len(taken)

    def spool_seqs(self, chunk: int = 100_000) -> Iterator[array[int]]:
        """The seqs of the spooled contents, in order, in chunks."""
        cursor = self._db.execute("SELECT seq FROM spool ORDER BY seq")
        while rows := cursor.fetchmany(chunk):
            yield array("q", (seq for (seq,) in rows))

    def checkpoint(self) -> tuple[int, int]:
        """See :meth:`kumo.store.event_log.EventStore.checkpoint`.

        SQLite's PASSIVE checkpoint: it copies the frames no reader still needs and waits
        for nobody. The writer restarts the WAL from its start only if it begins a
        transaction while every frame is copied, which a writer that commits every few
        milliseconds never does; so once the WAL holds ``wal_restart_pages`` and all are
        copied, a RESTART checkpoint follows, which waits for nobody either: with a
        commit under way it gives up at once, and the next checkpoint tries again.

        Once it has the writer's lock, the RESTART copies the frames committed since the
        PASSIVE began and syncs the database before it lets go, and the writer's next
        commit waits for all that: so PASSIVE copies come first, until fewer than
        :data:`RESTART_LEFT_FRAMES` came during the last (:data:`RESTART_TRIES` more at
        most). Under a probed sweep of 1,000,000 queued, the RESTART held the lock
        1.2-2.2 ms at the median instead of 10.7-17.9 (docs/benchmarks.md).
        """
        try:
            _busy, frames, copied = self._passive()
            if frames >= self._restart_pages and copied == frames:
                for _ in range(RESTART_TRIES):
                    before = frames
                    _busy, frames, copied = self._passive()
                    if copied != frames or frames - before <= RESTART_LEFT_FRAMES:
                        break
                if copied == frames:
                    self._restart()
        except sqlite3.Error as exc:
            damage = self._damage(exc)
            if damage is not None:
                raise damage from exc
            raise
        # -1, -1 when the database is not in WAL mode (a read-only connection to a
        # log that has none): nothing to copy.
        return max(frames, 0), max(copied, 0)

    def _passive(self) -> tuple[int, int, int]:
        """SQLite's PASSIVE checkpoint: (busy, frames in the WAL, frames copied)."""
        row: tuple[int, int, int] = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return row

    def _restart(self) -> None:
        """The RESTART checkpoint of :meth:`checkpoint`, with no busy wait."""
        db = self._db
        (timeout,) = db.execute("PRAGMA busy_timeout").fetchone()
        db.execute("PRAGMA busy_timeout=0")
        try:
            db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        finally:
            db.execute(f"PRAGMA busy_timeout={timeout}")

    def read(self, after_seq: int, limit: int) -> list[Committed]:
        try:
            rows = self._db.execute(
                "SELECT seq, time, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            damage = self._damage(exc)
            if damage is not None:
                raise damage from exc
            raise
        expected = after_seq + 1
        committed: list[Committed] = []
        for seq, time, body in rows:
            if seq != expected:
                raise LogCorruptError(expected, f"missing events {expected}..{seq - 1}")
            try:
                committed.append(Committed(seq, time, decode_event(body)))
            except EventDecodeError as exc:
                raise LogCorruptError(seq, str(exc)) from None
            expected += 1
        return committed

    def scan(self, after_seq: int = 0, chunk: int = 10_000) -> Iterator[list[Committed]]:
        position = after_seq
        while True:
            batch = self.read(position, chunk)
            if not batch:
                return
            position = batch[-1].seq
            yield batch

    def scan_rows(
        self, after_seq: int = 0, chunk: int = 20_000
    ) -> Iterator[list[tuple[int, int, str, bytes]]]:
        """Raw ``(seq, time, type, body)`` rows after ``after_seq``, in chunks.

        For readers that decode only what they need (replay, audits). Raises
        :class:`LogCorruptError` at the first gap in the sequence.
        """
        expected = after_seq + 1
        while True:
            rows: list[tuple[int, int, str, bytes]] = self._db.execute(
                "SELECT seq, time, type, body FROM events WHERE seq >= ? ORDER BY seq LIMIT ?",
                (expected, chunk),
            ).fetchall()
            if not rows:
                return
            if rows[0][0] != expected or rows[-1][0] != expected + len(rows) - 1:
                for offset, row in enumerate(rows):
                    if row[0] != expected + offset:
                        missing = expected + offset
                        raise LogCorruptError(missing, f"missing events {missing}..{row[0] - 1}")
            expected += len(rows)
            yield rows

    def chain_at(self, seq: int) -> bytes | None:
        """See :meth:`kumo.store.event_log.EventStore.chain_at`."""
        if seq == 0:
            return GENESIS
        row = self._db.execute("SELECT chain FROM events WHERE seq = ?", (seq,)).fetchone()
        return bytes(row[0]) if row else None

    def spool_body(self, seq: int) -> bytes | None:
        try:
            row = self._db.execute("SELECT body FROM spool WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.Error as exc:
            damage = self._damage(exc)
            if damage is not None:
                raise damage from exc
            raise
        return bytes(row[0]) if row else None

    def _damage(self, exc: BaseException) -> LogDamagedError | None:
        """``exc`` as a :class:`LogDamagedError`, if SQLite says the store is damaged."""
        if isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode is not None:
            name = _SQLITE_DAMAGE.get(exc.sqlite_errorcode & 0xFF)
            if name is not None:
                return LogDamagedError(f"{self.path}: {exc} ({name})")
        return None

    def spool_count(self) -> int:
        count: int = self._db.execute("SELECT count(*) FROM spool").fetchone()[0]
        return count

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set ``key`` to ``value``, durably (a transaction of its own, fsynced)."""
        with self._transaction("FULL") as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self._db.close()


EVENTS_PER_STATEMENT: Final = 128
"""Events one INSERT writes at most (six values each: within SQLite's oldest limit of
999 values a statement)."""


def _insert_events(db: sqlite3.Connection, rows: Sequence[tuple[object, ...]]) -> None:
    """Insert ``rows`` into ``events``, :data:`EVENTS_PER_STATEMENT` at a time in one
    statement. ``executemany`` runs one step per row, and the worker thread gives the
    interpreter up for each and must get it back after: while the event loop keeps it
    busy, each time costs up to a switch interval (5 ms). Beside a thread that keeps the
    interpreter busy, a commit of six ``Bounced`` events took 73.9-77.9 ms at p99 that
    way, 34.8-42.8 ms with one statement (docs/benchmarks.md, "GET's listing a quarter
    cheaper")."""
    for start in range(0, len(rows), EVENTS_PER_STATEMENT):
        chunk = rows[start : start + EVENTS_PER_STATEMENT]
        db.execute(_insert_sql(len(chunk)), [value for row in chunk for value in row])


@lru_cache(maxsize=EVENTS_PER_STATEMENT)
def _insert_sql(rows: int) -> str:
    return "INSERT INTO events VALUES " + ", ".join(("(?, ?, ?, ?, ?, ?)",) * rows)


def _joined(spooled: list[tuple[int, Content]]) -> Iterator[tuple[int, bytes]]:
    """The spool's rows, each content joined only as its row is written: a request's
    recipients share one body, and joining them all first would copy it once each."""
    for seq, content in spooled:
        yield seq, content if isinstance(content, bytes) else content[0] + content[1]

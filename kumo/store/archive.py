"""Archive segments under ``<data-dir>/archive/``: old events, compressed and read-only.

Events that every snapshot and the delivery log are past are no longer needed to start
or to serve; they are history, kept for audits. An archive pass
(:func:`archive_events`) moves them out of the live store into a segment, then deletes
them from the live store, which gives the space back.

A segment is a small SQLite file, ``<first seq>-<last seq>.archive.sqlite3`` (seqs
zero-padded, so that name order is log order), written under a temporary name (a few
MB at a time, each piece synced), fsynced and renamed into place: a crash leaves either
no segment or a whole one. It holds:

- ``chunks(first_seq, last_seq, first_time, last_time, types, ids, rows)``: the events
  in chunks of a few thousand. ``rows`` is the zstd-compressed concatenation of each
  row as the live store holds it: seq, commit time, type, JSON body and hash-chain
  value (:func:`kumo.store.sqlite_log.chain_link`), so the chain runs on unbroken from
  one segment to the next and into the live store, and an edited archive is detected
  like an edited store. ``types`` lists the event types in the chunk and ``ids`` is a
  Bloom filter of the message ids its bodies mention, so that an audit of one message
  or of the rules decompresses only the chunks that can concern it.
- ``meta``: the format, the seq range, and the chain values before and after it.

Retention (:mod:`kumo.store.retention`) deletes the oldest segments and leaves a *base*
beside the rest, ``<seq>.base.snapshot``: the folded state at the last deleted event,
with that event's commit time and chain value (a snapshot, :mod:`kumo.model.snapshot`'s
format). The newest base is the *cut* (:class:`HistoryCut`): the kept log starts at the
event after it, and every segment it covers is ignored (:func:`open_archive`), whether
the pass that wrote it has deleted that segment yet or was killed first.

SQLite is the container because it gives atomic, checksummed-enough pages, random
access by seq or time through its primary key, and a file any ``sqlite3`` shell opens;
zstd because the rows are repetitive JSON (about 10x smaller, measured in
``docs/benchmarks.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import struct
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Final

import attrs
import zstandard

from kumo.model.snapshot import SnapshotError, decode_snapshot, snapshot_position
from kumo.model.state import State
from kumo.store.durable_files import WRITE_PIECE, replace_durably
from kumo.store.log_view import ChainedRow
from kumo.store.sqlite_log import GENESIS

SUFFIX: Final = ".archive.sqlite3"
BASE_SUFFIX: Final = ".base.snapshot"
FORMAT: Final = "kumo-archive 1"
CHUNK_ROWS: Final = 4_096
"""Rows per chunk: large enough to compress well, small enough to decompress for one
message's story without waiting."""
_HEADER = struct.Struct("<qqHI")
"""seq, time, length of the type, length of the body; then the type, the body and the
16-byte chain value."""
_CHAIN_BYTES: Final = 16
_BLOOM_BITS_PER_ID: Final = 10
_BLOOM_HASHES: Final = 7
_MESSAGE_ID = re.compile(rb'"([0-9a-f]{32})"')
"""Spool ids as they appear in event bodies (rule ids are UUIDs, with dashes)."""

_SCHEMA = """
CREATE TABLE chunks (
    first_seq  INTEGER PRIMARY KEY,
    last_seq   INTEGER NOT NULL,
    first_time INTEGER NOT NULL,
    last_time  INTEGER NOT NULL,
    types      TEXT    NOT NULL,
    ids        BLOB    NOT NULL,
    rows       BLOB    NOT NULL
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


class ArchiveCorruptError(Exception):
    """An archive segment that cannot be read as kumo wrote it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"archive segment {path.name} unreadable: {problem}")
        self.path = path
        self.problem = problem


# -- Bloom filters of message ids --------------------------------------------------------


def _positions(message_id: bytes, bits: int) -> list[int]:
    digest = hashlib.blake2b(message_id, digest_size=4 * _BLOOM_HASHES).digest()
    return [
        int.from_bytes(digest[index : index + 4], "little") % bits
        for index in range(0, 4 * _BLOOM_HASHES, 4)
    ]


def bloom_of(message_ids: Collection[bytes]) -> bytes:
    """A Bloom filter of ``message_ids`` (about 1% false positives, never a false
    negative)."""
    bits = max(64, _BLOOM_BITS_PER_ID * len(message_ids))
    filter_ = bytearray((bits + 7) // 8)
    bits = len(filter_) * 8
    for message_id in message_ids:
        for position in _positions(message_id, bits):
            filter_[position >> 3] |= 1 << (position & 7)
    return bytes(filter_)


def might_mention(bloom: bytes, message_id: bytes) -> bool:
    """False if the chunk whose filter is ``bloom`` certainly does not mention the id."""
    bits = len(bloom) * 8
    return bits > 0 and all(
        bloom[position >> 3] & (1 << (position & 7)) for position in _positions(message_id, bits)
    )


def is_indexed(needle: bytes) -> bool:
    """Whether the Bloom filters index ``needle`` (a spool id: 32 lowercase hex digits)."""
    return _MESSAGE_ID.fullmatch(b'"' + needle + b'"') is not None


# -- writing ---------------------------------------------------------------------------


def _pack(rows: Iterable[ChainedRow]) -> bytes:
    out = bytearray()
    for seq, time, kind, body, chain in rows:
        kind_bytes = kind.encode()
        out += _HEADER.pack(seq, time, len(kind_bytes), len(body))
        out += kind_bytes
        out += body
        out += chain
    return bytes(out)


def _unpack(data: bytes, path: Path) -> list[ChainedRow]:
    rows: list[ChainedRow] = []
    offset, end = 0, len(data)
    header_size = _HEADER.size
    try:
        while offset < end:
            seq, time, kind_length, body_length = _HEADER.unpack_from(data, offset)
            offset += header_size
            kind = data[offset : offset + kind_length].decode()
            offset += kind_length
            body = data[offset : offset + body_length]
            offset += body_length
            chain = data[offset : offset + _CHAIN_BYTES]
            offset += _CHAIN_BYTES
            if offset > end:
                raise ArchiveCorruptError(path, f"a row at seq {seq} is cut off")
            rows.append((seq, time, kind, body, chain))
    except (struct.error, UnicodeDecodeError) as exc:
        raise ArchiveCorruptError(path, f"a chunk is malformed: {exc}") from None
    return rows


def segment_name(first_seq: int, last_seq: int) -> str:
    return f"{first_seq:020d}-{last_seq:020d}{SUFFIX}"


def write_segment(
    directory: Path,
    batches: Iterable[list[ChainedRow]],
    chain_before: bytes,
    *,
    progress: Callable[[int], None] | None = None,
    piece: int = WRITE_PIECE,
) -> Path | None:
    """Write the rows of ``batches`` (in log order, contiguous, the first one following
    ``chain_before``) as one segment in ``directory``; return its path (None if there
    were no rows). Atomic: on any failure no segment is left under a real name.

    The chunks go to the disk about ``piece`` compressed bytes at a time, each piece
    synced, not all at the rename (:data:`~kumo.store.durable_files.WRITE_PIECE`)."""
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f"writing{SUFFIX}.tmp"
    temporary.unlink(missing_ok=True)
    compressor = zstandard.ZstdCompressor(level=9)
    db = sqlite3.connect(temporary, isolation_level=None)
    first_seq = last_seq = unsynced = 0
    chain_after = chain_before
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")  # synced by pieces, and whole before the rename
        db.executescript(_SCHEMA)
        db.execute("BEGIN")
        pending: list[ChainedRow] = []

        def flush() -> None:
            nonlocal unsynced
            compressed = compressor.compress(_pack(pending))
            ids = {match for row in pending for match in _MESSAGE_ID.findall(row[3])}
            db.execute(
                "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    pending[0][0],
                    pending[-1][0],
                    pending[0][1],
                    pending[-1][1],
                    ",".join(sorted({row[2] for row in pending})),
                    bloom_of(ids),
                    compressed,
                ),
            )
            pending.clear()
            unsynced += len(compressed)
            if unsynced >= piece:
                # Without a journal, COMMIT writes the pages out (and syncs nothing).
                db.execute("COMMIT")
                with open(temporary, "rb") as file:
                    os.fdatasync(file.fileno())
                db.execute("BEGIN")
                unsynced = 0

        for batch in batches:
            for row in batch:
                if not first_seq:
                    first_seq = row[0]
                last_seq = row[0]
                chain_after = row[4]
                pending.append(row)
                if len(pending) >= CHUNK_ROWS:
                    flush()
            if progress is not None:
                progress(last_seq)
        if pending:
            flush()
        if not first_seq:
            db.execute("ROLLBACK")
            return None
        db.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [
                ("format", FORMAT),
                ("first_seq", str(first_seq)),
                ("last_seq", str(last_seq)),
                ("chain_before", chain_before.hex()),
                ("chain_after", chain_after.hex()),
            ],
        )
        db.execute("COMMIT")
    finally:
        db.close()
        if not first_seq:
            temporary.unlink(missing_ok=True)
    path = directory / segment_name(first_seq, last_seq)
    replace_durably(temporary, path)
    return path


# -- reading ---------------------------------------------------------------------------


@attrs.frozen
class ArchiveSegment:
    """One segment file, as its ``meta`` describes it."""

    path: Path
    first_seq: int
    last_seq: int
    chain_before: bytes
    chain_after: bytes
    last_time: int
    """Commit time of its last event."""

    @classmethod
    def open(cls, path: Path) -> ArchiveSegment:
        """Read ``path``'s description; :class:`ArchiveCorruptError` if it has none."""
        try:
            with contextlib.closing(_connect(path)) as db:
                meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
                (last_time,) = db.execute("SELECT max(last_time) FROM chunks").fetchone()
            if meta.get("format") != FORMAT:
                raise ArchiveCorruptError(path, f"format {meta.get('format')!r}")
            return cls(
                path=path,
                first_seq=int(meta["first_seq"]),
                last_seq=int(meta["last_seq"]),
                chain_before=bytes.fromhex(meta["chain_before"]),
                chain_after=bytes.fromhex(meta["chain_after"]),
                last_time=int(last_time),
            )
        except (sqlite3.Error, KeyError, TypeError, ValueError) as exc:
            raise ArchiveCorruptError(path, str(exc) or repr(exc)) from None

    def chunks(
        self,
        *,
        after: int = 0,
        until: int | None = None,
        skip: Collection[str] = (),
        unless_containing: bytes | None = None,
    ) -> Iterator[list[ChainedRow]]:
        """The segment's rows after seq ``after``, a chunk at a time, filtered as
        :meth:`kumo.store.log_view.LogView.rows` filters: committed at or before
        ``until``; rows of a type in ``skip`` left out unless their body contains
        ``unless_containing``. Chunks that cannot hold a wanted row are not read."""
        indexed = unless_containing is not None and is_indexed(unless_containing)
        decompressor = zstandard.ZstdDecompressor()
        try:
            with contextlib.closing(_connect(self.path)) as db:
                query = (
                    "SELECT first_seq, first_time, types, ids, rows FROM chunks"
                    " WHERE last_seq > ? ORDER BY first_seq"
                )
                for first_seq, first_time, types, ids, data in db.execute(query, (after,)):
                    if until is not None and first_time > until:
                        return
                    if skip and set(types.split(",")) <= set(skip):
                        if unless_containing is None:
                            continue
                        if indexed and not might_mention(ids, unless_containing):
                            continue
                    rows = _unpack(decompressor.decompress(data), self.path)
                    if rows and rows[0][0] != first_seq:
                        raise ArchiveCorruptError(self.path, f"chunk {first_seq} misplaced")
                    kept = [
                        row
                        for row in rows
                        if row[0] > after
                        and (until is None or row[1] <= until)
                        and (
                            row[2] not in skip
                            or (unless_containing is not None and unless_containing in row[3])
                        )
                    ]
                    if kept:
                        yield kept
        except (sqlite3.Error, zstandard.ZstdError) as exc:
            raise ArchiveCorruptError(self.path, str(exc)) from None


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise ArchiveCorruptError(path, "missing")
    uri = path.resolve().as_uri() + "?mode=ro&immutable=1"
    return sqlite3.connect(uri, uri=True, isolation_level=None)


def segment_last_seq(name: str) -> int | None:
    """The last seq a segment's file name says it holds (``None``: not a segment's name)."""
    if not name.endswith(SUFFIX):
        return None
    _, _, last = name.removesuffix(SUFFIX).partition("-")
    return int(last) if last.isdigit() else None


def archive_segments(directory: Path, *, after: int = 0) -> list[ArchiveSegment]:
    """Every segment in ``directory`` (those named as ending after seq ``after`` only),
    in log order; :class:`ArchiveCorruptError` for the first that cannot be read."""
    if not directory.is_dir():
        return []
    segments = []
    for path in sorted(directory.iterdir()):
        if not path.name.endswith(SUFFIX):
            continue
        last = segment_last_seq(path.name)
        if last is not None and last <= after:
            continue
        segments.append(ArchiveSegment.open(path))
    return segments


# -- the cut that retention leaves --------------------------------------------------------


def base_name(seq: int) -> str:
    """The file name of the base at ``seq``."""
    return f"{seq:020d}{BASE_SUFFIX}"


def base_paths(directory: Path) -> list[Path]:
    """The base files in ``directory``, newest first."""
    if not directory.is_dir():
        return []
    return sorted(
        (path for path in directory.iterdir() if path.name.endswith(BASE_SUFFIX)), reverse=True
    )


@attrs.frozen
class HistoryCut:
    """Where the kept log begins after retention: every event up to :attr:`seq` was
    deleted, and the base at :attr:`path` holds the state they folded into."""

    path: Path
    seq: int
    """The last deleted event; the kept log starts at the next."""
    time: int
    """That event's commit time: an audit can answer for any moment from then on."""
    chain: bytes
    """That event's hash-chain value, which the first kept event links to."""

    @classmethod
    def open(cls, path: Path) -> HistoryCut:
        """The cut the base at ``path`` stands for, once its digest is checked;
        :class:`ArchiveCorruptError` if it is damaged or not named after its seq."""
        try:
            position = snapshot_position(path.read_bytes())
        except (OSError, SnapshotError) as exc:
            raise ArchiveCorruptError(path, str(exc)) from None
        if path.name != base_name(position.seq):
            raise ArchiveCorruptError(path, f"it holds the state at seq {position.seq}")
        return cls(path, position.seq, position.time, position.chain)

    def base(self) -> State:
        """The state at the cut, queued messages included (a new copy at each call);
        :class:`ArchiveCorruptError` if the file is damaged or no longer the cut's."""
        try:
            state, position = decode_snapshot(self.path.read_bytes())
        except (OSError, SnapshotError) as exc:
            raise ArchiveCorruptError(self.path, str(exc)) from None
        if (position.seq, position.time, position.chain) != (self.seq, self.time, self.chain):
            raise ArchiveCorruptError(self.path, "it changed while it was read")
        return state


def history_cut(directory: Path) -> HistoryCut | None:
    """The cut in ``directory``: its newest base (``None``: no retention ever deleted
    anything). :class:`ArchiveCorruptError` if that base is damaged: an older one is no
    fallback, since the segments between the two may be gone."""
    paths = base_paths(directory)
    return HistoryCut.open(paths[0]) if paths else None


@attrs.frozen
class Archive:
    """What the archive holds for readers: the cut (if any) and the segments after it."""

    cut: HistoryCut | None
    segments: list[ArchiveSegment]

    @property
    def through(self) -> int:
        """The last seq the archive accounts for: held in a segment, or deleted (0: none)."""
        if self.segments:
            return self.segments[-1].last_seq
        return self.cut.seq if self.cut is not None else 0

    @property
    def chain_before(self) -> bytes:
        """The chain value the first kept event links to."""
        return self.cut.chain if self.cut is not None else GENESIS

    @property
    def chain_after(self) -> bytes:
        """The chain value at :attr:`through`, which the next event links to."""
        return self.segments[-1].chain_after if self.segments else self.chain_before


def open_archive(directory: Path) -> Archive:
    """The archive in ``directory``: its cut and the segments after it, in log order
    (segments the cut covers are ignored: a retention pass deletes them).
    :class:`ArchiveCorruptError` for a damaged base or segment."""
    cut = history_cut(directory)
    return Archive(cut, archive_segments(directory, after=cut.seq if cut is not None else 0))

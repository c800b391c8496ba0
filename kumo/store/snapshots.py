"""Snapshot files under ``<data-dir>/snapshots/``: writing, choosing one at start, taking one.

A snapshot (:mod:`kumo.model.snapshot`) is the folded state at a sequence number. A
start loads the newest one that is intact and agrees with the log, then folds only the
events after it, so that start time follows what is queued, not the length of the
history.

Files: ``<seq>.snapshot`` (the seq zero-padded, so that name order is log order). Each
is written whole to ``<seq>.tmp``, fsynced, renamed into place and the directory
fsynced: a crash leaves the old files and perhaps a ``.tmp``, which the next writer
removes, never half a snapshot under a real name. The two newest are kept, so that a
damaged newest one still leaves one to fall back on.

A snapshot is only ever taken up to the log's *durable* end (what survives a power
failure), so no snapshot is ever ahead of the log; one that is means the log lost
events, and a start refuses (:class:`SnapshotAheadError`) rather than serve a log that
silently forgot its history.

A running engine takes snapshots in a process of its own
(:mod:`kumo.store.compaction`), so that the fold and the encoding never compete with
requests for the interpreter.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import attrs

from kumo.model.snapshot import (
    SnapshotError,
    SnapshotPosition,
    decode_snapshot,
    encode_snapshot,
)
from kumo.model.state import State
from kumo.store.archive import open_archive
from kumo.store.data_dir import open_event_log
from kumo.store.durable_files import WRITE_PIECE, replace_durably
from kumo.store.event_log import EventStore, LogCorruptError
from kumo.store.layout import ARCHIVE, SNAPSHOTS
from kumo.store.replay import fold_log, fold_rows

SUFFIX: Final = ".snapshot"
_TEMPORARY: Final = ".tmp"
KEEP: Final = 2
"""Snapshots kept: the newest, and one to fall back on."""


class SnapshotAheadError(LogCorruptError):
    """A snapshot stands beyond the end of the log: the log has lost events."""


@attrs.frozen
class SnapshotTaken:
    """What :func:`take_snapshot` wrote."""

    seq: int
    bytes: int
    seconds: float
    path: Path


def snapshot_paths(directory: Path) -> list[Path]:
    """The snapshot files of ``directory``, newest first (none if it does not exist)."""
    if not directory.is_dir():
        return []
    return sorted(
        (path for path in directory.iterdir() if path.name.endswith(SUFFIX)), reverse=True
    )


def write_snapshot(directory: Path, seq: int, data: bytes, *, piece: int = WRITE_PIECE) -> Path:
    """Write ``data`` as the snapshot at ``seq``, atomically and durably, ``piece``
    bytes at a time; keep the :data:`KEEP` newest snapshots and remove the rest (and
    any leftover temporary)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{seq:020d}{SUFFIX}"
    temporary = path.with_suffix(_TEMPORARY)
    with open(temporary, "wb") as file:
        # A piece at a time to the disk (WRITE_PIECE says why).
        whole = memoryview(data)
        for start in range(0, len(whole), piece):
            file.write(whole[start : start + piece])
            file.flush()
            os.fdatasync(file.fileno())
    replace_durably(temporary, path)
    for old in snapshot_paths(directory)[KEEP:]:
        old.unlink()
    for leftover in directory.glob(f"*{_TEMPORARY}"):
        leftover.unlink()
    return path


def load_newest(
    directory: Path, store: EventStore, *, report: Callable[[str], None]
) -> tuple[State, SnapshotPosition] | None:
    """The newest snapshot in ``directory`` that is intact and agrees with ``store``.

    A damaged snapshot, or one whose chain differs from the log's at its seq, is
    skipped with a line to ``report`` naming the file and the reason. Raises
    :class:`SnapshotAheadError` if an intact snapshot stands beyond the log's end.
    Returns None when no snapshot can be used (then fold the whole log).
    """
    for path in snapshot_paths(directory):
        try:
            state, position = decode_snapshot(path.read_bytes())
        except (OSError, SnapshotError) as exc:
            report(f"snapshot {path} skipped: {exc}")
            continue
        if position.seq > store.last_seq:
            raise SnapshotAheadError(
                store.last_seq + 1,
                f"the log ends at seq {store.last_seq} but snapshot {path.name} was taken "
                f"at seq {position.seq}: events {store.last_seq + 1}..{position.seq} are "
                "missing from the log (restore the data directory from a backup)",
            )
        if store.chain_at(position.seq) != position.chain:
            report(f"snapshot {path} skipped: the log's chain differs at seq {position.seq}")
            continue
        return state, position
    return None


def fold_from_snapshot(
    data_dir: Path, store: EventStore, *, report: Callable[[str], None]
) -> tuple[State, int]:
    """The state of ``data_dir``'s whole log, ``store`` being its live store: the newest
    usable snapshot, then the events after it; without one, the archive (from the base
    at its cut, if retention left one) and then the live store. Also returns the seq of
    the snapshot used (0: none). Raises :class:`~kumo.store.archive.ArchiveCorruptError`
    if the archive is needed and cannot be read."""
    loaded = load_newest(data_dir / SNAPSHOTS, store, report=report)
    if loaded is not None:
        state, position = loaded
        return fold_log(store, state), position.seq
    return fold_log(store, fold_archive(data_dir)), 0


def fold_archive(data_dir: Path, *, through: int | None = None) -> State:
    """The state at the end of ``data_dir``'s archive (at ``through`` if that comes
    first): the base at its cut, or an empty state, with the kept segments folded in."""
    archive = open_archive(data_dir / ARCHIVE)
    state = archive.cut.base() if archive.cut is not None else State()
    for segment in archive.segments:
        if through is not None and segment.first_seq > through:
            break
        fold_rows(
            ([row[:4] for row in chunk] for chunk in segment.chunks(after=state.last_seq)),
            state,
            until=None if through is None else lambda seq, _time: seq > through,
        )
    return state


def take_snapshot(
    data_dir: Path,
    until: int | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> SnapshotTaken | None:
    """Snapshot ``data_dir``'s log at ``until`` (default: its end), from the newest
    snapshot and the events after it; None if no event was folded since that one.

    Reads through a read-only connection, beside a running engine or offline.
    ``until`` must be durable (the engine passes its durable seq). ``progress(done,
    total)`` is called as the fold advances (events since the previous snapshot).
    """
    started = time.perf_counter()
    directory = data_dir / SNAPSHOTS
    store = open_event_log(data_dir, readonly=True)
    try:
        end = store.last_seq if until is None else min(until, store.last_seq)
        loaded = load_newest(directory, store, report=_to_stderr)
        if loaded is not None and loaded[1].seq >= end:
            return None
        # Without a usable snapshot the archive is where the log begins.
        start = loaded[0] if loaded else fold_archive(data_dir, through=end)
        state = fold_log(store, start, until=lambda seq, _time: seq > end)
        if state.last_seq == 0:
            return None
        chain = store.chain_at(state.last_seq)
        assert chain is not None
        data = encode_snapshot(state, chain)
    finally:
        store.close()
    path = write_snapshot(directory, state.last_seq, data)
    return SnapshotTaken(state.last_seq, len(data), time.perf_counter() - started, path)


def _to_stderr(line: str) -> None:
    print(f"kumo: {line}", file=sys.stderr, flush=True)

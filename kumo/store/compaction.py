"""Compaction: a snapshot of the state, an archive pass, then a retention pass; what
keeps a data directory's start time and disk proportional to what is live (and to the
history the operator keeps).

A running engine starts this every ``EngineSettings.snapshot_every`` durable events as
a process of its own (``python -m kumo.store.compaction DATA_DIR --until SEQ
--followers-at SEQ [--retention NS --now NS]``), which prints one JSON line of what it
did; ``kumo compact`` runs it offline. The retention pass (:mod:`kumo.store.retention`) deletes
the archive segments past ``archive_retention``; it runs last, so that what it may
delete is decided against the newest snapshot.

What may be archived: the events that neither a start nor a follower can need. A start
loads one of the kept snapshots (the newest, or the one before if the newest is
damaged) and folds the events after it, reading the log's chain at the snapshot's seq;
the delivery-log writer resumes after its checkpoint; in a running engine, a follower
that fell behind the in-memory tail (the broadcaster, a lagging queue actor) reads the
live store from where it stands. So the pass archives the events up to the older of the
kept snapshots' seq minus one, and not past the delivery log's checkpoint nor the
running followers' lowest position (``followers_at``). Every step is atomic or
idempotent: a kill at any point leaves whole files and a log that a rerun (or the next
pass) finishes.
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import attrs
import orjson

from kumo.store.archive import ArchiveCorruptError, open_archive, write_segment
from kumo.store.delivery_files import CheckpointError, read_checkpoint
from kumo.store.event_log import LogCorruptError
from kumo.store.layout import ARCHIVE, COMPACTION_LOCK, DATABASE, LOGS, SNAPSHOTS
from kumo.store.lock import DataDirectoryLock, DataDirectoryLockedError
from kumo.store.log_view import ChainedRow, LogView
from kumo.store.retention import RetentionPass, apply_retention
from kumo.store.snapshots import SnapshotTaken, snapshot_paths, take_snapshot
from kumo.store.sqlite_log import drop_events

COMPACTION_ERRORS: Final = (
    OSError,
    sqlite3.Error,
    LogCorruptError,
    ArchiveCorruptError,
    DataDirectoryLockedError,
)
"""What a compaction that fails raises: said in one line (``kumo compact``, the
process a server starts), never as a traceback."""


@attrs.frozen
class Compaction:
    """What one compaction did."""

    snapshot: SnapshotTaken | None
    archived_through: int
    """The last seq held by the archive after the pass (0: none)."""
    archived: int
    """Events written to a new segment by this pass."""
    dropped: int
    """Rows deleted from the live store by this pass."""
    retention: RetentionPass
    seconds: float

    def summary(self) -> dict[str, object]:
        return {
            "seq": self.snapshot.seq if self.snapshot else None,
            "bytes": self.snapshot.bytes if self.snapshot else None,
            "archived_through": self.archived_through,
            "archived": self.archived,
            "dropped": self.dropped,
            "cut": self.retention.cut,
            "deleted_segments": self.retention.segments,
            "deleted_events": self.retention.events,
            "seconds": round(self.seconds, 3),
        }


def archivable_through(data_dir: Path, followers_at: int | None = None) -> int:
    """The last seq that may move to the archive (see the module docstring);
    ``followers_at``: where the running engine's slowest follower stands (None: no
    engine runs)."""
    snapshots = snapshot_paths(data_dir / SNAPSHOTS)
    try:
        checkpoint = read_checkpoint(data_dir / LOGS)
    except CheckpointError:
        return 0
    if not snapshots or checkpoint is None:
        return 0
    oldest_kept = int(snapshots[-1].name.split(".")[0])
    through = min(checkpoint.seq, oldest_kept - 1)
    if followers_at is not None:
        through = min(through, followers_at)
    return max(0, through)


def archive_events(
    data_dir: Path,
    *,
    followers_at: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int, int]:
    """Move what may be archived into a new segment, then drop it from the live store.

    Returns ``(archived through, events archived now, rows dropped now)``. Raises
    :class:`LogCorruptError` if the live store lacks events the archive should
    continue with.
    """
    directory = data_dir / ARCHIVE
    archive = open_archive(directory)
    done = archive.through
    chain = archive.chain_after
    through = archivable_through(data_dir, followers_at)
    archived = 0
    if through > done:
        with LogView(data_dir / DATABASE) as view:

            def contiguous() -> Iterator[list[ChainedRow]]:
                expected = done + 1
                for batch in view.chained_rows(after=done, through=through):
                    if batch[0][0] != expected or batch[-1][0] != expected + len(batch) - 1:
                        raise LogCorruptError(expected, "a gap in the events to archive")
                    expected += len(batch)
                    yield batch
                if expected != through + 1:
                    raise LogCorruptError(expected, "events to archive are missing")

            def report(seq: int) -> None:
                if progress is not None:
                    progress(seq - done, through - done)

            if write_segment(directory, contiguous(), chain, progress=report) is not None:
                archived = through - done
                done = through
    dropped = drop_events(data_dir / DATABASE, done) if done else 0
    return done, archived, dropped


def compact(
    data_dir: Path,
    until: int | None = None,
    *,
    retention: int | None = None,
    now: int | None = None,
    followers_at: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Compaction:
    """A snapshot at ``until`` (default: the log's end), an archive pass, then a
    retention pass: the archive segments whose newest event is more than ``retention``
    ns older than ``now`` (default: the wall clock) are deleted (``None``: none).
    ``followers_at``: a running engine's slowest follower (:func:`archivable_through`).

    One at a time: raises :class:`DataDirectoryLockedError` while another compaction of
    ``data_dir`` runs (one a killed server started goes on after it; the next start's
    would otherwise race it for the same files)."""
    with DataDirectoryLock(data_dir, COMPACTION_LOCK, "another compaction"):
        return _compact(
            data_dir,
            until,
            retention=retention,
            now=now,
            followers_at=followers_at,
            progress=progress,
        )


def _compact(
    data_dir: Path,
    until: int | None,
    *,
    retention: int | None,
    now: int | None,
    followers_at: int | None,
    progress: Callable[[str, int, int], None] | None,
) -> Compaction:
    started = time.perf_counter()

    def folding(done: int, total: int) -> None:
        if progress is not None:
            progress("snapshot", done, total)

    snapshot = take_snapshot(data_dir, until, progress=folding)

    def archiving(done: int, total: int) -> None:
        if progress is not None:
            progress("archive", done, total)

    through, archived, dropped = archive_events(
        data_dir, followers_at=followers_at, progress=archiving
    )

    def deleting(done: int, total: int) -> None:
        if progress is not None:
            progress("retention", done, total)

    kept = apply_retention(
        data_dir,
        now=time.time_ns() if now is None else now,
        retention=retention,
        progress=deleting,
    )
    return Compaction(snapshot, through, archived, dropped, kept, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    """The compaction process a running engine starts (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m kumo.store.compaction")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--until", type=int, default=None)
    parser.add_argument("--retention", type=int, default=None, help="ns; default: forever")
    parser.add_argument("--now", type=int, default=None, help="ns since the epoch")
    parser.add_argument(
        "--followers-at", type=int, default=None, help="seq: archive nothing after it"
    )
    arguments = parser.parse_args(argv)
    # Beside a running server: the server's requests come first for the CPU.
    os.nice(10)
    # A short-lived process that allocates a million long-lived objects and nothing
    # cyclic: collecting would only rescan them.
    gc.disable()
    try:
        done = compact(
            arguments.data_dir,
            arguments.until,
            retention=arguments.retention,
            now=arguments.now,
            followers_at=arguments.followers_at,
        )
    except COMPACTION_ERRORS as exc:
        print(f"kumo: compaction failed: {exc}", file=sys.stderr, flush=True)
        return 1
    print(orjson.dumps(done.summary()).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

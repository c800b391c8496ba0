"""``kumo compact``: compaction of a data directory while no server runs.

The same work a running server does every 100,000 events (a snapshot of the state, then
the archive pass: :mod:`kumo.store.compaction`), then a ``VACUUM`` of the live store,
which gives its free space back to the disk (and lets a store created before archives
existed give space back by itself from then on). Takes the data directory's lock: it
refuses while a server has the directory open.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click

from kumo.cli.audit import ProgressBar
from kumo.config import DEFAULT_DATA_DIR
from kumo.store.archive import ArchiveCorruptError
from kumo.store.compaction import compact as compact_data_dir
from kumo.store.event_log import LogCorruptError
from kumo.store.layout import DATABASE
from kumo.store.lock import DataDirectoryLock, DataDirectoryLockedError
from kumo.store.sqlite_log import vacuum


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="The data directory to compact (no server may have it open).",
)
def compact(data_dir: Path) -> None:
    """Snapshot the state, move old events to the archive, give the space back."""
    database = data_dir / DATABASE
    if not database.is_file():
        raise click.ClickException(f"no event log at {database}")
    try:
        lock = DataDirectoryLock(data_dir)
    except DataDirectoryLockedError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        before = _size(data_dir)
        with ProgressBar(after=0.0) as progress:
            done = compact_data_dir(data_dir, progress=progress)
            vacuum(database)
        after = _size(data_dir)
    except (OSError, sqlite3.Error, LogCorruptError, ArchiveCorruptError) as exc:
        raise click.ClickException(f"compaction failed: {exc}") from None
    finally:
        lock.release()
    snapshot = (
        f"snapshot at seq {done.snapshot.seq:,} ({done.snapshot.bytes:,} bytes)"
        if done.snapshot
        else "no new snapshot (nothing since the last one)"
    )
    click.echo(
        f"{snapshot}; {done.archived:,} events archived (archive up to seq "
        f"{done.archived_through:,}), {done.dropped:,} removed from the live store; "
        f"live store {before:,} -> {after:,} bytes in {done.seconds:.1f} s"
    )


def _size(data_dir: Path) -> int:
    return sum(path.stat().st_size for path in data_dir.glob(f"{DATABASE}*") if path.is_file())

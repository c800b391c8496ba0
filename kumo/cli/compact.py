"""``kumo compact``: compaction of a data directory while no server runs.

The same work a running server does every 100,000 events (a snapshot of the state, the
archive pass, and the retention pass when ``archive_retention`` is set:
:mod:`kumo.store.compaction`), then a ``VACUUM`` of the live store, which gives its free
space back to the disk (and lets a store created before archives existed give space
back by itself from then on). Takes the data directory's lock: it refuses while a
server has the directory open.

The retention comes from ``--archive-retention``, else from the ``[log]`` table of
``--config`` (the file ``kumo serve`` reads), else there is none (keep forever); the data
directory from ``--data-dir``, else from the config file, else ``./kumo-data``.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from kumo.cli.audit import ProgressBar
from kumo.cli.common import HELP
from kumo.config import DEFAULT_DATA_DIR, ConfigError, load_config
from kumo.model.duration import DurationError, parse_duration
from kumo.store.compaction import COMPACTION_ERRORS
from kumo.store.compaction import compact as compact_data_dir
from kumo.store.layout import DATABASE
from kumo.store.lock import DataDirectoryLock, DataDirectoryLockedError
from kumo.store.sqlite_log import vacuum


def _retention_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise click.BadParameter(f"{value!r} is not a duration: {exc}", ctx, param) from None


@click.command(context_settings=HELP)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The data directory to compact (no server may have it open).  "
    f"[default: the config file's, else ./{DEFAULT_DATA_DIR}]",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The TOML file kumo serve reads: its data_dir and [log] archive_retention.",
)
@click.option(
    "--archive-retention",
    "retention",
    metavar="DURATION",
    callback=_retention_option,
    help="Delete the archive segments whose newest event is older than this (90days); "
    "default: the config file's, else keep forever.",
)
def compact(data_dir: Path | None, config_path: Path | None, retention: int | None) -> None:
    """Snapshot the state, move old events to the archive, delete what is past the
    retention, give the space back."""
    if config_path is not None:
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from None
        data_dir = data_dir or config.data_dir
        if retention is None:
            retention = config.log.archive_retention
    data_dir = data_dir or DEFAULT_DATA_DIR
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
            done = compact_data_dir(
                data_dir, retention=retention, now=time.time_ns(), progress=progress
            )
            vacuum(database)
        after = _size(data_dir)
    except COMPACTION_ERRORS as exc:
        raise click.ClickException(f"compaction failed: {exc}") from None
    finally:
        lock.release()
    snapshot = (
        f"snapshot at seq {done.snapshot.seq:,} ({done.snapshot.bytes:,} bytes)"
        if done.snapshot
        else "no new snapshot (nothing since the last one)"
    )
    kept = done.retention
    deleted = (
        f"; {kept.segments:,} archive segment(s) past retention deleted ({kept.events:,} "
        f"events; the log now begins after seq {kept.cut:,})"
        if kept.segments
        else f"; the log begins after seq {kept.cut:,} (retention)"
        if kept.cut
        else ""
    )
    click.echo(
        f"{snapshot}; {done.archived:,} events archived (archive up to seq "
        f"{done.archived_through:,}), {done.dropped:,} removed from the live store{deleted}; "
        f"live store {before:,} -> {after:,} bytes in {done.seconds:.1f} s"
    )


def _size(data_dir: Path) -> int:
    return sum(path.stat().st_size for path in data_dir.glob(f"{DATABASE}*") if path.is_file())

"""The event log of a data directory, opened through the store's interface.

The layers above the store (the runtime, the CLI) open a data directory's log here and
see only :class:`~kumo.store.event_log.EventStore`: which database holds it is the
store's business.
"""

from __future__ import annotations

from pathlib import Path

from kumo.model.settings import EngineSettings
from kumo.store.event_log import EventStore
from kumo.store.integrity import StructureCheck
from kumo.store.layout import DATABASE
from kumo.store.sqlite_log import SqliteEventStore


def open_event_log(
    data_dir: Path,
    *,
    readonly: bool = False,
    settings: EngineSettings | None = None,
    auto_checkpoint: bool = True,
) -> EventStore:
    """Open (for writing: create if missing) the event log of ``data_dir``.

    A writer must hold the directory's lock (:class:`kumo.store.lock.DataDirectoryLock`);
    readers may open it beside a running writer. Close it when done.
    ``auto_checkpoint=False``: the writer's commits never copy the write-ahead log back;
    another connection must call :meth:`~kumo.store.event_log.EventStore.checkpoint`.
    """
    return SqliteEventStore(
        data_dir / DATABASE, readonly=readonly, settings=settings, auto_checkpoint=auto_checkpoint
    )


def structure_checked(data_dir: Path) -> StructureCheck:
    """Check the pages of ``data_dir``'s event log while the block (or the decorated
    function) runs, and refuse a damaged one on leaving it: raises
    :class:`~kumo.store.event_log.StoreDamagedError` naming the damage, in place of
    whatever the block raised. SQLite's ``quick_check`` in a thread of its own, beside
    the replay (0.84 s of a CPU at 1,000,000 queued messages); see
    :class:`kumo.store.integrity.StructureCheck`."""
    return StructureCheck(data_dir / DATABASE)

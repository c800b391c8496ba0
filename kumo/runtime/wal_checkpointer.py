"""The task that copies the write-ahead log back into the database, beside the writer.

SQLite appends every commit to a write-ahead log (WAL) and copies it back into the
database in a *checkpoint*. Left to SQLite, the commit that crosses a size threshold runs
the checkpoint itself, and every client whose events wait for that commit waits for the
copy too (half a second for the 85 MiB a stream of inject requests leaves behind, since
those commits were kept from checkpointing). Here the writer's connection never
checkpoints (``auto_checkpoint=False``); this task does, on a connection of its own, in
a worker thread, at most every ``EngineSettings.wal_checkpoint_interval`` seconds while
commits happen. A PASSIVE checkpoint waits for no writer and no reader, so commits go on
meanwhile, and the WAL stays about as large as what is committed in an interval.
While admin requests are answered it waits its turn first (:mod:`kumo.runtime.admin_gate`):
its writes and fsyncs of the database file would share the disk with theirs.
"""

from __future__ import annotations

import attrs
import trio

from kumo.model.settings import EngineSettings
from kumo.model.statistics import counter, gauge
from kumo.runtime.admin_gate import AdminGate
from kumo.runtime.blocking import RunBlocking
from kumo.runtime.log_writer import LogWriter
from kumo.store.event_log import EventStore, LogDamagedError


@attrs.frozen
class CheckpointStatistics:
    """The checkpointer's progress."""

    checkpoints: int = counter("Checkpoints of the write-ahead log run by this process.")
    frames: int = gauge("Frames (pages) in the write-ahead log at the last checkpoint.")
    frames_left: int = gauge(
        "Frames the last checkpoint could not copy yet (readers still needed them)."
    )


class WalCheckpointer:
    """Checkpoints ``store`` (a connection of its own) after commits of ``log``."""

    def __init__(
        self,
        store: EventStore,
        log: LogWriter,
        settings: EngineSettings,
        *,
        run_blocking: RunBlocking,
        admin_gate: AdminGate | None = None,
    ) -> None:
        self._store = store
        self._admin_gate = admin_gate or AdminGate.never_closed()
        self._log = log
        self._interval = settings.wal_checkpoint_interval
        self._run_blocking = run_blocking
        self._checkpoints = 0
        self._frames = 0
        self._copied = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        seen = self._log.last_seq
        while True:
            await self._log.committed.wait_for(seen + 1)
            seen = self._log.last_seq
            await self._admin_gate.turn()
            try:
                self._frames, self._copied = await self._run_blocking(self._store.checkpoint)
            except LogDamagedError as exc:
                # Copying into a damaged database file could spread the damage: stop,
                # and stop the writes too (the WAL keeps what was committed).
                self._log.note_damage(exc)
                return
            self._checkpoints += 1
            await trio.sleep(self._interval)

    def statistics(self) -> CheckpointStatistics:
        return CheckpointStatistics(
            checkpoints=self._checkpoints,
            frames=self._frames,
            frames_left=self._frames - self._copied,
        )

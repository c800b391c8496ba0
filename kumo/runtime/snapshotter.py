"""The task that compacts the data directory every ``snapshot_every`` durable events.

Compaction (:mod:`kumo.store.compaction`) takes a snapshot of the state, moves the
events no start can need any more to the archive, then deletes the archive segments
past ``archive_retention`` (as old as the engine clock says). It runs as a process of its own
(``python -m kumo.store.compaction``): it reads the log through a read-only connection,
folds the events since the previous snapshot into that one, writes the new files
atomically, and deletes archived rows from the live store in small transactions. The
engine only waits for it, so the fold and the encoding (seconds at a million queued
messages) never hold the interpreter that serves requests. Without threads (tests under
a virtual clock) it runs inline instead, deterministically.

A failed snapshot is reported (``kumo_engine_snapshots_failures`` and a log line) and
tried again after ``snapshot_every`` more events or a minute, whichever comes later;
the log stays the source of truth, so a missing snapshot costs start time, nothing else.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs
import orjson
import trio

from kumo.model.settings import EngineSettings
from kumo.model.statistics import counter, gauge
from kumo.runtime.blocking import RunBlocking
from kumo.runtime.clock import EngineClock
from kumo.runtime.log_writer import LogWriter
from kumo.runtime.watermark import Watermark
from kumo.store.compaction import compact

logger = logging.getLogger("kumo.snapshots")

RETRY_AFTER: Final = 60.0
"""Seconds before another try after a failed snapshot."""


@attrs.frozen
class SnapshotStatistics:
    """The compactions' progress (a snapshot, then an archive pass, each time)."""

    seq: int = gauge("Sequence number of the newest snapshot (0: none).")
    taken: int = counter("Snapshots taken by this process.")
    failures: int = counter("Compactions that failed, by this process.")
    last_seconds: float = gauge("Seconds the last compaction (snapshot and archive pass) took.")
    last_bytes: int = gauge("Size in bytes of the last snapshot.")
    archived_through: int = gauge(
        "Last sequence number moved to the archive by this process's compactions (0: none)."
    )
    retention_cut: int = gauge(
        "Last sequence number deleted by retention, as this process's compactions left it "
        "(0: none)."
    )


class Snapshotter:
    """Compacts ``data_dir`` as the log's durable end passes each ``snapshot_every``."""

    def __init__(
        self,
        data_dir: Path,
        log: LogWriter,
        settings: EngineSettings,
        clock: EngineClock,
        *,
        start_seq: int,
        run_blocking: RunBlocking | None,
        followers_at: Callable[[], int],
    ) -> None:
        """``start_seq``: where the newest snapshot stands (0: none). ``run_blocking``
        None: take snapshots in a process of their own; else inline with it.
        ``followers_at``: the last seq no follower in memory will read again
        (:meth:`~kumo.runtime.broadcaster.Broadcaster.needed_after`); the archive pass
        moves nothing after it."""
        self._data_dir = data_dir
        self._log = log
        self._every = settings.snapshot_every
        self._retention = settings.archive_retention
        self._clock = clock
        self._run_blocking = run_blocking
        self._followers_at = followers_at
        self.position = Watermark(start_seq)
        """The seq of the newest snapshot (0: none)."""
        self._due = start_seq + self._every
        self._taken = 0
        self._failures = 0
        self._last_seconds = 0.0
        self._last_bytes = 0
        self._archived_through = 0
        self._retention_cut = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self._every <= 0:
            return
        while True:
            await self._log.durable.wait_for(self._due)
            until = self._log.durable.value
            self._due = until + self._every
            try:
                summary = await self._compact(until)
            except CompactionFailedError as exc:
                self._failures += 1
                logger.warning("compaction at seq %d failed: %s", until, exc)
                await trio.sleep(RETRY_AFTER)
                continue
            self._archived_through = max(self._archived_through, summary.archived_through)
            self._retention_cut = max(self._retention_cut, summary.cut)
            seq, size, seconds = summary.seq, summary.bytes, summary.seconds
            if seq:
                self.position.advance(seq)
                self._taken += 1
                self._last_seconds, self._last_bytes = seconds, size
                logger.info("snapshot at seq %d: %d bytes in %.2f s", seq, size, seconds)

    async def _compact(self, until: int) -> _Summary:
        # Retention counts age on the engine's clock, like every time kumo stamps.
        now = self._clock.now()
        # Followers only move forward: where they stand now bounds the whole pass.
        followers_at = self._followers_at()
        if self._run_blocking is not None:
            try:
                done = await self._run_blocking(
                    lambda: compact(
                        self._data_dir,
                        until,
                        retention=self._retention,
                        now=now,
                        followers_at=followers_at,
                    )
                )
            except Exception as exc:  # the log stays the truth; report and go on
                raise CompactionFailedError(repr(exc)) from exc
            return _Summary.of(done.summary())
        command = [sys.executable, "-m", "kumo.store.compaction", str(self._data_dir)]
        command += ["--followers-at", str(followers_at)]
        if self._retention is not None:
            command += ["--retention", str(self._retention), "--now", str(now)]
        result = await trio.run_process(
            [*command, "--until", str(until)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if result.returncode != 0:
            raise CompactionFailedError(
                result.stderr.decode(errors="replace").strip()[-500:]
                or f"exit status {result.returncode}"
            )
        try:
            return _Summary.of(orjson.loads(result.stdout))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CompactionFailedError(f"unexpected output {result.stdout[:200]!r}") from exc

    def statistics(self) -> SnapshotStatistics:
        return SnapshotStatistics(
            seq=self.position.value,
            taken=self._taken,
            failures=self._failures,
            last_seconds=self._last_seconds,
            last_bytes=self._last_bytes,
            archived_through=self._archived_through,
            retention_cut=self._retention_cut,
        )


@attrs.frozen
class _Summary:
    """A compaction's summary line (:meth:`kumo.store.compaction.Compaction.summary`)."""

    seq: int
    """The new snapshot's seq; 0 if none was taken (nothing new)."""
    bytes: int
    seconds: float
    archived_through: int
    cut: int

    @classmethod
    def of(cls, data: dict[str, Any]) -> _Summary:
        return cls(
            seq=int(data["seq"] or 0),
            bytes=int(data["bytes"] or 0),
            seconds=float(data["seconds"]),
            archived_through=int(data["archived_through"]),
            cut=int(data["cut"]),
        )


class CompactionFailedError(Exception):
    """A compaction failed; the message says why."""

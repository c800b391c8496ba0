"""The task that takes a snapshot of the state every ``snapshot_every`` durable events.

A snapshot is taken by a process of its own (``python -m kumo.store.snapshots``): it
reads the log through a read-only connection, folds the events since the previous
snapshot into that one, and writes the new file atomically. The engine only waits for
it, so the fold and the encoding (seconds at a million queued messages) never hold the
interpreter that serves requests. Without threads (tests under a virtual clock) it runs
inline instead, deterministically.

A failed snapshot is reported (``kumo_engine_snapshots_failures`` and a log line) and
tried again after ``snapshot_every`` more events or a minute, whichever comes later;
the log stays the source of truth, so a missing snapshot costs start time, nothing else.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Final

import attrs
import orjson
import trio

from kumo.model.settings import EngineSettings
from kumo.model.statistics import counter, gauge
from kumo.runtime.blocking import RunBlocking
from kumo.runtime.log_writer import LogWriter
from kumo.runtime.watermark import Watermark
from kumo.store.snapshots import take_snapshot

logger = logging.getLogger("kumo.snapshots")

RETRY_AFTER: Final = 60.0
"""Seconds before another try after a failed snapshot."""


@attrs.frozen
class SnapshotStatistics:
    """The snapshotter's progress."""

    seq: int = gauge("Sequence number of the newest snapshot (0: none).")
    taken: int = counter("Snapshots taken by this process.")
    failures: int = counter("Snapshots that failed, by this process.")
    last_seconds: float = gauge("Seconds the last snapshot took.")
    last_bytes: int = gauge("Size in bytes of the last snapshot.")


class Snapshotter:
    """Snapshots ``data_dir`` as the log's durable end passes each ``snapshot_every``."""

    def __init__(
        self,
        data_dir: Path,
        log: LogWriter,
        settings: EngineSettings,
        *,
        start_seq: int,
        run_blocking: RunBlocking | None,
    ) -> None:
        """``start_seq``: where the newest snapshot stands (0: none). ``run_blocking``
        None: take snapshots in a process of their own; else inline with it."""
        self._data_dir = data_dir
        self._log = log
        self._every = settings.snapshot_every
        self._run_blocking = run_blocking
        self.position = Watermark(start_seq)
        """The seq of the newest snapshot (0: none)."""
        self._due = start_seq + self._every
        self._taken = 0
        self._failures = 0
        self._last_seconds = 0.0
        self._last_bytes = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self._every <= 0:
            return
        while True:
            await self._log.durable.wait_for(self._due)
            until = self._log.durable.value
            self._due = until + self._every
            try:
                seq, size, seconds = await self._take(until)
            except SnapshotFailedError as exc:
                self._failures += 1
                logger.warning("snapshot at seq %d failed: %s", until, exc)
                await trio.sleep(RETRY_AFTER)
                continue
            if seq:
                self.position.advance(seq)
                self._taken += 1
                self._last_seconds, self._last_bytes = seconds, size
                logger.info("snapshot at seq %d: %d bytes in %.2f s", seq, size, seconds)

    async def _take(self, until: int) -> tuple[int, int, float]:
        if self._run_blocking is not None:
            try:
                taken = await self._run_blocking(lambda: take_snapshot(self._data_dir, until))
            except Exception as exc:  # the log stays the truth; report and go on
                raise SnapshotFailedError(repr(exc)) from exc
            return (0, 0, 0.0) if taken is None else (taken.seq, taken.bytes, taken.seconds)
        command = [sys.executable, "-m", "kumo.store.snapshots", str(self._data_dir)]
        result = await trio.run_process(
            [*command, "--until", str(until)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        if result.returncode != 0:
            raise SnapshotFailedError(
                result.stderr.decode(errors="replace").strip()[-500:]
                or f"exit status {result.returncode}"
            )
        try:
            summary = orjson.loads(result.stdout)
            if summary["seq"] is None:
                return 0, 0, 0.0
            return int(summary["seq"]), int(summary["bytes"]), float(summary["seconds"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SnapshotFailedError(f"unexpected output {result.stdout[:200]!r}") from exc

    def statistics(self) -> SnapshotStatistics:
        return SnapshotStatistics(
            seq=self.position.value,
            taken=self._taken,
            failures=self._failures,
            last_seconds=self._last_seconds,
            last_bytes=self._last_bytes,
        )


class SnapshotFailedError(Exception):
    """A snapshot could not be taken; the message says why."""

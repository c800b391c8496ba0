"""A compaction killed at any moment leaves whole files and a log that reads whole."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from kumo.model.settings import EngineSettings
from kumo.runtime.engine import open_engine
from kumo.store.archive import archive_segments
from kumo.store.compaction import compact
from kumo.store.layout import ARCHIVE, SNAPSHOTS
from kumo.store.verify import verify_data_dir
from tests.runtime.harness import bounce, message

ROUNDS = 8
BODY = b"x" * 500


def serve(data_dir: Path, round_: int, messages: int = 400) -> tuple[int, dict[str, int]]:
    """Inject ``messages`` and bounce the round's domain; return what the engine shows."""

    async def run() -> tuple[int, dict[str, int]]:
        settings = EngineSettings(snapshot_every=0)
        async with open_engine(data_dir, settings=settings) as engine:
            for start in range(0, messages, 1000):
                batch = range(start, min(messages, start + 1000))
                await engine.inject([message(f"u{n}@d{n % 4}.example", body=BODY) for n in batch])
            await engine.issue_bounce(bounce(domain=f"d{round_ % 4}.example"), issued_by="t")
            await engine.wait_idle()
            return engine.statistics().received_total, dict(engine.queue_counts())

    return trio.run(run)


def test_killed_compactions_lose_nothing_and_leave_nothing_half_done(tmp_path: Path) -> None:
    chance = random.Random(20261201)
    for round_ in range(ROUNDS):
        received, _ = serve(tmp_path, round_)
        process = subprocess.Popen(
            [sys.executable, "-m", "kumo.store.compaction", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(chance.uniform(0.0, 0.8))  # a real process, killed at a random moment
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        report = verify_data_dir(tmp_path)
        assert report.violations == [], f"round {round_}"
        assert report.received == received
        for directory in (tmp_path / SNAPSHOTS, tmp_path / ARCHIVE):
            # Only whole files under real names; a temporary at most, which the next
            # writer removes.
            names = [path.name for path in directory.iterdir()] if directory.exists() else []
            assert all(name.endswith((".snapshot", ".archive.sqlite3", ".tmp")) for name in names)
    # A compaction that runs to its end archives what it may, and a start shows the same.
    done = compact(tmp_path)
    assert done.archived_through > 0
    assert archive_segments(tmp_path / ARCHIVE)[0].first_seq == 1
    assert verify_data_dir(tmp_path).violations == []
    received, counts = serve(tmp_path, ROUNDS)
    report = verify_data_dir(tmp_path)
    assert report.violations == []
    assert received == report.received == 400 * (ROUNDS + 1)
    assert sum(counts.values()) == report.queued


def snapshot_being_written(data_dir: Path) -> bool:
    return any((data_dir / SNAPSHOTS).glob("*.tmp")) if (data_dir / SNAPSHOTS).exists() else False


def segment_being_written(data_dir: Path) -> bool:
    return any((data_dir / ARCHIVE).glob("*.tmp")) if (data_dir / ARCHIVE).exists() else False


def rows_being_dropped(data_dir: Path) -> bool:
    return (data_dir / ARCHIVE).exists() and any((data_dir / ARCHIVE).glob("*.archive.sqlite3"))


@pytest.mark.parametrize(
    "moment", [snapshot_being_written, segment_being_written, rows_being_dropped]
)
def test_a_compaction_killed_at_each_step_loses_nothing(
    tmp_path: Path, moment: Callable[[Path], bool]
) -> None:
    for round_ in range(3):
        serve(tmp_path, round_, messages=6_000)
    received = verify_data_dir(tmp_path).received
    process = subprocess.Popen(
        [sys.executable, "-m", "kumo.store.compaction", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Watch the process's files and kill it the moment it reaches the step. A small
    # snapshot is on disk in a few ms: look often (a wider wait missed it once in CI).
    caught = False
    while process.poll() is None:
        if moment(tmp_path):
            os.kill(process.pid, signal.SIGKILL)
            caught = True
            break
        time.sleep(0.0001)
    process.wait(timeout=60)
    assert caught, f"the compaction ended before {moment.__name__}"
    report = verify_data_dir(tmp_path)
    assert report.violations == []
    assert report.received == received
    done = compact(tmp_path)  # the next pass finishes the work
    assert done.archived_through > 0
    assert not any(path.name.endswith(".tmp") for path in (tmp_path / ARCHIVE).iterdir())
    assert verify_data_dir(tmp_path).violations == []


def test_killed_compactions_with_retention_leave_a_log_that_verifies(tmp_path: Path) -> None:
    chance = random.Random(20261202)
    # Every segment is past retention (1 ns, a day from now): each pass deletes all it may.
    retention = ["--retention", "1", "--now", str(time.time_ns() + 86_400 * 10**9)]
    for round_ in range(ROUNDS):
        serve(tmp_path, round_)
        process = subprocess.Popen(
            [sys.executable, "-m", "kumo.store.compaction", str(tmp_path), *retention],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(chance.uniform(0.0, 0.8))
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        report = verify_data_dir(tmp_path)
        assert report.violations == [], f"round {round_}"
        for directory in (tmp_path / SNAPSHOTS, tmp_path / ARCHIVE):
            names = [path.name for path in directory.iterdir()] if directory.exists() else []
            assert all(name.endswith((".snapshot", ".archive.sqlite3", ".tmp")) for name in names)
    done = compact(tmp_path, retention=1, now=time.time_ns() + 86_400 * 10**9)
    assert done.retention.cut > 0
    assert not any(path.name.endswith(".tmp") for path in (tmp_path / ARCHIVE).iterdir())
    report = verify_data_dir(tmp_path)
    assert report.violations == []
    assert report.first_seq == done.retention.cut + 1
    _, counts = serve(tmp_path, ROUNDS)
    report = verify_data_dir(tmp_path)
    assert report.violations == []
    assert sum(counts.values()) == report.queued

"""Snapshots while serving, and starts from them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from kumo.model.settings import EngineSettings
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import DeliveryLogAheadError, open_engine
from kumo.store.archive import history_cut
from kumo.store.layout import ARCHIVE, DATABASE, SNAPSHOTS
from kumo.store.snapshots import SnapshotAheadError, snapshot_paths
from kumo.store.verify import verify_data_dir
from tests.runtime.harness import WALL_ORIGIN, bounce, message

EVERY = EngineSettings(snapshot_every=20)
Shown = tuple[Mapping[str, int], list[tuple[str, Mapping[str, int]]]]
"""What the engine shows: queue counts, and each rule's counters."""


def empty_the_log(data_dir: Path) -> None:
    """What issue 12 found served as a fresh log: a zero-byte ``events.sqlite3``."""
    for path in data_dir.glob(f"{DATABASE}*"):
        path.unlink()
    (data_dir / DATABASE).write_bytes(b"")


async def fill(tmp_path: Path) -> Shown:
    """Inject 60 messages over two queues and bounce one queue; return what the engine
    shows (queue counts, and each rule's counters) once a snapshot covers it all."""
    async with open_engine(
        tmp_path, clock=EngineClock(WALL_ORIGIN), settings=EVERY, threads=False
    ) as engine:
        for start in range(0, 60, 10):
            await engine.inject(
                [message(f"u{n}@{'a' if n % 3 else 'b'}.example") for n in range(start, start + 10)]
            )
        await engine.issue_bounce(bounce(domain="b.example"), issued_by="tester")
        await engine.wait_idle()
        await trio.testing.wait_all_tasks_blocked()
        assert engine.statistics().snapshots.taken >= 3
        return engine.queue_counts(), [(view.id, view.bounced) for view in engine.list_bounces()]


async def shown(tmp_path: Path) -> tuple[int, Shown]:
    """What a restart shows, and the seq of the snapshot it started from."""
    async with open_engine(
        tmp_path,
        clock=EngineClock(WALL_ORIGIN),
        settings=EngineSettings(snapshot_every=0),
        threads=False,
    ) as engine:
        await engine.wait_idle()
        views = [(view.id, view.bounced) for view in engine.list_bounces()]
        return engine.statistics().snapshots.seq, (engine.queue_counts(), views)


async def test_a_restart_starts_from_the_newest_snapshot(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    before = await fill(tmp_path)
    assert before[0] == {"a.example": 40}
    seq, after = await shown(tmp_path)
    newest = snapshot_paths(tmp_path / SNAPSHOTS)[0]
    assert seq == int(newest.name.split(".")[0]) > 0
    assert after == before


async def test_a_damaged_snapshot_falls_back_to_the_one_before(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    before = await fill(tmp_path)
    newer, older = snapshot_paths(tmp_path / SNAPSHOTS)
    newer.write_bytes(newer.read_bytes()[:-1])
    seq, after = await shown(tmp_path)
    assert seq == int(older.name.split(".")[0])
    assert after == before


async def test_a_log_emptied_behind_its_snapshots_is_refused(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    await fill(tmp_path)
    empty_the_log(tmp_path)
    with pytest.raises(SnapshotAheadError, match="missing from the log"):
        await shown(tmp_path)


async def test_snapshots_taken_by_a_process_of_their_own(tmp_path: Path) -> None:
    settings = EngineSettings(snapshot_every=50)
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), settings=settings) as engine:
        await engine.inject([message(f"u{n}@a.example") for n in range(60)])
        with trio.fail_after(60):
            await engine.wait_snapshot(50)
        statistics = engine.statistics().snapshots
    assert statistics.taken == 1
    assert statistics.seq == 60
    assert statistics.last_bytes == snapshot_paths(tmp_path / SNAPSHOTS)[0].stat().st_size


async def test_retention_by_a_process_of_its_own(tmp_path: Path) -> None:
    # Anything older than a nanosecond is past retention: each compaction deletes every
    # archive segment it may.
    settings = EngineSettings(snapshot_every=50, archive_retention=1)
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), settings=settings) as engine:
        for start in range(0, 240, 60):
            await engine.inject([message(f"u{n}@a.example") for n in range(start, start + 60)])
            with trio.fail_after(60):
                await engine.wait_snapshot(start + 60)
        statistics = engine.statistics().snapshots
    cut = history_cut(tmp_path / ARCHIVE)
    assert cut is not None
    assert statistics.retention_cut == cut.seq > 0
    report = verify_data_dir(tmp_path)
    assert report.violations == []
    assert (report.first_seq, report.queued) == (cut.seq + 1, 240)


async def test_a_log_emptied_behind_its_delivery_log_is_refused_too(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # No snapshot to tell: the delivery log's checkpoint does.
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        await engine.inject([message(f"u{n}@a.example") for n in range(5)])
        await engine.wait_idle()
    empty_the_log(tmp_path)
    with pytest.raises(DeliveryLogAheadError, match=r"written up to seq 5 .* ends at seq 0"):
        await shown(tmp_path)

"""The WAL checkpointer: commits never checkpoint, and the WAL stays small anyway."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from kumo.model.settings import EngineSettings
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import open_engine
from kumo.store.layout import DATABASE
from tests.runtime.harness import WALL_ORIGIN, message


async def test_the_wal_stays_small_under_a_stream_of_injects(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Clients' commits alone: before the checkpointer, none of them checkpointed and the
    # WAL grew with everything injected (85 MiB after 200,000 messages).
    body = b"x" * 4000
    wal = tmp_path / f"{DATABASE}-wal"
    sizes: list[int] = []
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        for _ in range(60):
            await engine.inject([message(f"u{i}@example.com", body=body) for i in range(50)])
            await trio.sleep(EngineSettings().wal_checkpoint_interval)
            sizes.append(wal.stat().st_size)
        statistics = engine.statistics().wal
        assert engine.statistics().received_total == 3000
    assert statistics.checkpoints >= 50
    assert statistics.frames_left == 0
    # 3,000 messages of 4 KB are 12 MB and more than 3,000 pages; the WAL never held
    # more than a few batches of them.
    assert max(sizes) < 2 * 1024 * 1024


async def test_no_checkpoint_starts_while_admin_requests_are_answered(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        await engine.inject([message("a@example.com")])
        await trio.sleep(1)
        before = engine.statistics().wal.checkpoints
        with engine.admin_gate.request():
            await engine.inject([message("b@example.com")])  # the request's own commit
            await trio.sleep(0.05)
            assert engine.statistics().wal.checkpoints == before  # it waits its turn
        await trio.sleep(0.01)
        assert engine.statistics().wal.checkpoints == before + 1

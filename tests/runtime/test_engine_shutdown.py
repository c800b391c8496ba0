"""Shutting the engine down: the wait for work under way, and cutting it short."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import attrs
import trio
import trio.testing

from kumo.model.settings import EngineSettings
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import open_engine
from tests.runtime.harness import WALL_ORIGIN, bounce, log_records, message

MESSAGES = 3_000


async def test_a_shutdown_cut_short_closes_cleanly_and_the_next_start_finishes(
    tmp_path: Path,
) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        ids = await engine.inject([message(f"u{i}@example.com") for i in range(MESSAGES)])
        await engine.wait_idle()
        await engine.issue_bounce(bounce(domain="example.com"), issued_by="tester")
        engine.cut_shutdown_short()  # before the sweep could be done
    assert engine.shutdown_cut_short
    assert not (tmp_path / "events.sqlite3-wal").exists()  # the database closed cleanly

    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        await engine.wait_idle()
        assert engine.queue_counts() == {}
        [view] = engine.list_bounces()
        assert view.total_bounced == MESSAGES
    assert not engine.shutdown_cut_short
    kinds = Counter(record["type"] for record in log_records(tmp_path))
    assert kinds == {"Reception": MESSAGES, "AdminBounce": MESSAGES}
    bounced = [str(r["id"]) for r in log_records(tmp_path) if r["type"] == "AdminBounce"]
    assert sorted(bounced) == sorted(ids)  # each once


async def test_an_idle_shutdown_is_not_cut_short(tmp_path: Path) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        await engine.inject([message("u@example.com")])
        await engine.wait_idle()
    engine.cut_shutdown_short()  # after the fact: changes nothing
    assert not engine.shutdown_cut_short


async def test_the_shutdown_waits_at_most_its_deadline(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    settings = attrs.evolve(EngineSettings(), shutdown_deadline=5.0)
    blocked = trio.Event()
    async with open_engine(
        tmp_path, clock=EngineClock(WALL_ORIGIN), settings=settings, threads=False
    ) as engine:
        await engine.inject([message("u@example.com")])

        async def never_idle() -> None:  # work that never ends
            blocked.set()
            await trio.sleep_forever()

        engine.wait_idle = never_idle  # type: ignore[method-assign]
        started = trio.current_time()
    assert blocked.is_set()
    assert trio.current_time() - started == 5.0
    assert engine.shutdown_cut_short

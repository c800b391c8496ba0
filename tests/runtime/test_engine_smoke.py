from __future__ import annotations

from pathlib import Path

import pytest

from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import open_engine
from kumo.store.event_log import StoreDamagedError
from kumo.store.integrity import PARTS
from kumo.store.layout import DATABASE, LOGS
from kumo.store.lock import DataDirectoryLock
from tests.page_damage import build_store, damage
from tests.runtime.harness import WALL_ORIGIN, bounce, log_records, message


async def test_inject_bounce_log_replay(tmp_path: Path) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        ids = await engine.inject([message(f"u{i}@example.com") for i in range(5)])
        await engine.wait_idle()
        assert engine.queue_counts() == {"example.com": 5}
        rule = await engine.issue_bounce(bounce(domain="example.com"), issued_by="tester")
        await engine.wait_idle()
        assert engine.queue_counts() == {}
        [view] = engine.list_bounces()
        assert view.id == rule
        assert view.bounced == {"example.com": 5}
    records = log_records(tmp_path)
    assert [r["type"] for r in records] == ["Reception"] * 5 + ["AdminBounce"] * 5
    assert {r["id"] for r in records if r["type"] == "AdminBounce"} == set(ids)
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        [view] = engine.list_bounces()
        assert view.total_bounced == 5
        await engine.wait_idle()
    assert len(log_records(tmp_path)) == 10


async def test_a_store_with_a_damaged_page_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    # Issue 12: a damaged interior page of the spool let the engine start, take a
    # bounce, and die when the sweep deleted the contents.
    build_store(tmp_path / DATABASE)
    damage(tmp_path / DATABASE, "spool", "internal")

    with pytest.raises(StoreDamagedError) as caught:
        async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)):
            pytest.fail("the engine ran on a damaged store")

    assert caught.value.damage.startswith(f"{PARTS['spool']}: Page ")
    assert not (tmp_path / LOGS).exists()  # nothing written: no delivery log begun
    DataDirectoryLock(tmp_path).release()  # and the directory is free again

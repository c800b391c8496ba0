from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import open_engine
from kumo.store.event_log import StoreDamagedError
from kumo.store.integrity import PARTS
from kumo.store.layout import DATABASE, LOGS
from kumo.store.lock import DataDirectoryLock
from kumo.store.sqlite_log import SPOOL_OWED, SqliteEventStore
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


async def test_a_start_after_a_crash_owes_the_purges_the_crash_forgot(tmp_path: Path) -> None:
    """What a crash leaves: contents of bounced messages still spooled, ``spool_owed``
    set, and no memory of what was owed. The next start compares the spool with the
    queues, and the purges follow."""
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        await engine.inject([message(f"u{i}@example.com") for i in range(3)])
        await engine.inject([message("v@other.example")])
        await engine.issue_bounce(bounce(domain="example.com"), issued_by="tester")
        await engine.wait_idle()
    db = sqlite3.connect(tmp_path / DATABASE)
    with db:  # as the process left it before its purges: the contents and the flag
        db.executemany("INSERT INTO spool VALUES (?, x'00')", [(1,), (2,), (3,)])
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, '1')", (SPOOL_OWED,))
    db.close()
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        # The writer may purge before the first look (it does not wait for it): what it
        # owes and what it purged add up to what the start found owed.
        log = engine.statistics().log
        assert log.spool_owed + log.spool_purged == 3
        await engine.wait_idle()
        log = engine.statistics().log
        assert (log.spool_owed, log.spool_purged) == (0, 3)
    store = SqliteEventStore(tmp_path / DATABASE)
    assert (store.spool_count(), store.owing) == (1, False)
    store.close()

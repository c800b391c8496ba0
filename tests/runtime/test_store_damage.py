"""A store found damaged while serving: writes stop cleanly, reads and figures go on.

The damage is real: a page of the spool's b-tree is overwritten on disk while the
engine runs, and SQLite finds it when the next write walks that b-tree (issue 12).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing

from kumo.model.settings import EngineSettings
from kumo.runtime.blocking import inline
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import open_engine
from kumo.runtime.log_writer import LogClosedError, LogWriter, WritesStoppedError
from kumo.store.event_log import LogDamagedError, StoreDamagedError
from kumo.store.layout import DATABASE
from kumo.store.sqlite_log import SqliteEventStore
from tests.page_damage import BODY, build_store, damage, received
from tests.runtime.harness import WALL_ORIGIN, bounce, message


def test_a_write_that_meets_a_damaged_page_is_a_log_damaged_error(tmp_path: Path) -> None:
    path = tmp_path / DATABASE
    build_store(path)
    damage(path, "spool", "internal")
    store = SqliteEventStore(path)
    try:
        last = store.last_seq
        with pytest.raises(LogDamagedError, match=r"malformed \(SQLITE_CORRUPT\)"):
            store.commit([received(9_999)], time=10**18 + 1, bodies={0: BODY})
        assert store.last_seq == last  # nothing of it was written
    finally:
        store.close()


async def test_writes_stop_with_a_503_reason_and_reads_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    build_store(tmp_path / DATABASE)
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        await engine.wait_idle()
        rule = await engine.issue_bounce(bounce(domain="nowhere.example"), issued_by="t")
        queued = engine.queue_counts()
        received_before = engine.statistics().received_total
        damage(tmp_path / DATABASE, "spool", "internal")

        with (
            caplog.at_level(logging.ERROR, logger="kumo.log"),
            pytest.raises(WritesStoppedError, match=r"store is damaged .*SQLITE_CORRUPT"),
        ):
            await engine.inject([message("late@example.com")])
        [line] = [r for r in caplog.records if r.name == "kumo.log"]
        assert "writes are stopped" in line.getMessage()
        assert "kumo replay --verify" in line.getMessage()

        # Every later write is refused at once, without touching the store again.
        with pytest.raises(WritesStoppedError):
            await engine.issue_bounce(bounce(domain="x.example"), issued_by="t")
        with pytest.raises(WritesStoppedError):
            await engine.inject([message("later@example.com")])
        # What was committed before is all there; reads and figures answer.
        assert [view.id for view in engine.list_bounces()] == [rule]
        assert engine.queue_counts() == queued
        statistics = engine.statistics()
        assert statistics.log.damaged
        assert statistics.received_total == received_before
    # The shutdown did not wait for what can no longer be written (no hang).


async def test_a_restart_refuses_the_damaged_store_in_one_line(tmp_path: Path) -> None:
    build_store(tmp_path / DATABASE)
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        await engine.wait_idle()
        damage(tmp_path / DATABASE, "spool", "internal")
        with pytest.raises(WritesStoppedError):
            await engine.inject([message("late@example.com")])
    with pytest.raises(StoreDamagedError, match="spool"):
        async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)):
            pytest.fail("the engine ran on a damaged store")


async def test_a_follower_that_must_read_a_damaged_page_stops_writes_and_waits(
    tmp_path: Path,
) -> None:
    path = tmp_path / DATABASE
    build_store(path)
    store, reader = SqliteEventStore(path), SqliteEventStore(path, readonly=True)
    # Opening read the log's end; its beginning, damaged now, is read from disk later.
    damage(path, "events", "leaf")
    writer = LogWriter(
        store,
        reader,
        EngineClock(WALL_ORIGIN),
        EngineSettings(),
        on_commit=lambda _: None,
        run_blocking=inline,
    )
    closed: list[BaseException] = []

    async def follow() -> None:
        try:
            await writer.read_after(0)  # nothing in memory: from the damaged table
        except LogClosedError as exc:
            closed.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        nursery.start_soon(follow)
        await trio.testing.wait_all_tasks_blocked()
        assert writer.damage is not None
        assert "SQLITE_CORRUPT" in str(writer.damage)
        assert writer.statistics().damaged
        with pytest.raises(WritesStoppedError):
            await writer.append([received(9_999)], bodies={0: BODY})
        assert closed == []  # the follower waits, without spinning or failing
        writer.close()
    assert len(closed) == 1
    store.close()
    reader.close()

"""Compaction while serving: snapshots, archives, a live store that keeps only what is
live, and a log that audits and verification still read whole."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio
import trio.testing
import zstandard

from kumo.model.settings import EngineSettings
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import open_engine
from kumo.store.archive import archive_segments, history_cut
from kumo.store.history import HistoryView
from kumo.store.layout import ARCHIVE, DATABASE
from kumo.store.log_view import LogView
from kumo.store.verify import verify_data_dir
from tests.runtime.harness import WALL_ORIGIN, bounce, message


async def serve_a_while(data_dir: Path) -> list[str]:
    """Inject 200 messages over two queues, bounce one queue; return the message ids."""
    settings = EngineSettings(snapshot_every=20)
    async with open_engine(
        data_dir, clock=EngineClock(WALL_ORIGIN), settings=settings, threads=False
    ) as engine:
        ids: list[str] = []
        for start in range(0, 200, 10):
            batch = [
                message(f"u{n}@{'a' if n % 2 else 'b'}.example") for n in range(start, start + 10)
            ]
            ids += await engine.inject(batch)
            if start == 100:
                await engine.issue_bounce(bounce(domain="b.example"), issued_by="tester")
            await engine.wait_idle()
            await trio.testing.wait_all_tasks_blocked()
        assert engine.statistics().snapshots.archived_through > 100
    return ids


def live_first_seq(data_dir: Path) -> int:
    with LogView(data_dir / DATABASE) as view:
        return view.first_seq


async def test_old_events_move_to_the_archive_and_the_log_still_reads_whole(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ids = await serve_a_while(tmp_path)
    segments = archive_segments(tmp_path / ARCHIVE)
    assert len(segments) >= 2
    assert live_first_seq(tmp_path) == segments[-1].last_seq + 1
    with HistoryView(tmp_path) as history:
        assert history.first_seq == 1
        assert history.event_count == history.last_seq
        # The first message's story, from the oldest segment: only chunks that can
        # mention it are read.
        story = [
            row[2]
            for batch in history.rows(
                skip=("MessageReceived", "Bounced"), unless_containing=ids[0].encode()
            )
            for row in batch
        ]
    assert story[0] == "MessageReceived"
    report = verify_data_dir(tmp_path)
    assert report.violations == []
    assert report.snapshots == 2
    assert report.received == 200
    # A restart starts from the newest snapshot and shows the same.
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        await engine.wait_idle()
        assert engine.queue_counts() == {"a.example": 100}
        [rule] = engine.list_bounces()
        assert rule.bounced == {"b.example": 100}


async def test_a_tampered_archive_is_named_by_verify(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    await serve_a_while(tmp_path)
    oldest = archive_segments(tmp_path / ARCHIVE)[0].path
    tamper(oldest)
    [violation, *_] = verify_data_dir(tmp_path).violations
    assert violation.check == "chain"
    assert violation.where.startswith(f"{ARCHIVE}/{oldest.name}, ")


def tamper(path: Path) -> None:
    """Change one recipient inside the first chunk, recompressed so that it reads."""
    with sqlite3.connect(path) as db:
        (data,) = db.execute("SELECT rows FROM chunks ORDER BY first_seq LIMIT 1").fetchone()
        plain = zstandard.ZstdDecompressor().decompress(data)
        edited = plain.replace(b"u0@b.example", b"u9@b.example", 1)
        assert edited != plain
        db.execute(
            "UPDATE chunks SET rows = ? WHERE first_seq = 1",
            (zstandard.ZstdCompressor().compress(edited),),
        )
    db.close()


async def test_a_start_without_a_usable_snapshot_folds_the_archive_too(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    await serve_a_while(tmp_path)
    remove_snapshots(tmp_path)
    async with open_engine(
        tmp_path,
        clock=EngineClock(WALL_ORIGIN),
        settings=EngineSettings(snapshot_every=0),
        threads=False,
    ) as engine:
        await engine.wait_idle()
        assert engine.queue_counts() == {"a.example": 100}
        assert engine.statistics().received_total == 200


def remove_snapshots(data_dir: Path) -> None:
    for path in (data_dir / "snapshots").iterdir():
        path.unlink()


async def test_retention_while_serving_deletes_old_history_and_the_rest_verifies(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # An hour of history kept; a batch every ten minutes of engine time.
    settings = EngineSettings(snapshot_every=20, archive_retention=60 * 60 * 10**9)
    clock = EngineClock(WALL_ORIGIN)
    async with open_engine(tmp_path, clock=clock, settings=settings, threads=False) as engine:
        ids: list[str] = []
        for start in range(0, 300, 10):
            batch = [
                message(f"u{n}@{'a' if n % 2 else 'b'}.example") for n in range(start, start + 10)
            ]
            ids += await engine.inject(batch)
            if start % 100 == 0:
                await engine.issue_bounce(
                    bounce(domain="b.example", duration=20 * 60 * 10**9), issued_by="tester"
                )
            await engine.wait_idle()
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(10 * 60)
        statistics = engine.statistics().snapshots
        now = clock.now()
    cut = history_cut(tmp_path / ARCHIVE)
    assert cut is not None
    assert statistics.retention_cut == cut.seq
    # What is kept: the segments whose newest event was within the hour when the last
    # compaction ran (every 20 events: two batches, twenty minutes at most before now).
    oldest_kept = now - 80 * 60 * 10**9
    assert all(s.last_time >= oldest_kept for s in archive_segments(tmp_path / ARCHIVE))
    assert cut.time < now - 60 * 60 * 10**9
    report = verify_data_dir(tmp_path)
    assert report.violations == []
    assert report.cut_seq == cut.seq
    # A start after it shows what the engine showed.
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        await engine.wait_idle()
        assert engine.statistics().received_total == 300
        assert sum(engine.queue_counts().values()) == report.queued


async def test_the_archive_keeps_what_a_broadcaster_behind_its_tail_still_reads(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # A rule that matches 30 queues is handed out one actor at a time; each actor's
    # Bounced commits at once, and each commit is a snapshot and an archive pass, while
    # the broadcaster, still handing the rule out, stands before it. With a tail of one
    # event, it then reads what follows the rule from the live store: archiving it would
    # stop the server ("missing events").
    settings = EngineSettings(snapshot_every=1, tail_events=1, deliveries_per_yield=1)
    async with open_engine(
        tmp_path, clock=EngineClock(WALL_ORIGIN), settings=settings, threads=False
    ) as engine:
        await engine.inject([message(f"u{n}@d{n}.example") for n in range(30)])
        await engine.wait_idle()
        await trio.testing.wait_all_tasks_blocked()
        await engine.issue_bounce(bounce(), issued_by="tester")
        await engine.wait_idle()
        await trio.testing.wait_all_tasks_blocked()
        statistics = engine.statistics()
        assert statistics.snapshots.archived_through <= statistics.broadcaster.position
        [rule] = engine.list_bounces()
        assert sum(rule.bounced.values()) == 30
        assert engine.queue_counts() == {}
    assert verify_data_dir(tmp_path).violations == []

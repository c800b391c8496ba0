"""The delivery-log writer: exactly once across crashes, segments that rotate."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import trio
import trio.testing

from kumo.model.events import Bounced, Committed, Message, MessageReceived
from kumo.runtime import delivery_log
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import open_engine
from tests.runtime.harness import WALL_ORIGIN, bounce, log_records, message


async def fill(path: Path, count: int) -> list[str]:
    async with open_engine(path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        ids = await engine.inject([message(f"u{i}@d.com") for i in range(count)])
        await engine.issue_bounce(bounce(domain="d.com"), issued_by="o")
        await engine.wait_idle()
    return ids


async def test_a_crash_after_writing_but_before_the_checkpoint_repeats_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    await fill(tmp_path, 10)
    logs = tmp_path / "logs"
    checkpoint = orjson.loads((logs / "checkpoint.json").read_bytes())
    segment = logs / checkpoint["segment"]
    complete = segment.read_bytes()
    # Pretend the last round (the sweep's AdminBounce lines, and half a line more) was
    # written but died before its checkpoint: the checkpoint still says "after seq 11,
    # the ten Reception lines".
    lines = complete.splitlines(keepends=True)
    offset = sum(len(line) for line in lines[:10])
    (logs / "checkpoint.json").write_bytes(
        orjson.dumps({"seq": 11, "segment": checkpoint["segment"], "offset": offset})
    )
    segment.write_bytes(complete + b'{"type":"AdminBou')
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        await engine.wait_idle()
    assert segment.read_bytes() == complete


async def test_records_survive_and_continue_across_restarts(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    first = await fill(tmp_path, 3)
    second = await fill(tmp_path, 4)
    records = log_records(tmp_path)
    assert [r["id"] for r in records if r["type"] == "Reception"] == first + second
    assert sorted(str(r["id"]) for r in records if r["type"] == "AdminBounce") == sorted(
        first + second
    )


async def test_segments_rotate_and_are_named_by_their_first_seq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setattr(delivery_log, "SEGMENT_BYTES", 2_000)
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        for i in range(6):
            await engine.inject([message(f"u{i}.{n}@d.com") for n in range(3)])
            await engine.wait_idle()
    segments = sorted(p.name for p in (tmp_path / "logs").glob("*.jsonl"))
    assert len(segments) > 1
    assert segments[0] == delivery_log.segment_name(1)
    assert len(log_records(tmp_path)) == 18


def test_rounds_hold_about_round_records_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delivery_log, "ROUND_RECORDS", 5)
    received = [Committed(n, 1, MessageReceived(f"m{n}", "q", "s", "r", 1)) for n in (1, 2, 3)]
    taken = tuple(Message(f"m{n}", "s", "r", 1, 1, n) for n in range(4))
    bounced = Committed(4, 2, Bounced("rule", "q", taken))
    rounds = delivery_log._rounds([*received, bounced, *received])
    assert [[c.seq for c in round_] for round_ in rounds] == [[1, 2, 3], [4, 1], [2, 3]]


async def test_small_rounds_still_write_every_record_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setattr(delivery_log, "ROUND_RECORDS", 3)
    ids = await fill(tmp_path, 10)
    records = log_records(tmp_path)
    assert sorted(str(r["id"]) for r in records if r["type"] == "AdminBounce") == sorted(ids)
    assert [r["id"] for r in records if r["type"] == "Reception"] == ids

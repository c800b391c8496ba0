"""The delivery-log writer: exactly once across crashes, segments that rotate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import orjson
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.criteria import Criteria
from kumo.model.events import Bounced, BounceIssued, Committed, Event, Message, MessageReceived
from kumo.model.log_record import reception_line
from kumo.model.settings import EngineSettings
from kumo.model.state import RuleBook
from kumo.runtime import delivery_log
from kumo.runtime.admin_gate import AdminGate
from kumo.runtime.blocking import RunBlocking, inline
from kumo.runtime.clock import EngineClock
from kumo.runtime.delivery_log import DeliveryLogWriter
from kumo.runtime.delivery_repair import RepairError
from kumo.runtime.engine import DeliveryLogAheadError, open_engine
from kumo.runtime.log_writer import LogWriter
from kumo.store.compaction import compact
from kumo.store.data_dir import open_event_log
from kumo.store.delivery_files import (
    Checkpoint,
    read_checkpoint,
    segment_name,
    segment_sizes,
    write_checkpoint,
)
from kumo.store.event_log import EventStore
from kumo.store.verify import verify_data_dir
from tests.runtime.harness import WALL_ORIGIN, bounce, log_records, message

T = TypeVar("T")
SECOND = 1_000_000_000


def taking(seconds: float) -> RunBlocking:
    """Blocking calls that take ``seconds`` of (virtual) time, like a disk: commits of
    a log that overlap the appends, rounds of a writer that fall behind."""

    async def run(call: Callable[[], T]) -> T:
        result = call()
        await trio.sleep(seconds)
        return result

    return run


def plain_log(path: Path, run_blocking: RunBlocking) -> tuple[LogWriter, EventStore, EventStore]:
    """A log writer on ``path`` with default settings and no projection, and its two
    connections (the caller closes them)."""
    store = open_event_log(path)
    reader = open_event_log(path, readonly=True)
    log = LogWriter(
        store,
        reader,
        EngineClock(WALL_ORIGIN),
        EngineSettings(),
        on_commit=lambda _: None,
        run_blocking=run_blocking,
    )
    return log, store, reader


async def fill(path: Path, count: int, settings: EngineSettings | None = None) -> list[str]:
    async with open_engine(
        path, clock=EngineClock(WALL_ORIGIN), settings=settings, threads=False
    ) as engine:
        ids = await engine.inject([message(f"u{i}@d.com") for i in range(count)])
        await engine.issue_bounce(bounce(domain="d.com"), issued_by="o")
        await engine.wait_idle()
    return ids


async def test_a_crash_after_writing_but_before_the_checkpoint_repeats_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    await fill(tmp_path, 10)
    logs = tmp_path / "logs"
    checkpoint = read_checkpoint(logs)
    assert checkpoint is not None
    segment = logs / checkpoint.segment
    complete = segment.read_bytes()
    # Pretend the last round (the sweep's AdminBounce lines, and half a line more) was
    # written but died before its checkpoint: the checkpoint still says "after seq 11,
    # the ten Reception lines".
    lines = complete.splitlines(keepends=True)
    offset = sum(len(line) for line in lines[:10])
    write_checkpoint(logs, Checkpoint(11, checkpoint.segment, offset))
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
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    settings = EngineSettings(segment_bytes=2_000)
    async with open_engine(
        tmp_path, clock=EngineClock(WALL_ORIGIN), settings=settings, threads=False
    ) as engine:
        for i in range(6):
            await engine.inject([message(f"u{i}.{n}@d.com") for n in range(3)])
            await engine.wait_idle()
    segments = list(segment_sizes(tmp_path / "logs"))
    assert len(segments) > 1
    assert segments[0] == segment_name(1)
    assert len(log_records(tmp_path)) == 18


def test_rounds_hold_about_round_records_each() -> None:
    received = [Committed(n, 1, MessageReceived(f"{n:032x}", "q", "s", "r", 1)) for n in (1, 2, 3)]
    taken = tuple(Message(f"m{n}", "s", "r", 1, 1, n) for n in range(4))
    bounced = Committed(4, 2, Bounced("rule", "q", taken))
    rounds = delivery_log._rounds([*received, bounced, *received], 5)
    assert [[c.seq for c in round_] for round_ in rounds] == [[1, 2, 3], [4, 1], [2, 3]]


async def test_small_rounds_still_write_every_record_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    ids = await fill(tmp_path, 10, EngineSettings(round_records=3))
    records = log_records(tmp_path)
    assert sorted(str(r["id"]) for r in records if r["type"] == "AdminBounce") == sorted(ids)
    assert [r["id"] for r in records if r["type"] == "Reception"] == ids


async def test_a_busy_log_is_written_once_for_several_commits(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Under a stream of small appends the writer gathers commits instead of fsyncing
    once per commit, and still writes every record once, in log order."""

    log, store, reader = plain_log(tmp_path, taking(0.001))
    writer = DeliveryLogWriter(
        log, tmp_path / "logs", RuleBook(), "node", EngineSettings(), run_blocking=inline
    )
    writer.recover()

    async def client(number: int) -> None:
        for n in range(25):
            await log.append([MessageReceived(f"{number:016x}{n:016x}", "q", "s@x", "r@y", 1)])

    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await nursery.start(writer.run)
        async with trio.open_nursery() as clients:
            for number in range(4):
                clients.start_soon(client, number)
        await writer.position.wait_for(log.last_seq)
        nursery.cancel_scope.cancel()
    commits = log.statistics().commits
    written = writer.statistics()
    assert written.records_written == 100
    # Without gathering: one write per commit (25 here); with it, 5-7.
    assert written.writes * 2 <= commits, (written.writes, commits)
    records = log_records(tmp_path)
    assert [r["id"] for r in records] == [c.event.message_id for c in store.read(0, 200)]  # type: ignore[union-attr]
    store.close()
    reader.close()


async def test_records_follow_only_what_the_log_made_durable(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # One sweep event a commit, and some of them not fsynced though a client just appended.
    settings = EngineSettings(
        max_batch_messages=1,
        client_batch_messages=1,
        urgent_batch_messages=1,
        client_durable_every=8,
    )
    rules = RuleBook()
    store = open_event_log(tmp_path)
    reader = open_event_log(tmp_path, readonly=True)
    ahead: list[tuple[int, int]] = []

    def on_commit(committed: list[Committed]) -> None:
        for item in committed:
            rules.apply(item)
        if writer.position.value > log.durable.value:
            ahead.append((writer.position.value, log.durable.value))

    # A slow disk for the records: the writer reads again after the log committed more.
    log = LogWriter(
        store,
        reader,
        EngineClock(WALL_ORIGIN),
        settings,
        on_commit=on_commit,
        run_blocking=taking(0.001),
    )
    writer = DeliveryLogWriter(
        log, tmp_path / "logs", rules, "node", settings, run_blocking=taking(0.003)
    )
    writer.recover()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await nursery.start(writer.run)
        await log.append([BounceIssued("rule", Criteria(), "why", 2 * WALL_ORIGIN)])
        sweep: list[Event] = [
            Bounced("rule", "q", [Message(f"m{n}", "s", "r", 1, 1, n)]) for n in range(30)
        ]
        await log.submit(sweep)
        await writer.position.wait_for(31)
        nursery.cancel_scope.cancel()
    assert log.statistics().durable_commits < log.statistics().commits
    assert ahead == []
    assert [r["id"] for r in log_records(tmp_path)] == [f"m{n}" for n in range(30)]
    store.close()
    reader.close()


def test_records_of_a_mixed_batch_come_in_log_order() -> None:
    def received(seq: int, time: int) -> Committed:
        return Committed(seq, time, MessageReceived(ids[seq], "q", "s", f"r{seq}", 1))

    ids = [f"{n:032x}" for n in range(6)]
    taken = (Message(ids[1], "s", "r1", 1, 10, 1),)
    batch = [
        received(1, 10 * SECOND),
        received(2, 10 * SECOND),
        Committed(3, 10 * SECOND, Bounced("rule", "q", taken)),
        received(4, 10 * SECOND),
        received(5, 20 * SECOND),
    ]
    lines = delivery_log.encode_records(batch, {"rule": ("why", False)}, "node")
    records = [orjson.loads(line) for line in lines]
    assert [(r["type"], r["id"]) for r in records] == [
        ("Reception", ids[1]),
        ("Reception", ids[2]),
        ("AdminBounce", ids[1]),
        ("Reception", ids[4]),
        ("Reception", ids[5]),
    ]
    assert [r["timestamp"] for r in records if r["type"] == "Reception"] == [10, 10, 10, 20]
    assert lines[0] == reception_line(batch[0].event, received_at=10 * SECOND, node_id="node")  # type: ignore[arg-type]


@given(
    kinds=st.lists(st.sampled_from(["received", "later", "bounced"]), min_size=1, max_size=30),
    slice_records=st.integers(1, 12),
)
def test_records_encoded_in_slices_are_those_encoded_at_once(
    kinds: list[str], slice_records: int
) -> None:
    """The writer encodes a round a slice at a time (admin requests go first between
    two): the lines are the same, arrivals of one commit cut apart or not."""
    batch: list[Committed] = []
    time = SECOND
    for seq, kind in enumerate(kinds, start=1):
        if kind == "later":
            time += SECOND
        if kind == "bounced":
            taken = tuple(Message(f"{seq:030x}{n:02x}", "s", "r", 1, time, seq) for n in range(3))
            batch.append(Committed(seq, time, Bounced("rule", "q", taken)))
        else:
            batch.append(Committed(seq, time, MessageReceived(f"{seq:032x}", "q", "s", "r", 1)))
    rules = {"rule": ("why", False)}
    sliced = [
        line
        for piece in delivery_log._rounds(batch, slice_records)
        for line in delivery_log.encode_records(piece, rules, "node")
    ]
    assert sliced == delivery_log.encode_records(batch, rules, "node")


def test_slices_are_encoded_until_told_to_stop_and_never_none() -> None:
    batch = [
        Committed(n, SECOND, MessageReceived(f"{n:032x}", "q", "s", "r", 1)) for n in (1, 2, 3)
    ]
    pieces = delivery_log._rounds(batch, 1)
    rules: dict[str, tuple[str, bool]] = {}
    whole = delivery_log.encode_records(batch, rules, "node")
    asked: list[int] = []

    def stop_at_third() -> bool:
        asked.append(len(asked))
        return len(asked) == 2

    first, done = delivery_log.encode_slices(pieces, 0, rules, "node", stop=stop_at_third)
    assert (first, done) == (whole[:2], 2)
    rest, done = delivery_log.encode_slices(pieces, done, rules, "node", stop=lambda: True)
    assert (rest, done) == (whole[2:], 3)  # told to stop at once: one slice all the same


async def test_records_wait_while_admin_requests_are_answered(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    log, store, reader = plain_log(tmp_path, inline)
    gate = AdminGate(0.1)
    writer = DeliveryLogWriter(
        log,
        tmp_path / "logs",
        RuleBook(),
        "node",
        EngineSettings(),
        run_blocking=inline,
        admin_gate=gate,
    )
    writer.recover()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await nursery.start(writer.run)
        with gate.request():
            await log.append([MessageReceived(f"{n:032x}", "q", "s@x", "r@y", 1) for n in range(3)])
            await trio.sleep(0.05)
            assert writer.position.value == 0  # the request first
        await writer.position.wait_for(3)
        nursery.cancel_scope.cancel()
    assert len(log_records(tmp_path)) == 3
    store.close()
    reader.close()


# -- a damaged delivery log (issue 12) ----------------------------------------------------


async def restart(path: Path) -> None:
    async with open_engine(path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        await engine.inject([message("after@d.com")])
        await engine.wait_idle()


def repairs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kumo.delivery_log"]


def damaged(path: Path, edit: Callable[[list[bytes]], None]) -> tuple[Path, list[bytes]]:
    """Edit the lines of the (only) segment in place; return it and its lines before."""
    [segment] = (path / "logs").glob("*.jsonl")
    before = segment.read_bytes().splitlines(keepends=True)
    lines = list(before)
    edit(lines)
    segment.write_bytes(b"".join(lines))
    return segment, before


def every_line_is_a_record(path: Path) -> None:
    for segment in (path / "logs").glob("*.jsonl"):
        for line in segment.read_bytes().splitlines(keepends=True):
            assert line.endswith(b"\n")
            assert isinstance(orjson.loads(line), dict), line


async def test_a_line_repeated_before_the_checkpoint_is_not_cut_into(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 12: recovery cut the segment at the checkpoint's offset, into the middle of
    # its last record, and the next record was written onto the half line.
    ids = await fill(tmp_path, 10)
    segment, before = damaged(tmp_path, lambda lines: lines.insert(3, lines[3]))

    await restart(tmp_path)

    every_line_is_a_record(tmp_path)
    lines = segment.read_bytes().splitlines(keepends=True)
    assert lines[: len(before) + 1] == [*before[:4], before[3], *before[4:]]
    assert orjson.loads(lines[-1])["recipient"] == "after@d.com"
    # Cut just before the last record, which the repeated line had pushed past the
    # checkpoint; that record moved aside whole, and written again.
    cut = len(b"".join(before)) + len(before[3]) - len(before[-1])
    stale = segment.with_name(f"{segment.name}.{cut}.stale")
    assert stale.read_bytes() == before[-1]
    assert lines[len(before)] == before[-1]
    [line] = repairs(caplog)
    assert line.startswith(
        f"delivery log: logs/{segment.name} has no end of a record at the checkpointed byte "
    )
    assert f"after the AdminBounce record of {ids[-2]}" in line
    assert line.endswith("1 record(s) written again from the event log, up to seq 12")
    # The repeated line is left for verify to name.
    report = verify_data_dir(tmp_path)
    assert [v.problem for v in report.violations] == [f"duplicate Reception record for {ids[3]}"]


async def test_a_line_removed_before_the_checkpoint_is_not_padded(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue 12: recovery padded the shortened segment with zeros up to the checkpoint.
    ids = await fill(tmp_path, 10)
    segment, _ = damaged(tmp_path, lambda lines: lines.__delitem__(3))

    await restart(tmp_path)

    every_line_is_a_record(tmp_path)
    assert b"\0" not in segment.read_bytes()
    [line] = repairs(caplog)
    assert " fewer than the checkpointed " in line
    assert [v.problem for v in verify_data_dir(tmp_path).violations] == [
        f"no Reception record for 1 message(s) of this event: {ids[3]}"
    ]


async def test_another_line_of_the_same_length_at_the_checkpoint_is_found(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    ids = await fill(tmp_path, 10)

    def swap_last_two(lines: list[bytes]) -> None:
        # Same length: only the checkpoint's digest of its last line tells.
        lines[-1] = lines[-1].replace(ids[-1].encode(), ids[-2].encode())

    damaged(tmp_path, swap_last_two)

    await restart(tmp_path)

    every_line_is_a_record(tmp_path)
    [line] = repairs(caplog)
    assert "ends another record than the checkpointed one" in line
    assert f"ends with the AdminBounce record of {ids[-2]}" in line
    # The record the checkpoint ended with is written again (cut there, it would have
    # been lost); the one in its place is left for verify to name.
    assert line.endswith("1 record(s) written again from the event log, up to seq 12")
    assert [v.problem for v in verify_data_dir(tmp_path).violations] == [
        f"duplicate AdminBounce record for {ids[-2]}"
    ]


@pytest.mark.parametrize("how", ["truncated", "deleted"])
async def test_a_checkpoint_lost_is_rebuilt_from_the_segments(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    # Issue 12: a truncated checkpoint.json killed serve with a raw JSON traceback; a
    # deleted one had every record written again, after the old ones were moved aside.
    await fill(tmp_path, 10)
    logs = tmp_path / "logs"
    checkpoint = logs / "checkpoint.json"
    if how == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:20])
    else:
        checkpoint.unlink()

    await restart(tmp_path)

    [line] = repairs(caplog)
    if how == "truncated":
        assert line.startswith("delivery log: logs/checkpoint.json is unreadable (not JSON: ")
        assert (logs / "checkpoint.json.stale").read_bytes() == b'{"seq":12,"segment":'
    else:
        assert line.startswith("delivery log: logs/checkpoint.json is missing; rebuilt from ")
    assert "0 record(s) written again from the event log, up to seq 12" in line
    assert [p.name for p in logs.glob("*.jsonl*")] == [segment_name(1)]
    assert len(log_records(tmp_path)) == 22  # "after" is bounced too: the rule is live
    assert verify_data_dir(tmp_path).ok


async def test_a_segment_lost_is_written_again(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    await fill(tmp_path, 10)
    [segment] = (tmp_path / "logs").glob("*.jsonl")
    before = segment.read_bytes()
    segment.unlink()

    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        await engine.wait_idle()

    assert segment.read_bytes() == before
    [line] = repairs(caplog)
    assert line.endswith("20 record(s) written again from the event log, up to seq 12")


async def test_a_damaged_tail_beyond_the_log_is_left_for_the_refusal(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    await fill(tmp_path, 10)
    logs = tmp_path / "logs"
    checkpoint = read_checkpoint(logs)
    assert checkpoint is not None
    write_checkpoint(logs, Checkpoint(99, checkpoint.segment, checkpoint.offset + 5))
    segment = logs / checkpoint.segment
    before = segment.read_bytes()

    with pytest.raises(DeliveryLogAheadError, match="written up to seq 99"):
        async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False):
            pytest.fail("served a log that lost events")

    assert segment.read_bytes() == before


async def test_records_of_archived_events_are_written_again_from_the_archive(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    await fill(tmp_path, 10)
    assert compact(tmp_path).archived_through == 11  # all but the sweep's Bounced
    [segment] = (tmp_path / "logs").glob("*.jsonl")
    before = segment.read_bytes()
    segment.unlink()

    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        await engine.wait_idle()

    assert segment.read_bytes() == before
    [line] = repairs(caplog)
    assert line.endswith("20 record(s) written again from the event log, up to seq 12")
    assert verify_data_dir(tmp_path).ok


async def test_a_repair_that_needs_a_damaged_archive_is_refused_in_one_line(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    await fill(tmp_path, 10)
    compact(tmp_path)
    [archive] = (tmp_path / "archive").iterdir()
    archive.write_bytes(b"not an archive" * 100)
    [segment] = (tmp_path / "logs").glob("*.jsonl")
    segment.unlink()

    with pytest.raises(RepairError) as caught:
        async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False):
            pytest.fail("served without its delivery log")

    message = str(caught.value)
    assert message.startswith(
        f"the delivery log cannot be repaired (logs/{segment.name} is missing): archive "
        f"segment {archive.name} unreadable: "
    )
    assert "\n" not in message

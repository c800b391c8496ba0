"""Snapshot files: written atomically, chosen with care at start, taken beside a writer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from kumo.model.criteria import Criteria
from kumo.model.events import Bounced, BounceIssued, Event, Message, MessageReceived
from kumo.model.snapshot import state_differences
from kumo.store.data_dir import open_event_log
from kumo.store.layout import DATABASE, SNAPSHOTS
from kumo.store.replay import fold_log
from kumo.store.snapshots import (
    SnapshotAheadError,
    fold_from_snapshot,
    load_newest,
    snapshot_paths,
    take_snapshot,
    write_snapshot,
)


def received(n: int, queue: str = "a.example") -> MessageReceived:
    return MessageReceived(f"{n:032x}", queue, "s@x.example", f"r{n}@{queue}", 100 + n)


def fill(data_dir: Path, start: int, count: int, *, bounce: bool = False) -> None:
    """Commit ``count`` arrivals (and, with ``bounce``, a rule bouncing the first half)."""
    data_dir.mkdir(exist_ok=True)
    store = open_event_log(data_dir)
    events: list[Event] = [
        received(n, "a.example" if n % 2 else "b.example") for n in range(start, start + count)
    ]
    store.commit(events, time=1_000 + start, bodies={})
    if bounce:
        rule = f"rule-{start}"
        issued = BounceIssued(rule, Criteria(domain="b.example"), "why", expires_at=10**18)
        gone = [
            Message(f"{n:032x}", "s@x.example", f"r{n}@b.example", 100 + n, 1_000 + start, n + 1)
            for n in range(start, start + count)
            if n % 2 == 0
        ]
        store.commit([issued, Bounced(rule, "b.example", gone)], time=2_000 + start, bodies={})
    store.close()


def full_fold(data_dir: Path):  # type: ignore[no-untyped-def]
    store = open_event_log(data_dir, readonly=True)
    try:
        return fold_log(store)
    finally:
        store.close()


def test_a_start_from_a_snapshot_reaches_the_state_of_a_full_fold(tmp_path: Path) -> None:
    fill(tmp_path, 0, 40, bounce=True)
    taken = take_snapshot(tmp_path)
    assert taken is not None
    assert taken.seq == 42
    fill(tmp_path, 40, 10)
    store = open_event_log(tmp_path, readonly=True)
    reports: list[str] = []
    state, snapshot_seq = fold_from_snapshot(tmp_path, store, report=reports.append)
    store.close()
    assert snapshot_seq == 42
    assert reports == []
    assert state_differences(full_fold(tmp_path), state) == []


def test_nothing_new_takes_no_snapshot_and_two_are_kept(tmp_path: Path) -> None:
    open_event_log(tmp_path).close()
    assert take_snapshot(tmp_path) is None  # an empty log
    fill(tmp_path, 0, 5)
    assert take_snapshot(tmp_path, until=3) is not None
    assert take_snapshot(tmp_path, until=3) is None
    assert take_snapshot(tmp_path) is not None
    fill(tmp_path, 5, 5)
    assert take_snapshot(tmp_path) is not None
    assert [path.name for path in snapshot_paths(tmp_path / SNAPSHOTS)] == [
        f"{10:020d}.snapshot",
        f"{5:020d}.snapshot",
    ]


def test_a_damaged_snapshot_is_skipped_with_its_reason_for_the_one_before(
    tmp_path: Path,
) -> None:
    fill(tmp_path, 0, 10)
    take_snapshot(tmp_path)
    fill(tmp_path, 10, 10)
    take_snapshot(tmp_path)
    newest = snapshot_paths(tmp_path / SNAPSHOTS)[0]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    (tmp_path / SNAPSHOTS / "garbage.snapshot").write_bytes(b"")  # sorts first: skipped
    store = open_event_log(tmp_path, readonly=True)
    reports: list[str] = []
    loaded = load_newest(tmp_path / SNAPSHOTS, store, report=reports.append)
    store.close()
    assert loaded is not None
    assert loaded[1].seq == 10
    assert len(reports) == 2
    assert "garbage.snapshot skipped: not a kumo snapshot" in reports[0]
    assert f"{newest} skipped: its digest does not match" in reports[1]


def test_a_snapshot_of_another_log_is_skipped(tmp_path: Path) -> None:
    other = tmp_path / "other"
    fill(other, 100, 10)
    take_snapshot(other)
    mine = tmp_path / "mine"
    fill(mine, 0, 10)
    (mine / SNAPSHOTS).mkdir()
    [path] = snapshot_paths(other / SNAPSHOTS)
    (mine / SNAPSHOTS / path.name).write_bytes(path.read_bytes())
    store = open_event_log(mine, readonly=True)
    reports: list[str] = []
    assert load_newest(mine / SNAPSHOTS, store, report=reports.append) is None
    store.close()
    assert reports == [
        f"snapshot {mine / SNAPSHOTS / path.name} skipped: the log's chain differs at seq 10"
    ]


def test_a_log_that_lost_events_behind_a_snapshot_is_refused(tmp_path: Path) -> None:
    fill(tmp_path, 0, 10)
    take_snapshot(tmp_path)
    # The events.sqlite3 of issue 12: emptied, as if lost; kumo must not serve it as new.
    for leftover in tmp_path.glob(f"{DATABASE}*"):
        leftover.unlink()
    (tmp_path / DATABASE).write_bytes(b"")
    store = open_event_log(tmp_path)
    with pytest.raises(SnapshotAheadError, match=r"log ends at seq 0 but snapshot .* at seq 10"):
        load_newest(tmp_path / SNAPSHOTS, store, report=print)
    store.close()


def test_a_crash_while_writing_leaves_the_old_snapshots_whole(tmp_path: Path) -> None:
    fill(tmp_path, 0, 10)
    take_snapshot(tmp_path)
    # What a kill during a write leaves: a temporary file, never a real name.
    half = tmp_path / SNAPSHOTS / f"{20:020d}.tmp"
    half.write_bytes(b"KUMO-SNAPSHOT 1\n\x00\x01")
    store = open_event_log(tmp_path, readonly=True)
    loaded = load_newest(tmp_path / SNAPSHOTS, store, report=print)
    store.close()
    assert loaded is not None
    assert loaded[1].seq == 10
    fill(tmp_path, 10, 10)
    take_snapshot(tmp_path)
    assert not half.exists()  # the next writer removes it


def test_a_snapshot_written_a_piece_at_a_time_loads_as_written(tmp_path: Path) -> None:
    fill(tmp_path, 0, 10, bounce=True)
    taken = take_snapshot(tmp_path)
    assert taken is not None
    data = taken.path.read_bytes()
    rewritten = write_snapshot(tmp_path / "again", taken.seq, data, piece=7)
    assert rewritten.read_bytes() == data
    store = open_event_log(tmp_path, readonly=True)
    loaded = load_newest(tmp_path / "again", store, report=print)
    store.close()
    assert loaded is not None
    assert state_differences(full_fold(tmp_path), loaded[0]) == []


def test_the_compaction_process_prints_what_it_took(tmp_path: Path) -> None:
    fill(tmp_path, 0, 10)
    command = [sys.executable, "-m", "kumo.store.compaction", str(tmp_path), "--until", "7"]
    result = subprocess.run(command, capture_output=True, check=True, timeout=60)
    summary = orjson.loads(result.stdout)
    assert summary["seq"] == 7
    assert summary["bytes"] == snapshot_paths(tmp_path / SNAPSHOTS)[0].stat().st_size
    # No delivery log yet (no checkpoint): nothing may be archived.
    assert (summary["archived_through"], summary["archived"]) == (0, 0)
    again = subprocess.run(command, capture_output=True, check=True, timeout=60)
    assert orjson.loads(again.stdout)["seq"] is None

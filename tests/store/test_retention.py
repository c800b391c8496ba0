"""Retention: compaction deletes the archive segments past ``archive_retention``, keeps
the base at the cut, and leaves a log that reads (and starts) from there."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kumo.model.snapshot import encode_snapshot, state_differences
from kumo.model.state import State
from kumo.store.archive import (
    ArchiveCorruptError,
    archive_segments,
    base_paths,
    history_cut,
    open_archive,
)
from kumo.store.data_dir import open_event_log
from kumo.store.event_log import LogCorruptError
from kumo.store.history import HistoryView
from kumo.store.layout import ARCHIVE, SNAPSHOTS
from kumo.store.retention import apply_retention
from kumo.store.snapshots import fold_archive, fold_from_snapshot
from kumo.store.verify import verify_data_dir
from tests.history_days import DAY, day, days_of_history


def fold_of(data_dir: Path, *, snapshots: bool) -> State:
    """What a start folds: from the newest snapshot, or (without) from the archive."""
    if not snapshots:
        for path in (data_dir / SNAPSHOTS).iterdir():
            path.unlink()
    store = open_event_log(data_dir, readonly=True)
    try:
        return fold_from_snapshot(data_dir, store, report=print)[0]
    finally:
        store.close()


def test_keep_forever_deletes_nothing(tmp_path: Path) -> None:
    days_of_history(tmp_path, 5, retention=None)
    assert history_cut(tmp_path / ARCHIVE) is None
    assert archive_segments(tmp_path / ARCHIVE)[0].first_seq == 1
    with HistoryView(tmp_path) as history:
        assert history.first_seq == 1
        assert history.cut is None
        assert history.base() is None


def test_segments_past_retention_go_and_the_base_at_the_cut_stays(tmp_path: Path) -> None:
    days_of_history(tmp_path, 6, retention=2 * DAY)
    now = day(5.5)
    archive = open_archive(tmp_path / ARCHIVE)
    cut = archive.cut
    assert cut is not None
    # Every segment left is young enough; the one before the cut (deleted) was not.
    assert archive.segments, "the newest segments are kept"
    assert all(segment.last_time >= now - 2 * DAY for segment in archive.segments)
    assert cut.time < now - 2 * DAY
    first = archive.segments[0]
    assert first.first_seq == cut.seq + 1
    assert first.chain_before == cut.chain
    # One base, and no segment file the cut covers.
    assert [path.name for path in base_paths(tmp_path / ARCHIVE)] == [cut.path.name]
    assert archive_segments(tmp_path / ARCHIVE) == archive.segments
    with HistoryView(tmp_path) as history:
        assert history.first_seq == cut.seq + 1
        assert history.chain_before == cut.chain
        assert history.event_count == history.last_seq - cut.seq
        seqs = [row[0] for batch in history.rows() for row in batch]
        assert seqs == list(range(cut.seq + 1, history.last_seq + 1))
        base = history.base()
    assert base is not None
    assert base.last_seq == cut.seq
    # A start without any snapshot folds from the base and gets what a snapshot gives.
    from_snapshot = fold_of(tmp_path, snapshots=True)
    assert state_differences(from_snapshot, fold_of(tmp_path, snapshots=False)) == []


def test_passes_fold_what_they_delete_into_the_base_before_them(tmp_path: Path) -> None:
    days_of_history(tmp_path, 7, retention=None)
    # The state at each segment's end, folded from seq 1 while every event is there.
    expected = {
        segment.last_seq: fold_archive(tmp_path, through=segment.last_seq)
        for segment in archive_segments(tmp_path / ARCHIVE)
    }
    cuts = []
    for number in (3, 4, 5, 6):
        apply_retention(tmp_path, now=day(number), retention=DAY)
        cut = history_cut(tmp_path / ARCHIVE)
        assert cut is not None
        cuts.append(cut.seq)
        assert state_differences(expected[cut.seq], cut.base()) == []
        assert len(base_paths(tmp_path / ARCHIVE)) == 1
    assert cuts == sorted(cuts)
    assert len(set(cuts)) > 1


def test_a_damaged_segment_is_never_made_into_a_base(tmp_path: Path) -> None:
    days_of_history(tmp_path, 4, retention=None)
    [oldest, *_] = archive_segments(tmp_path / ARCHIVE)
    db = sqlite3.connect(oldest.path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'chain_after'", ("00" * 16,))
    db.commit()
    db.close()
    before = sorted(path.name for path in (tmp_path / ARCHIVE).iterdir())
    with pytest.raises(LogCorruptError, match="nothing deleted"):
        apply_retention(tmp_path, now=day(10), retention=DAY)
    assert sorted(path.name for path in (tmp_path / ARCHIVE).iterdir()) == before


def test_a_damaged_base_is_named(tmp_path: Path) -> None:
    days_of_history(tmp_path, 5, retention=2 * DAY)
    cut = history_cut(tmp_path / ARCHIVE)
    assert cut is not None
    data = bytearray(cut.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    cut.path.write_bytes(bytes(data))
    with pytest.raises(ArchiveCorruptError, match=cut.path.name):
        HistoryView(tmp_path)


class Killed(Exception):
    pass


def kill() -> None:
    raise Killed


def test_a_pass_killed_between_the_base_and_the_deletions_is_finished_by_the_next(
    tmp_path: Path,
) -> None:
    days_of_history(tmp_path, 5, retention=None)
    segments = archive_segments(tmp_path / ARCHIVE)
    with pytest.raises(Killed):
        apply_retention(tmp_path, now=day(4.5), retention=2 * DAY, before_removing=kill)
    cut = history_cut(tmp_path / ARCHIVE)
    assert cut is not None
    covered = [segment for segment in segments if segment.last_seq <= cut.seq]
    assert len(covered) >= 2
    assert all(segment.path.exists() for segment in covered)
    # A kill between two deletions: the oldest segment is gone, the next one not yet.
    covered[0].path.unlink()
    # Readers already begin at the cut: the covered segment left is not read.
    with HistoryView(tmp_path) as history:
        assert history.first_seq == cut.seq + 1
        assert history.segments == [s for s in segments if s.last_seq > cut.seq]
    assert verify_data_dir(tmp_path).violations == []
    # The next pass, even without retention, removes what the cut covers.
    done = apply_retention(tmp_path, now=day(4.5), retention=None)
    assert (done.cut, done.segments) == (cut.seq, 0)
    assert done.removed == len(covered) - 1
    assert not any(segment.path.exists() for segment in covered)
    assert verify_data_dir(tmp_path).violations == []


def test_a_temporary_base_left_by_a_kill_is_removed(tmp_path: Path) -> None:
    days_of_history(tmp_path, 3, retention=None)
    leftover = tmp_path / ARCHIVE / "00000000000000000007.base.snapshot.tmp"
    leftover.write_bytes(b"half a base")
    assert history_cut(tmp_path / ARCHIVE) is None
    assert apply_retention(tmp_path, now=day(3), retention=None).removed == 1
    assert not leftover.exists()


def test_verify_checks_the_kept_log_from_the_base(tmp_path: Path) -> None:
    ids = days_of_history(tmp_path, 6, retention=2 * DAY)
    cut = history_cut(tmp_path / ARCHIVE)
    assert cut is not None
    report = verify_data_dir(tmp_path)
    assert report.violations == []
    assert (report.cut_seq, report.cut_time) == (cut.seq, cut.time)
    assert report.base == f"archive/{cut.path.name}"
    assert report.first_seq == cut.seq + 1
    assert report.events == report.last_seq - cut.seq
    # Conservation over the kept log: the messages queued at the cut count as received.
    assert report.received == report.queued + report.bounced
    with HistoryView(tmp_path) as history:
        base = history.base()
    assert base is not None
    assert report.queued_at_cut == sum(base.queue_counts.values()) > 0
    assert report.received < sum(len(day_ids) for day_ids in ids)
    # Every record of the deleted events is counted, none compared; the rest are.
    assert report.records_before_cut > 0
    assert report.snapshots == 2


def test_verify_names_a_base_that_does_not_match_the_kept_log(tmp_path: Path) -> None:
    days_of_history(tmp_path, 6, retention=2 * DAY)
    cut = history_cut(tmp_path / ARCHIVE)
    assert cut is not None
    state = cut.base()
    # A base re-made (digest and all) with another chain value: the kept log does not
    # follow it.
    cut.path.write_bytes(encode_snapshot(state, b"\x01" * 16))
    report = verify_data_dir(tmp_path)
    problems = [(v.check, v.where.split(",")[0]) for v in report.violations]
    first = archive_segments(tmp_path / ARCHIVE)[0].path.name
    assert ("chain", f"archive/{first}") in problems
    # A base whose totals were altered: the snapshots, folded from the true base, differ.
    state.received_total += 5
    cut.path.write_bytes(encode_snapshot(state, cut.chain))
    report = verify_data_dir(tmp_path)
    assert {v.check for v in report.violations} == {"snapshot"}
    assert all("received_total" in v.problem for v in report.violations)
    # A base that lost a queued message: the kept log's conservation no longer holds.
    state = cut.base()
    assert state.queues
    name, queue = next(iter(state.queues.items()))
    queue.remove({queue.ids()[0]})
    state.queue_counts[name] -= 1
    cut.path.write_bytes(encode_snapshot(state, cut.chain))
    assert "conservation" in {v.check for v in verify_data_dir(tmp_path).violations}


def test_verify_names_a_kept_segment_deleted_by_hand(tmp_path: Path) -> None:
    days_of_history(tmp_path, 7, retention=2 * DAY)
    cut = history_cut(tmp_path / ARCHIVE)
    assert cut is not None
    first = archive_segments(tmp_path / ARCHIVE)[0]
    first.path.unlink()
    report = verify_data_dir(tmp_path)
    assert ("sequence", first.last_seq + 1) in [(v.check, v.seq) for v in report.violations]
    assert any(
        f"events {cut.seq + 1}..{first.last_seq} missing" in v.problem for v in report.violations
    )

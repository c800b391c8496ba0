"""The delivery-log files: segment names, the checkpoint, appending, recovery, reading back."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import patch

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kumo.model.settings import EngineSettings
from kumo.store.delivery_files import (
    CHECKPOINT,
    Checkpoint,
    CheckpointError,
    DeliveryFiles,
    SegmentLine,
    TailDamagedError,
    line_digest,
    read_checkpoint,
    read_lines,
    read_records,
    segment_first_seq,
    segment_name,
    segment_sizes,
    whole_lines_before,
    write_checkpoint,
)

SEGMENT_BYTES = EngineSettings().segment_bytes


def line(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record) + b"\n"


def lines(*ids: str) -> list[bytes]:
    return [line({"type": "Reception", "id": mid}) for mid in ids]


def ids(directory: Path) -> list[str]:
    return [record["id"] for record in read_records(directory)]


# -- names and the checkpoint -------------------------------------------------------------


def test_segments_are_named_by_their_first_seq_so_that_names_sort_in_log_order() -> None:
    assert segment_name(1) == "00000000000000000001.jsonl"
    seqs = [1, 9, 10, 4_096, 10**12, 2**63 - 1]
    assert sorted(segment_name(seq) for seq in seqs) == [segment_name(seq) for seq in seqs]


def test_the_default_segment_size_is_256_mib(tmp_path: Path) -> None:
    assert EngineSettings().segment_bytes == 256 * 1024 * 1024
    with pytest.raises(ValueError, match="segment_bytes"):
        DeliveryFiles(tmp_path, segment_bytes=0)


def test_checkpoint_reading(tmp_path: Path) -> None:
    assert read_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint.json").write_bytes(b'{"seq": 3, "segment": "s", "offset": 7}')
    assert read_checkpoint(tmp_path) == Checkpoint(3, "s", 7)
    (tmp_path / "checkpoint.json").write_bytes(b"{")
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"{", "not JSON"),
        (b"[3, 4]", "not a JSON object"),
        (b'{"seq": 3}', "missing segment, offset"),
        (b'{"seq": "3", "segment": "s", "offset": 7}', "seq must be a non-negative integer"),
        (b'{"seq": true, "segment": "s", "offset": 7}', "seq must be a non-negative integer"),
        (b'{"seq": 3, "segment": "s", "offset": -1}', "offset must be a non-negative integer"),
        (b'{"seq": 3, "segment": "s", "offset": 1.5}', "offset must be a non-negative integer"),
        (b'{"seq": 3, "segment": "../s", "offset": 7}', "segment must be a file name"),
        (b'{"seq": 3, "segment": "", "offset": 7}', "segment must be a file name"),
        (b'{"seq": 3, "segment": 5, "offset": 7}', "segment must be a file name"),
    ],
)
def test_a_bad_checkpoint_is_refused_with_a_clear_error(data: bytes, why: str) -> None:
    with pytest.raises(CheckpointError, match=why):
        Checkpoint.from_json(data)


@given(st.binary(max_size=80) | st.text(max_size=80).map(str.encode))
def test_checkpoint_parsing_raises_only_checkpoint_error(data: bytes) -> None:
    try:
        checkpoint = Checkpoint.from_json(data)
    except CheckpointError:
        return
    assert Checkpoint.from_json(checkpoint.to_json()) == checkpoint


def test_the_checkpoint_is_replaced_whole(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, Checkpoint(3, segment_name(1), 70))
    write_checkpoint(tmp_path, Checkpoint(5, segment_name(1), 90))
    assert read_checkpoint(tmp_path) == Checkpoint(5, segment_name(1), 90)
    assert sorted(path.name for path in tmp_path.iterdir()) == [CHECKPOINT]


# -- writing --------------------------------------------------------------------------------


def test_rounds_append_and_move_the_checkpoint(tmp_path: Path) -> None:
    files = DeliveryFiles(tmp_path / "logs", segment_bytes=SEGMENT_BYTES)
    assert files.recover() == 0
    # No records yet, no segment: there is nothing for a checkpoint to point into.
    assert files.append([], 1, 1) == 0
    assert read_checkpoint(tmp_path / "logs") is None
    first = lines("a", "b")
    assert files.append(first, 2, 3) == len(b"".join(first))
    assert files.append([], 4, 4) == 0  # a round whose events call for no record
    files.close()
    files.close()
    size = len(b"".join(first))
    assert read_checkpoint(tmp_path / "logs") == Checkpoint(4, segment_name(2), size)
    assert segment_sizes(tmp_path / "logs") == {segment_name(2): size}
    assert ids(tmp_path / "logs") == ["a", "b"]


def test_a_full_segment_is_closed_and_the_next_round_starts_one(tmp_path: Path) -> None:
    files = DeliveryFiles(tmp_path, segment_bytes=50)
    files.recover()
    files.append(lines("a", "b"), 1, 2)  # 60 bytes: over 50 after this round
    files.append(lines("c"), 3, 3)
    files.append(lines("d"), 4, 4)
    files.close()
    assert list(segment_sizes(tmp_path)) == [segment_name(1), segment_name(3)]
    assert ids(tmp_path) == ["a", "b", "c", "d"]
    assert read_checkpoint(tmp_path) == Checkpoint(4, segment_name(3), 60)


def test_recovery_cuts_what_follows_the_checkpoint(tmp_path: Path) -> None:
    files = DeliveryFiles(tmp_path, segment_bytes=SEGMENT_BYTES)
    files.recover()
    files.append(lines("a"), 1, 1)
    files.close()
    # A round written but not checkpointed, the last line cut short by the crash.
    segment = tmp_path / segment_name(1)
    segment.write_bytes(segment.read_bytes() + line({"id": "b"}) + b'{"id": "c')
    files = DeliveryFiles(tmp_path, segment_bytes=SEGMENT_BYTES)
    assert files.recover() == 1
    assert ids(tmp_path) == ["a"]
    files.append(lines("b"), 2, 2)
    files.close()
    assert ids(tmp_path) == ["a", "b"]


def test_recovery_moves_aside_segments_begun_after_the_checkpoint(tmp_path: Path) -> None:
    files = DeliveryFiles(tmp_path, segment_bytes=10)
    files.recover()
    files.append(lines("a"), 1, 1)
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint is not None
    files.append(lines("b"), 2, 2)  # a new segment
    files.close()
    write_checkpoint(tmp_path, checkpoint)  # as if the crash came before this checkpoint
    assert DeliveryFiles(tmp_path, segment_bytes=SEGMENT_BYTES).recover() == 1
    assert list(segment_sizes(tmp_path)) == [segment_name(1)]
    assert ids(tmp_path) == ["a"]
    assert (tmp_path / f"{segment_name(2)}.stale").read_bytes() == b"".join(lines("b"))


def test_recovery_without_a_checkpoint_starts_afresh(tmp_path: Path) -> None:
    # The first round was written and the crash came before its checkpoint.
    (tmp_path / segment_name(1)).write_bytes(b"".join(lines("a")))
    files = DeliveryFiles(tmp_path, segment_bytes=SEGMENT_BYTES)
    assert files.recover() == 0
    assert segment_sizes(tmp_path) == {}
    assert (tmp_path / f"{segment_name(1)}.stale").read_bytes() == b"".join(lines("a"))


def test_recovery_from_an_unreadable_checkpoint_touches_nothing(tmp_path: Path) -> None:
    (tmp_path / segment_name(1)).write_bytes(b"".join(lines("a")))
    (tmp_path / CHECKPOINT).write_bytes(b"{")
    with pytest.raises(CheckpointError):
        DeliveryFiles(tmp_path, segment_bytes=SEGMENT_BYTES).recover()
    assert ids(tmp_path) == ["a"]


def test_recovery_creates_the_directory(tmp_path: Path) -> None:
    assert DeliveryFiles(tmp_path / "data" / "logs", segment_bytes=SEGMENT_BYTES).recover() == 0
    assert (tmp_path / "data" / "logs").is_dir()


# -- reading --------------------------------------------------------------------------------


def test_lines_come_in_log_order_with_where_they_are(tmp_path: Path) -> None:
    (tmp_path / segment_name(1)).write_bytes(b"a\nb\npartial")
    (tmp_path / segment_name(3)).write_bytes(b"c\n\nd")
    (tmp_path / "notes.txt").write_bytes(b"not a segment\n")
    one, three = segment_name(1), segment_name(3)
    assert list(read_lines(tmp_path)) == [
        SegmentLine(one, 1, b"a", True, False),
        SegmentLine(one, 2, b"b", True, False),
        SegmentLine(one, 3, b"partial", False, False),
        SegmentLine(three, 1, b"c", True, True),
        SegmentLine(three, 2, b"", True, True),
        SegmentLine(three, 3, b"d", False, True),
    ]
    assert list(read_lines(tmp_path, {one: 4, three: 2})) == [
        SegmentLine(one, 1, b"partial", False, False),
        SegmentLine(three, 1, b"", True, True),
        SegmentLine(three, 2, b"d", False, True),
    ]
    assert segment_sizes(tmp_path) == {one: 11, three: 4}
    assert segment_sizes(tmp_path / "missing") == {}
    assert list(read_lines(tmp_path / "missing")) == []


def test_records_leave_out_a_line_being_written_and_blank_lines(tmp_path: Path) -> None:
    segment = tmp_path / segment_name(1)
    segment.write_bytes(line({"id": "a"}) + b"\n" + b'{"id": "b')
    assert ids(tmp_path) == ["a"]
    with segment.open("ab") as file:
        file.write(b'"}\n')
    assert ids(tmp_path) == ["a", "b"]
    before = segment_sizes(tmp_path)
    with segment.open("ab") as file:
        file.write(line({"id": "c"}))
    (tmp_path / segment_name(4)).write_bytes(line({"id": "d"}))
    # From the sizes seen before: only what was written since.
    assert [r["id"] for r in read_records(tmp_path, before)] == ["c", "d"]


# -- properties -------------------------------------------------------------------------------

records = st.fixed_dictionaries(
    {"type": st.sampled_from(["Reception", "AdminBounce"]), "id": st.text(max_size=12)}
)
rounds = st.lists(
    st.tuples(st.integers(min_value=1, max_value=3), st.lists(records, max_size=4)),
    min_size=1,
    max_size=8,
)
"""Rounds as (events in the round, the records they call for)."""


def write_rounds(
    files: DeliveryFiles, rounds: list[tuple[int, list[dict[str, Any]]]], first_seq: int
) -> int:
    """Append ``rounds`` from ``first_seq``; return the seq of the last event written."""
    seq = first_seq - 1
    for events, round_records in rounds:
        files.append([line(r) for r in round_records], seq + 1, seq + events)
        seq += events
    return seq


@settings(max_examples=60, deadline=None)
@given(rounds=rounds, segment_bytes=st.integers(min_value=1, max_value=200))
def test_records_written_in_rounds_read_back_equal(
    rounds: list[tuple[int, list[dict[str, Any]]]], segment_bytes: int
) -> None:
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        files = DeliveryFiles(directory, segment_bytes=segment_bytes)
        files.recover()
        last = write_rounds(files, rounds, 1)
        files.close()
        assert read_records(directory) == [r for _, round_ in rounds for r in round_]
        checkpoint = read_checkpoint(directory)
        if any(round_ for _, round_ in rounds):
            assert checkpoint is not None
            assert checkpoint.seq == last
            assert checkpoint.offset == segment_sizes(directory)[checkpoint.segment]


@settings(max_examples=60, deadline=None)
@given(
    rounds=rounds,
    cut=st.integers(min_value=0, max_value=8),
    segment_bytes=st.integers(min_value=1, max_value=200),
)
def test_recovery_leaves_exactly_the_checkpointed_records(
    rounds: list[tuple[int, list[dict[str, Any]]]], cut: int, segment_bytes: int
) -> None:
    cut = min(cut, len(rounds))
    kept, lost = rounds[:cut], rounds[cut:]
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        files = DeliveryFiles(directory, segment_bytes=segment_bytes)
        files.recover()
        seq = write_rounds(files, kept, 1)
        checkpoint = read_checkpoint(directory)
        write_rounds(files, lost, seq + 1)
        files.close()
        # A crash before any checkpoint after ``kept``: bring the old one back.
        if checkpoint is None:
            (directory / CHECKPOINT).unlink(missing_ok=True)
        else:
            write_checkpoint(directory, checkpoint)
        files = DeliveryFiles(directory, segment_bytes=segment_bytes)
        recovered = files.recover()
        checkpointed = [r for _, round_ in kept for r in round_]
        assert recovered == (checkpoint.seq if checkpoint is not None else 0)
        assert read_records(directory) == checkpointed
        # Written again from the log, every record is there once.
        write_rounds(files, rounds[len(kept) :] if checkpoint else rounds, recovered + 1)
        files.close()
        assert read_records(directory) == [r for _, round_ in rounds for r in round_]


# -- damage (issue 12) ----------------------------------------------------------------------


def test_a_segment_is_checkpointed_as_it_is_begun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = DeliveryFiles(tmp_path, segment_bytes=SEGMENT_BYTES)
    files.recover()

    def crash(fd: int) -> None:
        raise OSError("the crash, before the round's fdatasync")

    monkeypatch.setattr("kumo.store.delivery_files.os.fdatasync", crash)
    with pytest.raises(OSError, match="the crash"):
        files.append(lines("a"), 5, 6)
    files.close()
    # So a segment without a checkpoint is never one being written: it is damage.
    assert read_checkpoint(tmp_path) == Checkpoint(4, segment_name(5), 0)
    monkeypatch.undo()
    assert DeliveryFiles(tmp_path, segment_bytes=SEGMENT_BYTES).recover() == 4
    assert ids(tmp_path) == []


def test_the_checkpoint_holds_the_digest_of_the_line_it_ends_with(tmp_path: Path) -> None:
    files = DeliveryFiles(tmp_path, segment_bytes=SEGMENT_BYTES)
    files.recover()
    written = lines("a", "b")
    files.append(written, 1, 2)
    files.append([], 3, 3)
    files.close()
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint is not None
    assert checkpoint.last_line == line_digest(written[-1])
    assert orjson.loads(checkpoint.to_json())["last_line"] == checkpoint.last_line
    # A position: the digest checks it, and takes no part in equality.
    assert checkpoint == Checkpoint(3, segment_name(1), len(b"".join(written)))
    with pytest.raises(CheckpointError, match="last_line must be 16 hex digits"):
        Checkpoint.from_json(b'{"seq": 3, "segment": "s", "offset": 7, "last_line": "x"}')


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda data: data[:10] + data[:10] + data[10:], "has no end of a record at the "),
        (lambda data: data[10:], "holds 80 bytes, fewer than the checkpointed 90"),
        (lambda data: data[:-30] + line({"type": "Reception", "id": "x"}), "ends another record"),
    ],
    ids=["a line repeated", "a line removed", "the last line replaced"],
)
def test_recovery_refuses_to_cut_a_segment_that_ends_no_record_at_the_checkpoint(
    tmp_path: Path, edit: Callable[[bytes], bytes], problem: str
) -> None:
    files = DeliveryFiles(tmp_path, segment_bytes=SEGMENT_BYTES)
    files.recover()
    files.append(lines("a", "b", "c"), 1, 3)  # 30 bytes each
    files.close()
    segment = tmp_path / segment_name(1)
    damaged = edit(segment.read_bytes())
    segment.write_bytes(damaged)

    with pytest.raises(TailDamagedError) as caught:
        DeliveryFiles(tmp_path, segment_bytes=SEGMENT_BYTES).recover()

    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"{segment_name(1)} ")
    assert segment.read_bytes() == damaged  # touched nothing


def test_recovery_refuses_a_checkpointed_segment_that_is_gone(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, Checkpoint(3, segment_name(1), 60))
    with pytest.raises(TailDamagedError, match="is missing"):
        DeliveryFiles(tmp_path, segment_bytes=SEGMENT_BYTES).recover()
    assert not (tmp_path / segment_name(1)).exists()


def test_a_cut_moves_the_tail_and_later_segments_aside(tmp_path: Path) -> None:
    (tmp_path / segment_name(1)).write_bytes(b"".join(lines("a", "b")) + b"half")
    (tmp_path / segment_name(3)).write_bytes(b"".join(lines("c")))
    files = DeliveryFiles(tmp_path, segment_bytes=SEGMENT_BYTES)

    assert files.cut(segment_name(1), 30) == (f"{segment_name(1)}.30.stale", 34)

    assert ids(tmp_path) == ["a"]
    assert (tmp_path / f"{segment_name(1)}.30.stale").read_bytes() == line(
        {"type": "Reception", "id": "b"}
    ) + b"half"
    assert (tmp_path / f"{segment_name(3)}.stale").read_bytes() == b"".join(lines("c"))
    assert files.cut(segment_name(1), 30) is None  # nothing more to move
    assert files.cut(segment_name(2), 0) is None  # nor in a segment that is not there


def test_segment_names_say_their_first_seq() -> None:
    assert segment_first_seq(segment_name(404_097)) == 404_097
    assert segment_first_seq("notes.jsonl") is None
    assert segment_first_seq(segment_name(1) + ".stale") is None


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=12),
    tail=st.binary(max_size=10).map(lambda b: b.replace(b"\n", b"")),
    limit=st.integers(min_value=0, max_value=500),
    count=st.integers(min_value=1, max_value=5),
    block=st.sampled_from([1, 2, 7, 64]),
)
def test_whole_lines_are_read_backwards_from_a_limit(
    text: list[bytes], tail: bytes, limit: int, count: int, block: int
) -> None:
    data = b"".join(part + b"\n" for part in text) + tail
    expected: list[tuple[int, bytes]] = []
    end = 0
    for part in text:
        end += len(part) + 1
        if end <= limit:
            expected.insert(0, (end, part + b"\n"))
    with tempfile.TemporaryDirectory() as name:
        path = Path(name) / "segment"
        path.write_bytes(data)
        with patch("kumo.store.delivery_files._BLOCK", block):
            assert whole_lines_before(path, limit, count) == expected[:count]

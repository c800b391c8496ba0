"""Where a damaged delivery log resumes: the last whole record the log calls for."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import orjson
import pytest

from kumo.model.criteria import Criteria
from kumo.model.events import Bounced, BounceIssued, Message, MessageReceived
from kumo.runtime.delivery_log import encode_records
from kumo.runtime.delivery_repair import (
    RepairError,
    cut_damaged_tail,
    locate,
    record_key,
)
from kumo.store.delivery_files import DeliveryFiles, line_digest, segment_name
from kumo.store.history import HistoryView
from kumo.store.layout import DATABASE, LOGS
from kumo.store.sqlite_log import SqliteEventStore
from tests.history_days import DAY, days_of_history

MIDS = [f"{n:032x}" for n in range(4)]
QUIET = {"quiet"}


def build(data_dir: Path) -> list[bytes]:
    """A log of four arrivals and two sweeps (the second suppressed), and the lines of
    its delivery log, written as segment 1; returns them."""
    data_dir.mkdir()
    received = [
        MessageReceived(mid, "a.com", "s@x", f"r{n}@a.com", 5) for n, mid in enumerate(MIDS)
    ]
    messages = [Message(mid, "s@x", f"r{n}@a.com", 5, 10, n + 1) for n, mid in enumerate(MIDS)]
    with closing(SqliteEventStore(data_dir / DATABASE)) as store:
        store.commit(received, time=10, bodies={})  # seqs 1-4
        loud = BounceIssued("loud", Criteria(domain="a.com"), "why", 10**18)
        quiet = BounceIssued(
            "quiet", Criteria(domain="b.com"), "why", 10**18, suppress_logging=True
        )
        store.commit([loud, quiet], time=20, bodies={})  # 5, 6
        store.commit([Bounced("loud", "a.com", messages[:3])], time=30, bodies={})  # 7
    with HistoryView(data_dir) as history:
        events = [c for batch in history.committed() for c in batch]
    lines = encode_records(events, {"loud": ("why", False), "quiet": ("why", True)}, "n")
    (data_dir / LOGS).mkdir()
    (data_dir / LOGS / segment_name(1)).write_bytes(b"".join(lines))
    return lines


def test_a_record_key_is_its_type_and_message() -> None:
    assert record_key(b'{"type":"Reception","id":"abc"}\n') == ("Reception", "abc")
    assert record_key(b'{"type":"AdminBounce","id":"abc"}') == ("AdminBounce", "abc")
    for line in (b"not json", b"[1]", b'{"type":"Rejection","id":""}', b'{"type":"Reception"}'):
        assert record_key(line) is None


def test_locate_finds_the_event_and_the_place_of_a_record(tmp_path: Path) -> None:
    build(tmp_path / "data")
    with HistoryView(tmp_path / "data") as history:

        def where(kind: str, mid: str, through: int = 7) -> tuple[int, int] | None:
            return locate(
                history, kind, mid, after=0, through=through, suppressed=QUIET.__contains__
            )

        assert where("Reception", MIDS[2]) == (3, 0)
        assert where("AdminBounce", MIDS[2]) == (7, 2)
        assert where("AdminBounce", MIDS[2], through=6) is None
        assert where("AdminBounce", MIDS[3]) is None  # never bounced
        assert where("Reception", "f" * 32) is None


def test_the_tail_after_the_last_record_of_the_log_is_cut_aside(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lines = build(data)
    segment = data / LOGS / segment_name(1)
    garbage = b'{"type":"Reception","id":"not one of ours"}\n' + b"\xa5\xa5\n" + b'{"half'
    segment.write_bytes(b"".join(lines[:5]) + garbage)
    files = DeliveryFiles(data / LOGS, segment_bytes=1 << 20)

    with HistoryView(data) as history:
        resumption = cut_damaged_tail(
            files,
            history,
            segment=segment.name,
            limit=segment.stat().st_size,
            through=7,
            suppressed=QUIET.__contains__,
        )

    # lines[4] is the first AdminBounce of seq 7: its second and third are owed.
    assert (resumption.first_seq, resumption.skip) == (7, 1)
    assert resumption.offset == len(b"".join(lines[:5]))
    assert resumption.last_line == line_digest(lines[4])
    assert resumption.kept == f"the AdminBounce record of {MIDS[0]} (seq 7)"
    stale = f"{segment.name}.{resumption.offset}.stale"
    assert resumption.moved == (stale, len(garbage))
    assert segment.read_bytes() == b"".join(lines[:5])
    assert (data / LOGS / stale).read_bytes() == garbage


def test_a_segment_with_no_record_of_the_log_is_cut_to_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build(data)
    segment = data / LOGS / segment_name(1)
    segment.write_bytes(b"".join(orjson.dumps({"n": n}) + b"\n" for n in range(3)))
    files = DeliveryFiles(data / LOGS, segment_bytes=1 << 20)

    with HistoryView(data) as history:
        resumption = cut_damaged_tail(
            files,
            history,
            segment=segment.name,
            limit=10**6,
            through=7,
            suppressed=QUIET.__contains__,
        )

    assert (resumption.offset, resumption.first_seq, resumption.skip) == (0, 1, 0)
    assert resumption.kept is None
    assert segment.read_bytes() == b""


def test_a_segment_not_named_after_its_first_seq_cannot_be_repaired(tmp_path: Path) -> None:
    data = tmp_path / "data"
    build(data)
    files = DeliveryFiles(data / LOGS, segment_bytes=1 << 20)
    with (
        HistoryView(data) as history,
        pytest.raises(RepairError, match=r"logs/notes\.jsonl is not named after its first seq"),
    ):
        cut_damaged_tail(files, history, segment="notes.jsonl", limit=0, through=7, suppressed=bool)


def test_a_repair_that_needs_events_deleted_by_retention_is_refused(tmp_path: Path) -> None:
    days_of_history(tmp_path, 6, retention=2 * DAY)
    with HistoryView(tmp_path) as history:
        assert history.cut is not None
        cut = history.cut.seq
    [segment] = sorted((tmp_path / LOGS).glob("*.jsonl"))
    # Only the records of the deleted events are left whole, then a damaged line.
    records = segment.read_bytes().splitlines(keepends=True)
    damaged = b"".join(records[:3]) + b'{"half'
    segment.write_bytes(damaged)
    files = DeliveryFiles(tmp_path / LOGS, segment_bytes=1 << 20)
    with (
        HistoryView(tmp_path) as history,
        pytest.raises(
            RepairError,
            match=rf"logs/{segment.name} would have to be written again from seq 1, but the "
            rf"events up to seq {cut} were deleted by retention",
        ),
    ):
        cut_damaged_tail(
            files,
            history,
            segment=segment.name,
            limit=len(damaged),
            through=history.last_seq,
            suppressed=lambda _rule: False,
        )
    assert segment.read_bytes() == damaged  # nothing touched
    # A damaged tail after the cut is repaired as before.
    whole = b"".join(records)
    segment.write_bytes(whole + b'{"half')
    with HistoryView(tmp_path) as history:
        resumption = cut_damaged_tail(
            files,
            history,
            segment=segment.name,
            limit=len(whole) + 6,
            through=history.last_seq,
            suppressed=lambda _rule: False,
        )
    assert resumption.offset == len(whole)
    assert resumption.first_seq > cut

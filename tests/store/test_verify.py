"""The read-only snapshot of the log, the hash-chain check and the delivery-log reader."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import orjson
import pytest

from kumo.model.criteria import Criteria
from kumo.model.events import (
    Attempt,
    Bounced,
    BounceIssued,
    Delivered,
    Event,
    Message,
    MessageReceived,
    PeerAddress,
    RebindIssued,
    Rebound,
    TransientlyFailed,
)
from kumo.model.invariants import Violation
from kumo.model.log_record import reception_line
from kumo.runtime.delivery_log import encode_records
from kumo.store.delivery_files import CHECKPOINT, Checkpoint, segment_name
from kumo.store.event_log import LogCorruptError
from kumo.store.integrity import PARTS
from kumo.store.layout import DATABASE, LOGS
from kumo.store.log_view import ChainedRow, LogView
from kumo.store.sqlite_log import SqliteEventStore
from kumo.store.verify import (
    ChainCheck,
    DeliveryRecord,
    read_delivery_log,
    verify_data_dir,
)
from tests.page_damage import build_store, damage

SECOND = 1_000_000_000


def received(n: int) -> MessageReceived:
    return MessageReceived(f"{n:032x}", "a.com", "s@x", f"r{n}@a.com", 10)


def make_log(path: Path, count: int = 6, *, purged: bool = True) -> SqliteEventStore:
    """A store with ``count`` receptions, a rule, and a bounce of the first message
    (whose content is purged, as a server does before it stops, if ``purged``)."""
    store = SqliteEventStore(path)
    events: list[Event] = [received(n) for n in range(count)]
    store.commit(events, time=10 * SECOND, bodies={})
    store.commit(
        [BounceIssued("r", Criteria(domain="a.com"), "why", 99 * SECOND)],
        time=20 * SECOND,
        bodies={},
    )
    first = Message(f"{0:032x}", "s@x", "r0@a.com", 10, 10 * SECOND, 1)
    store.commit([Bounced("r", "a.com", [first])], time=30 * SECOND, bodies={})
    if purged:
        assert store.purge_spool(store.owed) == 1
    return store


def test_snapshot_of_a_closed_log_creates_no_file(tmp_path: Path) -> None:
    make_log(tmp_path / "events.sqlite3").close()
    before = sorted(os.listdir(tmp_path))
    with LogView(tmp_path / "events.sqlite3") as snapshot:
        assert (snapshot.first_seq, snapshot.last_seq, snapshot.event_count) == (1, 8, 8)
        assert snapshot.last_time == 30 * SECOND
        [batch] = list(snapshot.committed())
        assert [c.seq for c in batch] == list(range(1, 9))
    assert sorted(os.listdir(tmp_path)) == before


def test_snapshot_filters_rows_in_sql(tmp_path: Path) -> None:
    make_log(tmp_path / "events.sqlite3").close()
    with LogView(tmp_path / "events.sqlite3") as snapshot:

        def seqs(**where: object) -> list[int]:
            return [row[0] for batch in snapshot.rows(**where) for row in batch]  # type: ignore[arg-type]

        assert seqs(skip=("MessageReceived",)) == [7, 8]
        assert seqs(
            skip=("MessageReceived", "Bounced"), unless_containing=f'"{3:032x}"'.encode()
        ) == [4, 7]
        assert seqs(
            skip=("MessageReceived", "Bounced"), unless_containing=f'"{0:032x}"'.encode()
        ) == [1, 7, 8]
        assert seqs(until=20 * SECOND) == [1, 2, 3, 4, 5, 6, 7]


def test_snapshot_sees_the_log_as_it_was_when_opened(tmp_path: Path) -> None:
    store = make_log(tmp_path / "events.sqlite3")
    try:
        with LogView(tmp_path / "events.sqlite3") as snapshot:
            store.commit([received(99)], time=40 * SECOND, bodies={})
            assert snapshot.last_seq == 8
            assert [row[0] for batch in snapshot.rows() for row in batch] == list(range(1, 9))
        with LogView(tmp_path / "events.sqlite3") as later:
            assert later.last_seq == 9
    finally:
        store.close()


def test_snapshot_refuses_a_missing_log_and_reports_bad_bodies(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        LogView(tmp_path / "events.sqlite3")
    store = make_log(tmp_path / "events.sqlite3")
    store._db.execute("UPDATE events SET body = x'00' WHERE seq = 3")
    store.close()
    with (
        LogView(tmp_path / "events.sqlite3") as snapshot,
        pytest.raises(LogCorruptError) as caught,
    ):
        list(snapshot.committed())
    assert caught.value.seq == 3


def chained_rows(tmp_path: Path) -> list[ChainedRow]:
    make_log(tmp_path / "events.sqlite3").close()
    with LogView(tmp_path / "events.sqlite3") as snapshot:
        return [row for batch in snapshot.chained_rows() for row in batch]


def chain_problems(rows: list[ChainedRow]) -> list[tuple[str, int | None]]:
    check = ChainCheck()
    for row in rows:
        check.apply(row)
    return [(v.check, v.seq) for v in check.violations]


def test_chain_of_an_untouched_log_holds(tmp_path: Path) -> None:
    assert chain_problems(chained_rows(tmp_path)) == []


def test_chain_names_an_edited_row_once(tmp_path: Path) -> None:
    original = chained_rows(tmp_path)
    rows = list(original)
    seq, time, kind, body, chain = rows[3]
    rows[3] = (seq, time, kind, body.replace(b"r3@", b"r9@"), chain)
    assert chain_problems(rows) == [("chain", 4)]
    rows = list(original)
    seq, time, kind, body, chain = rows[5]
    rows[5] = (seq, time + 1, kind, body, chain)
    assert chain_problems(rows) == [("chain", 6)]


def test_chain_names_removed_and_reordered_rows(tmp_path: Path) -> None:
    rows = chained_rows(tmp_path)
    assert chain_problems(rows[:2] + rows[4:]) == [("sequence", 5)]
    assert chain_problems(rows[2:]) == [("sequence", 3)]
    swapped = [*rows[:2], rows[3], rows[2], *rows[4:]]
    assert chain_problems(swapped)[0] == ("sequence", 4)


def test_chain_notices_time_going_back_and_wrong_column_types(tmp_path: Path) -> None:
    original = chained_rows(tmp_path)
    rows = list(original)
    seq, _, kind, body, chain = rows[7]
    rows[7] = (seq, 0, kind, body, chain)
    assert ("chain", 8) in chain_problems(rows)
    rows = list(original)
    seq, time, kind, body, chain = rows[1]
    rows[1] = (seq, str(time), kind, body, chain)  # type: ignore[assignment]
    assert chain_problems(rows) == [("chain", 2)]


def write_segments(logs: Path, *segments: bytes) -> list[Path]:
    logs.mkdir(exist_ok=True)
    paths = []
    for index, data in enumerate(segments):
        path = logs / segment_name(index + 1)
        path.write_bytes(data)
        paths.append(path)
    return paths


def record(kind: str, mid: str) -> bytes:
    line = {"type": kind, "id": mid, "queue": "a.com", "response": {"content": ""}}
    return orjson.dumps(line) + b"\n"


def test_delivery_log_reader_names_bad_lines_and_tolerates_a_line_being_written(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    write_segments(
        logs,
        record("Reception", "a") + b"not json\n" + b'{"type": "Reception"',
        record("Reception", "b") + b'{"type": "Recep',
    )
    items = list(read_delivery_log(logs))
    first, second = (f"logs/{segment_name(n)}" for n in (1, 2))
    assert items == [
        DeliveryRecord("Reception", "a", "a.com", "", f"{first} line 1"),
        Violation("delivery-log", f"{first} line 2", "not a delivery-log record"),
        Violation("delivery-log", f"{first} line 3", "unterminated line in an old segment"),
        DeliveryRecord("Reception", "b", "a.com", "", f"{second} line 1"),
    ]


def test_verify_reports_an_unreadable_checkpoint(tmp_path: Path) -> None:
    make_log(tmp_path / "events.sqlite3").close()
    write_segments(tmp_path / "logs", b"")
    (tmp_path / "logs" / "checkpoint.json").write_bytes(b"{")
    report = verify_data_dir(tmp_path)
    [violation] = [v for v in report.violations if v.check == "checkpoint"]
    assert violation.where == "logs/checkpoint.json"
    assert violation.problem.startswith("unreadable checkpoint: not JSON")
    assert report.checkpoint_seq is None


def test_verify_checks_the_checkpoint_against_its_segment(tmp_path: Path) -> None:
    make_log(tmp_path / "events.sqlite3").close()
    # The Reception records kumo writes for make_log's messages.
    lines = b"".join(
        reception_line(received(n), received_at=10 * SECOND, node_id="n") for n in range(6)
    )
    [segment] = write_segments(tmp_path / "logs", lines)
    checkpoint = {"seq": 6, "segment": segment.name, "offset": len(lines) + 10}
    (tmp_path / "logs" / "checkpoint.json").write_bytes(orjson.dumps(checkpoint))
    report = verify_data_dir(tmp_path)
    assert [v.problem for v in report.violations] == [
        f"segment {segment.name} holds {len(lines)} bytes, less than the checkpointed "
        f"{len(lines) + 10}: it was truncated"
    ]
    assert report.pending_records == 1  # the AdminBounce of seq 8, after the checkpoint
    checkpoint["segment"] = "gone.jsonl"
    (tmp_path / "logs" / "checkpoint.json").write_bytes(orjson.dumps(checkpoint))
    assert [v.problem for v in verify_data_dir(tmp_path).violations] == [
        "names segment gone.jsonl, which does not exist"
    ]


def test_verify_without_a_delivery_log_checks_the_log_alone(tmp_path: Path) -> None:
    make_log(tmp_path / "events.sqlite3").close()
    stages: list[str] = []
    report = verify_data_dir(tmp_path, lambda stage, done, total: stages.append(stage))
    assert report.ok
    assert (report.received, report.bounced, report.queued) == (6, 1, 5)
    assert report.checkpoint_seq is None
    assert report.pending_records == 7
    assert stages == ["event log"]


def test_verify_checks_each_snapshot_against_the_fold_of_the_log(tmp_path: Path) -> None:
    from kumo.model.snapshot import decode_snapshot, encode_snapshot
    from kumo.store.layout import SNAPSHOTS
    from kumo.store.snapshots import snapshot_paths, take_snapshot, write_snapshot

    make_log(tmp_path / "events.sqlite3").close()
    take_snapshot(tmp_path, until=6)
    take_snapshot(tmp_path)
    report = verify_data_dir(tmp_path)
    assert (report.snapshots, report.violations) == (2, [])
    # A snapshot rewritten whole (a valid digest) with one message gone: named.
    newest = snapshot_paths(tmp_path / SNAPSHOTS)[0]
    state, position = decode_snapshot(newest.read_bytes())
    assert state.queues is not None
    state.queues["a.com"].remove({f"{5:032x}"})
    newest.write_bytes(encode_snapshot(state, position.chain))
    [violation] = verify_data_dir(tmp_path).violations
    assert violation == Violation(
        "snapshot", f"snapshots/{newest.name}", "queue 'a.com': 4 messages, the log says 5", 8
    )
    # A damaged one, and one beyond the log's end.
    newest.write_bytes(b"garbage")
    state.last_seq = 99
    write_snapshot(tmp_path / SNAPSHOTS, 99, encode_snapshot(state, position.chain))
    problems = [(v.where, v.problem) for v in verify_data_dir(tmp_path).violations]
    assert problems == [
        (f"snapshots/{newest.name}", "not a kumo snapshot (no magic line)"),
        (
            f"snapshots/{99:020d}.snapshot",
            "taken at seq 99, beyond the log's end at seq 8: the log lost events",
        ),
    ]


# -- corruption (issue 12): the database's pages, the spool, every field of a record ---


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("spool", "internal"),
        ("spool", "leaf"),
        ("sqlite_autoindex_events_1", "internal"),
        ("sqlite_autoindex_events_1", "leaf"),
        ("meta", "leaf"),
    ],
)
def test_verify_names_a_damaged_page_of_the_spool_the_id_index_or_meta(
    tmp_path: Path, name: str, kind: str
) -> None:
    # Issue 12: each of these passed with "no violations".
    build_store(tmp_path / DATABASE)
    assert verify_data_dir(tmp_path).ok
    damage(tmp_path / DATABASE, name, kind)

    report = verify_data_dir(tmp_path)

    first = report.violations[0]
    assert (first.check, first.where) == ("structure", f"{DATABASE}, {PARTS[name]}")
    assert "page" in first.problem.lower()


def test_verify_of_a_log_whose_events_cannot_be_read_reports_the_damage(tmp_path: Path) -> None:
    build_store(tmp_path / DATABASE)
    damage(tmp_path / DATABASE, "events", "internal")

    report = verify_data_dir(tmp_path)

    assert not report.log_read
    first = report.violations[0]
    assert (first.check, first.where) == ("structure", f"{DATABASE}, {PARTS['events']}")
    assert report.violations[-1] == Violation(
        "structure", DATABASE, "the log cannot be read: database disk image is malformed"
    )


def test_verify_takes_contents_owed_a_purge_for_what_they_are(tmp_path: Path) -> None:
    """A store that says purges are owed (a server stopped before it made them) may
    hold the contents of messages that left; every other difference is still one."""
    store = make_log(tmp_path / DATABASE, 3, purged=False)
    assert store.owed == 1
    store._db.execute("INSERT INTO spool VALUES (4, x'00')")  # the rule's seq
    store.close()

    report = verify_data_dir(tmp_path)

    assert report.spooled == 4
    assert report.violations == [
        Violation("spool", "seq 4", "content spooled at seq 4, which received no message", 4),
    ]


def test_verify_compares_the_spool_with_the_queued_messages(tmp_path: Path) -> None:
    store = make_log(tmp_path / DATABASE)
    assert verify_data_dir(tmp_path).spooled == 5  # six received, one bounced
    store._db.execute("DELETE FROM spool WHERE seq = 3")  # a queued message's content
    store._db.execute("INSERT INTO spool VALUES (1, x'00')")  # the bounced one's
    store._db.execute("INSERT INTO spool VALUES (7, x'00')")  # the rule's seq
    store.close()

    report = verify_data_dir(tmp_path)

    assert report.spooled == 6
    assert report.violations == [
        Violation(
            "spool",
            "seq 1",
            f"content of message {0:032x} is still spooled, but the message left: bounced at seq 8",
            1,
        ),
        Violation(
            "spool",
            "seq 3",
            f"message {2:032x} is queued, but its content is not in the spool",
            3,
        ),
        Violation("spool", "seq 7", "content spooled at seq 7, which received no message", 7),
    ]


def write_delivery_log(data_dir: Path, *, checkpoint: bool = True) -> list[bytes]:
    """The records kumo writes for make_log's events, and (by default) its checkpoint."""
    with LogView(data_dir / DATABASE) as view:
        events = [committed for batch in view.committed() for committed in batch]
    lines = encode_records(events, {"r": ("why", False)}, "node-1")
    [segment] = write_segments(data_dir / LOGS, b"".join(lines))
    if checkpoint:
        written = Checkpoint(events[-1].seq, segment.name, segment.stat().st_size)
        (data_dir / LOGS / CHECKPOINT).write_bytes(written.to_json())
    return lines


@pytest.mark.parametrize(
    ("field", "forged", "expected"),
    [
        ("recipient", "attacker@example", "'r2@a.com'"),
        ("sender", "attacker@example", "'s@x'"),
        ("size", 1_000_000, "10"),
        ("created", 1, "10"),
        ("event_time", "2000-01-01T00:00:00Z", "'1970-01-01T00:00:10Z'"),
        ("peer_address", {"name": "x", "addr": "10.0.0.1"}, "None"),
    ],
)
def test_verify_compares_every_field_of_a_record_with_the_log(
    tmp_path: Path, field: str, forged: object, expected: str
) -> None:
    # Issue 12: forged recipient, sender, size or created fields passed verify.
    make_log(tmp_path / DATABASE).close()
    lines = write_delivery_log(tmp_path)
    assert verify_data_dir(tmp_path).ok
    record = orjson.loads(lines[2])
    record[field] = forged
    lines[2] = orjson.dumps(record) + b"\n"
    segment = tmp_path / LOGS / segment_name(1)
    segment.write_bytes(b"".join(lines))
    checkpoint = Checkpoint(8, segment.name, segment.stat().st_size)
    (tmp_path / LOGS / CHECKPOINT).write_bytes(checkpoint.to_json())

    [violation] = verify_data_dir(tmp_path).violations

    assert violation.where == f"{LOGS}/{segment.name} line 3"
    assert violation.problem == (
        f"Reception for {2:032x} differs from the log's event at seq 3: "
        f"{field} {forged!r}, log says {expected}"
    )


def test_verify_compares_an_admin_bounce_record_too(tmp_path: Path) -> None:
    make_log(tmp_path / DATABASE).close()
    lines = write_delivery_log(tmp_path, checkpoint=False)
    record = orjson.loads(lines[-1])
    assert record["type"] == "AdminBounce"
    record["recipient"], record["timestamp"] = "attacker@example", 0
    lines[-1] = orjson.dumps(record) + b"\n"
    write_segments(tmp_path / LOGS, b"".join(lines))

    problems = [v.problem for v in verify_data_dir(tmp_path).violations if v.check != "checkpoint"]

    assert problems == [
        f"AdminBounce for {0:032x} differs from the log's event at seq 8: recipient "
        "'attacker@example', log says 'r0@a.com'; timestamp 0, log says 30"
    ]


def test_verify_without_a_checkpoint_still_checks_every_record(tmp_path: Path) -> None:
    # Issue 12: a deleted checkpoint made verify say "nothing written yet".
    make_log(tmp_path / DATABASE).close()
    lines = write_delivery_log(tmp_path, checkpoint=False)
    del lines[1]
    write_segments(tmp_path / LOGS, b"".join(lines))

    report = verify_data_dir(tmp_path)

    assert report.checkpoint_seq is None
    assert report.records_due_through == 8
    assert report.pending_records == 0
    assert [(v.check, v.where, v.problem) for v in report.violations] == [
        (
            "checkpoint",
            "logs/checkpoint.json",
            "missing, but the segments hold 6 records (for events up to seq 8): every record "
            "up to there was checked; the next start rebuilds the checkpoint from the segments",
        ),
        (
            "delivery-log",
            "seq 2",
            f"no Reception record for 1 message(s) of this event: {1:032x}",
        ),
    ]


SMTP_PEER = PeerAddress("client.example", "127.0.0.1")
SENT = Attempt(
    "unspecified->mx.a.com@smtp_client",
    250,
    (2, 0, 0),
    "OK",
    ".\r\n",
    PeerAddress("mx.a.com", "127.0.0.1"),
    protocol="ESMTP",
)


def make_smtp_log(path: Path) -> list[str]:
    """A store where three messages received over SMTP go every way a message goes: one
    fails, then is delivered; one is rebound; one is bounced by a rule. Returns the
    record types in the order kumo writes them."""
    store = SqliteEventStore(path)
    arrivals = [
        MessageReceived(f"{n:032x}", "a.com", "s@x", f"r{n}@a.com", 10, "ESMTP", SMTP_PEER)
        for n in range(3)
    ]
    store.commit(list(arrivals), time=10 * SECOND, bodies={})
    first, second, third = (
        Message(f"{n:032x}", "s@x", f"r{n}@a.com", 10, 10 * SECOND, n + 1, "ESMTP")
        for n in range(3)
    )
    deferred = attrs.evolve(SENT, code=451, enhanced_code=(4, 4, 1), content="later")
    store.commit(
        [TransientlyFailed("a.com", first, 0, deferred, 40 * SECOND)], time=11 * SECOND, bodies={}
    )
    store.commit([Delivered("a.com", first, 1, SENT)], time=12 * SECOND, bodies={})
    store.commit(
        [RebindIssued("b", Criteria(domain="a.com"), {"routing_domain": "relay"}, "move")],
        time=13 * SECOND,
        bodies={},
    )
    store.commit(
        [Rebound("b", "a.com", "a.com!relay", [second], [0], "move")], time=13 * SECOND, bodies={}
    )
    store.commit(
        [BounceIssued("r", Criteria(queue_names=frozenset({"a.com"})), "why", 99 * SECOND)],
        time=20 * SECOND,
        bodies={},
    )
    store.commit([Bounced("r", "a.com", [third])], time=30 * SECOND, bodies={})
    store.close()
    return ["Reception"] * 3 + ["TransientFailure", "Delivery", "AdminRebind", "AdminBounce"]


@pytest.mark.parametrize("index", range(7))
def test_verify_names_a_forged_reception_protocol_on_any_record_of_a_message(
    tmp_path: Path, index: int
) -> None:
    """Every record of a message received over SMTP says ``ESMTP`` (issue 13): a record
    that says otherwise differs from the log."""
    kinds = make_smtp_log(tmp_path / DATABASE)
    lines = write_delivery_log(tmp_path)
    records = [orjson.loads(line) for line in lines]
    assert [record["type"] for record in records] == kinds
    assert {record["reception_protocol"] for record in records} == {"ESMTP"}
    assert verify_data_dir(tmp_path).ok

    records[index]["reception_protocol"] = "HTTP"
    lines[index] = orjson.dumps(records[index]) + b"\n"
    segment = tmp_path / LOGS / segment_name(1)
    segment.write_bytes(b"".join(lines))
    checkpoint = Checkpoint(9, segment.name, segment.stat().st_size)
    (tmp_path / LOGS / CHECKPOINT).write_bytes(checkpoint.to_json())

    [violation] = verify_data_dir(tmp_path).violations

    assert violation.where == f"{LOGS}/{segment.name} line {index + 1}"
    assert violation.problem.startswith(f"{kinds[index]} for {records[index]['id']} differs")
    assert violation.problem.endswith("reception_protocol 'HTTP', log says 'ESMTP'")

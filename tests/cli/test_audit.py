"""``kumo audit`` and ``kumo replay --verify`` against a day the test lived through.

The day is built once per module through the real engine, in virtual time: three
tenants and two campaigns, overlapping rules, a replacement, a cancel, expiries, an
already-expired rule, a suppressed one, an everything rule, and a restart in the
middle. The test writes down what happened (the :class:`Day`), then checks each
command's output against it, and corrupts copies of the directory to check that
``replay --verify`` names the place.
"""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio
import trio.testing
from click.testing import CliRunner, Result
from rich.console import Console

from kumo.cli.audit import ProgressBar, audit, parse_when, replay
from kumo.cli.kumo import main as kumo_main
from kumo.model.duration import format_duration
from kumo.model.requests import BounceRequest
from kumo.model.rfc3339 import format_rfc3339
from kumo.model.state import RuleView
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import Engine, open_engine
from kumo.store.delivery_files import read_checkpoint, segment_sizes, write_checkpoint
from kumo.store.layout import DATABASE
from kumo.store.sqlite_log import chain_link
from tests.runtime.harness import WALL_ORIGIN, bounce, message

MINUTE = 60
NANOS = 1_000_000_000


def wall(minutes: float) -> int:
    """The wall time ``minutes`` into the day, ns since the epoch."""
    return WALL_ORIGIN + round(minutes * MINUTE * NANOS)


@attrs.frozen
class Snapshot:
    """What GET and the gauges showed at ``at``, taken while the engine ran."""

    at: int
    rules: list[RuleView]
    queues: dict[str, int]


@attrs.define
class Day:
    data_dir: Path
    rules: dict[str, str] = attrs.Factory(dict)
    """Name in this test (R1...) -> rule id."""
    messages: dict[str, list[str]] = attrs.Factory(dict)
    """Name of a batch -> message ids."""
    snapshots: dict[str, Snapshot] = attrs.Factory(dict)
    received: int = 0


async def _live_through_the_day(data_dir: Path, day: Day) -> None:
    clock = EngineClock(WALL_ORIGIN)
    clock.now()  # anchor wall time to this moment of virtual time
    start = trio.current_time()

    async def at_minute(minutes: float) -> None:
        await trio.sleep_until(start + minutes * MINUTE)

    async def inject(engine: Engine, name: str, count: int, **metadata: Any) -> None:
        domain = metadata.pop("domain")
        ids = await engine.inject(
            [message(f"{name}{i}@{domain}", **metadata) for i in range(count)]
        )
        day.messages[name] = ids
        day.received += count
        await engine.wait_idle()

    async def issue(engine: Engine, name: str, request: BounceRequest, by: str) -> None:
        day.rules[name] = await engine.issue_bounce(request, issued_by=by)
        await engine.wait_idle()

    def snapshot(engine: Engine, name: str) -> None:
        day.snapshots[name] = Snapshot(
            engine.clock.now(), engine.list_bounces(), dict(engine.queue_counts())
        )

    async with open_engine(data_dir, clock=clock, threads=False) as engine:
        await inject(engine, "spring", 4, domain="gmail.com", campaign="spring", tenant="acme")
        await inject(engine, "news", 3, domain="yahoo.com", campaign="news", tenant="acme")
        await inject(engine, "globex", 3, domain="gmail.com", tenant="globex")
        await inject(engine, "initech", 2, domain="example.com", tenant="initech")
        await inject(engine, "plain", 2, domain="example.com")
        snapshot(engine, "start")
        await at_minute(10)
        await issue(
            engine,
            "R1",
            bounce("complaints from acme", duration=60 * MINUTE * NANOS, tenant="acme"),
            "alice",
        )
        await at_minute(20)
        await inject(engine, "spring-late", 2, domain="gmail.com", campaign="spring", tenant="acme")
        await at_minute(30)
        await issue(
            engine,
            "R2",
            bounce(
                "news campaign pulled",
                duration=120 * MINUTE * NANOS,
                campaign="news",
                tenant="acme",
            ),
            "bob",
        )
        await at_minute(35)
        await inject(engine, "news-late", 2, domain="yahoo.com", campaign="news", tenant="acme")
        await at_minute(40)
        await issue(
            engine,
            "R3",
            bounce(
                "gmail blocks us",
                duration=30 * MINUTE * NANOS,
                domain="gmail.com",
                suppress_logging=True,
            ),
            "carol",
        )
        await at_minute(45)
        await issue(
            engine,
            "R4",
            bounce("acme still complaining", duration=180 * MINUTE * NANOS, tenant="acme"),
            "bob",
        )
        await at_minute(50)
        snapshot(engine, "mid")
        await at_minute(60)
        assert await engine.cancel_bounce(day.rules["R2"], cancelled_by="alice")
        await engine.wait_idle()
        await at_minute(65)
        await inject(engine, "news-later", 1, domain="yahoo.com", campaign="news", tenant="acme")
        await at_minute(75)  # R3 expired at 70
        await engine.wait_idle()
        await inject(engine, "globex-late", 2, domain="gmail.com", tenant="globex")
        await at_minute(80)
        await issue(
            engine,
            "R5",
            bounce("one-off purge", duration=0, queue_names=["initech@example.com"]),
            "dave",
        )
        snapshot(engine, "before-restart")
    await at_minute(120)
    async with open_engine(data_dir, clock=clock, threads=False) as engine:
        await engine.wait_idle()
        snapshot(engine, "after-restart")
        await at_minute(121)  # events at the snapshot's very instant would count in --at
        await inject(engine, "plain-late", 1, domain="example.com")
        await at_minute(150)
        await issue(engine, "R6", bounce("emergency stop", duration=10 * MINUTE * NANOS), "alice")
        await at_minute(155)
        snapshot(engine, "emergency")
        await at_minute(240)  # R6 expired at 160, R4 at 225
        await engine.wait_idle()
        await inject(engine, "spring-end", 1, domain="gmail.com", campaign="spring", tenant="acme")
        snapshot(engine, "end")


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> Day:
    data_dir = tmp_path_factory.mktemp("day")
    lived = Day(data_dir)
    trio.run(
        _live_through_the_day,
        data_dir,
        lived,
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    return lived


@pytest.fixture
def copy(day: Day, tmp_path: Path) -> Path:
    """A copy of the day's data directory, to corrupt."""
    target = tmp_path / "copy"
    shutil.copytree(day.data_dir, target)
    return target


def run(command: Any, *args: str) -> Result:
    return CliRunner().invoke(command, list(args), catch_exceptions=False)


def run_json(command: Any, *args: str) -> Any:
    result = run(command, *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return orjson.loads(result.stdout)


def fingerprint(directory: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``directory`` with its size, mtime and content hash."""
    return {
        str(path.relative_to(directory)): (
            path.stat().st_size,
            path.stat().st_mtime_ns,
            hashlib.blake2b(path.read_bytes()).hexdigest(),
        )
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


# -- the timeline ---------------------------------------------------------------------

END = format_rfc3339(wall(240))


def test_timeline_lists_every_action_with_who_what_and_how_many(day: Day) -> None:
    report = run_json(audit, "--data-dir", str(day.data_dir), "--until", END)
    r = day.rules
    got = [(a["time"], a["action"], a["rule"], a["principal"]) for a in report["actions"]]
    assert got == [
        (format_rfc3339(wall(10)), "issued", r["R1"], "alice"),
        (format_rfc3339(wall(30)), "issued", r["R2"], "bob"),
        (format_rfc3339(wall(40)), "issued", r["R3"], "carol"),
        (format_rfc3339(wall(45)), "issued", r["R4"], "bob"),
        (format_rfc3339(wall(45)), "replaced", r["R1"], "bob"),
        (format_rfc3339(wall(60)), "cancelled", r["R2"], "alice"),
        (format_rfc3339(wall(70)), "expired", r["R3"], None),
        (format_rfc3339(wall(80)), "issued", r["R5"], "dave"),
        (format_rfc3339(wall(80)), "expired", r["R5"], None),
        (format_rfc3339(wall(150)), "issued", r["R6"], "alice"),
        (format_rfc3339(wall(160)), "expired", r["R6"], None),
        (format_rfc3339(wall(225)), "expired", r["R4"], None),
    ]
    by_rule = {a["rule"]: a for a in report["actions"] if a["action"] == "issued"}
    spring, news = "spring:acme@gmail.com", "news:acme@yahoo.com"
    expected = {
        "R1": ("replaced", r["R4"], {spring: 6, news: 3}),
        "R2": ("cancelled", "alice", {news: 2}),
        "R3": ("expired", None, {"globex@gmail.com": 3}),
        "R4": ("expired", None, {news: 1}),
        "R5": ("expired", None, {"initech@example.com": 2}),
        "R6": ("expired", None, {"globex@gmail.com": 2, "example.com": 3}),
    }
    for name, (status, ended_by, bounced) in expected.items():
        line = by_rule[r[name]]
        assert (line["status"], line["ended_by"], line["bounced"]) == (status, ended_by, bounced)
        assert line["total_bounced"] == sum(bounced.values())
    assert by_rule[r["R1"]]["reason"] == "complaints from acme"
    assert by_rule[r["R1"]]["criteria"] == {
        "campaign": None,
        "tenant": "acme",
        "domain": None,
        "routing_domain": None,
        "queue_names": [],
    }
    assert by_rule[r["R5"]]["criteria"]["queue_names"] == ["initech@example.com"]
    assert by_rule[r["R3"]]["suppress_logging"] is True
    assert by_rule[r["R1"]]["ended_at"] == format_rfc3339(wall(45))
    assert by_rule[r["R4"]]["expires"] == format_rfc3339(wall(225))
    assert report["log"]["first_seq"] == 1


def test_status_and_counters_are_as_of_until(day: Day) -> None:
    """At 00:55 R1 is already replaced, R2 and R3 live; R4 has bounced nothing yet."""
    report = run_json(audit, "--data-dir", str(day.data_dir), "--until", format_rfc3339(wall(55)))
    r = day.rules
    statuses = {a["rule"]: a["status"] for a in report["actions"] if a["action"] == "issued"}
    assert statuses == {r["R1"]: "replaced", r["R2"]: "live", r["R3"]: "live", r["R4"]: "live"}
    r4 = next(a for a in report["actions"] if a["rule"] == r["R4"])
    assert r4["total_bounced"] == 0
    assert report["as_of"] == format_rfc3339(wall(55))


def test_filters_since_until_rule_queue_principal(day: Day) -> None:
    r = day.rules
    base = ("--data-dir", str(day.data_dir))

    def actions(*args: str) -> list[tuple[str, str]]:
        report = run_json(audit, *base, "--until", END, *args)
        return [(a["action"], a["rule"]) for a in report["actions"]]

    assert actions("--since", format_rfc3339(wall(60))) == [
        ("cancelled", r["R2"]),
        ("expired", r["R3"]),
        ("issued", r["R5"]),
        ("expired", r["R5"]),
        ("issued", r["R6"]),
        ("expired", r["R6"]),
        ("expired", r["R4"]),
    ]
    assert actions("--rule", r["R1"]) == [("issued", r["R1"]), ("replaced", r["R1"])]
    assert actions("--principal", "alice") == [
        ("issued", r["R1"]),
        ("cancelled", r["R2"]),
        ("issued", r["R6"]),
    ]
    # --queue keeps the rules that match the queue and narrows their counters to it.
    report = run_json(audit, *base, "--until", END, "--queue", "globex@gmail.com")
    issued = {a["rule"]: a["bounced"] for a in report["actions"] if a["action"] == "issued"}
    assert issued == {r["R3"]: {"globex@gmail.com": 3}, r["R6"]: {"globex@gmail.com": 2}}
    # --until reads the log up to that time only.
    assert actions("--until", format_rfc3339(wall(30))) == [
        ("issued", r["R1"]),
        ("issued", r["R2"]),
    ]


def test_unknown_rule_is_an_error(day: Day) -> None:
    result = run(audit, "--data-dir", str(day.data_dir), "--rule", "no-such-rule")
    assert result.exit_code == 1
    assert "rule no-such-rule is not in the log" in result.stderr


def test_table_and_csv_render_the_same_timeline(day: Day) -> None:
    base = ("--data-dir", str(day.data_dir), "--until", END)
    r = day.rules
    table = run(audit, *base)
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "TIME",
        "ACTION",
        "RULE",
        "PRINCIPAL",
        "CRITERIA",
        "REASON",
        "STATUS",
        "BOUNCED",
        "PER",
        "QUEUE",
    ]
    r1_line = next(line for line in lines if r["R1"] in line and " issued " in line)
    assert f"replaced by {r['R4']}" in r1_line
    assert "tenant=acme" in r1_line
    assert "spring:acme@gmail.com=6; news:acme@yahoo.com=3" in r1_line
    assert "12 action(s) on 6 rule(s)" in table.stdout
    rows = list(csv.DictReader(io.StringIO(run(audit, *base, "--format", "csv").stdout)))
    assert len(rows) == 12
    r2 = next(row for row in rows if row["rule"] == r["R2"] and row["action"] == "issued")
    assert (r2["status"], r2["ended_by"], r2["principal"]) == ("cancelled", "alice", "bob")
    assert (r2["bounced"], r2["total_bounced"]) == ("news:acme@yahoo.com=2", "2")
    assert r2["criteria"] == "campaign=news, tenant=acme"


# -- the state at a moment --------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["start", "mid", "before-restart", "after-restart", "emergency", "end"]
)
def test_state_at_equals_the_snapshot_taken_while_running(day: Day, name: str) -> None:
    snap = day.snapshots[name]
    state = run_json(audit, "--data-dir", str(day.data_dir), "--at", format_rfc3339(snap.at))
    assert state["at"] == format_rfc3339(snap.at)
    assert state["queues"] == snap.queues
    assert [
        (rule["id"], rule["bounced"], rule["total_bounced"], rule["duration"])
        for rule in state["rules"]
    ] == [
        (view.id, dict(view.bounced), view.total_bounced, format_duration(view.remaining))
        for view in snap.rules
    ]
    assert state["queued_total"] == sum(snap.queues.values())


def test_state_at_mid_day_in_table_and_csv(day: Day) -> None:
    at = format_rfc3339(day.snapshots["mid"].at)
    table = run(audit, "--data-dir", str(day.data_dir), "--at", at)
    assert table.exit_code == 0
    assert f"State at {at}" in table.stdout
    assert "Live rules: 3" in table.stdout
    rows = list(
        csv.DictReader(
            io.StringIO(
                run(audit, "--data-dir", str(day.data_dir), "--at", at, "--format", "csv").stdout
            )
        )
    )
    assert {row["name"] for row in rows if row["kind"] == "rule"} == {
        day.rules["R2"],
        day.rules["R3"],
        day.rules["R4"],
    }
    queues = {row["name"]: int(row["count"]) for row in rows if row["kind"] == "queue"}
    assert queues == day.snapshots["mid"].queues


def test_state_at_accepts_a_duration_ago(day: Day) -> None:
    """Long ago (before the day) nothing existed yet."""
    state = run_json(audit, "--data-dir", str(day.data_dir), "--at", "100years")
    assert (state["rules"], state["queues"], state["seq"]) == ([], {}, 0)


# -- the story of a message ------------------------------------------------------------


def story(day: Day, message_id: str) -> Any:
    return run_json(audit, "--data-dir", str(day.data_dir), "--message", message_id)


def test_message_swept_by_a_rule(day: Day) -> None:
    told = story(day, day.messages["spring"][0])
    assert told["status"] == "bounced"
    [received] = told["received"]
    assert (received["queue"], received["sender"], received["recipient"]) == (
        "spring:acme@gmail.com",
        "sender@example.org",
        "spring0@gmail.com",
    )
    assert received["time"] == format_rfc3339(wall(0))
    [bounced] = told["bounced"]
    assert (bounced["rule"], bounced["how"], bounced["reason"], bounced["issued_by"]) == (
        day.rules["R1"],
        "by sweep",
        "complaints from acme",
        "alice",
    )
    assert bounced["time"] == format_rfc3339(wall(10))


def test_message_bounced_at_arrival_by_the_most_recent_rule(day: Day) -> None:
    told = story(day, day.messages["news-late"][1])
    [bounced] = told["bounced"]
    assert (bounced["rule"], bounced["how"]) == (day.rules["R2"], "at arrival")
    told = story(day, day.messages["news-later"][0])
    [bounced] = told["bounced"]
    assert (bounced["rule"], bounced["how"]) == (day.rules["R4"], "at arrival")


def test_message_still_queued(day: Day) -> None:
    told = story(day, day.messages["spring-end"][0])
    assert told["status"] == "queued"
    assert told["bounced"] == []
    table = run(audit, "--data-dir", str(day.data_dir), "--message", day.messages["spring-end"][0])
    assert "still waiting in its queue" in table.stdout
    assert ": queued" in table.stdout.splitlines()[0]


def test_message_swept_after_the_restart(day: Day) -> None:
    told = story(day, day.messages["plain"][1])
    [bounced] = told["bounced"]
    assert (bounced["rule"], bounced["how"], bounced["criteria_text"]) == (
        day.rules["R6"],
        "by sweep",
        "everything",
    )
    rows = list(
        csv.DictReader(
            io.StringIO(
                run(
                    audit,
                    "--data-dir",
                    str(day.data_dir),
                    "--message",
                    day.messages["plain"][1],
                    "--format",
                    "csv",
                ).stdout
            )
        )
    )
    assert [row["step"] for row in rows] == ["received", "bounced"]


def test_unknown_message_is_an_error(day: Day) -> None:
    result = run(audit, "--data-dir", str(day.data_dir), "--message", "0" * 32)
    assert result.exit_code == 1
    assert "is not in the log" in result.stderr


# -- replay and verify -----------------------------------------------------------------


def test_verify_finds_the_day_clean(day: Day) -> None:
    result = run(replay, "--verify", "--data-dir", str(day.data_dir))
    assert result.exit_code == 0, result.stdout
    assert "no violations" in result.stdout
    report = run_json(replay, "--verify", "--data-dir", str(day.data_dir))
    assert report["ok"] is True
    assert report["received"] == day.received
    assert report["queued"] == sum(day.snapshots["end"].queues.values())
    assert report["bounced"] == day.received - report["queued"]
    assert report["rules"] == 6
    assert report["records"]["Reception"] == day.received
    # R3 (3 messages) suppresses logging.
    assert report["records"]["AdminBounce"] == report["bounced"] - 3
    assert report["checkpoint_seq"] == report["last_seq"]
    assert report["violations"] == []


def test_replay_without_verify_prints_the_rebuilt_state(day: Day) -> None:
    result = run_json(replay, "--data-dir", str(day.data_dir))
    assert result["queues"] == day.snapshots["end"].queues
    assert result["rules"] == []


def test_commands_never_write_to_the_data_directory(day: Day) -> None:
    before = fingerprint(day.data_dir)
    assert not (day.data_dir / (DATABASE + "-wal")).exists()
    run(audit, "--data-dir", str(day.data_dir))
    run(audit, "--data-dir", str(day.data_dir), "--at", format_rfc3339(wall(50)))
    run(audit, "--data-dir", str(day.data_dir), "--message", day.messages["spring"][0])
    run(replay, "--verify", "--data-dir", str(day.data_dir))
    assert fingerprint(day.data_dir) == before


def test_the_kumo_group_dispatches_audit_and_replay(day: Day) -> None:
    result = run(kumo_main, "audit", "--data-dir", str(day.data_dir), "--format", "json")
    assert result.exit_code == 0
    assert run(kumo_main, "replay", "--verify", "--data-dir", str(day.data_dir)).exit_code == 0


def _corrupt(copy: Path, *statements: str) -> None:
    db = sqlite3.connect(copy / DATABASE)
    with db:
        for statement in statements:
            db.execute(statement)
    db.close()


def _violations(copy: Path) -> tuple[int, list[dict[str, Any]]]:
    result = run(replay, "--verify", "--data-dir", str(copy), "--format", "json")
    return result.exit_code, orjson.loads(result.stdout)["violations"]


def test_verify_names_an_edited_body(copy: Path) -> None:
    seq = _seq_of(copy, "BounceIssued", 1)
    _corrupt(copy, f"UPDATE events SET body = replace(body, 'alice', 'mallory') WHERE seq = {seq}")
    code, violations = _violations(copy)
    assert code == 1
    assert violations[0]["check"] == "chain"
    assert violations[0]["seq"] == seq
    assert violations[0]["where"] == f"seq {seq}"
    assert [v for v in violations if v["check"] == "chain"] == [violations[0]]
    text = run(replay, "--verify", "--data-dir", str(copy))
    assert text.exit_code == 1
    assert f"seq {seq}: [chain] the hash chain breaks at seq {seq}" in text.stdout


def test_verify_names_an_edited_row_whose_chain_was_recomputed(copy: Path) -> None:
    """A careful forger recomputes the row's chain value: the next row gives it away."""
    seq = _seq_of(copy, "Bounced", 2)
    db = sqlite3.connect(copy / DATABASE)
    previous = db.execute("SELECT chain FROM events WHERE seq = ?", (seq - 1,)).fetchone()[0]
    time, kind, body = db.execute(
        "SELECT time, type, body FROM events WHERE seq = ?", (seq,)
    ).fetchone()
    forged = bytes(body).replace(b'"queue":"', b'"queue":"x', 1)
    with db:
        db.execute(
            "UPDATE events SET body = ?, chain = ? WHERE seq = ?",
            (forged, chain_link(bytes(previous), seq, time, kind, forged), seq),
        )
    db.close()
    code, violations = _violations(copy)
    assert code == 1
    chain = [v for v in violations if v["check"] == "chain"]
    assert [v["seq"] for v in chain] == [seq + 1]


def test_verify_names_a_removed_row(copy: Path) -> None:
    seq = _seq_of(copy, "MessageReceived", 5)
    _corrupt(copy, f"DELETE FROM events WHERE seq = {seq}")
    code, violations = _violations(copy)
    assert code == 1
    assert violations[0]["check"] == "sequence"
    assert violations[0]["seq"] == seq + 1
    assert f"event {seq} missing" in violations[0]["problem"]
    # The message it received now looks bounced without being received, or logged
    # without being received: both are reported too.
    assert any(v["check"] in ("conservation", "delivery-log") for v in violations[1:])


def test_verify_detects_a_truncated_tail(copy: Path) -> None:
    db = sqlite3.connect(copy / DATABASE)
    last = db.execute("SELECT max(seq) FROM events").fetchone()[0]
    db.close()
    _corrupt(copy, f"DELETE FROM events WHERE seq > {last - 3}")
    code, violations = _violations(copy)
    assert code == 1
    [truncated] = [v for v in violations if v["check"] == "checkpoint"]
    assert truncated["seq"] == last - 2
    assert f"events {last - 2}..{last} are missing" in truncated["problem"]


def test_verify_names_a_broken_chain_value(copy: Path) -> None:
    seq = _seq_of(copy, "BounceCancelled", 1)
    _corrupt(copy, f"UPDATE events SET chain = zeroblob(16) WHERE seq = {seq}")
    code, violations = _violations(copy)
    assert code == 1
    assert violations[0]["seq"] == seq
    assert violations[0]["check"] == "chain"


def test_verify_names_duplicate_and_missing_delivery_records(copy: Path) -> None:
    [segment] = [copy / "logs" / name for name in segment_sizes(copy / "logs")]
    lines = segment.read_bytes().splitlines(keepends=True)
    # Drop the first Reception, repeat the first AdminBounce right after it.
    first_bounce = next(i for i, line in enumerate(lines) if b'"AdminBounce"' in line)
    dropped = orjson.loads(lines[0])["id"]
    kept = [*lines[1 : first_bounce + 1], lines[first_bounce], *lines[first_bounce + 1 :]]
    segment.write_bytes(b"".join(kept))
    checkpoint = read_checkpoint(copy / "logs")
    assert checkpoint is not None
    write_checkpoint(copy / "logs", attrs.evolve(checkpoint, offset=segment.stat().st_size))
    code, violations = _violations(copy)
    assert code == 1
    problems = [v["problem"] for v in violations]
    assert any(p.startswith("duplicate AdminBounce record") for p in problems)
    [missing] = [v for v in violations if "no Reception record" in v["problem"]]
    assert dropped in missing["problem"]
    assert missing["seq"] == 1


def test_verify_rejects_a_logged_bounce_of_a_suppressed_rule(copy: Path, day: Day) -> None:
    segment = copy / "logs" / list(segment_sizes(copy / "logs"))[-1]
    record = next(
        orjson.loads(line)
        for line in segment.read_bytes().splitlines()
        if b'"Reception"' in line and day.messages["globex"][0].encode() in line
    )
    record.update(type="AdminBounce", response={"content": "forged"})
    with segment.open("ab") as file:
        file.write(orjson.dumps(record) + b"\n")
    code, violations = _violations(copy)
    assert code == 1
    [violation] = violations
    assert "suppresses logging" in violation["problem"]
    assert violation["where"].endswith(f"line {len(segment.read_bytes().splitlines())}")


def _seq_of(copy: Path, kind: str, nth: int) -> int:
    db = sqlite3.connect(copy / DATABASE)
    rows = db.execute("SELECT seq FROM events WHERE type = ? ORDER BY seq", (kind,)).fetchall()
    db.close()
    seq: int = rows[nth - 1][0]
    return seq


# -- beside a running server -------------------------------------------------------------


async def test_audit_reads_a_log_that_a_running_engine_is_writing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        ids = await engine.inject([message(f"u{i}@example.com") for i in range(3)])
        rule = await engine.issue_bounce(bounce(domain="example.com"), issued_by="ops")
        await engine.wait_idle()
        assert (tmp_path / (DATABASE + "-wal")).exists()
        now = format_rfc3339(engine.clock.now())
        report = run_json(audit, "--data-dir", str(tmp_path), "--until", now)
        assert [(a["action"], a["rule"], a["status"]) for a in report["actions"]] == [
            ("issued", rule, "live")
        ]
        told = run_json(audit, "--data-dir", str(tmp_path), "--message", ids[0])
        assert told["bounced"][0]["rule"] == rule
        verified = run(replay, "--verify", "--data-dir", str(tmp_path))
        assert verified.exit_code == 0, verified.stdout
        # The engine goes on working afterwards.
        await engine.inject([message("late@example.com")])
        await engine.wait_idle()
        assert engine.list_bounces()[0].total_bounced == 4


def test_the_benchmark_log_builder_makes_a_directory_that_verifies(tmp_path: Path) -> None:
    data_dir = tmp_path / "bench"
    script = Path(__file__).resolve().parents[2] / "scripts" / "make_audit_log.py"
    subprocess.run(
        [sys.executable, str(script), str(data_dir), "--events", "5000", "--seed", "7"],
        check=True,
        capture_output=True,
    )
    report = run_json(replay, "--verify", "--data-dir", str(data_dir))
    assert report["ok"], report["violations"]
    assert report["events"] >= 5000
    assert report["rules"] > 3
    timeline = run_json(audit, "--data-dir", str(data_dir))
    assert {a["action"] for a in timeline["actions"]} >= {"issued", "expired"}


# -- pieces ------------------------------------------------------------------------------


def test_parse_when_accepts_rfc3339_dates_and_durations_ago() -> None:
    now = wall(600)
    assert parse_when("2026-01-01T00:10:00Z", now) == wall(10)
    assert parse_when("2026-01-01 01:10:00+01:00", now) == wall(10)
    assert parse_when("2026-01-01", now) == wall(0)
    assert parse_when("2h", now) == wall(480)
    assert parse_when("1h 30m", now) == wall(510)
    with pytest.raises(ValueError, match="neither an RFC 3339 time"):
        parse_when("yesterday", now)


def test_bad_time_option_is_a_usage_error(day: Day) -> None:
    result = run(audit, "--data-dir", str(day.data_dir), "--since", "soon")
    assert result.exit_code == 2
    assert "neither an RFC 3339 time" in result.stderr


def test_conflicting_questions_are_usage_errors(day: Day) -> None:
    base = ("--data-dir", str(day.data_dir))
    assert run(audit, *base, "--at", END, "--message", "x").exit_code == 2
    assert run(audit, *base, "--at", END, "--rule", "x").exit_code == 2


def test_missing_log_is_an_error(tmp_path: Path) -> None:
    result = run(audit, "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "no event log" in result.stderr
    assert run(replay, "--verify", "--data-dir", str(tmp_path)).exit_code == 1
    (tmp_path / DATABASE).write_bytes(b"not a database at all" * 100)
    for command in (audit, replay):
        result = run(command, "--data-dir", str(tmp_path))
        assert result.exit_code == 1
        assert "is not a kumo event log" in result.stderr
    result = run(replay, "--verify", "--data-dir", str(tmp_path))
    assert "is not a kumo event log" in result.stderr


def test_progress_bar_appears_only_after_its_delay_and_on_a_terminal() -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True)
    with ProgressBar(after=3600, console=terminal) as progress:
        progress("reading", 1, 10)
        assert not progress.shown
    with ProgressBar(after=0, console=terminal) as progress:
        progress("reading", 1, 10)
        assert progress.shown
        progress("reading", 10, 10)
    assert "reading" in terminal.file.getvalue()  # type: ignore[attr-defined]
    pipe = Console(file=io.StringIO(), force_terminal=False)
    with ProgressBar(after=0, console=pipe) as progress:
        progress("reading", 1, 10)
        assert not progress.shown
    assert pipe.file.getvalue() == ""  # type: ignore[attr-defined]

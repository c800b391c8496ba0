"""``kumo audit`` tells ready-queue suspensions as it tells suspensions of scheduled
queues: who suspended and lifted which ready queue, why, for how long, what each held
and released, in every format; against a log the real engine wrote, in virtual time,
its one destination a scripted sink over in-memory streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
import trio
import trio.testing
from click.testing import CliRunner

from kumo.cli.audit import audit
from kumo.model.rfc3339 import format_rfc3339
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import open_engine
from tests.runtime.harness import WALL_ORIGIN, message
from tests.runtime.smtp_sink import SmtpSink
from tests.runtime.test_ready_suspension import READY_QUEUE, held, in_memory, suspend

SECOND = 1_000_000_000


@attrs.frozen
class Suspensions:
    data_dir: Path
    q1: str
    q2: str
    first: list[str]
    late: str


async def _live(data_dir: Path) -> Suspensions:
    clock = EngineClock(WALL_ORIGIN)
    clock.now()
    start = trio.current_time()
    sink = SmtpSink()
    async with trio.open_nursery() as servers:
        mail = in_memory(sink, servers)
        async with open_engine(data_dir, clock=clock, threads=False, mail=mail) as engine:
            q1 = await engine.issue_ready_suspend(suspend(reason="mx maintenance"), issued_by="ops")
            first = await engine.inject([message(f"r{n}@example.com") for n in range(3)])
            await engine.wait_until(lambda: held(engine) == 3)
            await trio.sleep_until(start + 10)
            assert await engine.cancel_ready_suspend(q1, cancelled_by="alice")
            await engine.wait_until(lambda: engine.statistics().delivered_total == 3)
            await trio.sleep_until(start + 20)
            q2 = await engine.issue_ready_suspend(suspend(60, "short window"), issued_by="bob")
            [late] = await engine.inject([message("late@example.com")])
            await engine.wait_until(lambda: held(engine) == 1)
            await trio.sleep_until(start + 100)  # q2 expired at 80 s: late is delivered
            await engine.wait_until(lambda: engine.statistics().delivered_total == 4)
            await engine.wait_idle()
        servers.cancel_scope.cancel()
    return Suspensions(data_dir, q1, q2, first, late)


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Suspensions:
    data_dir = tmp_path_factory.mktemp("ready") / "data"
    return trio.run(_live, data_dir, clock=trio.testing.MockClock(autojump_threshold=0))


def run(*args: str) -> Any:
    result = CliRunner().invoke(audit, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def report(log: Suspensions, *args: str) -> Any:
    return orjson.loads(run("--data-dir", str(log.data_dir), *args, "--format", "json").stdout)


def wall(seconds: float) -> str:
    return format_rfc3339(WALL_ORIGIN + round(seconds * SECOND))


def test_the_timeline_shows_who_suspended_and_lifted_which_ready_queue(log: Suspensions) -> None:
    actions = [a for a in report(log)["actions"] if a["kind"] == "suspend-ready-q"]
    got = [(a["action"], a["rule"], a["principal"], a["origin"], a["status"]) for a in actions]
    assert got == [
        ("issued", log.q1, "ops", None, "cancelled"),
        ("cancelled", log.q1, "alice", None, "cancelled"),
        ("issued", log.q2, "bob", None, "expired"),
        ("expired", log.q2, None, None, "expired"),
    ]
    q1, _, q2, expiry = actions
    assert (q1["ready_queue"], q1["criteria"]) == (READY_QUEUE, None)
    assert q1["criteria_text"] == f"ready_queue={READY_QUEUE}"
    assert (q1["reason"], q1["expires"]) == ("mx maintenance", wall(3600))
    assert (q1["held"], q1["total_held"], q1["released"]) == ({"example.com": 3}, 3, 3)
    assert (q1["ended_by"], q1["ended_at"]) == ("alice", wall(10))
    assert (q2["reason"], q2["expires"]) == ("short window", wall(80))
    assert (q2["held"], q2["total_held"], q2["released"]) == ({"example.com": 1}, 1, 1)
    assert expiry["time"] == wall(80)  # dated when it stopped holding
    assert (q1["bounced"], q1["total_bounced"]) == ({}, 0)


def test_the_table_and_the_csv_name_the_ready_queue_and_what_was_held(log: Suspensions) -> None:
    table = run("--data-dir", str(log.data_dir)).stdout
    line = next(row for row in table.splitlines() if "suspend-ready-q cancelled" in row)
    assert log.q1 in line
    assert f"ready_queue={READY_QUEUE}" in line
    assert "cancelled by alice" in line
    assert "held 3, released 3" in line
    assert "example.com=3" in line
    assert "4 action(s) on 2 rule(s)" in table
    rows = run("--data-dir", str(log.data_dir), "--format", "csv").stdout.splitlines()
    expired = next(row for row in rows if row.startswith(wall(80)))
    assert f",expired,{log.q2},," in expired
    assert f"ready_queue={READY_QUEUE}" in expired
    assert ",suspend-ready-q,1,example.com=1,1," in expired


def test_rule_and_queue_narrow_to_a_ready_queue_suspension(log: Suspensions) -> None:
    story = report(log, "--rule", log.q2)["actions"]
    assert [(a["action"], a["total_held"], a["released"]) for a in story] == [
        ("issued", 1, 1),
        ("expired", 1, 1),
    ]
    by_ready_queue = report(log, "--queue", READY_QUEUE)["actions"]
    assert {a["rule"] for a in by_ready_queue} == {log.q1, log.q2}
    by_queue = report(log, "--queue", "example.com")["actions"]
    assert {a["rule"] for a in by_queue} == {log.q1, log.q2}
    assert report(log, "--queue", "example.net")["actions"] == []
    table = run("--data-dir", str(log.data_dir), "--rule", log.q1).stdout
    assert "2 action(s) on 1 rule(s)" in table


def test_a_held_messages_story_tells_its_release(log: Suspensions) -> None:
    story = report(log, "--message", log.first[0])
    assert story["status"] == "delivered"
    [release] = story["released"]
    assert release == {
        "seq": release["seq"],
        "time": wall(10),
        "queue": "example.com",
        "suspension": log.q1,
        "end": "cancelled",
        "by": "alice",
        "ready_queue": READY_QUEUE,
    }
    table = run("--data-dir", str(log.data_dir), "--message", log.late).stdout
    rows = [row.split()[2] for row in table.splitlines()[3:] if row.strip()]
    assert rows == ["received", "held", "released", "delivered"]
    assert f"suspension {log.q2} of ready queue {READY_QUEUE} expired: due again" in table


def test_at_lists_the_ready_queue_suspension_live_then(log: Suspensions) -> None:
    [q1] = report(log, "--at", wall(5))["suspensions"]
    assert (q1["id"], q1["kind"], q1["ready_queue"], q1["criteria"]) == (
        log.q1,
        "suspend-ready-q",
        READY_QUEUE,
        None,
    )
    assert (q1["criteria_text"], q1["held"], q1["issued_by"]) == (
        f"ready_queue={READY_QUEUE}",
        {"example.com": 3},
        "ops",
    )
    assert report(log, "--at", wall(15))["suspensions"] == []
    [q2] = report(log, "--at", wall(50), "--queue", READY_QUEUE)["suspensions"]
    assert (q2["id"], q2["total_held"], q2["duration"]) == (log.q2, 1, "30s")
    table = run("--data-dir", str(log.data_dir), "--at", wall(50)).stdout
    assert "Live suspensions: 1" in table
    line = next(row for row in table.splitlines() if row.startswith(log.q2))
    assert f" suspend-ready-q  short window  30s     1     ready_queue={READY_QUEUE}  bob" in line
    csv = run("--data-dir", str(log.data_dir), "--at", wall(50), "--format", "csv").stdout
    assert (
        f"suspend-ready-q,{log.q2},1,ready_queue={READY_QUEUE},short window,30s,bob,example.com=1"
        in csv.splitlines()
    )

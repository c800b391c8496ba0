"""``kumo audit`` tells suspensions: who suspended and lifted what, what each held and
released, and a held message's story; against a log the real engine wrote, in virtual
time (every destination fails to resolve, so held and released mail is attempted at
once and deferred)."""

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
from tests.runtime.harness import WALL_ORIGIN, bounce, message
from tests.runtime.test_delivery import unresolvable

SECOND = 1_000_000_000


@attrs.frozen
class Held:
    data_dir: Path
    s1: str
    s2: str
    com: list[str]
    net: str


async def _live(data_dir: Path) -> Held:
    clock = EngineClock(WALL_ORIGIN)
    clock.now()
    start = trio.current_time()
    mail = unresolvable(20 * SECOND, 3600 * SECOND)
    async with open_engine(data_dir, clock=clock, threads=False, mail=mail) as engine:
        s1 = await engine.issue_suspend(
            bounce("their MX is down", domain="example.com", duration=3600 * SECOND),
            issued_by="ops",
        )
        com = await engine.inject([message(f"r{n}@example.com") for n in range(3)])
        [net] = await engine.inject([message("x@example.net")])  # fails, due again at 20 s
        await engine.wait_idle()
        await trio.sleep_until(start + 5)
        s2 = await engine.issue_suspend(
            bounce("net window", domain="example.net", duration=60 * SECOND), issued_by="bob"
        )
        await trio.sleep_until(start + 10)
        assert await engine.cancel_suspend(s1, cancelled_by="alice")
        await engine.wait_idle()
        await trio.sleep_until(start + 100)  # s2 expired at 65 s
        await engine.wait_idle()
    return Held(data_dir, s1, s2, com, net)


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Held:
    data_dir = tmp_path_factory.mktemp("held") / "data"
    return trio.run(_live, data_dir, clock=trio.testing.MockClock(autojump_threshold=0))


def run(*args: str) -> Any:
    result = CliRunner().invoke(audit, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def report(held: Held, *args: str) -> Any:
    return orjson.loads(run("--data-dir", str(held.data_dir), *args, "--format", "json").stdout)


def wall(seconds: float) -> str:
    return format_rfc3339(WALL_ORIGIN + round(seconds * SECOND))


def test_the_timeline_shows_who_suspended_and_lifted_what_and_what_each_held(
    held: Held,
) -> None:
    actions = [a for a in report(held)["actions"] if a["kind"] == "suspend"]
    got = [(a["action"], a["rule"], a["principal"], a["status"]) for a in actions]
    assert got == [
        ("issued", held.s1, "ops", "cancelled"),
        ("issued", held.s2, "bob", "expired"),
        ("cancelled", held.s1, "alice", "cancelled"),
        ("expired", held.s2, None, "expired"),
    ]
    s1, s2 = actions[0], actions[1]
    assert (s1["held"], s1["total_held"], s1["released"]) == ({"example.com": 3}, 3, 3)
    assert (s2["held"], s2["total_held"], s2["released"]) == ({"example.net": 1}, 1, 1)
    assert (s1["bounced"], s1["total_bounced"]) == ({}, 0)
    assert s1["reason"] == "their MX is down"
    assert s1["criteria_text"] == "domain=example.com"
    assert s1["expires"] == wall(3600)
    assert (s1["ended_by"], s1["ended_at"]) == ("alice", wall(10))
    assert actions[3]["time"] == wall(65)  # an expiry is dated when it stopped holding


def test_the_table_names_suspension_actions_and_what_they_held(held: Held) -> None:
    table = run("--data-dir", str(held.data_dir)).stdout
    line = next(row for row in table.splitlines() if "suspend cancelled" in row)
    assert held.s1 in line
    assert "cancelled by alice" in line
    assert "held 3, released 3" in line
    assert "example.com=3" in line
    issued = next(row for row in table.splitlines() if "suspend issued" in row and held.s2 in row)
    assert "held 1, released 1" in issued
    assert "4 action(s) on 2 rule(s)" in table


def test_rule_tells_one_suspensions_story_and_queue_narrows_it(held: Held) -> None:
    story = report(held, "--rule", held.s2)["actions"]
    assert [(a["action"], a["total_held"], a["released"]) for a in story] == [
        ("issued", 1, 1),
        ("expired", 1, 1),
    ]
    narrowed = report(held, "--queue", "example.net")["actions"]
    assert {a["rule"] for a in narrowed} == {held.s2}
    csv = run("--data-dir", str(held.data_dir), "--format", "csv").stdout
    assert csv.splitlines()[0].endswith(",kind,total_held,held,released,origin")


def test_a_held_message_is_held_then_released(held: Held) -> None:
    story = report(held, "--message", held.com[0])
    assert story["status"] == "queued"
    [release] = story["released"]
    assert release == {
        "seq": release["seq"],
        "time": wall(10),
        "queue": "example.com",
        "suspension": held.s1,
        "end": "cancelled",
        "by": "alice",
        "ready_queue": None,
    }
    steps = [step["step"] for step in story["attempts"]]
    assert steps[0] == "held"
    table = run("--data-dir", str(held.data_dir), "--message", held.com[0]).stdout
    rows = [row.split()[2] for row in table.splitlines()[3:] if row.strip()]
    assert rows[:3] == ["received", "held", "released"]
    assert f"suspension {held.s1} cancelled by alice: due again at once" in table

    net = report(held, "--message", held.net)
    assert [r["end"] for r in net["released"]] == ["expired"]
    assert net["released"][0]["time"] == wall(65)
    assert [step["step"] for step in net["attempts"]][:2] == ["deferred", "held"]


def test_at_lists_the_suspensions_live_then_with_what_each_held(held: Held) -> None:
    early = report(held, "--at", wall(7))
    assert [(s["id"], s["kind"], s["held"], s["total_held"]) for s in early["suspensions"]] == [
        (held.s1, "suspend", {"example.com": 3}, 3),
        (held.s2, "suspend", {}, 0),  # example.net's message is not due again before 20 s
    ]
    s1 = early["suspensions"][0]
    assert s1 == {
        "id": held.s1,
        "kind": "suspend",
        "criteria": s1["criteria"],
        "criteria_text": "domain=example.com",
        "ready_queue": None,
        "reason": "their MX is down",
        "duration": "59m 53s",
        "expires": wall(3600),
        "issued_at": s1["issued_at"],
        "issued_by": "ops",
        "origin": None,
        "held": {"example.com": 3},
        "total_held": 3,
    }
    assert s1["criteria"]["domain"] == "example.com"
    late = report(held, "--at", wall(30))["suspensions"]
    assert [(s["id"], s["held"]) for s in late] == [(held.s2, {"example.net": 1})]
    assert report(held, "--at", wall(70))["suspensions"] == []
    narrowed = report(held, "--at", wall(7), "--queue", "example.com")["suspensions"]
    assert [s["id"] for s in narrowed] == [held.s1]

    table = run("--data-dir", str(held.data_dir), "--at", wall(7)).stdout
    assert "Live suspensions: 2" in table
    line = next(row for row in table.splitlines() if row.startswith(held.s1))
    assert line.split() == [
        held.s1,
        "suspend",
        "their",
        "MX",
        "is",
        "down",
        "59m",
        "53s",
        "3",
        "domain=example.com",
        "ops",
        "example.com=3",
    ]
    rows = run("--data-dir", str(held.data_dir), "--at", wall(7), "--format", "csv").stdout
    assert f"suspend,{held.s1},3,domain=example.com,their MX is down,59m 53s,ops,example.com=3" in (
        rows.splitlines()
    )

"""Rebind end to end in one process (SPEC 9; docs/operations.md, "Rebinding messages"):
messages pile up for a destination that refuses them, a rebind moves them to another
routing domain whose destination accepts them, and every move is in the log, the
delivery log and the counters; ``kumo replay --verify`` finds nothing wrong after.

The cases that need no real destination run in virtual time against a destination
that cannot be resolved (its attempts fail transiently at once).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import orjson
import trio
import trio.testing
from click.testing import CliRunner

from kumo.cli.audit import audit
from kumo.model.criteria import Criteria
from kumo.model.events import Rebound
from kumo.model.requests import RebindRequest
from kumo.model.settings import EngineSettings
from kumo.runtime.delivery import DestinationSettings, MailSettings
from kumo.runtime.engine import Engine, open_engine
from kumo.runtime.mx import MxResolver
from tests.live_server import events_after
from tests.postfix import postfix_smtp_sink, require_smtp_sink
from tests.runtime.harness import bounce, log_records, message
from tests.runtime.test_delivery import (
    DEADLINE,
    SECOND,
    destination,
    engine_at,
    types,
    unresolvable,
    verified,
)


def rebind(
    reason: str = "move",
    data: Mapping[str, str] | None = None,
    *,
    always_flush: bool = False,
    suppress_logging: bool = False,
    **criteria: str,
) -> RebindRequest:
    return RebindRequest(
        Criteria(**criteria),
        reason,
        {} if data is None else data,
        always_flush=always_flush,
        suppress_logging=suppress_logging,
    )


def rebounds(data_dir: Path) -> list[Rebound]:
    return [c.event for c in events_after(data_dir, 0) if isinstance(c.event, Rebound)]


def two_sinks(refusing: int, accepting: int) -> MailSettings:
    """``relay.example`` goes to the accepting sink, every other domain to the refusing one."""
    refused: DestinationSettings = destination([f"127.0.0.1:{refusing}"])
    accepted: DestinationSettings = destination([f"127.0.0.1:{accepting}"])
    return MailSettings(
        lambda domain: accepted if domain == "relay.example" else refused, MxResolver()
    )


async def test_a_rebind_moves_deferred_mail_to_a_routing_domain_that_accepts_it(
    tmp_path: Path,
) -> None:
    require_smtp_sink()
    data_dir = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with (
            postfix_smtp_sink("-r", "rcpt") as (refusing, _),
            postfix_smtp_sink() as (accepting, dumps),
            engine_at(data_dir, two_sinks(refusing, accepting)) as engine,
        ):
            ids = await engine.inject([message(f"r{n}@example.com") for n in range(20)])
            await engine.wait_until(lambda: engine.statistics().transient_failures_total == 20)
            await engine.wait_idle()
            assert [(s.queue, s.waiting) for s in engine.actor_statistics()] == [
                ("example.com", 20)
            ]
            await engine.rebind(
                rebind("destination refuses", {"routing_domain": "relay.example"}),
                issued_by="ops",
            )
            await engine.wait_until(lambda: engine.statistics().delivered_total == 20)
            await engine.wait_idle()
            statistics = engine.statistics()
            assert (statistics.rebound_total, statistics.queued_total) == (20, 0)
            assert engine.projection().queue_counts == {}
            dumped = list(await trio.Path(dumps).iterdir())
    assert len(dumped) == 20
    assert types(data_dir) == Counter(
        {"Reception": 20, "TransientFailure": 20, "AdminRebind": 20, "Delivery": 20}
    )
    records = log_records(data_dir)
    rebinds = [r for r in records if r["type"] == "AdminRebind"]
    assert sorted(str(r["id"]) for r in rebinds) == sorted(ids)
    record = rebinds[0]
    assert {key: record[key] for key in ("queue", "site", "num_attempts", "peer_address")} == {
        "queue": "example.com!relay.example",
        "site": "",
        "num_attempts": 1,
        "peer_address": None,
    }
    assert record["response"] == {
        "code": 250,
        "enhanced_code": None,
        "content": "Rebound from example.com to example.com!relay.example: destination refuses",
        "command": None,
    }
    deliveries = [r for r in records if r["type"] == "Delivery"]
    assert {r["queue"] for r in deliveries} == {"example.com!relay.example"}
    # The attempt that failed is kept: the delivery is the second attempt.
    assert {r["num_attempts"] for r in deliveries} == {1}
    [moved] = rebounds(data_dir)
    assert (moved.queue, moved.to_queue, len(moved.messages)) == (
        "example.com",
        "example.com!relay.example",
        20,
    )
    verified(data_dir)


async def test_a_rebind_into_a_queue_under_a_live_rule_bounces_there(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data_dir = tmp_path / "data"
    mail = unresolvable(60 * SECOND, 3600 * SECOND)
    async with engine_at(data_dir, mail, threads=False) as engine:
        await engine.inject([message(f"r{n}@example.com") for n in range(5)])
        await engine.wait_until(lambda: engine.statistics().transient_failures_total == 5)
        await engine.wait_idle()
        rule = await engine.issue_bounce(
            bounce("closed", campaign="spring", duration=3600 * SECOND), issued_by="ops"
        )
        await engine.rebind(rebind("to spring", {"campaign": "spring"}), issued_by="ops")
        await engine.wait_until(lambda: engine.statistics().bounced_total == 5)
        await engine.wait_idle()
        [view] = engine.list_bounces()
        assert (view.id, dict(view.bounced)) == (rule, {"spring:@example.com": 5})
        assert engine.statistics().rebound_total == 5
        assert engine.queued_messages() == {}
    assert types(data_dir) == Counter(
        {"Reception": 5, "TransientFailure": 5, "AdminRebind": 5, "AdminBounce": 5}
    )
    verified(data_dir)


async def test_a_rebind_into_a_suspended_queue_is_held_there(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data_dir = tmp_path / "data"
    mail = unresolvable(60 * SECOND, 3600 * SECOND)
    async with engine_at(data_dir, mail, threads=False) as engine:
        await engine.inject([message(f"r{n}@example.com") for n in range(3)])
        await engine.wait_until(lambda: engine.statistics().transient_failures_total == 3)
        await engine.wait_idle()
        await engine.issue_suspend(
            bounce("hold", routing_domain="relay.example", duration=600 * SECOND), issued_by="ops"
        )
        await engine.rebind(
            rebind("reroute", {"routing_domain": "relay.example"}, suppress_logging=True),
            issued_by="ops",
        )
        await engine.wait_until(lambda: engine.statistics().rebound_total == 3)
        await engine.wait_idle()
    records = [r for r in log_records(data_dir) if r["type"] == "TransientFailure"][3:6]
    # Held at once by the suspension (site: the queue), the attempt made kept.
    assert [r["site"] for r in records] == ["example.com!relay.example"] * 3
    assert [r["num_attempts"] for r in records] == [1] * 3
    # suppress_logging: no AdminRebind records.
    assert types(data_dir)["AdminRebind"] == 0
    verified(data_dir)


async def test_a_rebind_that_changes_no_queue_moves_nothing_and_flushes_on_request(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data_dir = tmp_path / "data"
    mail = unresolvable(600 * SECOND, 7200 * SECOND)
    async with engine_at(data_dir, mail, threads=False) as engine:
        await engine.inject([message(f"r{n}@example.com") for n in range(4)])
        await engine.wait_until(lambda: engine.statistics().transient_failures_total == 4)
        await engine.wait_idle()
        # The same name: nothing moves, the due times stay (no attempt now).
        await engine.rebind(rebind("noop", {"queue": "example.com"}), issued_by="ops")
        await engine.wait_idle()
        assert engine.statistics().transient_failures_total == 4
        assert [s.waiting for s in engine.actor_statistics()] == [4]
        # With always_flush they are due now: one more attempt each, at once.
        await engine.rebind(rebind("flush", {}, always_flush=True), issued_by="ops")
        await engine.wait_until(lambda: engine.statistics().transient_failures_total == 8)
        await engine.wait_idle()
        assert engine.statistics().rebound_total == 0
    assert types(data_dir)["AdminRebind"] == 0
    verified(data_dir)


async def test_rebound_messages_stay_in_their_new_queue_across_restarts_and_snapshots(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    settings = EngineSettings(snapshot_every=1)

    async def queued(engine: Engine) -> dict[str, list[str]]:
        await engine.wait_idle()
        return {name: sorted(ids) for name, ids in engine.queued_messages().items() if ids}

    with trio.fail_after(DEADLINE):
        async with open_engine(data_dir, mail=None, settings=settings) as engine:
            ids = await engine.inject([message(f"r{n}@example.com") for n in range(10)])
            await engine.inject([message("x@example.net")])
            await engine.rebind(
                rebind("tenant moves", {"tenant": "t1"}, domain="example.com"), issued_by="ops"
            )
            await engine.wait_until(lambda: engine.statistics().rebound_total == 10)
            before = await queued(engine)
            assert before["t1@example.com"] == sorted(ids)
            assert "example.com" not in before
            await engine.wait_snapshot(engine.projection().last_seq)
        for _ in range(2):  # from the snapshot, then from the log after it
            async with open_engine(data_dir, mail=None, settings=settings) as engine:
                assert await queued(engine) == before
                assert engine.queue_counts() == {"t1@example.com": 10, "example.net": 1}
                assert engine.statistics().rebound_total == 10
                found = await engine.inspect_message(ids[0], want_body=False)
                assert found is not None
                assert found.queue == "t1@example.com"
            settings = EngineSettings(snapshot_every=0)
    verified(data_dir)


async def test_audit_shows_who_rebound_what_and_each_messages_move(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with open_engine(data_dir, mail=None) as engine:
            ids = await engine.inject([message(f"r{n}@example.com") for n in range(3)])
            rebind_id = await engine.rebind(
                rebind("reroute", {"routing_domain": "relay.example"}, domain="example.com"),
                issued_by="alice",
            )
            await engine.wait_until(lambda: engine.statistics().rebound_total == 3)
            await engine.wait_idle()
    result = CliRunner().invoke(audit, ["--data-dir", str(data_dir), "--format", "json"])
    assert result.exit_code == 0, result.output
    [shown] = orjson.loads(result.stdout)["rebinds"]
    assert {key: shown[key] for key in ("rebind", "principal", "data", "reason")} == {
        "rebind": rebind_id,
        "principal": "alice",
        "data": {"routing_domain": "relay.example"},
        "reason": "reroute",
    }
    assert shown["moved"] == [
        {"from": "example.com", "to": "example.com!relay.example", "messages": 3}
    ]
    table = CliRunner().invoke(audit, ["--data-dir", str(data_dir)])
    assert "example.com -> example.com!relay.example: 3" in table.stdout
    result = CliRunner().invoke(
        audit, ["--data-dir", str(data_dir), "--message", ids[0], "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    story = orjson.loads(result.stdout)
    assert story["status"] == "queued"
    [moved] = story["rebound"]
    assert moved["queue"] == "example.com!relay.example"
    assert moved["detail"] == (
        f"from example.com by rebind {rebind_id} (domain=example.com; "
        "routing_domain=relay.example), issued by alice: reroute"
    )
    table = CliRunner().invoke(audit, ["--data-dir", str(data_dir), "--message", ids[0]])
    assert "example.com!relay.example  still waiting in its queue" in table.stdout

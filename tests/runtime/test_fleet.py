"""Fleet mode end to end: three in-process engines, each with its own data directory,
sharing their admin actions (bounce rules, suspensions, ready-queue suspensions,
rebinds) through a real ``redis-server`` on loopback (docs/fleet.md).

The engines run on the real clock (Redis answers in real time); every wait is on an
event of the engines (:meth:`Engine.wait_rule`, :meth:`Engine.wait_idle`), bounded by
``trio.fail_after``, never a sleep.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Final

import attrs
import orjson
import pytest
import trio
from click.testing import CliRunner

from kumo.cli.audit import audit
from kumo.model.criteria import Criteria
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.events import RebindIssued
from kumo.model.fleet import FleetAction, FleetSettings, StreamEntry, encode_entry, fleet_event_id
from kumo.model.requests import ReadySuspendRequest, RebindRequest
from kumo.runtime.delivery import MailSettings
from kumo.runtime.engine import Engine, open_engine
from kumo.runtime.fleet import connect_coredis
from kumo.store.data_dir import open_event_log
from tests.postfix import postfix_smtp_sink, require_smtp_sink
from tests.redis_server import RedisServer, redis_server
from tests.runtime.harness import bounce, message
from tests.runtime.test_delivery import to_sink

DEADLINE: Final = 30.0
NODES: Final = ("a", "b", "c")


def fleet_settings(server: RedisServer) -> FleetSettings:
    # Short waits: a test sees a lost Redis noticed, and retried, within a second.
    return FleetSettings(
        server.url, block=0.2, retry_initial=0.02, retry_max=0.2, counters_interval=0.02
    )


@asynccontextmanager
async def node(
    path: Path, server: RedisServer, mail: MailSettings | None = None
) -> AsyncIterator[Engine]:
    async with open_engine(path, fleet=fleet_settings(server), mail=mail) as engine:
        yield engine


@asynccontextmanager
async def fleet(
    root: Path, server: RedisServer, mail: MailSettings | None = None
) -> AsyncIterator[dict[str, Engine]]:
    async with AsyncExitStack() as stack:
        yield {
            name: await stack.enter_async_context(node(root / name, server, mail)) for name in NODES
        }


def rule_actions(path: Path) -> Iterator[FleetAction]:
    """The issues and cancels (of every kind) a closed node's log holds, in log order."""
    store = open_event_log(path, readonly=True)
    try:
        for batch in store.scan():
            for committed in batch:
                if isinstance(committed.event, FleetAction):
                    yield committed.event
    finally:
        store.close()


def assert_each_action_once(path: Path) -> None:
    counts = Counter((type(event).__name__, fleet_event_id(event)) for event in rule_actions(path))
    assert [action for action, count in counts.items() if count > 1] == []


def listed(engine: Engine) -> list[str]:
    return [view.id for view in engine.list_bounces()]


async def test_a_rule_issued_on_one_node_bounces_on_every_node_and_a_cancel_anywhere_ends_it(
    tmp_path: Path,
) -> None:
    with trio.fail_after(DEADLINE):
        async with redis_server(tmp_path / "redis") as server, fleet(tmp_path, server) as nodes:
            a, b, c = (nodes[name] for name in NODES)
            for engine in (b, c):
                await engine.inject([message(f"u{i}@example.com") for i in range(3)])
            await a.inject([message("keep@other.org")])

            rule = await a.issue_bounce(bounce("fleet", domain="example.com"), issued_by="ops")
            for engine in (b, c):
                await engine.wait_rule(rule)
                await engine.wait_idle()
                assert listed(engine) == [rule]
                (view,) = engine.list_bounces()
                assert view.issued_by == "ops"
                assert view.total_bounced == 3
                assert engine.queue_counts() == {}
            assert listed(a) == [rule]
            assert a.queue_counts() == {"other.org": 1}
            # The rule keeps catching arrivals on the nodes it came to.
            await b.inject([message("late@example.com")])
            await b.wait_idle()
            assert b.list_bounces()[0].total_bounced == 4

            # Cancelled on C, with the same id: gone everywhere.
            assert await c.cancel_bounce(rule, cancelled_by="oncall")
            for engine in (a, b):
                await engine.wait_rule(rule, ended=True)
                assert listed(engine) == []
            assert listed(c) == []
            assert not await a.cancel_bounce(rule, cancelled_by="again")

            fleet_a = a.statistics().fleet
            assert fleet_a.enabled == 1
            assert fleet_a.published == 1
            assert fleet_a.applied == 1
            assert b.statistics().fleet.applied == 2
            b_issue = b.projection().rules.rules[rule]
            assert b_issue.origin == a.node_id
            assert b_issue.ended_origin == c.node_id
            assert b_issue.ended_by == "oncall"
            a_rule = a.projection().rules.rules[rule]
            assert (a_rule.origin, a_rule.ended_origin) == ("", c.node_id)
            a_id, c_id = a.node_id, c.node_id
        for name in NODES:
            assert_each_action_once(tmp_path / name)
        # `kumo audit` on B names the node each action came from.
        table = CliRunner().invoke(audit, ["--data-dir", str(tmp_path / "b"), "--rule", rule])
        assert table.exit_code == 0, table.output
        assert f"ops ({a_id})" in table.stdout
        assert f"oncall ({c_id})" in table.stdout
        report = CliRunner().invoke(
            audit, ["--data-dir", str(tmp_path / "b"), "--rule", rule, "--format", "json"]
        )
        actions = orjson.loads(report.stdout)["actions"]
        assert [(x["action"], x["origin"]) for x in actions] == [
            ("issued", a_id),
            ("cancelled", c_id),
        ]
        local = CliRunner().invoke(
            audit, ["--data-dir", str(tmp_path / "a"), "--rule", rule, "--format", "json"]
        )
        assert [x["origin"] for x in orjson.loads(local.stdout)["actions"]] == [None, c_id]


def held(engine: Engine) -> int:
    return sum(actor.waiting for actor in engine.actor_statistics())


def held_and_delivered(engine: Engine, waiting: int, delivered: int) -> bool:
    return held(engine) == waiting and engine.statistics().delivered_total == delivered


async def test_a_suspension_issued_on_one_node_holds_mail_on_every_node_until_lifted_anywhere(
    tmp_path: Path,
) -> None:
    require_smtp_sink()
    with trio.fail_after(DEADLINE):
        async with (
            redis_server(tmp_path / "redis") as server,
            postfix_smtp_sink() as (port, dumps),
            fleet(tmp_path, server, to_sink(port)) as nodes,
        ):
            a, b, c = (nodes[name] for name in NODES)
            suspension = await a.issue_suspend(
                bounce("maintenance", domain="example.com", duration=3600 * NANOS_PER_SECOND),
                issued_by="ops",
            )
            for engine in (b, c):
                await engine.wait_rule(suspension, kind="suspend")
                [view] = engine.list_suspends()
                assert (view.id, view.reason, view.issued_by) == (suspension, "maintenance", "ops")
                await engine.inject([message(f"r{n}@example.com") for n in range(4)])
                await engine.inject([message("other@example.net")])
                await engine.wait_until(functools.partial(held_and_delivered, engine, 4, 1))
            assert b.projection().suspends.rules[suspension].origin == a.node_id

            # Lifted on C, with the same id: released everywhere.
            assert await c.cancel_suspend(suspension, cancelled_by="oncall")
            await a.wait_rule(suspension, ended=True, kind="suspend")
            await b.wait_rule(suspension, ended=True, kind="suspend")
            for engine in (a, b, c):
                assert engine.list_suspends() == []
            for engine in (b, c):
                await engine.wait_until(functools.partial(held_and_delivered, engine, 0, 5))
                assert held(engine) == 0
            assert not await b.cancel_suspend(suspension, cancelled_by="again")
            lifted = b.projection().suspends.rules[suspension]
            assert (lifted.ended_origin, lifted.ended_by) == (c.node_id, "oncall")
            assert a.projection().suspends.rules[suspension].ended_origin == c.node_id
            assert len(list(await trio.Path(dumps).iterdir())) == 10
        for name in NODES:
            assert_each_action_once(tmp_path / name)


async def test_scope_fleet_sums_each_rule_s_counters_over_the_nodes(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with redis_server(tmp_path / "redis") as server, fleet(tmp_path, server) as nodes:
            a, b, c = (nodes[name] for name in NODES)
            for engine, count in ((a, 1), (b, 3), (c, 2)):
                await engine.inject([message(f"u{i}@example.com") for i in range(count)])
            rule = await a.issue_bounce(bounce("fleet", domain="example.com"), issued_by="ops")
            for engine in (a, b, c):
                await engine.wait_rule(rule)
                await engine.wait_idle()
                await engine.wait_fleet_counters()
            for engine in (a, b, c):
                figures = await engine.fleet_bounces()
                assert (figures.scope, figures.nodes) == ("fleet", 3)
                [view] = figures.views
                assert (view.id, view.total_bounced, dict(view.bounced)) == (
                    rule,
                    6,
                    {"example.com": 6},
                )
                assert engine.list_bounces()[0].total_bounced < 6  # GET alone: local
            assert b.statistics().fleet.counters_published >= 1

            await server.stop()
            figures = await a.fleet_bounces()
            assert (figures.scope, figures.nodes) == ("unavailable", 1)
            assert figures.views[0].total_bounced == 1


async def test_scope_fleet_without_a_fleet_is_the_node_s_figures(tmp_path: Path) -> None:
    async with open_engine(tmp_path) as engine:
        await engine.inject([message("u@example.com")])
        await engine.issue_bounce(bounce("alone", domain="example.com"), issued_by="ops")
        await engine.wait_idle()
        await engine.wait_fleet_counters()
        figures = await engine.fleet_bounces()
    assert (figures.scope, figures.nodes, figures.views[0].total_bounced) == ("off", 1, 1)


async def test_a_node_that_was_down_converges_when_it_starts(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with redis_server(tmp_path / "redis") as server:
            async with node(tmp_path / "b", server) as b:
                await b.inject([message("held@example.com")])
                b_id = b.node_id
            async with node(tmp_path / "a", server) as a, node(tmp_path / "c", server) as c:
                gone = await a.issue_bounce(bounce("gone", domain="example.com"), issued_by="ops")
                await c.wait_rule(gone)
                assert await c.cancel_bounce(gone, cancelled_by="oncall")
                kept = await c.issue_bounce(bounce("kept", campaign="spring"), issued_by="ops")
                await a.wait_rule(gone, ended=True)
                await a.wait_rule(kept)
                # B starts again (same data directory, same node id) and catches up.
                async with node(tmp_path / "b", server) as b:
                    assert b.node_id == b_id
                    await b.wait_rule(kept)
                    assert listed(b) == listed(a) == listed(c) == [kept]
                    await b.wait_idle()
                    # The rule that ended while B was down bounced nothing there.
                    assert b.queue_counts() == {"example.com": 1}
                    # It is known there as ended before B heard of it (its place in
                    # the fleet's order of equal rules), and it counts nothing.
                    ended_there = b.projection().rules.rules[gone]
                    assert ended_there.ended_on_arrival
                    assert (ended_there.end, ended_there.total_bounced) == ("cancelled", 0)
                    assert b.statistics().fleet.skipped_ended == 2
        for name in NODES:
            assert_each_action_once(tmp_path / name)


async def test_a_rule_issued_while_redis_is_down_reaches_every_node_once_it_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kumo.fleet")
    with trio.fail_after(DEADLINE):
        async with redis_server(tmp_path / "redis") as server, fleet(tmp_path, server) as nodes:
            a, b, c = (nodes[name] for name in NODES)
            before = await b.issue_bounce(bounce("before", campaign="x"), issued_by="ops")
            for engine in (a, c):
                await engine.wait_rule(before)

            await server.stop()
            # A works on alone: the rule is live there at once, owed to the stream.
            during = await a.issue_bounce(bounce("during", domain="example.com"), issued_by="ops")
            assert listed(a) == [before, during]
            await c.inject([message("u@example.com")])

            await server.start()  # empty: no persistence
            for engine in (b, c):
                await engine.wait_rule(during)
            await c.wait_idle()
            assert c.queue_counts() == {}
            for engine in (a, b, c):
                assert listed(engine) == [before, during]
            # The new stream holds what still matters, so a node that joins now
            # learns both rules too.
            async with node(tmp_path / "d", server) as d:
                await d.wait_rule(before)
                await d.wait_rule(during)
                assert listed(d) == [before, during]
            assert any(
                "failed" in record.getMessage() and "working locally" in record.getMessage()
                for record in caplog.records
            )
            assert sum(e.statistics().fleet.redis_failures for e in (a, b, c)) > 0
        for name in (*NODES, "d"):
            assert_each_action_once(tmp_path / name)


async def test_statistics_of_a_node_without_a_fleet_are_zero(tmp_path: Path) -> None:
    async with open_engine(tmp_path) as engine:
        statistics = engine.statistics().fleet
    assert attrs.asdict(statistics) == {
        field.name: ("" if field.name == "stream" else 0)
        for field in attrs.fields(type(statistics))
    }


def lists_ready_suspends(engine: Engine, expected: list[str]) -> bool:
    return [view.id for view in engine.list_ready_suspends()] == expected


async def test_a_ready_queue_suspension_issued_on_one_node_holds_on_every_node_until_lifted(
    tmp_path: Path,
) -> None:
    require_smtp_sink()
    with trio.fail_after(DEADLINE):
        async with (
            redis_server(tmp_path / "redis") as server,
            postfix_smtp_sink() as (port, dumps),
            fleet(tmp_path, server, to_sink(port)) as nodes,
        ):
            a, b, c = (nodes[name] for name in NODES)
            ready_queue = f"unspecified->mx_list:127.0.0.1:{port}@smtp_client"
            suspension = await a.issue_ready_suspend(
                ReadySuspendRequest(
                    name=ready_queue, reason="maintenance", duration=3600 * NANOS_PER_SECOND
                ),
                issued_by="ops",
            )
            for engine in (a, b, c):
                await engine.wait_until(
                    functools.partial(lists_ready_suspends, engine, [suspension])
                )
                [view] = engine.list_ready_suspends()
                assert (view.name, view.reason, view.issued_by) == (
                    ready_queue,
                    "maintenance",
                    "ops",
                )
                await engine.inject([message(f"r{n}@example.com") for n in range(3)])
                await engine.wait_until(functools.partial(held_and_delivered, engine, 3, 0))
            assert b.projection().ready_suspends.rules[suspension].origin == a.node_id
            assert list(await trio.Path(dumps).iterdir()) == []

            # Lifted on C, with the same id: released everywhere.
            assert await c.cancel_ready_suspend(suspension, cancelled_by="oncall")
            for engine in (a, b, c):
                await engine.wait_until(functools.partial(lists_ready_suspends, engine, []))
                await engine.wait_until(functools.partial(held_and_delivered, engine, 0, 3))
            assert not await b.cancel_ready_suspend(suspension, cancelled_by="again")
            lifted = b.projection().ready_suspends.rules[suspension]
            assert (lifted.ended_origin, lifted.ended_by) == (c.node_id, "oncall")
            assert a.projection().ready_suspends.rules[suspension].ended_origin == c.node_id
            assert len(list(await trio.Path(dumps).iterdir())) == 9
        for name in NODES:
            assert_each_action_once(tmp_path / name)


def rebound(engine: Engine, count: int) -> bool:
    return engine.statistics().rebound_total == count


def moving(domain: str) -> RebindRequest:
    return RebindRequest(Criteria(domain=domain), "tenant moves", {"tenant": "t1"})


async def test_a_rebind_issued_on_one_node_moves_the_mail_of_every_node_once(
    tmp_path: Path,
) -> None:
    with trio.fail_after(DEADLINE):
        # Persisted: a restart of Redis keeps the stream (a new epoch is the other test).
        async with (
            redis_server(tmp_path / "redis", persist=True) as server,
            node(tmp_path / "b", server) as b,
            node(tmp_path / "c", server) as c,
        ):
            async with node(tmp_path / "a", server) as a:
                await a.inject([message(f"a{n}@example.com") for n in range(3)])
                await a.inject([message("keep@example.net")])
                await c.inject([message(f"c{n}@example.com") for n in range(2)])
                first = await b.rebind(moving("example.com"), issued_by="ops")
                await a.wait_until(functools.partial(rebound, a, 3))
                await c.wait_until(functools.partial(rebound, c, 2))
                for engine in (a, c):
                    await engine.wait_idle()
                assert a.queue_counts() == {"t1@example.com": 3, "example.net": 1}
                assert c.queue_counts() == {"t1@example.com": 2}
                assert a.projection().rebinds[first].event.origin == b.node_id
                assert b.statistics().rebound_total == 0  # nothing matched on B
                b_id = b.node_id

            # A restarts; Redis restarts (keeping the stream); the stream then holds
            # the rebind a second time (a publisher that crashed after its XADD).
            await server.stop()
            await server.start()
            entry = StreamEntry.of(b.projection().rebinds[first].event, b_id)
            async with connect_coredis(fleet_settings(server)) as redis:
                await redis.xadd(fleet_settings(server).stream, encode_entry(entry))
            async with node(tmp_path / "a", server) as a:
                await a.inject([message("late@example.com")])
                # A marker after the copy in the stream: once A and C have it, they
                # have read the copy too.
                marker = await b.issue_bounce(bounce("marker", campaign="m"), issued_by="ops")
                for engine in (a, c):
                    await engine.wait_rule(marker)
                    await engine.wait_idle()
                # Nothing moved twice; mail that came after the rebind stays put.
                assert a.statistics().rebound_total == 3
                assert c.statistics().rebound_total == 2
                assert a.queue_counts() == {
                    "t1@example.com": 3,
                    "example.net": 1,
                    "example.com": 1,
                }
                assert c.statistics().fleet.skipped_applied >= 1

                # Redis loses the stream while B asks a second rebind: B still owes
                # it, and publishes it to the new stream (old rebinds are not).
                await server.stop()
                second = await b.rebind(moving("example.com"), issued_by="ops")
                await server.start()
                await a.wait_until(functools.partial(rebound, a, 4))
                await a.wait_idle()
                assert a.queue_counts() == {"t1@example.com": 4, "example.net": 1}
                await c.wait_until(lambda: second in c.projection().rebinds)
                await c.wait_idle()
                assert c.statistics().rebound_total == 2  # nothing left to move on C
        for name in NODES:
            assert_each_action_once(tmp_path / name)
            rebinds = [
                e.rebind_id for e in rule_actions(tmp_path / name) if type(e) is RebindIssued
            ]
            assert rebinds == [first, second]
        report = CliRunner().invoke(
            audit, ["--data-dir", str(tmp_path / "a"), "--rule", first, "--format", "json"]
        )
        assert report.exit_code == 0, report.output
        [shown] = orjson.loads(report.stdout)["rebinds"]
        assert (shown["origin"], shown["total_moved"]) == (b_id, 3)
        table = CliRunner().invoke(audit, ["--data-dir", str(tmp_path / "c"), "--rule", second])
        assert f"ops ({b_id})" in table.stdout

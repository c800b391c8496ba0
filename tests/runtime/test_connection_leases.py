"""Fleet-wide connection limits end to end (kumo/runtime/connection_leases.py): engines
in one fleet, a real ``redis-server`` and a real ``smtp-sink`` on loopback, and between
the nodes and the sink a counting TCP relay of the test's own that measures how many
connections are open at once, independently of kumo's own figures.

The engines run on the real clock (Redis and the leases' expiries are real time); every
wait is on an event (the relay's, the engines', the leases'), bounded by
``trio.fail_after``, never a sleep.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Final

import attrs
import httpx
import pytest
import trio
import trio.testing

from kumo.http.app import create_app
from kumo.http.routes import METRICS_PATH, READY_Q_STATES_PATH
from kumo.model.connection_lease import LeaseSettings, lease_key, refusal_context
from kumo.model.fleet import FleetSettings
from kumo.model.prometheus_text import parse_samples
from kumo.model.ready_queue_state import CONNECTION_LIMITED
from kumo.model.rfc3339 import format_rfc3339
from kumo.runtime.connection_leases import ConnectionLeases, HeldLease, LeaseStatistics, Refused
from kumo.runtime.delivery import MailSettings
from kumo.runtime.engine import Engine, open_engine
from kumo.runtime.mx import MxResolver
from kumo.runtime.watermark import Watermark
from tests.cli.test_kcli_live import SENDER, kcli
from tests.live_server import ServerProcess, start_server
from tests.postfix import postfix_smtp_sink, require_smtp_sink
from tests.redis_server import RedisServer, redis_server
from tests.runtime.harness import message
from tests.runtime.test_delivery import destination

DEADLINE: Final = 60.0
NODES: Final = ("a", "b", "c")


class CountingRelay:
    """A TCP relay on loopback in front of ``target``: counts the connections open at
    once (from the accept to the close of either side) and keeps when each opened and
    closed (trio time)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.open = 0
        self.most = 0
        self.total = 0
        self.opened_at: list[float] = []
        self.closed_at: list[float] = []
        self.changes = Watermark()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        self.open += 1
        self.total += 1
        self.most = max(self.most, self.open)
        self.opened_at.append(trio.current_time())
        self.changes.advance(self.changes.value + 1)
        try:
            async with (
                client,
                await trio.open_tcp_stream("127.0.0.1", self.target) as server,
                trio.open_nursery() as nursery,
            ):

                async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
                    try:
                        while data := await source.receive_some(65536):
                            await sink.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    # Either side gone: the connection is over.
                    nursery.cancel_scope.cancel()

                nursery.start_soon(pump, client, server)
                nursery.start_soon(pump, server, client)
        finally:
            self.open -= 1
            self.closed_at.append(trio.current_time())
            self.changes.advance(self.changes.value + 1)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self.changes.wait_for(self.changes.value + 1)


@asynccontextmanager
async def relay_to(port: int) -> AsyncIterator[CountingRelay]:
    relay = CountingRelay(port)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        yield relay
        nursery.cancel_scope.cancel()


def limited(port: int, limit: int) -> MailSettings:
    """Every domain to ``127.0.0.1:port``, at most ``limit`` connections fleet-wide."""
    made = attrs.evolve(
        destination([f"127.0.0.1:{port}"], connection_limit=limit), fleet_limits=True
    )
    return MailSettings(lambda _: made, MxResolver())


def fleet_settings(server: RedisServer, leases: LeaseSettings | None = None) -> FleetSettings:
    return FleetSettings(
        server.url,
        block=0.2,
        retry_initial=0.02,
        retry_max=0.2,
        leases=leases or LeaseSettings(retry_initial=0.01, retry_max=0.1),
    )


@asynccontextmanager
async def fleet(
    root: Path, fleet: FleetSettings, mail: MailSettings, names: tuple[str, ...] = NODES
) -> AsyncIterator[dict[str, Engine]]:
    async with AsyncExitStack() as stack:
        yield {
            name: await stack.enter_async_context(
                open_engine(root / name, node_id=f"node-{name}", fleet=fleet, mail=mail)
            )
            for name in names
        }


def leases_of(engine: Engine) -> ConnectionLeases:
    leases = engine.connection_leases
    assert leases is not None
    return leases


async def wait_delivered(engine: Engine, count: int) -> None:
    await engine.wait_until(lambda: engine.statistics().delivered_total >= count)
    await engine.wait_idle()


def ready_queue(port: int) -> str:
    return f"unspecified->mx_list:127.0.0.1:{port}@smtp_client"


async def test_a_limit_of_4_holds_across_three_nodes_delivering_to_one_sink(
    tmp_path: Path,
) -> None:
    """The required one (issue 15): three nodes, each with enough mail to want four
    connections of its own, deliver to one smtp-sink through the counting relay: never
    more than 4 connections at once, exactly 4 at the most, and every message arrives."""
    require_smtp_sink()
    per_node = 250
    with trio.fail_after(DEADLINE):
        async with (
            redis_server(tmp_path / "redis") as server,
            postfix_smtp_sink() as (sink, dumps),
            relay_to(sink) as relay,
            fleet(tmp_path, fleet_settings(server), limited(relay.port, 4)) as nodes,
        ):
            for name, engine in nodes.items():
                await engine.inject([message(f"{name}{n}@example.com") for n in range(per_node)])
            for engine in nodes.values():
                await wait_delivered(engine, per_node)
                assert engine.queue_counts() == {}
            assert relay.most == 4
            assert len(list(await trio.Path(dumps).iterdir())) == 3 * per_node
            stats = [leases_of(engine).statistics() for engine in nodes.values()]
            # The limit was reached and contended: some asks were refused.
            assert sum(s.refused for s in stats) >= 1
            assert all(s.up == 1 and s.redis_failures == 0 for s in stats)
            assert sum(s.acquired for s in stats) == relay.total
            for engine in nodes.values():
                assert [d.connection_limited for d in engine.dispatcher_statistics()] == [0]
                assert engine.statistics().leases == leases_of(engine).statistics()


async def test_without_fleet_limits_each_node_keeps_the_limit_alone(tmp_path: Path) -> None:
    """The control: the same three nodes, fleet_limits off, open more than 4 at once,
    and keep no lease client (it starts with the first fleet-limited ready queue)."""
    require_smtp_sink()
    per_node = 250
    with trio.fail_after(DEADLINE):
        async with (
            redis_server(tmp_path / "redis") as server,
            postfix_smtp_sink() as (sink, _),
            relay_to(sink) as relay,
        ):
            alone = destination([f"127.0.0.1:{relay.port}"], connection_limit=4)
            local = MailSettings(lambda _: alone, MxResolver())
            async with fleet(tmp_path, fleet_settings(server), local) as nodes:
                for name, engine in nodes.items():
                    await engine.inject(
                        [message(f"{name}{n}@example.com") for n in range(per_node)]
                    )
                for engine in nodes.values():
                    await wait_delivered(engine, per_node)
                assert relay.most > 4
                # No fleet-limited destination: no lease client ever asked Redis.
                for engine in nodes.values():
                    stats = leases_of(engine).statistics()
                    assert (stats.acquired, stats.up, stats.redis_failures) == (0, 0, 0)


async def test_leases_a_dead_node_held_are_taken_once_they_expire(tmp_path: Path) -> None:
    """A node that holds every lease of a ready queue and goes away without giving
    them back: the other node is ``connection_limited`` (KumoMTA's context, since its
    first refusal however often it is refused again, and so in its ready-q-states
    reply) until they expire in Redis, then takes them and delivers everything."""
    require_smtp_sink()
    short = LeaseSettings(
        duration=1.5, renew_interval=0.2, margin=0.5, retry_initial=0.01, retry_max=0.1
    )
    # Long enough that B asks (and is refused) before they expire, however slow the
    # machine is to inject.
    dying = LeaseSettings(duration=3.0, renew_interval=0.5, margin=1.0)
    with trio.fail_after(DEADLINE):
        async with (
            redis_server(tmp_path / "redis") as server,
            postfix_smtp_sink() as (sink, dumps),
            relay_to(sink) as relay,
            fleet(tmp_path, fleet_settings(server, short), limited(relay.port, 2), ("b",)) as nodes,
        ):
            b = nodes["b"]
            queue = ready_queue(relay.port)
            dead = ConnectionLeases(fleet_settings(server, dying), node_id="node-dead")
            async with trio.open_nursery() as nursery:
                await nursery.start(dead.run)
                await dead.wait_until(lambda s: s.up == 1)
                taken = [await dead.acquire(queue, 2, lambda: None) for _ in range(3)]
                assert [isinstance(t, HeldLease) for t in taken] == [True, True, False]
                assert taken[2] is Refused.TOO_MANY_LEASES
                held = [t for t in taken if isinstance(t, HeldLease)]
                given_up_at = trio.current_time()
                # The node dies: its task ends, it gives nothing back.
                nursery.cancel_scope.cancel()
            # Redis lets the first of them go no sooner than this (it set their expiry
            # from its own time, after the node sent the command).
            first_free = min(h.lease.confirmed for h in held) + dying.held_for
            injected_at = b.now()
            await b.inject([message(f"r{n}@example.com") for n in range(5)])
            leases = leases_of(b)
            await leases.wait_until(lambda s: s.refused >= 1)
            await trio.testing.wait_all_tasks_blocked()  # the dispatcher took the refusal in
            [state] = b.ready_queue_states()
            assert (state.ready_queue, state.key, state.context) == (
                queue,
                CONNECTION_LIMITED,
                refusal_context(queue),
            )
            assert injected_at <= state.since <= b.now()
            assert b.dispatcher_statistics()[0].connection_limited == 1
            assert b.ready_queue_states([queue]) == [state]
            assert b.ready_queue_states(["unspecified->elsewhere@smtp_client"]) == []
            client = create_app(b).test_client()
            loopback = {"client": ("127.0.0.1", 50000)}  # a trusted peer
            reply = await client.get(READY_Q_STATES_PATH, scope_base=loopback)
            assert reply.status_code == 200
            assert await reply.get_json() == {
                "states_by_ready_queue": {
                    queue: {
                        "connection_limited": {
                            "context": f"TooManyLeases for kumomta.connection_limit.{queue}",
                            "since": format_rfc3339(state.since),
                        }
                    }
                }
            }
            # Refused again (the dead node's leases have not expired): the same state.
            refused = leases.statistics().refused
            await leases.wait_until(lambda s: s.refused >= refused + 2)
            await trio.testing.wait_all_tasks_blocked()
            assert b.ready_queue_states() == [state]
            await wait_delivered(b, 5)
            assert relay.opened_at[0] >= max(given_up_at, first_free)
            assert b.ready_queue_states() == []
            reply = await client.get(READY_Q_STATES_PATH, scope_base=loopback)
            assert await reply.get_json() == {"states_by_ready_queue": {}}
            assert relay.most <= 2
            assert len(list(await trio.Path(dumps).iterdir())) == 5


async def test_with_redis_stopped_no_connection_outlives_its_lease_and_delivery_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stops while a connection delivers (smtp-sink answers each DATA after a
    second): the connection finishes the transaction under way and closes before its
    lease's deadline, no new connection opens while Redis is away (the node says so
    once, and in its statistics), and when Redis is back the rest is delivered; nothing
    is lost."""
    require_smtp_sink()
    short = LeaseSettings(
        duration=4.0, renew_interval=0.3, margin=2.0, retry_initial=0.02, retry_max=0.2
    )
    count = 6
    caplog.set_level(logging.WARNING, logger="kumo.fleet")
    with trio.fail_after(DEADLINE):
        async with (
            redis_server(tmp_path / "redis") as server,
            postfix_smtp_sink("-w", "1") as (sink, dumps),
            relay_to(sink) as relay,
            fleet(tmp_path, fleet_settings(server, short), limited(relay.port, 4), ("a",)) as nodes,
        ):
            a = nodes["a"]
            leases = leases_of(a)
            await a.inject([message(f"r{n}@example.com") for n in range(count)])
            await relay.wait_until(lambda: relay.open >= 1)
            await leases.wait_until(lambda s: s.renewed >= 1)
            # Every lease was confirmed at most renew_interval (and a round trip) ago.
            stopped_at = trio.current_time()
            await server.stop()
            opened_before = relay.total
            await relay.wait_until(lambda: relay.open == 0)
            closed_at = trio.current_time()
            await leases.wait_until(lambda s: s.up == 0 and s.held == 0)
            # The connection outlived no lease: closed before the deadline of a lease
            # last confirmed by stopped_at.
            assert closed_at < stopped_at + short.held_for
            # And it kept going while its lease was usable (not closed at the first
            # failed renewal), so some mail waits still.
            delivered_while_down = a.statistics().delivered_total
            assert delivered_while_down < count
            assert relay.total == opened_before  # nothing opened since Redis stopped
            assert a.statistics().leases.up == 0
            downs = [r for r in caplog.records if "connection leases: Redis" in r.getMessage()]
            assert len(downs) == 1
            assert "failed" in downs[0].getMessage()

            await server.start()  # empty: the old leases are gone with it
            await wait_delivered(a, count)
            assert a.queue_counts() == {}
            assert relay.total > opened_before
            assert len(list(await trio.Path(dumps).iterdir())) == count
            assert leases.statistics().up == 1
            backs = [r for r in caplog.records if "answers again" in r.getMessage()]
            assert len(backs) == 1


async def test_a_lease_redis_lost_is_given_up(tmp_path: Path) -> None:
    """Redis restarted empty under a held lease: the next renewal finds it gone, the
    lease is lost (counted, its connection woken to close), and a new one is granted."""
    short = LeaseSettings(
        duration=2.0, renew_interval=0.1, margin=0.5, retry_initial=0.01, retry_max=0.1
    )
    with trio.fail_after(DEADLINE):
        async with redis_server(tmp_path / "redis") as server:
            leases = ConnectionLeases(fleet_settings(server, short), node_id="n")
            woken = trio.Event()
            async with trio.open_nursery() as nursery:
                await nursery.start(leases.run)
                await leases.wait_until(lambda s: s.up == 1)
                held = await leases.acquire("q", 1, woken.set)
                assert isinstance(held, HeldLease)
                assert await leases.acquire("q", 1, lambda: None) is Refused.TOO_MANY_LEASES
                await server.stop()
                await server.start()
                await leases.wait_until(lambda s: s.lost == 1)
                await woken.wait()
                assert held.lost
                assert leases.usable_until(held) == float("-inf")
                assert leases.statistics().held == 0
                again = await leases.acquire("q", 1, lambda: None)
                assert isinstance(again, HeldLease)
                await leases.release(held)  # lost already: nothing to give back
                await leases.release(again)
                stats = leases.statistics()
                assert (stats.held, stats.released, stats.acquired) == (0, 1, 2)
                nursery.cancel_scope.cancel()


async def test_the_lease_keys_live_beside_the_fleet_stream(tmp_path: Path) -> None:
    with trio.fail_after(DEADLINE):
        async with redis_server(tmp_path / "redis") as server:
            settings = fleet_settings(server)
            leases = ConnectionLeases(settings, node_id="node-x")
            assert leases.key("q") == lease_key("q", "kumo:admin")
            assert leases.key("q") == "kumo:admin:kumomta.connection_limit.q"
            assert LeaseStatistics.off().enabled == 0


def serve_config(redis: RedisServer, relay: int) -> str:
    return f"""
node_id = "{uuid.uuid4()}"

[fleet]
redis = "{redis.url}"

[egress]
fleet_limits = true
connection_limit = 4
prohibited_hosts = []
enable_tls = "Disabled"
idle_timeout = "1s"

[domains."example.com"]
mx_list = ["127.0.0.1:{relay}"]
"""


def lease_figures(server: ServerProcess) -> dict[str, int]:
    reply = httpx.get(server.url + METRICS_PATH)
    assert reply.status_code == 200, reply.text
    return {
        sample.name: int(sample.value)
        for sample in parse_samples(reply.text)
        if sample.name.startswith("kumo_engine_leases_")
    }


def ready_q_states(server: ServerProcess) -> object:
    reply = httpx.get(server.url + READY_Q_STATES_PATH)
    assert reply.status_code == 200, reply.text
    return reply.json()


async def inject_over_http(server: ServerProcess, count: int) -> None:
    inject = functools.partial(
        kcli, server.url, "inject", "--from", SENDER, "--to", "r@example.com", "--count", str(count)
    )
    run = await trio.to_thread.run_sync(inject)
    assert run.status == 0, run


async def test_a_limit_of_4_holds_across_three_kumo_serve_processes(tmp_path: Path) -> None:
    """The same as the first test, with three ``kumo serve`` processes configured by
    ``[egress] fleet_limits = true``: mail injected over HTTP into each, delivered
    through the counting relay, never more than 4 connections at once."""
    require_smtp_sink()
    per_node = 150
    with trio.fail_after(120):
        async with (
            redis_server(tmp_path / "redis") as redis,
            postfix_smtp_sink() as (sink, dumps),
            relay_to(sink) as relay,
        ):
            servers: list[ServerProcess] = []
            try:
                for name in NODES:
                    start = functools.partial(
                        start_server,
                        tmp_path / name,
                        config=serve_config(redis, relay.port),
                        deliver=True,
                    )
                    servers.append(await trio.to_thread.run_sync(start))
                # All three at once, so that their deliveries overlap.
                async with trio.open_nursery() as nursery:
                    for server in servers:
                        nursery.start_soon(inject_over_http, server, per_node)
                # Every connection ends idle_timeout after the last message: the relay
                # sees it close once everything has been dumped.
                await relay.wait_until(
                    lambda: relay.open == 0 and len(os.listdir(dumps)) == 3 * per_node
                )
                figures = [
                    await trio.to_thread.run_sync(lease_figures, server) for server in servers
                ]
                # Everything delivered, no connection wanted: no node is limited any more.
                states = [
                    await trio.to_thread.run_sync(ready_q_states, server) for server in servers
                ]
            finally:
                statuses = [await trio.to_thread.run_sync(server.stop) for server in servers]
            assert statuses == [0, 0, 0], [server.stderr_text() for server in servers]
            assert relay.most == 4
            assert sum(f["kumo_engine_leases_refused"] for f in figures) >= 1
            assert sum(f["kumo_engine_leases_acquired"] for f in figures) == relay.total
            assert all(f["kumo_engine_leases_enabled"] == 1 for f in figures)
            assert all(f["kumo_engine_leases_held"] == 0 for f in figures)
            assert states == [{"states_by_ready_queue": {}}] * 3

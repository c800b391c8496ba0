"""Message rates (kumo/runtime/message_rates.py and the dispatcher's use of them).

In virtual time (``MockClock``, autojump) against an in-memory SMTP server: a ready
queue sends no faster than its GCRA allows, a wait longer than ``idle_timeout`` closes
the connection and nothing opens before it is over, and a rule's bounce reaches the
messages that wait for the throttle. On a real ``redis-server``: the GCRA script
answers as its pure twin does, and three engines in one fleet share one rate (through
the counting relay of tests/runtime/test_connection_leases.py, to one smtp-sink).
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import attrs
import pytest
import trio
import trio.testing

from kumo.model.connection_lease import LeaseSettings
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.message import Message
from kumo.model.mx_resolution import Destination
from kumo.model.ready_queue import ReadyEntry, ResolvedAddress
from kumo.model.throttle import (
    GCRA_SCRIPT,
    ThrottleSpec,
    ThrottleTable,
    throttle_label,
)
from kumo.runtime.clock import EngineClock
from kumo.runtime.connection_leases import ConnectionLeases, Refused
from kumo.runtime.delivery import DestinationSettings, Dispatcher, MailSettings, OutcomeSink
from kumo.runtime.engine import Engine, open_engine
from kumo.runtime.message_rates import MessageRates
from kumo.runtime.mx import MxResolver
from kumo.runtime.smtp_connection import MessageOutcome
from kumo.runtime.watermark import Watermark
from tests.postfix import postfix_smtp_sink, require_smtp_sink
from tests.redis_server import redis_server
from tests.runtime.harness import WALL_ORIGIN, bounce, log_records, message
from tests.runtime.smtp_sink import SmtpSink
from tests.runtime.test_connection_leases import (
    DEADLINE,
    fleet,
    fleet_settings,
    leases_of,
    wait_delivered,
)
from tests.runtime.test_delivery import destination, verified

SINK: Final = "127.0.0.1:2525"
EPSILON: Final = 1e-5
"""Seconds of float rounding allowed in a virtual time (the throttle counts whole µs)."""


def rated(
    spec: str, *, idle: float = 5.0, connection_limit: int = 32, mx: str = SINK
) -> DestinationSettings:
    made = destination([mx], connection_limit=connection_limit)
    client = made.connection.client
    timeouts = attrs.evolve(client.timeouts, idle=round(idle * NANOS_PER_SECOND))
    connection = attrs.evolve(made.connection, client=attrs.evolve(client, timeouts=timeouts))
    return attrs.evolve(made, connection=connection, max_message_rate=ThrottleSpec.parse(spec))


class MemorySink:
    """An in-memory SMTP server (no socket: virtual time stays exact) that notes when
    each connection was opened."""

    def __init__(self, servers: trio.Nursery) -> None:
        self.sink = SmtpSink()
        self.servers = servers
        self.opened_at: list[float] = []

    async def connect(self, _: ResolvedAddress, __: int) -> tuple[trio.abc.Stream, str]:
        self.opened_at.append(trio.current_time())
        client, server = trio.testing.memory_stream_pair()
        self.servers.start_soon(self.sink.serve, server)
        return client, "127.0.0.1:40000"

    def settings(self, made: DestinationSettings) -> DestinationSettings:
        return attrs.evolve(made, connection=attrs.evolve(made.connection, connector=self.connect))


def entries(count: int) -> list[ReadyEntry]:
    return [
        ReadyEntry(
            "example.com", Message(f"{n:032x}", "s@example.org", f"r{n}@example.com", 1, 0, 1), 0
        )
        for n in range(count)
    ]


async def resolved() -> Destination:
    destination = await MxResolver().resolve("example.com", mx_list=(SINK,))
    assert isinstance(destination, Destination)
    return destination


async def rated_dispatcher(
    sink: MemorySink, spec: str, report: OutcomeSink, rates: MessageRates
) -> Dispatcher:
    """example.com's ready queue under the message rate ``spec``, delivering to ``sink``,
    its rate kept in ``rates``."""
    return Dispatcher(
        await resolved(),
        sink.settings(rated(spec)),
        report,
        random.Random(1),
        EngineClock(WALL_ORIGIN),
        rates=rates,
    )


def within_gcra(times: list[float], spec: ThrottleSpec) -> bool:
    """Whether no window holds more sends than ``burst + floor(w / interval)``."""
    interval = spec.interval / 1e6
    ordered = sorted(times)
    return all(
        j - i + 1 <= spec.burst + math.floor((ordered[j] - ordered[i]) / interval + EPSILON)
        for i in range(len(ordered))
        for j in range(i, len(ordered))
    )


async def test_a_ready_queue_sends_no_faster_than_its_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """ "10/s,max_burst=1" and 20 messages at once, many connections: one message each
    0.1 s, the first at once; the connections sleep through the short waits (no
    connection closes for the rate), and every message but the first was delayed."""
    spec = ThrottleSpec.parse("10/s,max_burst=1")
    sent: list[float] = []
    outcomes: list[MessageOutcome | None] = []
    all_sent = trio.Event()

    def report(entry: ReadyEntry, outcome: MessageOutcome | None) -> None:
        sent.append(trio.current_time())
        outcomes.append(outcome)
        if len(outcomes) == 20:
            all_sent.set()

    async with trio.open_nursery() as servers:
        sink = MemorySink(servers)
        rates = MessageRates()
        dispatcher = await rated_dispatcher(sink, "10/s,max_burst=1", report, rates)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dispatcher.run)
            start = trio.current_time()
            dispatcher.push(entries(20))
            await all_sent.wait()
            assert dispatcher.statistics().connections > 1  # they contended
            dispatcher.stop()
        servers.cancel_scope.cancel()
    assert all(o is not None and o.disposition.value == "Delivery" for o in outcomes)
    assert within_gcra(sent, spec)
    # No slower than the rate either: one each 0.1 s from the start.
    assert [round(t - start, 4) for t in sorted(sent)] == [n / 10 for n in range(20)]
    assert len(sink.sink.transactions) == 20
    stats = dispatcher.statistics()
    assert (stats.message_rate, stats.rate_delayed) == ("10/s,max_burst=1", 19)
    rate_stats = rates.statistics()
    assert rate_stats.closed == 0
    assert rate_stats.granted == 20
    assert rate_stats.requests == rate_stats.refused + 20  # one at a time: "max_burst=1"
    assert rate_stats.fleet_requests == 0


async def test_a_wait_longer_than_idle_timeout_closes_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """ "1/m": after the first message the wait (60 s) outlasts idle_timeout (5 s): the
    connection ends with QUIT and none opens before the minute is over; the next
    message goes then, on a new connection, and so on."""
    sent: list[float] = []
    all_sent = trio.Event()

    def report(entry: ReadyEntry, outcome: MessageOutcome | None) -> None:
        assert outcome is not None
        sent.append(trio.current_time())
        if len(sent) == 3:
            all_sent.set()

    async with trio.open_nursery() as servers:
        sink = MemorySink(servers)
        rates = MessageRates()
        dispatcher = await rated_dispatcher(sink, "1/m", report, rates)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dispatcher.run)
            start = trio.current_time()
            dispatcher.push(entries(3))
            await all_sent.wait()
            await trio.sleep(100)  # and nothing more opens
            dispatcher.stop()
        servers.cancel_scope.cancel()
    assert [round(t - start, 4) for t in sent] == [0, 60, 120]
    assert [round(t - start, 4) for t in sink.opened_at] == [0, 60, 120]
    sessions = sink.sink.sessions
    assert [len(s.transactions) for s in sessions] == [1, 1, 1]
    assert all(s.commands[-1] == b"QUIT\r\n" for s in sessions)
    stats = dispatcher.statistics()
    # Two waits closed the connections, with two and then one message waiting.
    assert (rates.statistics().closed, stats.rate_delayed) == (2, 3)
    assert stats.connections == 0


async def test_a_rule_bounces_the_messages_waiting_for_the_rate(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """ "1/h": one message goes, four wait in the ready queue (no attempt, nothing
    logged for them); a bounce rule then reaches them, and the log says nothing of
    the throttle (a replay finds the same)."""
    data_dir = tmp_path / "data"
    async with trio.open_nursery() as servers:
        sink = MemorySink(servers)
        made = sink.settings(rated("1/h"))
        mail = MailSettings(lambda _: made, MxResolver(nameservers=[("127.0.0.1", 53)]))
        async with open_engine(
            data_dir, mail=mail, clock=EngineClock(WALL_ORIGIN), threads=False
        ) as engine:
            await engine.inject([message(f"r{n}@example.com") for n in range(5)])
            await engine.wait_until(lambda: engine.statistics().delivered_total == 1)
            await trio.sleep(60)  # the four wait: nothing more goes
            assert engine.statistics().delivered_total == 1
            assert engine.dispatcher_statistics()[0].ready == 4
            assert engine.statistics().message_rates.closed == 1
            await engine.issue_bounce(bounce(domain="example.com"), issued_by="ops")
            await engine.wait_until(lambda: engine.statistics().bounced_total == 4)
            await engine.wait_idle()
            assert engine.queue_counts() == {}
            assert engine.dispatcher_statistics()[0].ready == 0
        servers.cancel_scope.cancel()
    assert len(sink.opened_at) == 1
    types = Counter(str(record["type"]) for record in log_records(data_dir))
    assert types == Counter({"Reception": 5, "Delivery": 1, "AdminBounce": 4})
    verified(data_dir)


# -- on a real Redis --------------------------------------------------------------------


async def test_the_script_answers_as_its_twin(tmp_path: Path) -> None:
    """The GCRA script on redis-server and :class:`ThrottleTable` fed Redis's own time
    (which the script returns) give the same answers, request after request, for
    several specs and quantities (some granted in part); the key expires when the
    throttle is idle."""
    specs = [ThrottleSpec.parse(text) for text in ("3/s,max_burst=2", "1000/s", "5/m")]
    rng = random.Random(7)
    with trio.fail_after(DEADLINE):
        async with redis_server(tmp_path / "redis") as server:
            leases = ConnectionLeases(fleet_settings(server), node_id="n")
            async with trio.open_nursery() as nursery:
                await nursery.start(leases.run)
                await leases.wait_until(lambda s: s.up == 1)
                twin = ThrottleTable()
                last_now = 0
                allowed = refused = partial = 0
                for _ in range(300):
                    spec = rng.choice(specs)
                    key = spec.storage_key(throttle_label("q"))
                    quantity = rng.randint(1, 4)
                    answer = await leases.run_script(
                        GCRA_SCRIPT, [key.encode()], [spec.interval, spec.burst, quantity]
                    )
                    granted, retry_after, now = (int(part) for part in answer)
                    assert now >= last_now
                    last_now = now
                    grant = twin.request(key, spec.interval, spec.burst, quantity, now)
                    assert (grant.granted, grant.retry_after) == (granted, retry_after)
                    allowed += grant.allowed
                    refused += not grant.allowed
                    partial += 0 < grant.granted < quantity
                assert allowed > 0
                assert refused > 0
                assert partial > 0
                # A state lives until its tat: after one message of a fresh "1000/s"
                # throttle (a millisecond a message), a millisecond at most.
                fresh = ThrottleSpec.parse("1000/s").storage_key(throttle_label("fresh"))
                await leases.run_script(GCRA_SCRIPT, [fresh.encode()], [1000, 1000, 1])
                ttl = await leases.run_script(
                    "return redis.call('PTTL', KEYS[1])", [fresh.encode()], []
                )
                assert int(ttl) <= 1
                nursery.cancel_scope.cancel()


class DotRelay:
    """A TCP relay on loopback in front of smtp-sink that notes when each message's
    final dot passed it (trio time, one clock for every in-process node), and counts
    the connections it relayed."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.dots: list[float] = []
        self.connections = 0
        self.changes = Watermark()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        self.connections += 1
        async with (
            client,
            await trio.open_tcp_stream("127.0.0.1", self.target) as server,
            trio.open_nursery() as nursery,
        ):

            async def pump(
                source: trio.SocketStream, sink: trio.SocketStream, *, dots: bool
            ) -> None:
                tail = b""
                try:
                    while data := await source.receive_some(65536):
                        if dots:
                            seen = tail + data
                            for _ in range(seen.count(b"\r\n.\r\n")):
                                self.dots.append(trio.current_time())
                                self.changes.advance(self.changes.value + 1)
                            tail = seen[-4:]
                        await sink.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(functools.partial(pump, client, server, dots=True))
            nursery.start_soon(functools.partial(pump, server, client, dots=False))


@asynccontextmanager
async def dot_relay(port: int) -> AsyncIterator[DotRelay]:
    relay = DotRelay(port)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        yield relay
        nursery.cancel_scope.cancel()


def fleet_rated(port: int, spec: str, *, idle: float = 5.0) -> MailSettings:
    made = attrs.evolve(
        rated(spec, mx=f"127.0.0.1:{port}", connection_limit=8, idle=idle), fleet_limits=True
    )
    return MailSettings(lambda _: made, MxResolver())


def rates_of(engine: Engine) -> MessageRates:
    rates = engine.message_rates
    assert rates is not None
    return rates


SLACK: Final = 0.25
"""Seconds by which the times messages reach the relay may bunch up more than their
grants did: a message granted to a new connection waits for its connect, banner and
EHLO, one granted to an open connection goes at once (and a loaded machine adds its
own delays). A window of the relay's times may hold what the GCRA allows in a window
this much longer; the grants themselves, on Redis's clock, are held to the exact
bound."""


def record_grants(engine: Engine, grants: list[int]) -> None:
    """Note Redis's time (µs) of each message the fleet-wide rate granted ``engine``
    (the script answers with it), by wrapping its lease client's ``run_script``."""
    leases = leases_of(engine)
    run = leases.run_script

    async def recording(script: str, keys: list[bytes], args: list[int | bytes]) -> object:
        answer = await run(script, keys, args)
        if script == GCRA_SCRIPT and answer is not Refused.UNAVAILABLE:
            granted, _, now = (int(part) for part in answer)
            grants.extend([now] * granted)
        return answer

    leases.run_script = recording  # type: ignore[method-assign]


async def three_nodes_send(
    tmp_path: Path, spec: ThrottleSpec, per_node: int
) -> tuple[list[float], list[int]]:
    """Three nodes at ``spec`` (``fleet_limits`` on), ``per_node`` messages each to one
    smtp-sink: every message arrives. The times their final dots passed the relay
    (seconds), and Redis's times of the grants (µs, none for a ``local:`` spec)."""
    grants: list[int] = []
    require_smtp_sink()
    with trio.fail_after(DEADLINE):
        async with (
            redis_server(tmp_path / "redis") as server,
            postfix_smtp_sink() as (sink, dumps),
            dot_relay(sink) as relay,
            fleet(tmp_path, fleet_settings(server), fleet_rated(relay.port, str(spec))) as nodes,
        ):
            for engine in nodes.values():
                record_grants(engine, grants)
            async with trio.open_nursery() as nursery:
                for name, engine in nodes.items():
                    batch = [message(f"{name}{n}@example.com") for n in range(per_node)]
                    nursery.start_soon(engine.inject, batch)
            for engine in nodes.values():
                await wait_delivered(engine, per_node)
            assert len(list(await trio.Path(dumps).iterdir())) == 3 * per_node
            stats = [engine.statistics().message_rates for engine in nodes.values()]
            assert all(leases_of(engine).statistics().up == 1 for engine in nodes.values())
    # Every message was granted; a grant for a connection that stopped waiting lapses.
    assert sum(s.granted for s in stats) >= 3 * per_node
    assert sum(s.unavailable for s in stats) == 0
    if spec.local:
        assert sum(s.fleet_requests for s in stats) == 0
    else:
        # Every node asked Redis, for every message.
        assert all(s.fleet_requests >= 1 for s in stats)
        assert sum(s.fleet_requests for s in stats) == sum(s.requests for s in stats)
    dots = sorted(relay.dots)
    assert len(dots) == 3 * per_node
    return dots, sorted(grants)


def worst_window(times: list[float], interval: float, burst: int, slack: float = 0) -> int:
    """The most messages any window of ``times`` held beyond what the GCRA allows in a
    window ``slack`` longer: 0 or less when the bound held everywhere."""
    return max(
        (j - i + 1) - (burst + math.floor((times[j] - times[i] + slack) / interval))
        for i in range(len(times))
        for j in range(i, len(times))
    )


async def test_a_fleet_wide_rate_holds_across_three_nodes(tmp_path: Path) -> None:
    """Three nodes, one rate "20/s,max_burst=5" kept in Redis, 20 messages each: every
    message arrives, and in every window the three nodes' messages together (their
    final dots, as the relay saw them) stay within the GCRA's bound for the fleet,
    not three times it; so the 60 take (60 - 5) / 20 s at the least."""
    spec = ThrottleSpec.parse("20/s,max_burst=5")
    dots, grants = await three_nodes_send(tmp_path, spec, 20)
    # Every grant, on Redis's clock: exactly within the bound, and steady demand got
    # no fewer (the 60 took no longer than the bound asks, give or take a round trip).
    assert len(grants) >= len(dots)
    assert worst_window([float(g) for g in grants], spec.interval, spec.burst) <= 0
    span = (len(grants) - spec.burst) * spec.interval
    assert span <= grants[-1] - grants[0] <= span + 250_000
    # What smtp-sink received, as the relay saw it: within the fleet's bound too.
    assert worst_window(dots, spec.interval / 1e6, spec.burst, SLACK) <= 0


async def test_a_local_rate_is_each_nodes_own(tmp_path: Path) -> None:
    """The control: "local:20/s,max_burst=5" with fleet_limits on stays on each node
    (Redis is never asked for it), so the three nodes together exceed the bound."""
    spec = ThrottleSpec.parse("local:20/s,max_burst=5")
    dots, grants = await three_nodes_send(tmp_path, spec, 20)
    assert grants == []
    assert worst_window(dots, spec.interval / 1e6, spec.burst, SLACK) > 0


async def test_with_redis_stopped_nothing_is_sent_until_it_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection holds a long lease and waits for mail when Redis stops: the mail
    that comes then is not sent (the fleet-wide rate cannot be asked), though the
    connection and its lease stay usable; the node says so once. When Redis is back,
    everything is delivered; nothing is lost."""
    require_smtp_sink()
    long = LeaseSettings(
        duration=30.0, renew_interval=0.5, margin=5.0, retry_initial=0.01, retry_max=0.1
    )
    caplog.set_level(logging.WARNING, logger="kumo.fleet")
    with trio.fail_after(DEADLINE):
        async with (
            redis_server(tmp_path / "redis") as server,
            postfix_smtp_sink() as (sink, dumps),
            dot_relay(sink) as relay,
            fleet(
                tmp_path,
                fleet_settings(server, long),
                fleet_rated(relay.port, "100/s", idle=30.0),
                ("a",),
            ) as nodes,
        ):
            a = nodes["a"]
            await a.inject([message("first@example.com")])
            await wait_delivered(a, 1)
            assert relay.connections == 1  # open, idle, its lease held

            await server.stop()
            await a.inject([message(f"r{n}@example.com") for n in range(5)])
            rates = rates_of(a)
            await rates.wait_until(lambda s: s.unavailable >= 3)
            assert len(relay.dots) == 1
            assert a.statistics().delivered_total == 1
            assert a.dispatcher_statistics()[0].ready == 5
            downs = [r for r in caplog.records if "connection leases: Redis" in r.getMessage()]
            assert len(downs) == 1
            assert "max_message_rate" in downs[0].getMessage()

            await server.start()
            await wait_delivered(a, 6)
            assert a.queue_counts() == {}
            assert len(relay.dots) == 6
            assert len(list(await trio.Path(dumps).iterdir())) == 6
            backs = [r for r in caplog.records if "answers again" in r.getMessage()]
            assert len(backs) == 1

"""Suspending a ready queue (``/api/admin/suspend-ready-q/v1``), end to end in one process.

In virtual time, against a scripted destination over in-memory streams: a connection
mid-transaction finishes it and closes with QUIT, the ready queue's other messages go
back to their scheduled queue and are held there (one record each), new mail is held
at once, and a cancel or the suspension's expiry lets it all go. Against Postfix's
smtp-sink, in real time: held mail makes no traffic and survives a restart, and a
cancel drains it. ``kumo replay --verify`` finds nothing wrong after each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import orjson
import trio
import trio.testing
from click.testing import CliRunner

from kumo.cli.audit import audit
from kumo.model.events import ReadySuspendExpired, Suspended
from kumo.model.ready_queue import ResolvedAddress
from kumo.model.requests import ReadySuspendRequest
from kumo.runtime.clock import EngineClock
from kumo.runtime.delivery import MailSettings
from kumo.runtime.engine import Engine, open_engine
from kumo.runtime.mx import MxResolver
from tests.live_server import events_after
from tests.postfix import postfix_smtp_sink, require_smtp_sink
from tests.runtime.harness import WALL_ORIGIN, log_records, message
from tests.runtime.smtp_sink import SmtpSink
from tests.runtime.test_delivery import DEADLINE, SECOND, destination, to_sink, types, verified

SINK = "127.0.0.1:2525"
READY_QUEUE = f"unspecified->mx_list:{SINK}@smtp_client"
NO_SOURCE = (
    "KumoMTA internal: no sources for example.com pool=`unspecified` are eligible for "
    "selection at this time"
)


def suspend(
    duration: int = 3600, reason: str = "maintenance", name: str = READY_QUEUE
) -> ReadySuspendRequest:
    return ReadySuspendRequest(name=name, reason=reason, duration=duration * SECOND)


def in_memory(sink: SmtpSink, servers: trio.Nursery, *, connection_limit: int = 1) -> MailSettings:
    """Mail settings whose one destination (``mx_list`` :data:`SINK`) is ``sink``,
    reached over an in-memory stream (no socket: virtual time stays exact)."""

    async def connect(_: ResolvedAddress, __: int) -> tuple[trio.abc.Stream, str]:
        client, server = trio.testing.memory_stream_pair()
        servers.start_soon(sink.serve, server)
        return client, "127.0.0.1:40000"

    made = destination([SINK], connection_limit=connection_limit)
    made = attrs.evolve(made, connection=attrs.evolve(made.connection, connector=connect))
    return MailSettings(lambda _: made, MxResolver(nameservers=[("127.0.0.1", 53)]))


@asynccontextmanager
async def engine_with(
    data_dir: Path, mail: MailSettings, clock: EngineClock
) -> AsyncIterator[Engine]:
    async with open_engine(data_dir, mail=mail, clock=clock, threads=False) as engine:
        yield engine


def held(engine: Engine) -> int:
    return sum(actor.waiting for actor in engine.actor_statistics())


def holds(data_dir: Path) -> list[dict[str, object]]:
    return [
        r
        for r in log_records(data_dir)
        if r["type"] == "TransientFailure"
        and isinstance(r["response"], dict)
        and r["response"]["content"] == NO_SOURCE
    ]


def stored_events(data_dir: Path) -> list[object]:
    return [committed.event for committed in events_after(data_dir, 0)]


async def test_a_transaction_under_way_finishes_then_the_connection_closes_and_the_rest_waits(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    """The clock does not move unless told: the destination holds its reply to the
    first message's final dot until the test lets it go."""
    data_dir = tmp_path / "data"
    reply = trio.Event()
    sink = SmtpSink().then("DOT", reply)
    async with trio.open_nursery() as servers:
        async with engine_with(
            data_dir, in_memory(sink, servers), EngineClock(WALL_ORIGIN)
        ) as engine:
            await engine.inject([message(f"r{n}@example.com") for n in range(3)])
            await trio.testing.wait_all_tasks_blocked()
            [dispatcher] = engine.dispatcher_statistics()
            assert (dispatcher.ready_queue, dispatcher.connections) == (READY_QUEUE, 1)
            assert (dispatcher.in_flight, dispatcher.ready) == (1, 2)

            suspension = await engine.issue_ready_suspend(suspend(), issued_by="ops")
            await trio.testing.wait_all_tasks_blocked()
            # The two ready messages went back to their queue and wait there, held;
            # the one in its DATA is not interrupted.
            [dispatcher] = engine.dispatcher_statistics()
            assert (dispatcher.in_flight, dispatcher.ready, dispatcher.connections) == (1, 0, 1)
            assert held(engine) == 2
            [session] = sink.sessions
            assert session.commands[-1] == b"DATA\r\n"

            reply.set()
            await trio.testing.wait_all_tasks_blocked()
            # Delivered, then QUIT: no other message is taken.
            assert engine.statistics().delivered_total == 1
            assert [len(s.transactions) for s in sink.sessions] == [1]
            assert session.commands[-1] == b"QUIT\r\n"
            assert engine.dispatcher_statistics()[0].connections == 0

            # New mail for it waits too, held at once; nothing reaches the destination.
            await engine.inject([message("late@example.com")])
            await trio.testing.wait_all_tasks_blocked()
            assert held(engine) == 3
            assert len(sink.sessions) == 1
            [view] = engine.list_ready_suspends()
            assert (view.id, view.name, view.reason) == (suspension, READY_QUEUE, "maintenance")

            assert await engine.cancel_ready_suspend(suspension, cancelled_by="ops")
            assert not await engine.cancel_ready_suspend(suspension, cancelled_by="ops")
            await engine.wait_until(lambda: engine.statistics().delivered_total == 4)
            await engine.wait_idle()
            assert held(engine) == 0
            assert engine.list_ready_suspends() == []
        servers.cancel_scope.cancel()
    assert types(data_dir) == Counter({"Reception": 4, "TransientFailure": 3, "Delivery": 4})
    records = holds(data_dir)
    assert len({r["id"] for r in records}) == 3
    assert {(r["site"], r["num_attempts"], r["egress_pool"]) for r in records} == {
        ("", 0, "unspecified")
    }
    assert engine.statistics().transient_failures_total == 0
    verified(data_dir)


async def test_held_mail_goes_at_the_suspensions_expiry_and_a_restart_keeps_it_held(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data_dir = tmp_path / "data"
    sink = SmtpSink()
    clock = EngineClock(WALL_ORIGIN)
    async with trio.open_nursery() as servers:
        mail = in_memory(sink, servers, connection_limit=4)
        async with engine_with(data_dir, mail, clock) as engine:
            await engine.issue_ready_suspend(suspend(duration=100), issued_by="ops")
            ids = await engine.inject([message(f"r{n}@example.com") for n in range(5)])
            await engine.wait_until(lambda: held(engine) == 5)
            await engine.wait_idle()
        # Restarted while suspended: still held, no second record, and released at
        # the suspension's expiry (100 s after it was issued), a first attempt then.
        async with engine_with(data_dir, mail, clock) as engine:
            await engine.wait_idle()
            assert held(engine) == 5
            assert [v.reason for v in engine.list_ready_suspends()] == ["maintenance"]
            await engine.wait_until(lambda: engine.statistics().delivered_total == 5)
            await engine.wait_idle()
            assert engine.list_ready_suspends() == []
        servers.cancel_scope.cancel()
    records = log_records(data_dir)
    received = int(str(records[0]["timestamp"]))
    assert [int(str(r["timestamp"])) - received for r in holds(data_dir)] == [0] * 5
    deliveries = [r for r in records if r["type"] == "Delivery"]
    assert {int(str(r["timestamp"])) - received for r in deliveries} == {100}
    assert {r["num_attempts"] for r in deliveries} == {0}
    assert types(data_dir) == Counter({"Reception": 5, "TransientFailure": 5, "Delivery": 5})
    assert sum(isinstance(e, ReadySuspendExpired) for e in stored_events(data_dir)) == 1
    assert sum(isinstance(e, Suspended) for e in stored_events(data_dir)) == 5
    verified(data_dir)
    result = CliRunner().invoke(
        audit, ["--data-dir", str(data_dir), "--message", ids[0], "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    steps = orjson.loads(result.stdout)["attempts"]
    assert [step["step"] for step in steps] == ["held", "delivered"]
    assert steps[0]["detail"].endswith(f"of ready queue {READY_QUEUE} until it ends: maintenance")


async def test_another_ready_queue_is_not_held(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data_dir = tmp_path / "data"
    sink = SmtpSink()
    async with trio.open_nursery() as servers:
        mail = in_memory(sink, servers)
        async with engine_with(data_dir, mail, EngineClock(WALL_ORIGIN)) as engine:
            other = "unspecified->mx.example.net@smtp_client"
            await engine.issue_ready_suspend(suspend(name=other), issued_by="ops")
            await engine.inject([message(f"r{n}@example.com") for n in range(3)])
            await engine.wait_until(lambda: engine.statistics().delivered_total == 3)
            await engine.wait_idle()
        servers.cancel_scope.cancel()
    assert types(data_dir) == Counter({"Reception": 3, "Delivery": 3})
    verified(data_dir)


# -- against Postfix's smtp-sink, in real time -----------------------------------------


async def test_a_suspended_sink_gets_nothing_until_the_suspension_is_lifted(
    tmp_path: Path,
) -> None:
    require_smtp_sink()
    data_dir = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with postfix_smtp_sink() as (port, dumps):
            ready_queue = f"unspecified->mx_list:127.0.0.1:{port}@smtp_client"
            async with open_engine(data_dir, mail=to_sink(port), clock=EngineClock()) as engine:
                suspension = await engine.issue_ready_suspend(
                    suspend(name=ready_queue), issued_by="ops"
                )
                await engine.inject([message(f"r{n}@example.com") for n in range(10)])
                await engine.wait_until(lambda: held(engine) == 10)
                await engine.wait_idle()
                stats = engine.statistics()
                assert (stats.delivered_total, stats.transient_failures_total) == (0, 0)
                [dispatcher] = engine.dispatcher_statistics()
                assert (dispatcher.ready, dispatcher.connections, dispatcher.in_flight) == (0, 0, 0)
                assert engine.queue_counts() == {"example.com": 10}
                assert list(await trio.Path(dumps).iterdir()) == []
            verified(data_dir)
            # Restarted while suspended: the held stay held, logged once.
            async with open_engine(data_dir, mail=to_sink(port), clock=EngineClock()) as engine:
                await engine.wait_idle()
                assert held(engine) == 10
                assert [v.id for v in engine.list_ready_suspends()] == [suspension]
                assert list(await trio.Path(dumps).iterdir()) == []
                assert await engine.cancel_ready_suspend(suspension, cancelled_by="ops")
                await engine.wait_until(lambda: engine.statistics().delivered_total == 10)
                await engine.wait_idle()
                assert held(engine) == 0
            assert len(list(await trio.Path(dumps).iterdir())) == 10
    assert types(data_dir) == Counter({"Reception": 10, "TransientFailure": 10, "Delivery": 10})
    assert len({r["id"] for r in holds(data_dir)}) == 10
    verified(data_dir)

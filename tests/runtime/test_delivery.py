"""The mail path end to end in one process: messages are injected, handed to their ready
queue, delivered to Postfix's smtp-sink (or refused by it), and every outcome is in
the log and the delivery log; ``kumo replay --verify`` finds nothing wrong after.

The retry schedule and expiry run in virtual time against a destination that cannot
be resolved (a resolver that always fails), so a week of retries takes milliseconds.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import attrs
import orjson
import trio
import trio.testing
from click.testing import CliRunner

from kumo.cli.audit import audit
from kumo.model.cidr_set import CidrSet
from kumo.model.connection_lease import Lease, LeaseSettings
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.message import Message
from kumo.model.mx_resolution import Destination, DnsErrorKind, Resolution, mx_lookup_failure
from kumo.model.ready_queue import ReadyEntry, ResolvedAddress
from kumo.model.ready_queue_state import CONNECTION_LIMITED, ReadyQueueState
from kumo.model.retry import RetryPolicy
from kumo.model.smtp_client import ClientSettings, TlsMode
from kumo.runtime.clock import EngineClock
from kumo.runtime.connection_leases import ConnectionLeases, HeldLease, Refused
from kumo.runtime.delivery import DestinationSettings, Dispatcher, MailSettings
from kumo.runtime.engine import Engine, open_engine
from kumo.runtime.mx import MxResolver
from kumo.runtime.smtp_connection import (
    ConnectionSettings,
    MessageOutcome,
    client_tls_context,
)
from kumo.store.verify import verify_data_dir
from tests.postfix import postfix_smtp_sink, require_smtp_sink
from tests.runtime.harness import WALL_ORIGIN, bounce, log_records, message, run_and_kill
from tests.runtime.smtp_sink import SmtpSink

DEADLINE = 60
SECOND = NANOS_PER_SECOND


def destination(
    mx_list: Sequence[str] = (),
    *,
    retry: RetryPolicy | None = None,
    max_ready: int = 1024,
    connection_limit: int = 32,
) -> DestinationSettings:
    return DestinationSettings(
        retry=retry or RetryPolicy(),
        mx_list=tuple(mx_list),
        connection=ConnectionSettings(
            ClientSettings("client.test", enable_tls=TlsMode.DISABLED),
            verifying_tls=client_tls_context(verify=False),
            insecure_tls=client_tls_context(verify=False),
        ),
        connection_limit=connection_limit,
        max_ready=max_ready,
        prohibited_hosts=CidrSet.parse([]),
    )


def to_sink(port: int, **settings: object) -> MailSettings:
    made = destination([f"127.0.0.1:{port}"], **settings)  # type: ignore[arg-type]
    return MailSettings(lambda _: made, MxResolver())


@asynccontextmanager
async def engine_at(
    data_dir: Path, mail: MailSettings, *, threads: bool = True
) -> AsyncIterator[Engine]:
    async with open_engine(
        data_dir, mail=mail, clock=EngineClock(WALL_ORIGIN), threads=threads
    ) as engine:
        yield engine


def verified(data_dir: Path) -> None:
    report = verify_data_dir(data_dir)
    assert report.violations == [], report.violations


def types(data_dir: Path) -> Counter[str]:
    return Counter(str(record["type"]) for record in log_records(data_dir))


async def test_injected_messages_are_delivered_to_smtp_sink(tmp_path: Path) -> None:
    require_smtp_sink()
    data_dir = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with postfix_smtp_sink() as (port, dumps):
            async with engine_at(data_dir, to_sink(port)) as engine:
                ids = await engine.inject([message(f"r{n}@example.com") for n in range(50)])
                await engine.wait_until(lambda: engine.statistics().delivered_total == 50)
                await engine.wait_idle()
                assert engine.queued_messages() == {}
                assert engine.projection().queue_counts == {}
            dumped = list(await trio.Path(dumps).iterdir())
    assert len(dumped) == 50
    assert types(data_dir) == Counter({"Reception": 50, "Delivery": 50})
    deliveries = [r for r in log_records(data_dir) if r["type"] == "Delivery"]
    assert sorted(str(r["id"]) for r in deliveries) == sorted(ids)
    record = deliveries[0]
    assert record["site"] == f"unspecified->mx_list:127.0.0.1:{port}@smtp_client"
    assert record["num_attempts"] == 0
    assert record["delivery_protocol"] == "ESMTP"
    response = record["response"]
    assert isinstance(response, dict)
    assert response["code"] == 250
    assert response["command"] == ".\r\n"
    verified(data_dir)


async def test_a_refusing_destination_defers_then_a_rule_bounces_the_deferred(
    tmp_path: Path,
) -> None:
    require_smtp_sink()
    data_dir = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with (
            postfix_smtp_sink("-r", "rcpt") as (port, _),
            engine_at(data_dir, to_sink(port)) as engine,
        ):
            await engine.inject([message(f"r{n}@example.com") for n in range(20)])
            await engine.wait_until(lambda: engine.statistics().transient_failures_total == 20)
            await engine.wait_idle()  # each failure back in its queue, decided
            # Each failed once and waits 20 minutes: nothing is delivered.
            stats = engine.actor_statistics()
            assert [(s.queued, s.waiting) for s in stats] == [(20, 20)]
            # inspect-sched-q counts the messages waiting for their retry as scheduled.
            inspected = await engine.inspect_queue("example.com", want_body=False, limit=5)
            assert inspected is not None
            assert (inspected.scheduled, len(inspected.messages)) == (20, 5)
            for sampled in inspected.messages:
                assert sampled.schedule.num_attempts == 1
                assert sampled.schedule.due > engine.now()
            await engine.issue_bounce(bounce(domain="example.com"), issued_by="test")
            await engine.wait_until(lambda: engine.statistics().bounced_total == 20)
            await engine.wait_idle()
    assert types(data_dir) == Counter({"Reception": 20, "TransientFailure": 20, "AdminBounce": 20})
    failure = next(r for r in log_records(data_dir) if r["type"] == "TransientFailure")
    response = failure["response"]
    assert isinstance(response, dict)
    assert 400 <= int(response["code"]) < 500
    assert str(response["command"]).startswith("RCPT TO:<")
    verified(data_dir)


async def test_a_permanent_refusal_is_a_bounce_record(tmp_path: Path) -> None:
    require_smtp_sink()
    data_dir = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with (
            postfix_smtp_sink("-f", "data") as (port, _),
            engine_at(data_dir, to_sink(port)) as engine,
        ):
            await engine.inject([message(f"r{n}@example.com") for n in range(5)])
            await engine.wait_until(lambda: engine.statistics().failed_total == 5)
            await engine.wait_idle()
    assert types(data_dir) == Counter({"Reception": 5, "Bounce": 5})
    verified(data_dir)


async def test_delivery_resumes_after_a_restart_with_nothing_delivered_twice(
    tmp_path: Path,
) -> None:
    require_smtp_sink()
    data_dir = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with postfix_smtp_sink() as (port, dumps):
            async with open_engine(data_dir, mail=None) as engine:
                await engine.inject([message(f"r{n}@example.com") for n in range(30)])
            async with engine_at(data_dir, to_sink(port)) as engine:
                await engine.wait_until(lambda: engine.statistics().delivered_total == 30)
            dumped = list(await trio.Path(dumps).iterdir())
    assert len(dumped) == 30
    assert types(data_dir) == Counter({"Reception": 30, "Delivery": 30})
    verified(data_dir)


class FailingResolver(MxResolver):
    """A resolver whose every answer is a DNS failure (no server is asked)."""

    async def resolve(self, domain: str, *, mx_list: Sequence[str] = ()) -> Resolution:
        return mx_lookup_failure(domain, DnsErrorKind.SERVFAIL, "SERVFAIL", 0)


def unresolvable(retry_interval: int, max_age: int) -> MailSettings:
    """Mail settings whose every destination fails to resolve (asked again each time):
    attempts fail transiently at once, so retries run in virtual time."""
    made = destination(retry=RetryPolicy(retry_interval=retry_interval, max_age=max_age))
    return MailSettings(lambda _: made, FailingResolver(), failure_ttl=0.0)


async def test_retries_follow_the_backoff_and_the_message_expires_in_virtual_time(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # retry_interval 20 s (no jitter below 40 s), max_age 200 s: failures at 0, 20,
    # 60 (20+40), 140 (60+80); the next would be due at 300 > 200: expired then.
    data_dir = tmp_path / "data"
    mail = unresolvable(20 * SECOND, 200 * SECOND)
    async with engine_at(data_dir, mail, threads=False) as engine:
        [message_id] = await engine.inject([message("r@example.com")])
        await engine.wait_until(lambda: engine.statistics().expired_total == 1)
        await engine.wait_idle()
    records = log_records(data_dir)
    assert [r["type"] for r in records] == ["Reception", *["TransientFailure"] * 4, "Expiration"]
    failures = [r for r in records if r["type"] == "TransientFailure"]
    received = int(str(records[0]["timestamp"]))
    assert [int(str(r["timestamp"])) - received for r in failures] == [0, 20, 60, 140]
    assert [r["num_attempts"] for r in failures] == [0, 1, 2, 3]
    assert failures[0]["site"] == ""
    response = failures[0]["response"]
    assert isinstance(response, dict)
    assert response["content"].startswith("failed to resolve queue example.com: ")
    expiration = records[-1]
    assert expiration["id"] == message_id
    assert expiration["num_attempts"] == 4
    response = expiration["response"]
    assert isinstance(response, dict)
    assert (response["code"], response["enhanced_code"], response["command"]) == (
        551,
        {"class": 5, "subject": 4, "detail": 7},
        None,
    )
    # Each wake-up comes a microsecond after its due time (the clock's slack, which
    # keeps a deadline from waking a task a rounding error early): 3 of them by now.
    assert response["content"] == (
        "Next delivery time would be 5m 3us after creation, which exceeds max_age=3m 20s"
    )
    verified(data_dir)


async def test_sigkill_during_delivery_repeats_only_in_flight_deliveries(tmp_path: Path) -> None:
    """SPEC 8.4: a crash may repeat a delivery whose 250 came before its ``Delivered``
    was durable, and nothing else; nothing acknowledged is lost."""
    require_smtp_sink()
    rng = random.Random(20261201)
    data_dir, acks = tmp_path / "data", tmp_path / "acks"
    rounds = 4
    with trio.fail_after(4 * DEADLINE):
        async with postfix_smtp_sink() as (port, dumps):
            for seed in range(rounds):
                arguments = [str(data_dir), str(acks), str(port), str(seed)]
                await trio.to_thread.run_sync(
                    run_and_kill,
                    "tests.runtime.delivery_crash_child",
                    arguments,
                    acks,
                    rng.uniform(0.3, 1.5),
                )
            async with engine_at(data_dir, to_sink(port)) as engine:
                await engine.wait_until(lambda: not engine.projection().queue_counts)
                await engine.wait_idle()
                delivered = engine.statistics().delivered_total
            dumped = [
                await trio.Path(path).read_bytes() for path in await trio.Path(dumps).iterdir()
            ]
    acknowledged = acks.read_text().split()
    recipients = Counter(
        line.removeprefix(b"X-Rcpt-Args: <").removesuffix(b">").decode()
        for dump in dumped
        for line in dump.splitlines()
        if line.startswith(b"X-Rcpt-Args: ")
    )
    records = log_records(data_dir)
    delivery_ids = Counter(str(r["id"]) for r in records if r["type"] == "Delivery")
    assert all(count == 1 for count in delivery_ids.values()), "a Delivered logged twice"
    delivered_to = {str(r["recipient"]) for r in records if r["type"] == "Delivery"}
    bounced_to = {str(r["recipient"]) for r in records if r["type"] == "AdminBounce"}
    # Nothing acknowledged is lost: each was delivered or bounced, none both.
    assert set(acknowledged) <= delivered_to | bounced_to
    assert not delivered_to & bounced_to
    # smtp-sink got every delivered message; a repeat is a message whose 250 came
    # before a kill and whose Delivered was not yet in the log: at most once per kill.
    assert set(recipients) == delivered_to | (set(recipients) & bounced_to)
    repeats = sum(count - 1 for count in recipients.values())
    assert max(recipients.values()) <= 1 + rounds
    assert sum(recipients.values()) == delivered + repeats + len(set(recipients) & bounced_to)
    assert len(acknowledged) > 50, "the child did too little work to test anything"
    verified(data_dir)


# -- suspensions (SPEC 9) ---------------------------------------------------------------


async def test_a_suspended_queue_holds_its_mail_until_the_suspension_is_lifted(
    tmp_path: Path,
) -> None:
    require_smtp_sink()
    data_dir = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with postfix_smtp_sink() as (port, dumps):
            async with engine_at(data_dir, to_sink(port)) as engine:
                suspension = await engine.issue_suspend(
                    bounce("maintenance", domain="example.com", duration=3600 * SECOND),
                    issued_by="ops",
                )
                await engine.inject([message(f"r{n}@example.com") for n in range(10)])
                await engine.inject([message("other@example.net")])
                await engine.wait_until(
                    lambda: (
                        sum(s.waiting for s in engine.actor_statistics()) == 10
                        and engine.statistics().delivered_total == 1
                    )
                )
                [view] = engine.list_suspends()
                assert (view.id, view.reason) == (suspension, "maintenance")
            # Restarted while suspended: the held messages stay held, logged once.
            async with engine_at(data_dir, to_sink(port)) as engine:
                await engine.wait_idle()
                assert sum(s.waiting for s in engine.actor_statistics()) == 10
                assert await engine.cancel_suspend(suspension, cancelled_by="ops")
                assert not await engine.cancel_suspend(suspension, cancelled_by="ops")
                await engine.wait_until(lambda: engine.statistics().delivered_total == 11)
                assert engine.list_suspends() == []
            assert len(list(await trio.Path(dumps).iterdir())) == 11
    assert types(data_dir) == Counter({"Reception": 11, "TransientFailure": 10, "Delivery": 11})
    held = [r for r in log_records(data_dir) if r["type"] == "TransientFailure"]
    assert {r["site"] for r in held} == {"example.com"}
    assert {r["num_attempts"] for r in held} == {0}
    assert held[0]["response"] == {
        "code": 451,
        "enhanced_code": {"class": 4, "subject": 4, "detail": 4},
        "content": "KumoMTA internal: scheduled queue is suspended: maintenance",
        "command": None,
    }
    verified(data_dir)


async def test_a_suspension_ends_at_its_expiry_without_costing_an_attempt(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data_dir = tmp_path / "data"
    mail = unresolvable(20 * SECOND, 3600 * SECOND)
    async with engine_at(data_dir, mail, threads=False) as engine:
        await engine.issue_suspend(
            bounce("hold", domain="example.com", duration=100 * SECOND), issued_by="ops"
        )
        await engine.inject([message("r@example.com")])
        await engine.wait_until(
            lambda: sum(1 for r in log_records(data_dir) if r["type"] == "TransientFailure") >= 3
        )
    records = [r for r in log_records(data_dir) if r["type"] == "TransientFailure"]
    received = int(str(log_records(data_dir)[0]["timestamp"]))
    # Held at once; due again at the suspension's end (100 s), a first attempt then
    # (num_attempts 0: the wait was not one), the next 20 s later.
    assert [int(str(r["timestamp"])) - received for r in records[:3]] == [0, 100, 120]
    assert [r["num_attempts"] for r in records[:3]] == [0, 0, 1]
    assert [r["site"] for r in records[:3]] == ["example.com", "", ""]
    verified(data_dir)


async def test_audit_tells_a_messages_attempts_holds_and_end(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    data_dir = tmp_path / "data"
    mail = unresolvable(20 * SECOND, 200 * SECOND)
    async with engine_at(data_dir, mail, threads=False) as engine:
        await engine.issue_suspend(
            bounce("hold", domain="example.com", duration=30 * SECOND), issued_by="ops"
        )
        [message_id] = await engine.inject([message("r@example.com")])
        await engine.wait_until(lambda: engine.statistics().expired_total == 1)
        await engine.wait_idle()
    result = CliRunner().invoke(
        audit, ["--data-dir", str(data_dir), "--message", message_id, "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    story = orjson.loads(result.stdout)
    assert story["status"] == "expired"
    assert [step["step"] for step in story["attempts"]] == [
        "held",
        "deferred",
        "deferred",
        "deferred",
        "deferred",
        "expired",
    ]
    assert story["attempts"][0]["detail"].endswith("until it ends: hold")
    assert story["attempts"][1]["detail"].startswith("attempt 1 via no destination: 451 4.4.4 ")


async def test_the_statistics_of_a_deferring_destination(tmp_path: Path) -> None:
    """What /metrics shows: the ready queue's figures count this process's attempts, the
    engine's since the log began (a restart keeps them)."""
    require_smtp_sink()
    data_dir = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with (
            postfix_smtp_sink("-r", "rcpt") as (port, _),
            engine_at(data_dir, to_sink(port)) as engine,
        ):
            await engine.inject([message(f"r{n}@example.com") for n in range(20)])
            await engine.wait_until(lambda: engine.statistics().transient_failures_total == 20)
            await engine.wait_idle()  # each failure back in its queue, decided
            [actor] = engine.actor_statistics()
            assert (actor.queued, actor.waiting, actor.handed) == (20, 20, 0)
            [dispatcher] = engine.dispatcher_statistics()
            assert dispatcher.ready_queue == f"unspecified->mx_list:127.0.0.1:{port}@smtp_client"
            assert (dispatcher.ready, dispatcher.in_flight) == (0, 0)
            counts = (dispatcher.delivered, dispatcher.transient_failures, dispatcher.failed)
            assert counts == (0, 20, 0)
            assert engine.dispatcher_statistics(1) == []
            stats = engine.statistics()
            assert (stats.injected, stats.delivered_total, stats.failed_total) == (20, 0, 0)
    async with open_engine(data_dir, mail=None) as engine:
        stats = engine.statistics()
        assert (stats.transient_failures_total, stats.injected) == (20, 0)
        assert engine.dispatcher_statistics() == []


# -- a fleet-limited ready queue's state ---------------------------------------------------


class ScriptedLeases:
    """Connection leases without Redis: each request is answered a second after it is
    asked, refused while ``full`` (but for the first ``free`` requests), granted
    otherwise."""

    def __init__(self, free: int = 0) -> None:
        self.settings = LeaseSettings(retry_initial=5.0, retry_max=5.0)
        self.full = True
        self.free = free
        self.asked = 0

    async def acquire(
        self, ready_queue: str, limit: int, wake: Callable[[], None]
    ) -> HeldLease | Refused:
        self.asked += 1
        number = self.asked
        await trio.sleep(1)
        if self.full and number > self.free:
            return Refused.TOO_MANY_LEASES
        return HeldLease(Lease.acquired(ready_queue, "m", trio.current_time(), self.settings), wake)

    async def release(self, held: HeldLease) -> None:
        pass

    def usable_until(self, held: HeldLease) -> float:
        return math.inf


async def test_connection_limited_from_the_first_refusal_until_no_connection_is_wanted(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The state begins at the first refusal (the engine clock's time), stays as it
    is through the asks and refusals that follow, and ends once the ready queue wants
    no connection it has no lease for."""
    resolved = await MxResolver().resolve("example.com", mx_list=("127.0.0.1:2",))
    assert isinstance(resolved, Destination)
    settings = attrs.evolve(destination(["127.0.0.1:2"], connection_limit=2), fleet_limits=True)
    leases = ScriptedLeases()
    returned: list[MessageOutcome | None] = []
    clock = EngineClock(WALL_ORIGIN)
    dispatcher = Dispatcher(
        resolved,
        settings,
        lambda entry, outcome: returned.append(outcome),
        random.Random(1),
        clock,
        leases=cast(ConnectionLeases, leases),
    )
    entry = ReadyEntry(
        "example.com", Message("0" * 32, "s@example.org", "r@example.com", 1, 0, 1), 0
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dispatcher.run)
        dispatcher.push([entry])
        await trio.testing.wait_all_tasks_blocked()
        assert (leases.asked, dispatcher.states()) == (1, [])  # asked, not answered yet

        mock_clock.jump(1)
        await trio.testing.wait_all_tasks_blocked()
        state = ReadyQueueState(
            resolved.ready_queue,
            CONNECTION_LIMITED,
            f"TooManyLeases for kumomta.connection_limit.{resolved.ready_queue}",
            clock.now(),
        )
        assert dispatcher.states() == [state]
        assert dispatcher.statistics().connection_limited == 1

        # After the back-off it asks again (the state holds while it waits for the
        # answer) and is refused again: the same state, the same since.
        mock_clock.jump(5)
        await trio.testing.wait_all_tasks_blocked()
        assert (leases.asked, dispatcher.states()) == (2, [state])
        mock_clock.jump(1)
        await trio.testing.wait_all_tasks_blocked()
        assert dispatcher.states() == [state]

        # Asked a third time; the message leaves meanwhile and the lease is granted:
        # no connection is wanted any more, and the state ends.
        mock_clock.jump(5)
        await trio.testing.wait_all_tasks_blocked()
        assert leases.asked == 3
        assert dispatcher.withdraw("example.com") == ["0" * 32]
        leases.full = False
        mock_clock.jump(1)
        await trio.testing.wait_all_tasks_blocked()
        assert dispatcher.states() == []
        assert dispatcher.statistics().connection_limited == 0
        assert dispatcher.statistics().connections == 0
        dispatcher.stop()
    assert returned == []


async def test_connection_limited_ends_once_no_connection_is_wanted_not_a_back_off_later(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Refused its second lease, a ready queue waits out the back-off (5 s) before it
    asks again; its one connection empties it meanwhile. The state ends then, at the
    same virtual instant, not when the back-off is over (the flake of
    ``test_a_limit_of_4_holds_across_three_nodes_delivering_to_one_sink``)."""
    resolved = await MxResolver().resolve("example.com", mx_list=("127.0.0.1:2",))
    assert isinstance(resolved, Destination)
    reply = trio.Event()
    sink = SmtpSink().then("DOT", reply)
    leases = ScriptedLeases(free=1)
    returned: list[MessageOutcome | None] = []
    async with trio.open_nursery() as servers:

        async def connect(_: ResolvedAddress, __: int) -> tuple[trio.abc.Stream, str]:
            client, server = trio.testing.memory_stream_pair()
            servers.start_soon(sink.serve, server)
            return client, "127.0.0.1:40000"

        settings = attrs.evolve(destination(["127.0.0.1:2"], connection_limit=2), fleet_limits=True)
        settings = attrs.evolve(
            settings, connection=attrs.evolve(settings.connection, connector=connect)
        )
        clock = EngineClock(WALL_ORIGIN)
        dispatcher = Dispatcher(
            resolved,
            settings,
            lambda entry, outcome: returned.append(outcome),
            random.Random(1),
            clock,
            leases=cast(ConnectionLeases, leases),
        )
        entries = [
            ReadyEntry(
                "example.com", Message(f"{n:032x}", "s@example.org", "r@example.com", 1, 0, 1), 0
            )
            for n in range(40)  # enough to want both connections (31 or more)
        ]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dispatcher.run)
            dispatcher.push(entries)
            await trio.testing.wait_all_tasks_blocked()
            assert leases.asked == 2

            # One lease, one refusal: limited; the connection waits for its first 250.
            mock_clock.jump(1)
            await trio.testing.wait_all_tasks_blocked()
            limited_since = clock.now()
            assert [s.since for s in dispatcher.states()] == [limited_since]
            stats = dispatcher.statistics()
            assert (stats.connections, stats.in_flight, stats.ready) == (1, 1, 39)

            reply.set()  # the rest go at once, in no virtual time
            await trio.testing.wait_all_tasks_blocked()
            assert len(returned) == dispatcher.statistics().delivered == 40
            assert dispatcher.states() == []
            assert dispatcher.statistics().connection_limited == 0
            assert leases.asked == 2  # the back-off is not over: it has not asked again
            dispatcher.stop()
        servers.cancel_scope.cancel()

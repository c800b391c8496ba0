"""Every case of "When a rule bounces" (docs/rules.md), through the engine, in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from kumo.model.criteria import Criteria
from kumo.model.duration import format_duration, parse_duration
from kumo.model.requests import BounceRequest
from kumo.model.settings import EngineSettings
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import Engine, open_engine
from tests.runtime.harness import WALL_ORIGIN, bounce, log_records, message

MINUTE = 60


@asynccontextmanager
async def engine_at(path: Path) -> AsyncIterator[Engine]:
    async with open_engine(path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        yield engine


def admin_bounces(path: Path) -> list[dict[str, object]]:
    return [r for r in log_records(path) if r["type"] == "AdminBounce"]


async def test_sweep_bounces_what_is_queued_and_logs_each_message(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        ids = await engine.inject([message(f"u{i}@example.com") for i in range(3)])
        await engine.inject([message("x@other.org")])
        rule = await engine.issue_bounce(
            bounce("spam trap\r\nhit", domain="example.com"), issued_by="ops"
        )
        await engine.wait_idle()
        assert engine.queue_counts() == {"other.org": 1}
        [view] = engine.list_bounces()
        assert (view.id, view.bounced, view.total_bounced) == (rule, {"example.com": 3}, 3)
        assert view.issued_by == "ops"
    records = admin_bounces(tmp_path)
    assert sorted(str(r["id"]) for r in records) == sorted(ids)
    first = records[0]
    assert first["queue"] == "example.com"
    assert first["response"] == {
        "code": 551,
        "enhanced_code": {"class": 5, "subject": 7, "detail": 1},
        "content": "Administrator bounced with reason: spam trap hit",
        "command": None,
    }
    assert first["site"] == "localhost"
    assert first["sender"] == "sender@example.org"


async def test_arrivals_while_live_are_received_then_bounced(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        rule = await engine.issue_bounce(bounce(tenant="acme"), issued_by="ops")
        ids = await engine.inject(
            [message(f"u{i}@gmail.com", tenant="acme") for i in range(4)]
            + [message("v@gmail.com", tenant="other")]
        )
        assert len(ids) == 5  # reception is never refused
        await engine.wait_idle()
        assert engine.queue_counts() == {"other@gmail.com": 1}
        [view] = engine.list_bounces()
        assert view.id == rule
        assert view.bounced == {"acme@gmail.com": 4}
    records = log_records(tmp_path)
    received = [r["id"] for r in records if r["type"] == "Reception"]
    bounced = [r["id"] for r in records if r["type"] == "AdminBounce"]
    assert received == ids
    assert sorted(map(str, bounced)) == sorted(ids[:4])


async def test_rule_expires_after_five_minutes_by_default(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        await engine.issue_bounce(bounce(domain="example.com"), issued_by="ops")
        await trio.sleep(4 * MINUTE + 59)
        [view] = engine.list_bounces()
        assert format_duration(view.remaining) == "1s"
        await engine.inject([message("late@example.com")])
        await engine.wait_idle()
        assert engine.queue_counts() == {}
        await trio.sleep(1)
        assert engine.list_bounces() == []
        await engine.inject([message("after@example.com")])
        await engine.wait_idle()
        assert engine.queue_counts() == {"example.com": 1}
        await trio.sleep(1)  # the expiry task appends BounceExpired once it wakes
        rules = engine.projection().rules.rules
        assert [rule.end for rule in rules.values()] == ["expired"]


async def test_remaining_duration_counts_down(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        await engine.issue_bounce(
            bounce(domain="d", duration=parse_duration("1h 30m")), issued_by="ops"
        )
        assert format_duration(engine.list_bounces()[0].remaining) == "1h 30m"
        await trio.sleep(29 * MINUTE + 30)
        assert format_duration(engine.list_bounces()[0].remaining) == "1h 30s"


async def test_duration_zero_sweeps_once_and_is_never_listed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        await engine.inject([message("a@example.com"), message("b@example.com")])
        rule = await engine.issue_bounce(bounce(domain="example.com", duration=0), issued_by="o")
        await engine.wait_idle()
        assert engine.list_bounces() == []
        assert engine.queue_counts() == {}
        await engine.inject([message("c@example.com")])
        await engine.wait_idle()
        assert engine.queue_counts() == {"example.com": 1}
        assert engine.projection().rules.rules[rule].bounced == {"example.com": 2}
        assert not await engine.cancel_bounce(rule, cancelled_by="o")


async def test_already_expired_rule_does_not_replace_a_live_one(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        live = await engine.issue_bounce(bounce(domain="d"), issued_by="o")
        await engine.issue_bounce(bounce(domain="d", duration=0), issued_by="o")
        assert [view.id for view in engine.list_bounces()] == [live]


async def test_cancel_stops_future_matches_and_keeps_what_was_bounced(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        await engine.inject([message("a@example.com")])
        rule = await engine.issue_bounce(bounce(domain="example.com"), issued_by="o")
        await engine.wait_idle()
        assert await engine.cancel_bounce(rule, cancelled_by="o")
        assert not await engine.cancel_bounce(rule, cancelled_by="o")
        await engine.inject([message("b@example.com")])
        await engine.wait_idle()
        assert engine.list_bounces() == []
        assert engine.queue_counts() == {"example.com": 1}
        stored = engine.projection().rules.rules[rule]
        assert (stored.end, stored.total_bounced) == ("cancelled", 1)
    assert len(admin_bounces(tmp_path)) == 1


async def test_equal_criteria_replace_the_live_rule(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        old = await engine.issue_bounce(bounce("first", domain="d"), issued_by="o")
        await engine.inject([message("a@d")])
        await engine.wait_idle()
        new = await engine.issue_bounce(bounce("second", domain="d"), issued_by="o")
        await engine.inject([message("b@d")])
        await engine.wait_idle()
        [view] = engine.list_bounces()
        assert (view.id, view.reason, view.bounced) == (new, "second", {"d": 1})
        assert not await engine.cancel_bounce(old, cancelled_by="o")
        rules = engine.projection().rules.rules
        assert (rules[old].end, rules[old].ended_by) == ("replaced", new)


async def test_queue_names_are_equal_as_sets(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        first = BounceRequest(Criteria(queue_names=["a", "b"]), reason="r")
        second = BounceRequest(Criteria(queue_names=["b", "a", "b"]), reason="r")
        await engine.issue_bounce(first, issued_by="o")
        new = await engine.issue_bounce(second, issued_by="o")
        assert [view.id for view in engine.list_bounces()] == [new]


async def test_matching_is_case_sensitive(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        await engine.inject([message("a@Example.com", campaign="Camp")])
        await engine.issue_bounce(bounce(domain="Example.com"), issued_by="o")
        await engine.issue_bounce(bounce(campaign="camp"), issued_by="o")
        await engine.wait_idle()
        assert engine.queue_counts() == {"Camp:@example.com": 1}
        await engine.issue_bounce(bounce(campaign="Camp", domain="example.com"), issued_by="o")
        await engine.wait_idle()
        assert engine.queue_counts() == {}


async def test_queue_names_match_exact_names_and_ignore_the_parts(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        await engine.inject(
            [
                message("a@foo.com", routing_domain="routing.com:2025"),
                message("b@foo.com"),
                message("c@bar.com", campaign="c", tenant="t"),
            ]
        )
        request = BounceRequest(
            Criteria(domain="nomatch", queue_names=["foo.com!routing.com:2025", "c:t@bar.com"]),
            reason="r",
        )
        rule = await engine.issue_bounce(request, issued_by="o")
        await engine.wait_idle()
        assert engine.queue_counts() == {"foo.com": 1}
        [view] = engine.list_bounces()
        assert view.id == rule
        assert view.bounced == {"foo.com!routing.com:2025": 1, "c:t@bar.com": 1}


async def test_tenant_rule_does_not_match_tenantless_queues(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        await engine.inject(
            [
                message("a@d.com"),
                message("b@d.com", campaign="camp"),
                message("c@d.com", tenant="acme"),
                message("e@d.com", campaign="camp", tenant="acme"),
            ]
        )
        await engine.issue_bounce(bounce(tenant="acme"), issued_by="o")
        await engine.wait_idle()
        assert engine.queue_counts() == {"d.com": 1, "camp:@d.com": 1}


async def test_suppress_logging_keeps_counts_but_writes_no_records(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        await engine.inject([message("a@d.com"), message("b@d.com")])
        await engine.issue_bounce(bounce(domain="d.com", suppress_logging=True), issued_by="o")
        await engine.wait_idle()
        [view] = engine.list_bounces()
        assert (view.total_bounced, view.suppress_logging) == (2, True)
    assert admin_bounces(tmp_path) == []
    assert len(log_records(tmp_path)) == 2  # the two Reception records


async def test_counts_per_rule_and_queue_and_most_recent_attribution(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        await engine.inject(
            [message("a@x.com", tenant="t"), message("b@y.com", tenant="t"), message("c@y.com")]
        )
        broad = await engine.issue_bounce(bounce(tenant="t"), issued_by="o")
        await engine.wait_idle()
        narrow = await engine.issue_bounce(bounce(domain="y.com"), issued_by="o")
        await engine.wait_idle()
        # Arrivals: both rules match t@y.com; the most recent one takes it.
        await engine.inject([message("d@y.com", tenant="t"), message("e@x.com", tenant="t")])
        await engine.wait_idle()
        views = {view.id: view for view in engine.list_bounces()}
        assert views[broad].bounced == {"t@x.com": 2, "t@y.com": 1}
        assert views[narrow].bounced == {"y.com": 1, "t@y.com": 1}
        assert views[broad].total_bounced == 3
        assert views[narrow].total_bounced == 2
        assert engine.queue_counts() == {}


async def test_everything_rule_matches_every_queue(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        await engine.inject([message(f"u@d{i}.com", campaign=f"c{i % 3}") for i in range(30)])
        await engine.issue_bounce(bounce(), issued_by="o")
        await engine.wait_idle()
        assert engine.queue_counts() == {}
        assert engine.list_bounces()[0].total_bounced == 30


async def test_live_rules_and_counts_survive_a_restart(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with engine_at(tmp_path) as engine:
        await engine.inject([message("a@d.com"), message("b@e.com")])
        rule = await engine.issue_bounce(bounce(domain="d.com"), issued_by="o")
        await engine.wait_idle()
    async with engine_at(tmp_path) as engine:
        [view] = engine.list_bounces()
        assert (view.id, view.bounced) == (rule, {"d.com": 1})
        assert engine.queue_counts() == {"e.com": 1}
        await engine.inject([message("c@d.com")])
        await engine.wait_idle()
        assert engine.list_bounces()[0].total_bounced == 2
        await trio.sleep(5 * MINUTE)
        assert engine.list_bounces() == []


async def test_a_rule_expires_exactly_its_duration_after_it_was_issued(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """One clock reading per rule: ``expires`` is ``issued_at`` plus the duration, to the
    nanosecond, even when the commit comes later than the reading (a busy writer)."""
    duration = parse_duration("7m 3s 5ns")
    async with engine_at(tmp_path) as engine:
        await trio.sleep(1.5)  # the clock has moved since the engine started
        await engine.issue_bounce(
            BounceRequest(Criteria(domain="d.com"), "why", duration=duration), issued_by="o"
        )
        [view] = engine.list_bounces()
        assert view.expires_at - view.issued_at == duration
        assert view.issued_at == WALL_ORIGIN + 1_500_000_000
    # The reading is in the log: a restart shows the same.
    async with engine_at(tmp_path) as engine:
        [again] = engine.list_bounces()
        assert (again.issued_at, again.expires_at) == (view.issued_at, view.expires_at)


async def test_a_rule_reaches_its_queues_a_slice_at_a_time_admin_requests_first(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Handing a rule to thousands of actors waits, between two slices, while admin
    requests are answered; the sweep itself waits too. Both go on once answered."""
    settings = EngineSettings(deliveries_per_yield=2)
    async with open_engine(
        tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False, settings=settings
    ) as engine:
        await engine.inject([message(f"u@d{n}.example") for n in range(10)])
        await engine.wait_idle()
        with engine.admin_gate.request():
            await engine.issue_bounce(bounce(), issued_by="ops")
            await trio.sleep(0.05)
            reached = sum(actor.live_rules for actor in engine.actor_statistics())
            assert reached == 2  # the first slice: then the broadcaster waits its turn
            assert engine.statistics().bounced_total == 0  # and so do the sweeps
        await engine.wait_idle()
        assert engine.statistics().bounced_total == 10

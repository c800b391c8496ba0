"""Dry runs and a rule's ``pending`` count through the engine, in virtual time."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from kumo.model.criteria import Criteria
from kumo.model.dry_run import DryRun, QueueMatch, QueueMove
from kumo.model.requests import BounceRequest, RebindRequest
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import open_engine
from tests.runtime.harness import WALL_ORIGIN, bounce, message

SECOND = 1_000_000_000


async def test_a_dry_run_answers_from_the_fold_and_appends_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        await engine.inject([message(f"u{i}@example.com") for i in range(3)])
        await engine.inject([message(f"a{i}@example.com", tenant="acme") for i in range(2)])
        await engine.inject([message("x@other.org")])
        seq = engine.statistics().log.last_seq
        criteria = Criteria(domain="example.com")
        expected = (QueueMatch("acme@example.com", 2), QueueMatch("example.com", 3))
        assert engine.preview(criteria, replacing="bounce") == DryRun(expected)
        rule = await engine.issue_suspend(bounce("hold", domain="example.com"), issued_by="ops")
        # A suspension holds messages; a dry run of an equal one would replace it.
        assert engine.preview(criteria, replacing="suspend") == DryRun(expected, rule)
        assert engine.preview(criteria, replacing="bounce").replaces is None
        # Born expired: it would sweep, and replace nothing.
        now = engine.now()
        assert engine.preview(criteria, replacing="suspend", expires_at=now).replaces is None
        assert engine.statistics().log.last_seq == seq + 1
        dry = BounceRequest(criteria=criteria, reason="r", dry_run=True)
        with pytest.raises(ValueError, match="dry-run"):
            await engine.issue_bounce(dry, issued_by="ops")
        assert engine.statistics().log.last_seq == seq + 1
    # A restart finds the queues again from the fold.
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        assert engine.preview(Criteria()).queues == (*expected, QueueMatch("other.org", 1))


async def test_pending_is_what_a_rule_still_owes_and_zero_once_swept(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        await engine.inject([message(f"u{i}@example.com") for i in range(5)])
        await engine.inject([message("x@other.org")])
        await engine.wait_idle()
        await engine.issue_bounce(bounce(domain="example.com"), issued_by="ops")
        # Durable and listed at once, before any actor swept.
        [view] = engine.list_bounces()
        assert (view.pending, view.total_bounced) == (5, 0)
        await engine.wait_idle()
        [view] = engine.list_bounces()
        assert (view.pending, view.total_bounced) == (0, 5)
        # An arrival is bounced as it comes: nothing stays owed.
        await engine.inject([message("late@example.com")])
        await engine.wait_idle()
        [view] = engine.list_bounces()
        assert (view.pending, view.total_bounced) == (0, 6)


async def test_a_rebind_dry_run_answers_from_the_fold_and_appends_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        await engine.inject([message(f"u{i}@example.com") for i in range(3)])
        await engine.inject(
            [message(f"r{i}@example.com", routing_domain="relay.example") for i in range(2)]
        )
        await engine.inject([message("x@other.org")])
        await engine.wait_idle()
        seq = engine.statistics().log.last_seq
        request = RebindRequest(
            Criteria(domain="example.com"),
            "reroute",
            {"routing_domain": "relay.example"},
            always_flush=True,
            dry_run=True,
        )
        result = engine.preview_rebind(request)
        assert result.queues == (
            QueueMove("example.com", 3, "example.com!relay.example"),
            QueueMove("example.com!relay.example", 2, None, True),
        )
        assert (result.total_messages, result.total_moving) == (5, 3)
        with pytest.raises(ValueError, match="dry-run"):
            await engine.rebind(request, issued_by="ops")
        assert engine.statistics().log.last_seq == seq
        # Done for real, the queues move as the dry run said.
        await engine.rebind(attrs.evolve(request, dry_run=False), issued_by="ops")
        await engine.wait_idle()
        assert engine.queue_counts() == {"example.com!relay.example": 5, "other.org": 1}
        after = engine.preview_rebind(request)
        assert after.queues == (QueueMove("example.com!relay.example", 5, None, True),)

"""Replay equivalence, restarts, slow actors and shutdown."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from kumo.model.criteria import Criteria
from kumo.model.events import Event
from kumo.model.requests import BounceRequest
from kumo.model.settings import EngineSettings
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import EngineClosedError, open_engine
from kumo.runtime.log_writer import LogWriter
from tests.runtime.harness import WALL_ORIGIN, bounce, message
from tests.runtime.invariants import check_invariants


async def busy_day(engine_dir: Path) -> None:
    """Rules of every kind, arrivals, cancels, expiries, and a restart in the middle."""
    clock = EngineClock(WALL_ORIGIN)
    async with open_engine(engine_dir, clock=clock, threads=False) as engine:
        await engine.inject([message(f"u{i}@d{i % 7}.com", tenant=f"t{i % 3}") for i in range(300)])
        wide = await engine.issue_bounce(bounce(tenant="t1"), issued_by="ops")
        await engine.issue_bounce(bounce(domain="d3.com", duration=0), issued_by="ops")
        await engine.inject([message(f"v{i}@d{i % 5}.com", tenant="t1") for i in range(50)])
        await trio.sleep(60)
        await engine.cancel_bounce(wide, cancelled_by="ops")
        await engine.issue_bounce(
            BounceRequest(Criteria(queue_names=["t2@d2.com", "t0@d0.com"]), reason="q"),
            issued_by="ops",
        )
        await engine.wait_idle()
        check_invariants(engine_dir, engine)
    async with open_engine(engine_dir, clock=clock, threads=False) as engine:
        await engine.inject([message(f"w{i}@d2.com", tenant="t2") for i in range(20)])
        await engine.issue_bounce(bounce(domain="d4.com", suppress_logging=True), issued_by="x")
        await trio.sleep(600)
        await engine.inject([message(f"z{i}@d4.com", tenant="t0") for i in range(5)])
        await engine.wait_idle()
        check_invariants(engine_dir, engine)


async def test_running_state_equals_the_fold_of_the_log(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    await busy_day(tmp_path)


async def test_real_threads_and_clock_keep_the_invariants(tmp_path: Path) -> None:
    async with open_engine(tmp_path) as engine:
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(
                    engine.inject, [message(f"u{i}.{j}@d{j}.com") for j in range(30)]
                )
            nursery.start_soon(
                functools.partial(engine.issue_bounce, bounce(domain="d1.com"), issued_by="ops")
            )
        await engine.issue_bounce(bounce(domain="d2.com"), issued_by="ops")
        await engine.wait_idle()
        state = check_invariants(tmp_path, engine)
        assert "d2.com" not in state.queue_counts


async def test_a_slow_actor_catches_up_from_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    submit = LogWriter.submit

    async def slow_submit(self: LogWriter, events: Sequence[Event]) -> None:
        await trio.sleep(1)  # the actor dawdles over each bounce it emits
        await submit(self, events)

    monkeypatch.setattr(LogWriter, "submit", slow_submit)
    async with open_engine(
        tmp_path,
        clock=EngineClock(WALL_ORIGIN),
        settings=EngineSettings(mailbox_capacity=1),
        threads=False,
    ) as engine:
        await engine.inject([message("first@slow.com")])
        await engine.wait_idle()
        await engine.issue_bounce(bounce(domain="slow.com"), issued_by="ops")
        for i in range(40):  # forty commits, each delivered to the busy actor
            await engine.inject([message(f"u{i}@slow.com")])
        await engine.wait_idle()
        [actor] = engine.actor_statistics()
        assert actor.catch_ups > 0
        assert engine.list_bounces()[0].total_bounced == 41
        check_invariants(tmp_path, engine)


async def test_requests_after_shutdown_are_refused(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        pass
    with pytest.raises(EngineClosedError):
        await engine.inject([message("late@d.com")])


async def test_node_id_is_kept_across_restarts(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_engine(tmp_path, threads=False) as engine:
        first = engine.node_id
    async with open_engine(tmp_path, threads=False) as engine:
        assert engine.node_id == first
    async with open_engine(tmp_path, threads=False, node_id="configured") as engine:
        assert engine.node_id == "configured"

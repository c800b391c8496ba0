"""A queue actor at rest: what it folds, and what it decides, without waking."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from kumo.model.criteria import Criteria
from kumo.model.events import Bounced, BounceIssued, Committed, MessageReceived
from kumo.model.settings import EngineSettings
from kumo.model.state import QueueState
from kumo.runtime.blocking import inline
from kumo.runtime.queue_actor import MissedDeliveries, QueueActor
from kumo.runtime.sweep_turns import SweepTurns
from tests.runtime.test_log_writer import open_writer

QUEUE = "a.example"
RULE = Committed(
    4, 4, BounceIssued(rule_id="r1", criteria=Criteria(), reason="testing", expires_at=10**18)
)


class ActorSteps(trio.abc.Instrument):
    """Counts the steps of the queue actors' tasks."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("QueueActor.run"):
            self.steps += 1


def queue_of_three() -> QueueState:
    state = QueueState(QUEUE)
    for n in range(3):
        received = MessageReceived(f"{n:032x}", QUEUE, "s@x", f"r{n}@{QUEUE}", 1)
        state.apply(Committed(n + 1, n + 1, received))
    return state


async def test_a_rule_at_rest_joins_the_sweeps_line_without_waking_the_actor(
    tmp_path: Path,
) -> None:
    committed: list[Committed] = []
    log = open_writer(tmp_path, committed.extend, run_blocking=inline)
    turns = SweepTurns()
    actor = QueueActor(
        queue_of_three(), log, MissedDeliveries(), EngineSettings(sweep_chunk=2), sweep_turns=turns
    )
    steps = ActorSteps()
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await nursery.start(actor.run)
        await trio.testing.wait_all_tasks_blocked()
        await turns.take()  # another sweep has the turn
        trio.lowlevel.add_instrument(steps)
        try:
            assert actor.deliver_nowait([RULE], RULE.seq)
            await trio.testing.wait_all_tasks_blocked()
            # Decided (the rule is the queue's) and in line, the task not woken.
            assert (steps.steps, turns.waiting) == (0, 1)
            assert [rule.id for rule in actor.state.rules] == ["r1"]
            assert actor.processed.value < RULE.seq
            turns.give()
            with trio.fail_after(5):
                await actor.processed.wait_for(RULE.seq)
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert steps.steps > 0
        assert len(actor.state) == 0
        actor.close()
        log.close()
    bounced = [c.event for c in committed if isinstance(c.event, Bounced)]
    assert [len(b.messages) for b in bounced] == [2, 1]  # two chunks, two turns
    assert {b.rule_id for b in bounced} == {"r1"}


async def test_an_actor_cancelled_in_line_leaves_the_turn_to_the_others(tmp_path: Path) -> None:
    log = open_writer(tmp_path, lambda _: None, run_blocking=inline)
    turns = SweepTurns()
    actor = QueueActor(
        queue_of_three(), log, MissedDeliveries(), EngineSettings(), sweep_turns=turns
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        async with trio.open_nursery() as actors:
            await actors.start(actor.run)
            await trio.testing.wait_all_tasks_blocked()
            await turns.take()
            assert actor.deliver_nowait([RULE], RULE.seq)
            assert turns.waiting == 1
            actors.cancel_scope.cancel()
        assert turns.waiting == 0
        turns.give()
        with trio.testing.assert_checkpoints():
            await turns.take()  # free: nobody holds it
        turns.give()
        log.close()

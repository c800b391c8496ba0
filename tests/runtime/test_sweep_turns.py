"""Sweeps take turns: one chunk at a time, in order, and none while admin requests wait."""

from __future__ import annotations

import trio
import trio.testing

from kumo.runtime.admin_gate import AdminGate
from kumo.runtime.sweep_turns import SweepTurns


async def test_one_turn_at_a_time_in_the_order_asked() -> None:
    turns = SweepTurns()
    holding: list[str] = []
    order: list[str] = []

    async def sweeper(name: str, chunks: int) -> None:
        for _ in range(chunks):
            await turns.take()
            try:
                assert holding == []
                holding.append(name)
                order.append(name)
                await trio.lowlevel.checkpoint()  # even across a checkpoint
                holding.remove(name)
            finally:
                turns.give()

    async with trio.open_nursery() as nursery:
        for name in "abc":
            nursery.start_soon(sweeper, name, 3)
    # Round robin: each gives the turn to the next waiting, then queues again.
    assert sorted(order[:3]) == ["a", "b", "c"]
    assert order == order[:3] * 3
    assert turns.waiting == 0


async def test_taking_the_turn_is_always_a_checkpoint() -> None:
    turns = SweepTurns()
    with trio.testing.assert_checkpoints():
        await turns.take()
    turns.give()


async def test_the_turn_waits_while_admin_requests_are_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = AdminGate(0.1)
    turns = SweepTurns(gate)
    took: list[float] = []

    async def sweeper() -> None:
        await turns.take()
        took.append(trio.current_time())
        turns.give()

    async with trio.open_nursery() as nursery:
        with gate.request():
            nursery.start_soon(sweeper)
            nursery.start_soon(sweeper)
            await trio.sleep(0.02)
            assert took == []
        answered = trio.current_time()
    assert took == [answered, answered]


async def test_a_waiter_cancelled_leaves_the_turn_to_the_others() -> None:
    turns = SweepTurns()
    took: list[str] = []
    gone = trio.CancelScope()

    async def sweeper(name: str, scope: trio.CancelScope) -> None:
        with scope:
            await turns.take()
            took.append(name)
            turns.give()

    async with trio.open_nursery() as nursery:
        await turns.take()
        nursery.start_soon(sweeper, "gone", gone)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(sweeper, "next", trio.CancelScope())
        await trio.testing.wait_all_tasks_blocked()
        assert turns.waiting == 2
        gone.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert turns.waiting == 1
        turns.give()
    assert took == ["next"]
    with trio.testing.assert_checkpoints():
        await turns.take()  # free again
    turns.give()


async def test_a_turn_cancelled_while_it_waits_for_the_gate_is_handed_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The gate's wait is not cancellable, but the checkpoint before it is: whatever
    raises in take() gives the turn back."""
    turns = SweepTurns(AdminGate(0.1))
    with trio.CancelScope() as scope:
        scope.cancel()
        await turns.take()
    assert scope.cancelled_caught
    took: list[bool] = []

    async def sweeper() -> None:
        await turns.take()
        took.append(True)
        turns.give()

    with trio.testing.assert_checkpoints():
        await sweeper()
    assert took == [True]

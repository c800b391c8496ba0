"""Sweeps take turns: one chunk at a time, in order, and none while admin requests wait."""

from __future__ import annotations

import trio
import trio.testing

from kumo.runtime.admin_gate import AdminGate
from kumo.runtime.sweep_turns import SweepTurns, Ticket


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


async def test_tickets_and_parked_waiters_share_one_line() -> None:
    turns = SweepTurns()
    order: list[str] = []
    called: list[str] = []

    def ticket() -> None:
        called.append("ticket")

    async def sweeper(name: str, ticket: Ticket | None = None) -> None:
        await turns.take(ticket)
        order.append(name)
        turns.give()

    async with trio.open_nursery() as nursery:
        turns.queue(ticket)  # free: its owner has the turn at once
        assert called == ["ticket"]
        nursery.start_soon(sweeper, "parked")
        await trio.testing.wait_all_tasks_blocked()
        turns.give()  # its owner gives it without taking it
        await trio.testing.wait_all_tasks_blocked()
        assert order == ["parked"]
        # In line behind a holder: a ticket, then a waiter, then the ticket's owner
        # waits in its place (ahead of the waiter).
        await turns.take()
        turns.queue(ticket)
        nursery.start_soon(sweeper, "second")
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(sweeper, "ticket's owner", ticket)
        await trio.testing.wait_all_tasks_blocked()
        assert turns.waiting == 2
        turns.give()
    assert order == ["parked", "ticket's owner", "second"]
    assert called == ["ticket"]  # its owner was parked: woken, not called


async def test_a_ticket_whose_owner_will_not_take_the_turn_hands_it_on() -> None:
    turns = SweepTurns()
    called: list[int] = []

    def ticket() -> None:
        called.append(1)

    await turns.take()
    turns.queue(ticket)
    turns.leave(ticket)  # before its turn: out of the line
    assert turns.waiting == 0
    turns.give()
    assert called == []
    turns.queue(ticket)
    assert called == [1]
    turns.leave(ticket)  # its turn came and is never taken: free again
    with trio.testing.assert_checkpoints():
        await turns.take()
    turns.give()

"""The admin gate in Trio: mail sessions wait their turn while requests are answered."""

from __future__ import annotations

import trio
import trio.testing

from kumo.runtime.admin_gate import AdminGate, AdminGateStatistics


async def test_a_session_waits_until_the_request_is_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = AdminGate(0.1)
    went_on: list[float] = []

    async def session() -> None:
        await gate.turn()
        went_on.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        with gate.request():
            nursery.start_soon(session)
            await trio.testing.wait_all_tasks_blocked()
            assert went_on == []
            await trio.sleep(0.03)
        answered = trio.current_time()
    assert went_on == [answered]


async def test_a_slow_request_holds_sessions_back_for_hold_at_most(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = AdminGate(0.1)
    with gate.request():
        start = trio.current_time()
        await gate.turn()
        assert trio.current_time() - start == 0.1
        # Then the gate rests as long: the mail goes on at once.
        await gate.turn()
        assert trio.current_time() - start == 0.1


async def test_the_mail_path_rests_as_long_as_it_waited_the_rest_of_the_work_rest_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests arrive back to back: after a hold of 0.1 s, the work that waits at
    :meth:`AdminGate.turn` goes on for 0.025 s, the mail path for 0.1 s."""
    gate = AdminGate(0.1, rest=0.25)
    start = trio.current_time()
    with gate.request():
        await gate.turn()
        assert trio.current_time() - start == 0.1
        await gate.mail_turn()  # it waited as long at its own policy's hold
        assert trio.current_time() - start == 0.1
        await trio.sleep(0.03)
        # A request comes after the work's rest, within the mail path's.
        with gate.request():
            assert gate.closed
            await gate.mail_turn()
            assert trio.current_time() - start == 0.13
            await gate.turn()
            assert trio.current_time() - start == 0.23


async def test_turn_is_immediate_while_the_gate_is_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = AdminGate(0.1)
    start = trio.current_time()
    with trio.testing.assert_no_checkpoints():
        await gate.turn()
    never_closes = AdminGate(0.0)
    with never_closes.request(), trio.testing.assert_no_checkpoints():
        await never_closes.turn()
    assert trio.current_time() == start


async def test_a_session_waiting_its_turn_is_not_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """It holds bytes it has read: a cancellation would lose them."""
    gate = AdminGate(0.1)
    with gate.request():
        start = trio.current_time()
        with trio.move_on_after(0.01) as scope:
            await gate.turn()
            finished = trio.current_time()
        assert not scope.cancelled_caught
        assert finished - start == 0.1


async def test_statistics_count_closures_and_waits(autojump_clock: trio.testing.MockClock) -> None:
    gate = AdminGate(0.1)
    assert gate.statistics() == AdminGateStatistics(closed=0, closures=0, waits=0, gave_way=0)
    with gate.request():
        assert gate.statistics().closed == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gate.turn)
            nursery.start_soon(gate.turn)
            await trio.sleep(0.01)
    await gate.turn()  # open: no wait
    assert gate.statistics() == AdminGateStatistics(closed=0, closures=1, waits=2, gave_way=0)


async def test_until_open_returns_when_the_gate_opens_or_wake_is_set(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = AdminGate(0.1)
    returned: list[float] = []

    async def waiter(wake: trio.Event) -> None:
        await gate.until_open(wake)
        returned.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        with gate.request():
            wake = trio.Event()
            nursery.start_soon(waiter, wake)
            nursery.start_soon(waiter, trio.Event())
            await trio.sleep(0.01)
            wake.set()  # the first: woken early
            await trio.sleep(0.02)
        # The request answered: the gate opens, the second goes on.
    assert returned == [start + 0.01, start + 0.03]


async def test_until_open_waits_hold_at_most_and_checkpoints_when_open(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = AdminGate(0.1)
    with trio.testing.assert_checkpoints():
        await gate.until_open(trio.Event())  # open: at once, but a checkpoint
    with gate.request():
        start = trio.current_time()
        await gate.until_open(trio.Event())
        assert trio.current_time() - start == 0.1
        assert not gate.closed  # held long enough: it rests now


async def test_a_long_read_gives_way_to_the_writes_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Until the writes in flight when it gives way are answered; not for a write that
    began meanwhile."""
    gate = AdminGate(0.1, read_yield=0.1)
    give_way = gate.reader()
    went_on: list[float] = []

    async def read() -> None:
        await give_way()
        went_on.append(trio.current_time())

    async def write(seconds: float) -> None:
        with gate.request(writes=True):
            await trio.sleep(seconds)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, 0.02)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(write, 0.05)  # after the read gave way: not waited for
    assert went_on == [0.02]
    assert gate.statistics().gave_way == 1


async def test_reads_do_not_wait_for_reads_and_a_read_waits_read_yield_at_most(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = AdminGate(0.1, read_yield=0.01)
    with gate.request():  # a read
        with trio.testing.assert_checkpoints():
            await gate.reader()()
        assert trio.current_time() == 0.0
    give_way = gate.reader()
    with gate.request(writes=True):
        await trio.sleep(0.004)
        await give_way()  # the read has waited 0.006 s when the write still goes on
        assert trio.current_time() == 0.01
        with trio.testing.assert_checkpoints():
            await give_way()  # and it waits no more
        assert trio.current_time() == 0.01
    assert gate.statistics().gave_way == 1
    never = AdminGate(0.1)  # read_yield 0: reads never wait
    with never.request(writes=True), trio.testing.assert_checkpoints():
        await never.reader()()
    assert never.statistics().gave_way == 0

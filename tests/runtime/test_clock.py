"""The engine clock: wall time that advances with trio's (mock) clock."""

from __future__ import annotations

import trio
import trio.testing

from kumo.runtime.clock import EngineClock
from kumo.runtime.watermark import Watermark


async def test_wall_time_follows_the_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    clock = EngineClock(wall_origin=1_000_000_000_000)
    assert clock.now() == 1_000_000_000_000
    await trio.sleep(1.5)
    assert clock.now() == 1_001_500_000_000


async def test_a_reader_gives_the_time_now_gives(autojump_clock: trio.testing.MockClock) -> None:
    clock = EngineClock(wall_origin=1_000_000_000_000)
    read = clock.reader()
    await trio.sleep(2.25)
    assert read() == clock.now() == 1_002_250_000_000


async def test_a_reader_reads_the_system_clock_from_a_worker_thread() -> None:
    clock = EngineClock(wall_origin=1_000_000_000_000)
    read = clock.reader()
    before = clock.now()
    in_thread = await trio.to_thread.run_sync(read)
    assert before <= in_thread <= clock.now()


async def test_a_deadline_is_never_early(autojump_clock: trio.testing.MockClock) -> None:
    clock = EngineClock(wall_origin=1_767_225_600_123_456_789)
    for offset in (1, 7, 999_999_999, 300_000_000_001):
        target = clock.now() + offset
        await trio.sleep_until(clock.deadline(target))
        assert clock.now() >= target


async def test_watermark_wakes_waiters_once_reached() -> None:
    mark = Watermark(3)
    woke: list[int] = []

    async def wait(value: int) -> None:
        await mark.wait_for(value)
        woke.append(value)

    async with trio.open_nursery() as nursery:
        for value in (2, 5, 9):
            nursery.start_soon(wait, value)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == [2]
        mark.advance(6)
        mark.advance(4)  # never backwards
        await trio.testing.wait_all_tasks_blocked()
        assert woke == [2, 5]
        assert mark.value == 6
        mark.advance(9)
    assert woke == [2, 5, 9]


async def test_watermark_wait_until_asks_again_after_each_move() -> None:
    mark = Watermark()
    counts = {"done": 0}
    asked: list[int] = []

    def condition() -> bool:
        asked.append(mark.value)
        return counts["done"] >= 2

    async with trio.open_nursery() as nursery:
        nursery.start_soon(mark.wait_until, condition)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(2):
            counts["done"] += 1
            mark.advance(mark.value + 1)
            await trio.testing.wait_all_tasks_blocked()
    # Asked at once, then once after each move; it returned after the second.
    assert asked == [0, 1, 2]
    with trio.testing.assert_checkpoints():
        await mark.wait_until(lambda: True)

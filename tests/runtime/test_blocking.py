"""Blocking calls in a background thread of lower CPU priority."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import trio
import trio.testing

from kumo.runtime.blocking import BackgroundThread


async def test_calls_run_in_order_in_one_thread_of_their_own() -> None:
    lane = BackgroundThread("test lane", 5)
    ran: list[tuple[int, int]] = []

    def call(n: int) -> int:
        ran.append((n, threading.get_ident()))
        return n * 2

    try:
        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(lane, lambda n=n: call(n))
        assert await lane(lambda: call(20)) == 40
    finally:
        lane.close()
    assert sorted(n for n, _ in ran) == list(range(21))
    threads = {thread for _, thread in ran}
    assert len(threads) == 1
    assert threads != {threading.get_ident()}


async def test_an_error_is_raised_to_the_caller_and_the_thread_goes_on() -> None:
    lane = BackgroundThread("test lane", 5)

    def fail() -> None:
        raise OSError("disk on fire")

    try:
        with pytest.raises(OSError, match="disk on fire"):
            await lane(fail)
        assert await lane(lambda: "still here") == "still here"
    finally:
        lane.close()


@pytest.mark.skipif(sys.platform != "linux", reason="a thread's own priority is Linux's")
async def test_the_thread_runs_at_a_lower_priority() -> None:
    lane = BackgroundThread("test lane", 5)
    try:
        niceness = await lane(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    finally:
        lane.close()
    assert niceness == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 5)


async def test_a_cancelled_caller_waits_for_its_call_and_close_ends_the_thread() -> None:
    lane = BackgroundThread("test lane", 5)
    release = threading.Event()
    done: list[bool] = []

    def slow() -> None:
        release.wait(10)
        done.append(True)

    scope = trio.CancelScope()

    async def caller() -> None:
        with scope:
            await lane(slow)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(caller)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert done == []  # the caller, cancelled, still waits for its call
        release.set()
    assert done == [True]
    [thread] = [thread for thread in threading.enumerate() if thread.name == "test lane"]
    lane.close()
    await trio.to_thread.run_sync(thread.join, 10)
    assert not thread.is_alive()

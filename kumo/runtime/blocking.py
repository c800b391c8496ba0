"""How the runtime runs blocking calls (SQLite, file writes).

In production they run in worker threads, so the Trio loop stays responsive. Under
``trio.testing.MockClock(autojump_threshold=0)`` a task waiting on a thread counts as
blocked, so the clock would jump to the next deadline (a rule's expiry) during every
commit; deterministic tests and scenario runs therefore run them inline instead.

The background writers (the delivery-log writer, the WAL checkpointer) run theirs in a
:class:`BackgroundThread` of their own, at a lower CPU priority than the event loop and
the log's commits: on a machine with fewer cores than busy threads, the scheduler then
gives the loop (which answers admin requests) the CPU first (docs/benchmarks.md, "A
rule that does not wake the actors").
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import trio

T = TypeVar("T")


class RunBlocking(Protocol):
    def __call__(self, call: Callable[[], T], /) -> Awaitable[T]: ...


async def in_thread(call: Callable[[], T]) -> T:
    """Run ``call`` in a worker thread (it finishes even if the caller is cancelled)."""
    return await trio.to_thread.run_sync(call)


async def inline(call: Callable[[], T]) -> T:
    """Run ``call`` in the Trio thread, then checkpoint: deterministic under MockClock."""
    result = call()
    await trio.lowlevel.checkpoint()
    return result


class BackgroundThread:
    """A :class:`RunBlocking` that runs each call, one at a time and in order, in a
    thread of its own whose CPU priority is ``niceness`` lower than the process's (on
    Linux; elsewhere the same). The thread starts with the first call and ends with
    :meth:`close`. Like :func:`in_thread`, a call finishes even if its caller is
    cancelled (the caller waits for it)."""

    def __init__(self, name: str, niceness: int) -> None:
        self._name = name
        self._niceness = niceness
        self._calls: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def __call__(self, call: Callable[[], T], /) -> T:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()
        task = trio.lowlevel.current_task()
        job = _Job(call, trio.lowlevel.current_trio_token(), task)
        self._calls.put(job)
        await trio.lowlevel.wait_task_rescheduled(_not_cancellable)
        if job.error is not None:
            raise job.error
        result: T = job.result
        return result

    def close(self) -> None:
        """End the thread once the calls queued are done (no more calls after this)."""
        if self._thread is not None:
            self._calls.put(None)

    def _work(self) -> None:
        # Not Linux: a thread's priority is the process's, and this changes nothing.
        with contextlib.suppress(AttributeError, OSError):
            thread = threading.get_native_id()
            niceness = os.getpriority(os.PRIO_PROCESS, thread) + self._niceness
            os.setpriority(os.PRIO_PROCESS, thread, niceness)
        while (job := self._calls.get()) is not None:
            job.run()


class _Job:
    __slots__ = ("call", "error", "result", "task", "token")

    def __init__(
        self, call: Callable[[], Any], token: trio.lowlevel.TrioToken, task: trio.lowlevel.Task
    ) -> None:
        self.call = call
        self.token = token
        self.task = task
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:  # the caller's to handle, in its thread
            self.error = exc
        with contextlib.suppress(trio.RunFinishedError):  # the run is gone: nobody waits
            self.token.run_sync_soon(trio.lowlevel.reschedule, self.task)


def _not_cancellable(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED

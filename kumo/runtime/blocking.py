"""How the runtime runs blocking calls (SQLite, file writes).

In production they run in worker threads, so the Trio loop stays responsive. Under
``trio.testing.MockClock(autojump_threshold=0)`` a task waiting on a thread counts as
blocked, so the clock would jump to the next deadline (a rule's expiry) during every
commit; deterministic tests and scenario runs therefore run them inline instead.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

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

"""A position that only moves forward, and that tasks can wait on."""

from __future__ import annotations

from collections.abc import Callable

import trio


class Watermark:
    """How far a follower of the log has got (a sequence number)."""

    __slots__ = ("_lot", "_waiting", "value")

    def __init__(self, value: int = 0) -> None:
        self.value = value
        # Made on the first wait: every queue actor has a watermark, few are waited on.
        self._lot: trio.lowlevel.ParkingLot | None = None
        self._waiting = 0

    def advance(self, value: int) -> None:
        """Move to ``value`` (never backwards) and wake the waiters it satisfies."""
        if value > self.value:
            self.value = value
            # Advanced once per delivery and commit; usually nobody waits.
            if self._waiting and self._lot is not None:
                self._lot.unpark_all()

    async def wait_for(self, value: int) -> None:
        """Return once the watermark is at least ``value``.

        Always a checkpoint (as ``trio.Event.wait`` is), even when it need not wait.
        """
        if self.value >= value:
            await trio.lowlevel.checkpoint()
            return
        while self.value < value:
            if self._lot is None:
                self._lot = trio.lowlevel.ParkingLot()
            self._waiting += 1
            try:
                await self._lot.park()
            finally:
                self._waiting -= 1

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, asking it now and after each move of the
        watermark (a counter moved by every change ``condition`` reads). Always a
        checkpoint."""
        while True:
            seen = self.value
            if condition():
                await trio.lowlevel.checkpoint()
                return
            await self.wait_for(seen + 1)

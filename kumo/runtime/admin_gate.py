"""The Trio side of :class:`kumo.model.admin_first.AdminFirst`: admin requests enter
with :meth:`AdminGate.request`, the mail path's sessions call :meth:`AdminGate.turn`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import trio

from kumo.model.admin_first import AdminFirst
from kumo.model.statistics import counter, gauge


@attrs.frozen
class AdminGateStatistics:
    """How often the mail path gave way to admin requests, in this process."""

    closed: int = gauge("1 while SMTP sessions wait for admin requests in flight.")
    closures: int = counter("Times SMTP sessions began to wait for admin requests.")
    waits: int = counter("Times an SMTP session waited after a read for its turn.")


class AdminGate:
    """One per engine; ``hold`` seconds at most closed at a time (0: never closes)."""

    def __init__(self, hold: float) -> None:
        self._policy = AdminFirst(hold)
        self._opened = trio.Event()
        self._opened.set()
        self._closures = 0
        self._waits = 0

    @property
    def closed(self) -> bool:
        """Whether the mail path's sessions wait now (as of the last request's start or
        end, or the last session's turn)."""
        return self._policy.closed

    @contextmanager
    def request(self) -> Iterator[None]:
        """Hold the mail path back (within the policy's bounds) while the block runs."""
        self._policy.begin(trio.current_time())
        self._follow()
        try:
            yield
        finally:
            if self._policy.end(trio.current_time()):
                self._opened.set()

    async def turn(self) -> None:
        """Return once the mail path may go on: at once while the gate is open, without
        a checkpoint (the callers call it right after a read, which was one).

        Not cancellable (it waits ``hold`` at most): its callers hold bytes they have
        read and not yet acted on, which a cancellation here would lose.
        """
        opens_at = self._policy.opens_at(trio.current_time())
        if opens_at is None:
            return
        self._follow()
        self._waits += 1
        with trio.CancelScope(deadline=opens_at, shield=True):
            await self._opened.wait()

    def statistics(self) -> AdminGateStatistics:
        return AdminGateStatistics(
            closed=int(self._policy.closed), closures=self._closures, waits=self._waits
        )

    def _follow(self) -> None:
        """A gate that has just closed gets an event of its own to open."""
        if self._policy.closed and self._opened.is_set():
            self._opened = trio.Event()
            self._closures += 1

"""The Trio side of :class:`kumo.model.admin_first.AdminFirst`: admin requests enter
with :meth:`AdminGate.request`; the work that waits its turn meanwhile calls
:meth:`AdminGate.turn` (the mail path's sessions after each read, the broadcaster
between two slices of a rule's hand-out, sweeps before each chunk, the delivery-log
writer before it encodes and before it writes, the WAL checkpointer) or, for the log
writer's background lane, :meth:`AdminGate.until_open`; a worker thread polls
:attr:`AdminGate.closed_hint` between two slices of its work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import attrs
import trio

from kumo.model.admin_first import AdminFirst
from kumo.model.statistics import counter, gauge


@attrs.frozen
class AdminGateStatistics:
    """How often the background work gave way to admin requests, in this process."""

    closed: int = gauge("1 while the background work waits for admin requests in flight.")
    closures: int = counter("Times the background work began to wait for admin requests.")
    waits: int = counter(
        "Times an SMTP session (after a read), the broadcaster, a sweep (before a chunk), "
        "the delivery-log writer or the WAL checkpointer waited for its turn."
    )


class AdminGate:
    """One per engine; ``hold`` seconds at most closed at a time (0: never closes)."""

    @classmethod
    def never_closed(cls) -> AdminGate:
        """A gate no request closes: what a part built without the engine's waits on."""
        return cls(0.0)

    def __init__(self, hold: float) -> None:
        self._policy = AdminFirst(hold)
        self._opened = trio.Event()
        self._opened.set()
        self._watchers: set[trio.Event] = set()
        self._closures = 0
        self._waits = 0

    @property
    def closed(self) -> bool:
        """Whether the work of the module docstring waits now."""
        return self._policy.opens_at(trio.current_time()) is not None

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
                for watcher in self._watchers:
                    watcher.set()

    @property
    def closed_hint(self) -> bool:
        """Whether the gate was closed as of the last request's start or end, or the
        last turn: a plain read, for a worker thread to poll between two slices of its
        work (the gate's bound on how long it stays closed is applied in the Trio
        thread, by :meth:`turn`)."""
        return self._policy.closed

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

    async def until_open(self, wake: trio.Event) -> None:
        """Return once the gate is open or ``wake`` is set, whichever comes first
        (always a checkpoint; cancellable, unlike :meth:`turn`: the caller holds
        nothing it could lose)."""
        opens_at = self._policy.opens_at(trio.current_time())
        if opens_at is None or wake.is_set():
            await trio.lowlevel.checkpoint()
            return
        self._follow()
        self._watchers.add(wake)
        try:
            with trio.move_on_at(opens_at):
                await wake.wait()
        finally:
            self._watchers.discard(wake)

    def statistics(self) -> AdminGateStatistics:
        return AdminGateStatistics(
            closed=int(self._policy.closed), closures=self._closures, waits=self._waits
        )

    def _follow(self) -> None:
        """A gate that has just closed gets an event of its own to open."""
        if self._policy.closed and self._opened.is_set():
            self._opened = trio.Event()
            self._closures += 1

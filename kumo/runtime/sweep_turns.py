"""Sweeps take turns: one chunk at a time, admin requests first.

A rule that matches thousands of queues sets thousands of actors sweeping at once, each
taking its queue's messages a chunk at a time (``EngineSettings.sweep_chunk``). If each
took its chunk as soon as the log's background lane had room, one batch of the event
loop would run a chunk of every actor the broadcaster had just woken: at 1,000,000
queued over 10,000 queues, 64 chunks of 512 messages in one batch, 70 ms in which no
request is read (docs/benchmarks.md). So the sweeping actors take turns: one chunk at a
time, in the order they asked, each handing the turn to the next, which runs its chunk
in a later batch, after the loop has looked at its sockets. And while admin requests
are answered (the engine's :class:`~kumo.runtime.admin_gate.AdminGate` is closed), the
actor whose turn it is waits first, within the gate's bounds.
"""

from __future__ import annotations

import trio

from kumo.runtime.admin_gate import AdminGate


class SweepTurns:
    """One per engine; ``admin_gate``: what the turn waits on first (none without it)."""

    def __init__(self, admin_gate: AdminGate | None = None) -> None:
        self._gate = admin_gate or AdminGate.never_closed()
        self._waiting = trio.lowlevel.ParkingLot()
        self._taken = False
        """Whether an actor has the turn (or has just been handed it)."""

    async def take(self) -> None:
        """Wait for the turn (always a checkpoint); :meth:`give` it on, whatever happens
        after. Not a context manager: 10,000 actors wait here at once during a sweep,
        and each object their waits allocate is one the garbage collector walks."""
        handed = self._taken
        if handed:
            # Parked in order; whoever hands over leaves ``_taken`` set for us.
            await self._waiting.park()
        self._taken = True
        try:
            if not handed:
                await trio.lowlevel.checkpoint()
            await self._gate.turn()
        except BaseException:
            self.give()
            raise

    def give(self) -> None:
        """Hand the turn to the next waiting, if any."""
        if self._waiting:
            self._waiting.unpark(count=1)
        else:
            self._taken = False

    @property
    def waiting(self) -> int:
        """Actors waiting for the turn."""
        return len(self._waiting)

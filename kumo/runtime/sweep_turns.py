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

An actor at rest need not even wake to join the line: the broadcaster decides a rule's
sweep in its hand (:meth:`QueueActor.deliver_nowait
<kumo.runtime.queue_actor.QueueActor.deliver_nowait>`) and :meth:`SweepTurns.queue`
puts a ticket in line for it, which wakes the actor when its turn comes. At 1,000,000
queued over 10,000 queues, that is 10,000 task steps fewer in the sweep's first half
second (docs/benchmarks.md).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import trio

from kumo.runtime.admin_gate import AdminGate

Ticket = Callable[[], None]
"""What :meth:`SweepTurns.queue` calls when the turn comes to a waiter that is not
parked here (its owner then holds the turn)."""


class SweepTurns:
    """One per engine; ``admin_gate``: what the turn waits on first (none without it)."""

    def __init__(self, admin_gate: AdminGate | None = None) -> None:
        self._gate = admin_gate or AdminGate.never_closed()
        self._waiting: OrderedDict[trio.lowlevel.Task | Ticket, trio.lowlevel.Task | None]
        self._waiting = OrderedDict()
        """In line, in order: a parked task (keyed by itself, or by the ticket it came
        with), or a ticket whose owner is not parked here (None)."""
        self._taken = False
        """Whether a waiter has the turn (or has just been handed it)."""
        self._handed: Ticket | None = None
        """The ticket the turn was handed to, until its owner takes it."""

    def queue(self, ticket: Ticket) -> None:
        """Join the line without waiting: ``ticket()`` is called when the turn comes (at
        once if it is free); its owner then calls :meth:`take` with it, and
        :meth:`give` after. Its owner may call :meth:`take` with it before the turn
        comes, to wait in its place; one that will not take it calls :meth:`leave`."""
        if self._taken:
            self._waiting[ticket] = None
        else:
            self._taken = True
            self._handed = ticket
            ticket()

    def leave(self, ticket: Ticket) -> None:
        """Leave the line joined with :meth:`queue`, or hand on the turn that came to
        ``ticket`` and that its owner will not take (a task cancelled meanwhile)."""
        if ticket in self._waiting:
            del self._waiting[ticket]
        elif self._handed is ticket:
            self.give()

    async def take(self, ticket: Ticket | None = None) -> None:
        """Wait for the turn (always a checkpoint, or right after the wake its ticket
        made); :meth:`give` it on, whatever happens after. ``ticket``: the one given to
        :meth:`queue`, by the waiter that joined the line with it (in its place, if the
        turn has not come yet).

        Not a context manager: 10,000 actors wait here at once during a sweep, and each
        object their waits allocate is one the garbage collector walks."""
        parked = False
        if ticket is not None and ticket is self._handed:
            # The turn came to it and woke its owner: that wait was the checkpoint.
            self._handed = None
            parked = True
        elif self._taken:
            # In line, in order; whoever hands over leaves ``_taken`` set for us.
            task = trio.lowlevel.current_task()
            key = task if ticket is None else ticket
            self._waiting[key] = task

            def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                del self._waiting[key]
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
            parked = True
        self._taken = True
        try:
            if not parked:
                await trio.lowlevel.checkpoint()
            await self._gate.turn()
        except BaseException:
            self.give()
            raise

    def give(self) -> None:
        """Hand the turn to the next in line, if any."""
        self._handed = None
        if not self._waiting:
            self._taken = False
            return
        key, task = self._waiting.popitem(last=False)
        if task is not None:
            trio.lowlevel.reschedule(task)
        else:
            assert not isinstance(key, trio.lowlevel.Task)
            self._handed = key
            key()

    @property
    def waiting(self) -> int:
        """Waiters in line (parked, or with a ticket)."""
        return len(self._waiting)

"""The task that ends rules (bounces, suspensions, ready-queue suspensions) when the
engine clock passes their expiry."""

from __future__ import annotations

import math

import trio

from kumo.model.events import BounceExpired, Event, ReadySuspendExpired, SuspendExpired
from kumo.runtime.clock import EngineClock
from kumo.runtime.log_writer import DiskFullError, LogWriter, WritesStoppedError
from kumo.runtime.projection import Projection


class RuleExpiry:
    """Appends ``BounceExpired`` (``SuspendExpired``, ``ReadySuspendExpired``) for each
    rule (suspension, ready-queue suspension) once the clock passes its ``expires_at``.

    It sleeps until the earliest expiry of the rules not yet ended, or until a rule is
    issued (which may expire sooner), reading time only through the engine clock.
    """

    def __init__(
        self, log: LogWriter, projection: Projection, clock: EngineClock, *, retry: float = 1.0
    ) -> None:
        """``retry``: seconds between tries while the disk is full."""
        self._retry = retry
        self._log = log
        self._projection = projection
        self._clock = clock

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        rules = self._projection.state.rules
        suspends = self._projection.state.suspends
        ready = self._projection.state.ready_suspends
        issued = self._projection.rules_issued
        while True:
            seen = issued.value
            now = self._clock.now()
            due: list[Event] = [BounceExpired(rule.id) for rule in rules.due_to_expire(now)]
            due += [SuspendExpired(rule.id) for rule in suspends.due_to_expire(now)]
            due += [ReadySuspendExpired(s.id) for s in ready.due_to_expire(now)]
            if due:
                try:
                    await self._log.append(due)
                except DiskFullError:
                    # Tried again once space may be back; the rules end late, not never.
                    await trio.sleep(self._retry)
                except WritesStoppedError:
                    return  # nothing will be written again; the next start ends them
                continue
            expiries = [
                expiry
                for expiry in (rules.next_expiry(), suspends.next_expiry(), ready.next_expiry())
                if expiry is not None
            ]
            deadline = self._clock.deadline(min(expiries)) if expiries else math.inf
            with trio.move_on_at(deadline):
                await issued.wait_for(seen + 1)

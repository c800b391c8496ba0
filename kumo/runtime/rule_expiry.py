"""The task that ends rules when the engine clock passes their expiry."""

from __future__ import annotations

import math

import trio

from kumo.model.events import BounceExpired
from kumo.runtime.clock import EngineClock
from kumo.runtime.log_writer import LogWriter
from kumo.runtime.projection import Projection


class RuleExpiry:
    """Appends ``BounceExpired`` for each rule once the clock passes its ``expires_at``.

    It sleeps until the earliest expiry of the rules not yet ended, or until a rule is
    issued (which may expire sooner), reading time only through the engine clock.
    """

    def __init__(self, log: LogWriter, projection: Projection, clock: EngineClock) -> None:
        self._log = log
        self._projection = projection
        self._clock = clock

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        rules = self._projection.state.rules
        issued = self._projection.rules_issued
        while True:
            seen = issued.value
            due = rules.due_to_expire(self._clock.now())
            if due:
                await self._log.append([BounceExpired(rule_id=rule.id) for rule in due])
                continue
            next_expiry = rules.next_expiry()
            deadline = math.inf if next_expiry is None else self._clock.deadline(next_expiry)
            with trio.move_on_at(deadline):
                await issued.wait_for(seen + 1)

"""A child process for the rebind crash test: it SIGKILLs itself at a chosen point
between a rebind's ``RebindIssued`` and its queues' ``Rebound`` events.

Usage: python -m tests.runtime.rebind_crash_child DATA_DIR MODE

- ``issue``: queue mail in ``a.com`` and ``acme@a.com`` (and ``b.com``, which the rebind
  does not match), rebind ``domain=a.com`` to the routing domain ``relay``; when the first
  queue submits its ``Rebound``, inject one more message into ``a.com`` (durable: it came
  after the rebind) and die before the ``Rebound`` commits.
- ``issue-second``: the same, but die when the second queue submits its ``Rebound``,
  once the first one is committed.
- ``redo``: start on DATA_DIR and die when the start submits the moves it owes.
- ``redo-after``: start on DATA_DIR and die right after those moves are committed.

It never exits by itself: the parent expects it to die by SIGKILL.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from kumo.model.criteria import Criteria
from kumo.model.events import Event, Rebound
from kumo.model.requests import RebindRequest
from kumo.runtime.engine import Engine, open_engine
from kumo.runtime.log_writer import LogWriter
from tests.runtime.harness import message

LATE = "late@a.com"


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def committed(log: LogWriter) -> None:
    """Return once everything submitted to the background lane is committed."""
    # The lane has no event to wait on; the child is about to die anyway.
    while log.background_pending():  # noqa: ASYNC110
        await trio.sleep(0.001)


def at_the_rebound(mode: str, engine: list[Engine]) -> None:
    """Make the writer die at ``mode``'s point (the chosen point of the crash)."""
    original = LogWriter.submit
    seen = 0
    first_submitted = trio.Event()

    async def submit(self: LogWriter, events: Sequence[Event]) -> None:
        nonlocal seen
        if not any(isinstance(event, Rebound) for event in events):
            await original(self, events)
            return
        seen += 1
        if (mode == "issue" and seen > 1) or (mode == "issue-second" and seen > 2):
            await trio.sleep_forever()  # the crash is under way in another queue's task
        if mode == "issue" or (mode == "issue-second" and seen == 2):
            if seen == 2:
                await first_submitted.wait()
            await committed(self)
            if mode == "issue":
                await engine[0].inject([message(LATE)])
            die()
        if mode == "redo":
            die()
        await original(self, events)
        first_submitted.set()
        if mode == "redo-after":
            await committed(self)
            die()

    LogWriter.submit = submit  # type: ignore[method-assign]


async def main(data_dir: Path, mode: str) -> None:
    engine: list[Engine] = []
    at_the_rebound(mode, engine)
    async with open_engine(data_dir, threads=False) as opened:
        engine.append(opened)
        if mode.startswith("issue"):
            await opened.inject([message(f"r{n}@a.com") for n in range(3)])
            await opened.inject([message(f"t{n}@a.com", tenant="acme") for n in range(2)])
            await opened.inject([message("other@b.com")])
            await opened.rebind(
                RebindRequest(Criteria(domain="a.com"), "relay it", {"routing_domain": "relay"}),
                issued_by="ops",
            )
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), sys.argv[2])

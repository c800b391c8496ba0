"""How ``kumo serve`` stops: the three stop signals and what each one means.

``kumo serve`` counts SIGINT and SIGTERM alike, from the moment it starts serving until
it has closed its store:

1. The first **requests** a graceful stop: the server stops accepting connections, gives
   requests in flight a moment to finish, then the engine finishes the work under way
   (sweeps, delivery-log records) and closes the store.
2. The second **hurries** it: requests still in flight are dropped, the engine stops
   waiting for its work, and the store is still closed cleanly; the exit status is
   still 0. What was not waited for is owed, and the next start finishes it.
3. The third **exits at once** with :data:`FORCED_EXIT_STATUS`, without closing the
   store. Nothing acknowledged is lost: the event log is durable before any reply, and
   the next start recovers exactly as it does after SIGKILL.

Each signal is reported on stderr in one line that says what happens next. The
stages themselves are run by whoever serves (:mod:`kumo.cli.serve`), which registers
what to cut when the stop is hurried (:meth:`Shutdown.when_hurried`).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Final, NoReturn

import trio

FORCED_EXIT_STATUS: Final = 3
"""Exit status after a third stop signal: stopped at once, the store left as after a
crash (0 is a clean stop, 1 a refusal to start, 2 a usage error)."""

STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


def report_on_stderr(line: str) -> None:
    """Print one line on stderr, at once."""
    print(line, file=sys.stderr, flush=True)


class Shutdown:
    """The stages of one stop (module docstring), advanced by :meth:`on_signal`.

    ``requested`` is set by the first signal (or by the caller: a test, or an embedding
    program that stops the server without a signal). ``report`` prints a line, ``exit``
    ends the process; both are parameters so that a test can watch them.
    """

    def __init__(
        self,
        *,
        requested: trio.Event | None = None,
        report: Callable[[str], None] = report_on_stderr,
        exit: Callable[[int], NoReturn] = os._exit,
    ) -> None:
        self.requested = trio.Event() if requested is None else requested
        self._report = report
        self._exit = exit
        self._signals = 0
        self._hurried = False
        self._on_hurry: list[Callable[[], None]] = []

    @property
    def hurried(self) -> bool:
        """Whether the stop was hurried (a second signal)."""
        return self._hurried

    def when_hurried(self, cut: Callable[[], None]) -> None:
        """Call ``cut`` (which must not block) when the stop is hurried: at once if it
        already is."""
        if self._hurried:
            cut()
        else:
            self._on_hurry.append(cut)

    def report(self, line: str) -> None:
        """Report a stage of the stop (one line)."""
        self._report(line)

    def hurry(self) -> None:
        """Stop waiting: run every cut registered with :meth:`when_hurried`."""
        self.requested.set()
        self._hurried = True
        cuts, self._on_hurry = self._on_hurry, []
        for cut in cuts:
            cut()

    def on_signal(self, signum: int) -> None:
        """Advance the stop by one stage for the signal ``signum``."""
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            self._report(
                f"kumo: {name}: stopping gracefully "
                "(a second signal stops waiting, a third exits at once)"
            )
            self.requested.set()
        elif self._signals == 2:
            self._report(
                f"kumo: {name} again: not waiting any longer; closing the store (requests "
                "in flight are dropped, work under way is left to the next start)"
            )
            self.hurry()
        else:
            self._report(
                f"kumo: {name} a third time: exiting now with status {FORCED_EXIT_STATUS}, "
                "store not closed (nothing acknowledged is lost: the next start recovers)"
            )
            self._exit(FORCED_EXIT_STATUS)

    async def watch_signals(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Feed SIGINT and SIGTERM to :meth:`on_signal` until cancelled.

        While this runs neither signal has its default effect (SIGTERM ends the
        process, SIGINT raises KeyboardInterrupt): run it for as long as there is
        anything to stop cleanly.
        """
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            task_status.started()
            async for signum in signals:
                self.on_signal(signum)

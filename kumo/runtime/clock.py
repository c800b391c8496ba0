"""The engine's one source of time.

Durations come from trio's clock, so that a test running under
``trio.testing.MockClock(autojump_threshold=0)`` takes a five-minute rule to its end in
milliseconds; timestamps are that clock plus a fixed wall-clock offset taken once, so
that a scenario replays bit for bit when the offset is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from kumo.model.duration import NANOS_PER_SECOND


class EngineClock:
    """Wall time in integer nanoseconds, advancing with trio's clock.

    Must be used inside ``trio.run``. ``wall_origin`` (ns since the epoch) is the wall
    time at the first reading; by default the real time then.
    """

    def __init__(self, wall_origin: int | None = None) -> None:
        self._wall_origin = wall_origin
        self._trio_origin: float | None = None

    def _anchor(self) -> tuple[int, float]:
        if self._trio_origin is None:
            self._trio_origin = trio.current_time()
            if self._wall_origin is None:
                self._wall_origin = time.time_ns()
        assert self._wall_origin is not None
        return self._wall_origin, self._trio_origin

    def now(self) -> int:
        """The current wall time, ns since the epoch."""
        wall, origin = self._anchor()
        return wall + round((trio.current_time() - origin) * NANOS_PER_SECOND)

    def reader(self) -> Callable[[], int]:
        """:meth:`now` for a worker thread, which cannot ask trio for the time: it reads
        the run's clock itself (trio's system clock reads ``time.perf_counter``, which
        any thread may). Call it in the Trio thread."""
        wall, origin = self._anchor()
        clock = trio.lowlevel.current_clock()
        return lambda: wall + round((clock.current_time() - origin) * NANOS_PER_SECOND)

    def deadline(self, wall: int) -> float:
        """A trio clock reading at which the wall time is at least ``wall``.

        A microsecond of slack absorbs float rounding, so that a task woken at this
        deadline always finds ``now() >= wall``.
        """
        origin_wall, origin = self._anchor()
        return origin + (wall - origin_wall) / NANOS_PER_SECOND + 1e-6

"""Days of history for the retention tests: traffic each day, a compaction at its end."""

from __future__ import annotations

from pathlib import Path

import trio

from kumo.model.settings import EngineSettings
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import open_engine
from kumo.store.compaction import compact
from tests.runtime.harness import WALL_ORIGIN, bounce, message

DAY = 86_400 * 1_000_000_000


def day(number: float) -> int:
    """The wall time ``number`` days into the history, ns since the epoch."""
    return WALL_ORIGIN + round(number * DAY)


def serve_day(data_dir: Path, number: int, *, received: int = 30) -> list[str]:
    """A day of traffic: ``received`` messages over three queues, one of which a rule
    (issued for a day) bounces; return the ids received."""

    async def run() -> list[str]:
        settings = EngineSettings(snapshot_every=0)
        async with open_engine(
            data_dir, clock=EngineClock(day(number)), settings=settings, threads=False
        ) as engine:
            ids = await engine.inject(
                [message(f"u{number}-{n}@d{n % 3}.example") for n in range(received)]
            )
            await engine.issue_bounce(
                bounce(domain=f"d{number % 3}.example", duration=DAY), issued_by="ops"
            )
            await engine.wait_idle()
            return ids

    return trio.run(run)


def days_of_history(data_dir: Path, days: int, *, retention: int | None) -> list[list[str]]:
    """``days`` days of traffic, each compacted at its end with ``retention``."""
    ids = []
    for number in range(days):
        ids.append(serve_day(data_dir, number))
        compact(data_dir, retention=retention, now=day(number + 0.5))
    return ids

"""SIGKILL a busy engine at random points; nothing acknowledged is lost or doubled."""

from __future__ import annotations

import random
import time
from pathlib import Path

from kumo.runtime.engine import open_engine
from tests.runtime.harness import run_and_kill
from tests.runtime.invariants import check_invariants, fold


async def test_sigkill_at_random_points_loses_and_repeats_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    data_dir, acks = tmp_path / "data", tmp_path / "acks"
    acks.touch()
    for round_number in range(6):
        # Most rounds die mid-work; every third may die during the restart's recovery.
        arguments = [str(data_dir), str(acks), str(round_number)]
        run_and_kill(
            "tests.runtime.crash_child",
            arguments,
            acks,
            rng.uniform(0.4, 1.5),
            from_start=round_number % 3 == 2,
        )
        time.sleep(0)  # noqa: ASYNC251 - the child is gone; nothing to wait for
    acknowledged = set(acks.read_text().split())
    async with open_engine(data_dir) as engine:
        await engine.wait_idle()
        check_invariants(data_dir, engine)
    _, received, bounced = fold(data_dir)
    assert acknowledged <= set(received)
    assert len(received) > 100, "the child did too little work to test anything"
    assert bounced

"""SIGKILL a busy engine at random points; nothing acknowledged is lost or doubled."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from kumo.runtime.engine import open_engine
from tests.runtime.invariants import check_invariants, fold

ROOT = Path(__file__).resolve().parents[2]


def run_and_kill(data_dir: Path, acks: Path, seed: int, after: float) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.crash_child", str(data_dir), str(acks), str(seed)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
    )
    try:
        child.wait(timeout=after)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
        child.wait()
        return
    raise AssertionError(
        f"child exited early: {child.stderr.read().decode() if child.stderr else ''}"
    )


async def test_sigkill_at_random_points_loses_and_repeats_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    data_dir, acks = tmp_path / "data", tmp_path / "acks"
    for round_number in range(6):
        # Early rounds die mid-work; some die during the restart's recovery itself.
        run_and_kill(data_dir, acks, seed=round_number, after=rng.uniform(0.4, 1.5))
        time.sleep(0)  # noqa: ASYNC251 - the child is gone; nothing to wait for
    acknowledged = set(acks.read_text().split())
    async with open_engine(data_dir) as engine:
        await engine.wait_idle()
        check_invariants(data_dir, engine)
    _, received, bounced = fold(data_dir)
    assert acknowledged <= set(received)
    assert len(received) > 100, "the child did too little work to test anything"
    assert bounced

"""A crash between a rebind and its moves: the next start redoes each queue's move, once,
whatever point a SIGKILL hits (the child kills itself at the chosen point:
:mod:`tests.runtime.rebind_crash_child`)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
from click.testing import CliRunner

from kumo.cli.audit import replay
from kumo.model.events import MessageReceived, RebindIssued, Rebound
from kumo.runtime.engine import open_engine
from kumo.store.verify import verify_data_dir
from tests.live_server import events_after
from tests.runtime.harness import ROOT, log_records
from tests.runtime.invariants import check_invariants

MOVED = {"a.com": ("a.com!relay", 3), "acme@a.com": ("acme@a.com!relay", 2)}


def crash(data_dir: Path, mode: str) -> None:
    """Run the child in ``mode`` until it kills itself."""
    child = subprocess.run(
        [sys.executable, "-m", "tests.runtime.rebind_crash_child", str(data_dir), mode],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()


def rebounds(data_dir: Path) -> Counter[tuple[str, str, int]]:
    """(from, to, messages) of each ``Rebound`` in the log, counted."""
    return Counter(
        (c.event.queue, c.event.to_queue, len(c.event.messages))
        for c in events_after(data_dir, 0)
        if isinstance(c.event, Rebound)
    )


def no_violations(data_dir: Path) -> None:
    report = verify_data_dir(data_dir)
    assert report.violations == [], report.violations


def owed_moves(data_dir: Path) -> dict[str, int]:
    """What ``kumo replay --verify`` says the rebinds still owe (rebind id -> messages),
    checked against its notes."""
    report = verify_data_dir(data_dir)
    result = CliRunner().invoke(replay, ["--data-dir", str(data_dir), "--verify"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note: rebind ")]
    assert notes == [
        f"note: rebind {rebind_id} still owes the move of {count:,} message(s), cut short "
        "by a crash; the next start finishes it"
        for rebind_id, count in sorted(report.owed_rebinds.items())
    ]
    json = CliRunner().invoke(replay, ["--data-dir", str(data_dir), "--verify", "--format", "json"])
    assert orjson.loads(json.output)["owed_rebinds"] == report.owed_rebinds
    return report.owed_rebinds


async def restart_and_check(data_dir: Path) -> None:
    """A plain start finishes what is owed; then every move is in the log once, the
    late message stayed, and every invariant holds."""
    async with open_engine(data_dir, threads=False) as engine:
        await engine.wait_idle()
        check_invariants(data_dir, engine)
        assert engine.queue_counts() == {
            "a.com": 1,
            "a.com!relay": 3,
            "acme@a.com!relay": 2,
            "b.com": 1,
        }
    assert rebounds(data_dir) == Counter(
        {(old, new, count): 1 for old, (new, count) in MOVED.items()}
    )
    records = [r for r in log_records(data_dir) if r["type"] == "AdminRebind"]
    assert len(records) == len({r["id"] for r in records}) == 5
    no_violations(data_dir)


async def test_a_crash_before_any_move_is_redone_once_by_the_next_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    crash(data_dir, "issue")
    events = [c.event for c in events_after(data_dir, 0)]
    [issued] = [i for i, event in enumerate(events) if isinstance(event, RebindIssued)]
    # The late message came after the rebind, and no queue's move was committed.
    late = [e for e in events[issued:] if isinstance(e, MessageReceived)]
    assert [e.recipient for e in late] == ["late@a.com"]
    assert rebounds(data_dir) == Counter()
    no_violations(data_dir)
    rebind = events[issued]
    assert isinstance(rebind, RebindIssued)
    rebind_id = rebind.rebind_id
    # Both queues' moves are owed (the late message stays where it is).
    assert owed_moves(data_dir) == {rebind_id: 5}
    # The start that redoes the moves dies before committing them: they are still owed.
    crash(data_dir, "redo")
    assert rebounds(data_dir) == Counter()
    assert owed_moves(data_dir) == {rebind_id: 5}
    # This one dies right after committing them: the next start owes nothing more.
    crash(data_dir, "redo-after")
    assert rebounds(data_dir) == Counter(
        {(old, new, count): 1 for old, (new, count) in MOVED.items()}
    )
    no_violations(data_dir)
    assert owed_moves(data_dir) == {}
    await restart_and_check(data_dir)


async def test_a_crash_after_one_queue_moved_redoes_only_the_other(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    crash(data_dir, "issue-second")
    [done] = rebounds(data_dir)
    assert done[0] in MOVED
    no_violations(data_dir)
    # The other queue's move is owed, and only that.
    [count] = [count for queue, (_, count) in MOVED.items() if queue != done[0]]
    assert list(owed_moves(data_dir).values()) == [count]
    async with open_engine(data_dir, threads=False) as engine:
        await engine.wait_idle()
        counts = engine.queue_counts()
    assert counts == {"a.com!relay": 3, "acme@a.com!relay": 2, "b.com": 1}
    assert rebounds(data_dir) == Counter(
        {(old, new, count): 1 for old, (new, count) in MOVED.items()}
    )
    no_violations(data_dir)

"""``kumo compact``: offline compaction, with what it did in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import trio
from click.testing import CliRunner

from kumo.cli.kumo import main
from kumo.model.settings import EngineSettings
from kumo.runtime.engine import open_engine
from kumo.store.archive import archive_segments
from kumo.store.layout import ARCHIVE, COMPACTION_LOCK, DATABASE, SNAPSHOTS
from kumo.store.lock import DataDirectoryLock
from kumo.store.verify import verify_data_dir
from tests.runtime.harness import bounce, message

BODY = b"x" * 2000


def served(data_dir: Path) -> None:
    """A directory whose history is mostly bounced: 3,000 received, 2,000 bounced."""

    async def fill() -> None:
        settings = EngineSettings(snapshot_every=0)
        async with open_engine(data_dir, settings=settings) as engine:
            for start in range(0, 3000, 500):
                await engine.inject(
                    [
                        message(f"u{n}@d{n % 3}.example", body=b"x" * 2000)
                        for n in range(start, start + 500)
                    ]
                )
            for domain in ("d0.example", "d1.example"):
                await engine.issue_bounce(bounce(domain=domain), issued_by="tester")
            await engine.wait_idle()

    trio.run(fill)


def test_compact_archives_the_history_and_gives_the_space_back(tmp_path: Path) -> None:
    served(tmp_path)
    before = (tmp_path / DATABASE).stat().st_size
    result = CliRunner().invoke(main, ["compact", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "events archived" in result.output
    [segment] = archive_segments(tmp_path / ARCHIVE)
    assert segment.first_seq == 1
    # The spool of the 1,000 messages still queued stays; the events are archived.
    assert (tmp_path / DATABASE).stat().st_size < before
    report = verify_data_dir(tmp_path)
    assert report.violations == []
    assert (report.received, report.bounced, report.queued) == (3000, 2000, 1000)
    again = CliRunner().invoke(main, ["compact", "--data-dir", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert again.output.startswith("no new snapshot (nothing since the last one); 0 events")


def test_compact_refuses_a_directory_in_use(tmp_path: Path) -> None:
    served(tmp_path)
    lock = DataDirectoryLock(tmp_path)
    try:
        result = CliRunner().invoke(main, ["compact", "--data-dir", str(tmp_path)])
    finally:
        lock.release()
    assert result.exit_code == 1
    assert "is in use by another kumo process" in result.output


def test_compact_without_a_log_says_so(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["compact", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f"no event log at {tmp_path / DATABASE}" in result.output


def test_a_compaction_beside_another_one_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    """A compaction that a killed server had started goes on after it; the restarted
    server's, or an operator's, must not race it for the same files."""
    served(tmp_path)
    running = DataDirectoryLock(tmp_path, COMPACTION_LOCK, "another compaction")
    try:
        result = CliRunner().invoke(main, ["compact", "--data-dir", str(tmp_path)])
        assert result.exit_code == 1
        assert f"is in use by another compaction (pid {os.getpid()})" in result.output
        child = subprocess.run(
            [sys.executable, "-m", "kumo.store.compaction", str(tmp_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert child.returncode == 1
        assert child.stdout == ""
        assert "kumo: compaction failed: data directory" in child.stderr
        assert "in use by another compaction" in child.stderr
        assert archive_segments(tmp_path / ARCHIVE) == []
        assert list((tmp_path / SNAPSHOTS).glob("*.snapshot")) == []
    finally:
        running.release()
    assert CliRunner().invoke(main, ["compact", "--data-dir", str(tmp_path)]).exit_code == 0
    [_segment] = archive_segments(tmp_path / ARCHIVE)

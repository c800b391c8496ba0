"""One engine per data directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio.testing

from kumo.runtime.engine import DataDirectoryLockedError, open_engine
from kumo.store.lock import DataDirectoryLock


def test_a_second_lock_is_refused_until_the_first_is_released(tmp_path: Path) -> None:
    first = DataDirectoryLock(tmp_path)
    with pytest.raises(
        DataDirectoryLockedError, match=f"in use by another kumo process \\(pid {os.getpid()}\\)"
    ):
        DataDirectoryLock(tmp_path)
    first.release()
    first.release()  # idempotent
    DataDirectoryLock(tmp_path).release()


async def test_a_second_engine_on_the_same_directory_refuses_to_start(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_engine(tmp_path, threads=False):
        with pytest.raises(DataDirectoryLockedError):
            async with open_engine(tmp_path, threads=False):
                pass
    async with open_engine(tmp_path, threads=False):
        pass  # released on shutdown

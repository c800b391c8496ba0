"""One writer per data directory: an advisory lock held while an engine has it open.

Two engines on one directory would both assign the same sequence numbers; the second
would fail at its first write, after it had already answered requests. The lock makes
it refuse at start instead. Readers (audits) take no lock: SQLite's WAL lets them read
beside the writer.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Final

from kumo.store.layout import LOCK

_NO_PID: Final = "unknown"


class DataDirectoryLockedError(Exception):
    """Another process holds the data directory."""


class DataDirectoryLock:
    """An exclusive ``flock`` on ``<data-dir>/kumo.lock``, released on :meth:`release`.

    The kernel drops the lock when the process dies, so a crash never leaves a stale
    lock behind. The file holds the owner's pid, for the error message only.
    """

    def __init__(
        self, data_dir: Path, name: str = LOCK, what: str = "another kumo process"
    ) -> None:
        """``name`` and ``what``: another lock file in the directory, and who holds it
        when it is taken (for the message of :class:`DataDirectoryLockedError`)."""
        path = data_dir / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or _NO_PID
            os.close(fd)
            raise DataDirectoryLockedError(
                f"data directory {data_dir} is in use by {what} (pid {owner})"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> DataDirectoryLock:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()

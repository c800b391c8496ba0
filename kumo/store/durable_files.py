"""Putting a whole file in place so that a crash or a power failure leaves either the
old state or the new one: write it under a temporary name, fsync it, rename it over the
real name, fsync the directory (the rename itself must survive)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

WRITE_PIECE: Final = 4 << 20
"""Bytes of a big file (a snapshot, an archive segment) written and synced at a time,
so that a server committing beside the writer never has its fsync wait for the
writeback of the whole file (a 1,000,000-message snapshot is about 70 MB)."""


def fsync_directory(directory: Path) -> None:
    """Make the renames and removals in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(temporary: Path, path: Path) -> None:
    """Fsync ``temporary`` (written whole, closed), rename it to ``path`` and fsync the
    directory: ``path`` then holds the new file, whatever happens next."""
    with open(temporary, "rb+") as file:
        os.fsync(file.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)

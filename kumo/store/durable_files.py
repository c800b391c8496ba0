"""Putting a whole file in place so that a crash or a power failure leaves either the
old state or the new one: write it under a temporary name, fsync it, rename it over the
real name, fsync the directory (the rename itself must survive)."""

from __future__ import annotations

import os
from pathlib import Path


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

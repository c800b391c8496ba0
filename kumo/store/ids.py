"""Random identifiers (spool ids, event ids), drawn in bulk.

``secrets.token_hex`` makes one ``getrandom`` system call per id; an inject of a
hundred recipients needs two hundred ids, so they are drawn with one call.
"""

from __future__ import annotations

import os


def random_ids(count: int) -> list[str]:
    """``count`` independent random 128-bit ids as 32 lowercase hex digits each."""
    text = os.urandom(16 * count).hex()
    return [text[start : start + 32] for start in range(0, 32 * count, 32)]


def ordered_ids(count: int, time: int) -> list[str]:
    """``count`` unique event ids for a transaction committed at ``time`` (ns), sorted.

    Each is 32 lowercase hex digits: the time (64 bits) and then 64 random bits. The
    log's unique index on event ids then grows at its right edge, as the log does:
    random ids would land on a different index page each, and every transaction would
    rewrite (and write to the WAL) as many pages as it has events. Commit times never
    decrease along the log, so neither do the ids; ids of one time differ by their
    random part.
    """
    prefix = f"{time & 0xFFFF_FFFF_FFFF_FFFF:016x}"
    text = os.urandom(8 * count).hex()
    return sorted(prefix + text[start : start + 16] for start in range(0, 16 * count, 16))

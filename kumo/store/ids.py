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

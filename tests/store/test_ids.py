"""Random ids drawn in bulk."""

from __future__ import annotations

import re

from kumo.store.ids import random_ids


def test_ids_are_32_lowercase_hex_digits_and_distinct() -> None:
    ids = random_ids(1_000)
    assert len(ids) == 1_000
    assert all(re.fullmatch("[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == 1_000
    assert random_ids(0) == []

"""Whole files put in place durably."""

from __future__ import annotations

from pathlib import Path

from kumo.store.durable_files import replace_durably


def test_the_new_file_replaces_the_old_and_the_temporary_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_bytes(b"old")
    temporary = tmp_path / "state.tmp"
    temporary.write_bytes(b"new")
    replace_durably(temporary, path)
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]

"""The database's structure: SQLite's checks, each finding named by its table (issue 12:
damage to a spool page, the id index or the meta table passed ``replay --verify``)."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from kumo.store.event_log import StoreDamagedError
from kumo.store.integrity import PARTS, UNREACHED, check_structure, checked_beside
from tests.page_damage import build_store, damage

SPOOL, EVENTS, ID_INDEX, META = (
    PARTS[name] for name in ("spool", "events", "sqlite_autoindex_events_1", "meta")
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "events.sqlite3"
    build_store(path)
    return path


@pytest.fixture
def store(template: Path, tmp_path: Path) -> Path:
    path = tmp_path / "events.sqlite3"
    shutil.copyfile(template, path)
    return path


@pytest.mark.parametrize("thorough", [False, True])
def test_a_sound_store_has_no_findings(store: Path, thorough: bool) -> None:
    assert check_structure(store, thorough=thorough) == []
    # Read as it is: no -wal or -shm file left beside a database no one has open.
    assert sorted(path.name for path in store.parent.iterdir()) == [store.name]


@pytest.mark.parametrize("thorough", [False, True])
@pytest.mark.parametrize(
    ("name", "kind", "part"),
    [
        ("spool", "internal", SPOOL),
        ("spool", "leaf", SPOOL),
        ("sqlite_autoindex_events_1", "internal", ID_INDEX),
        ("sqlite_autoindex_events_1", "leaf", ID_INDEX),
        ("events", "internal", EVENTS),
        ("events", "leaf", EVENTS),
        ("meta", "leaf", META),
    ],
)
def test_a_damaged_page_is_named_by_its_table(
    store: Path, thorough: bool, name: str, kind: str, part: str
) -> None:
    page = damage(store, name, kind)

    found = check_structure(store, thorough=thorough)

    assert found, "the damage went unseen"
    first = found[0]
    assert first.part == part
    assert f"{page}" in first.findings[0]
    # Anything else is the pages the damaged one cut off.
    assert {damage.part for damage in found[1:]} <= {UNREACHED}


def test_a_file_that_is_no_database_is_left_to_its_opener(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    path.write_bytes(b"not a database, long enough to tell" * 200)
    with pytest.raises(sqlite3.DatabaseError, match="file is not a database"):
        check_structure(path, thorough=False)


def test_damage_found_beside_a_block_replaces_its_error(store: Path) -> None:
    damage(store, "spool", "internal")

    with pytest.raises(StoreDamagedError) as caught, checked_beside(store):
        raise sqlite3.DatabaseError("database disk image is malformed")

    message = str(caught.value)
    assert message.startswith(f"the event log {store} is damaged: {SPOOL}: Page ")
    assert message.endswith(
        f"; run `kumo replay --verify --data-dir {store.parent}` for the whole report, and "
        "restore the data directory from a backup"
    )
    assert "\n" not in message
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)


def test_damage_found_beside_a_block_that_succeeded_is_raised(store: Path) -> None:
    damage(store, "meta", "leaf")
    ran = []
    with (
        pytest.raises(StoreDamagedError, match=re.escape(f": {META}: Page ")),
        checked_beside(store),
    ):
        ran.append(True)
    assert ran == [True]


def test_a_sound_store_lets_the_block_and_its_errors_through(store: Path, tmp_path: Path) -> None:
    with checked_beside(store):
        pass
    with pytest.raises(KeyError), checked_beside(store):
        raise KeyError("the block's own")
    with checked_beside(tmp_path / "none.sqlite3"):  # not created yet: nothing to check
        pass

"""Damage to the pages of an event log database, made reproducibly, for the tests of
corruption (issue 12).

A page is found with SQLite's ``dbstat`` table (which b-tree it belongs to, interior
or leaf) and overwritten in place at a byte offset inside it, as a bad disk sector
or a stray write would; the database must not be open while it is done.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Final

from kumo.model.events import Event, MessageReceived
from kumo.store.sqlite_log import SqliteEventStore

NOISE: Final = b"\xa5" * 16
"""What a damaged page gets written over it."""
BODY: Final = b"Subject: spooled\r\n\r\n" + b"x" * 80 + b"\r\n"


def received(n: int) -> MessageReceived:
    return MessageReceived(f"{n:032x}", f"q{n % 7}.example", "s@x", f"r{n}@example", len(BODY))


def build_store(path: Path, messages: int = 2_000, *, time: int = 10**18) -> None:
    """A log of ``messages`` received messages, each with its content spooled: enough
    rows that the events table, its id index and the spool each have an interior page
    above their leaves."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(SqliteEventStore(path)) as store:
        events: list[Event] = [received(n) for n in range(messages)]
        store.commit(events, time=time, bodies=dict.fromkeys(range(messages), BODY))
        store.set_meta("node_id", "node-1")


def pages_of(path: Path, name: str, kind: str) -> list[int]:
    """The pages of b-tree ``name`` (a table or index) of kind ``internal`` or
    ``leaf``, in page order."""
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = ? ORDER BY pageno",
            (name, kind),
        ).fetchall()
    assert rows, f"{name} has no {kind} page"
    return [page for (page,) in rows]


def overwrite_page(path: Path, page: int, *, offset: int = 0, data: bytes = NOISE) -> None:
    """Write ``data`` over page ``page`` of the database at ``path``, at ``offset``
    bytes into the page (0: its header)."""
    with closing(sqlite3.connect(path)) as db:
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
    with path.open("r+b") as file:
        file.seek((page - 1) * page_size + offset)
        file.write(data)


def damage(path: Path, name: str, kind: str = "internal", *, offset: int = 0) -> int:
    """Overwrite the header of the first ``kind`` page of b-tree ``name``; return it."""
    page = pages_of(path, name, kind)[0]
    overwrite_page(path, page, offset=offset)
    return page

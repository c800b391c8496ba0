"""The event log database's own structure: SQLite's integrity checks, named by table.

The hash chain (:mod:`kumo.store.verify`) proves the events' contents; it cannot see a
damaged page of the spool, of the id index or of the meta table, and a damaged page of
the events table shows only as an error in the middle of a read. SQLite checks every
page of its b-trees itself:

- ``PRAGMA quick_check``: every page of every table and index is a well-formed b-tree
  page, reached once, its cells and overflow chains in bounds, rows in order. 0.84 s
  on a store of 1,000,000 queued messages (450 MiB, in the page cache). ``kumo serve``
  runs it at every start, beside the replay (:func:`checked_beside`).
- ``PRAGMA integrity_check``: all of that, and every index holds exactly its table's
  rows (a damaged id index whose pages still parse). 1.38 s on the same store.
  ``kumo replay --verify`` runs it.

SQLite reports pages by number; :func:`check_structure` says which table (or index)
each finding is in, by walking each b-tree's pages with the ``dbstat`` table.
Nothing here writes.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from contextlib import ContextDecorator, closing, suppress
from pathlib import Path
from types import TracebackType
from typing import Final

import attrs

from kumo.store.event_log import StoreDamagedError

PARTS: Final = {
    "sqlite_schema": "the schema (page 1)",
    "events": "the events table (the log)",
    "sqlite_autoindex_events_1": "the events table's id index",
    "spool": "the spool (message contents)",
    "meta": "the meta table (node id)",
    "sqlite_autoindex_meta_1": "the meta table's key index",
}
"""What each b-tree of the database holds, as a finding names it."""
UNREACHED: Final = "pages no table reaches"
"""The part of pages that belong to no b-tree (below a damaged page, or leaked)."""
WHOLE_FILE: Final = "the database file"

_TABLES: Final = {
    "events": f"{PARTS['events']} or its id index",
    "spool": PARTS["spool"],
    "meta": f"{PARTS['meta']} or its key index",
}
"""Each table, and what a finding of a check of it alone (with its indexes) names."""
_LIMITS: Final = (100, 10, 1)
_MALFORMED: Final = "database disk image is malformed"
_SQLITE_NOTADB: Final = 26
_PAGE: Final = re.compile(r"\b(?:[Pp]age|[Tt]ree) (\d+)\b")
_NEVER_USED: Final = re.compile(r"^Page (\d+) is never used$")
_INDEX: Final = re.compile(r"\bindex (\w+)")
_COLUMN: Final = re.compile(r"\bin (\w+)\.\w+")


@attrs.frozen
class Damage:
    """What SQLite found wrong in one part of the database (a table, an index)."""

    part: str
    """What the part holds, from :data:`PARTS` (or :data:`UNREACHED`, :data:`WHOLE_FILE`)."""
    findings: tuple[str, ...]
    """SQLite's own words, one finding each, in the order it reported them."""


def check_structure(path: Path, *, thorough: bool) -> list[Damage]:
    """Check the pages of the database at ``path``: ``PRAGMA integrity_check`` if
    ``thorough``, else ``PRAGMA quick_check`` (see the module docstring for what each
    covers and costs). Returns ``[]`` when the structure is sound, else one
    :class:`Damage` per damaged part, in order of the parts of :data:`PARTS`.

    Reads through a read-only connection of its own, beside any writer. A file that is
    not a database at all raises ``sqlite3.DatabaseError`` (the caller's own open says
    so in its words); other errors of the check are findings.
    """
    with closing(_connect(path)) as db:
        pragma = "integrity_check" if thorough else "quick_check"
        limit = _LIMITS[0]
        for limit in _LIMITS:
            # SQLite hands its findings over at the end, in one row; a check that
            # meets damage it cannot step over raises instead, and they are lost.
            # Fewer findings may stop it before it gets there.
            lines, stopped = _run(db, f"PRAGMA {pragma}({limit})")
            if stopped is None or lines:
                break
        if stopped is not None and stopped.sqlite_errorcode == _SQLITE_NOTADB:
            raise stopped
        if lines == ["ok"] and stopped is None:
            return []
        if len(lines) > 1:
            # The summary SQLite adds after the findings.
            lines = [line for line in lines if line != _MALFORMED]
        owners = _page_owners(db)
        found: dict[str, list[str]] = {}
        unreached = 0
        for line in lines:
            if _NEVER_USED.match(line):
                unreached += 1
            else:
                found.setdefault(_part_of(line, owners), []).append(line)
        if stopped is not None:
            # SQLite stops a check at some damage instead of reporting it: check the
            # tables one by one to say which.
            for table, part in _TABLES.items():
                table_lines, table_stopped = _run(db, f"PRAGMA {pragma}({table})")
                if table_stopped is not None or table_lines != ["ok"]:
                    found.setdefault(part, []).extend(
                        [*table_lines, str(table_stopped)] if table_stopped else table_lines
                    )
            if not found:
                found[WHOLE_FILE] = [str(stopped)]
    if unreached:
        counted = "at least " if len(lines) >= limit else ""
        found.setdefault(UNREACHED, []).append(
            f"{counted}{unreached} page(s) that no table reaches (cut off below a damaged page)"
        )
    order = [*PARTS.values()]
    return [
        Damage(part, tuple(findings))
        for part, findings in sorted(
            found.items(),
            key=lambda item: order.index(item[0]) if item[0] in order else len(order),
        )
    ]


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FileNotFoundError(f"no event log at {path}")
    uri = path.resolve().as_uri() + "?mode=ro"
    if not path.with_name(path.name + "-wal").exists():
        # No writer has it open: read it as it is, without creating -wal and -shm files
        # beside it (as kumo.store.log_view does).
        uri += "&immutable=1"
    db = sqlite3.connect(uri, uri=True, isolation_level=None)
    # A small cache: the check reads each page once.
    db.execute("PRAGMA cache_size=-8192")
    return db


def _run(db: sqlite3.Connection, sql: str) -> tuple[list[str], sqlite3.DatabaseError | None]:
    """The lines a check printed, and the error that stopped it, if one did."""
    lines: list[str] = []
    try:
        for (text,) in db.execute(sql):
            lines.extend(line for line in str(text).splitlines() if not line.startswith("***"))
    except sqlite3.DatabaseError as exc:
        return lines, exc
    return lines, None


def _page_owners(db: sqlite3.Connection) -> dict[int, str]:
    """Page number -> name of the b-tree it belongs to, for every page that can be
    reached; a b-tree whose walk fails keeps the pages found before it failed."""
    owners: dict[int, str] = {1: "sqlite_schema"}
    try:
        names = db.execute("SELECT name, rootpage FROM sqlite_schema WHERE rootpage > 0").fetchall()
    except sqlite3.DatabaseError:
        return owners
    for name, root in names:
        owners[int(root)] = str(name)
    for name, _ in names:
        try:
            for (page,) in db.execute("SELECT pageno FROM dbstat WHERE name = ?", (name,)):
                owners.setdefault(int(page), str(name))
        except sqlite3.DatabaseError:
            continue
    return owners


def _part_of(line: str, owners: dict[int, str]) -> str:
    """Which part of the database a finding is about."""
    if match := _INDEX.search(line):
        return PARTS.get(match.group(1), match.group(1))
    if match := _PAGE.search(line):
        name = owners.get(int(match.group(1)))
        if name is not None:
            return PARTS.get(name, name)
    if match := _COLUMN.search(line):
        return PARTS.get(match.group(1), match.group(1))
    return WHOLE_FILE


def damage_error(path: Path, damages: list[Damage]) -> StoreDamagedError:
    """The error that refuses a store with ``damages``: the first finding, how many
    more, and what to do."""
    first = damages[0]
    more = sum(len(damage.findings) for damage in damages) - 1
    return StoreDamagedError(
        str(path),
        f"{first.part}: {first.findings[0]}" + (f" (and {more} more finding(s))" if more else ""),
        f"run `kumo replay --verify --data-dir {path.parent}` for the whole report, and "
        "restore the data directory from a backup",
    )


class StructureCheck(ContextDecorator):
    """``PRAGMA quick_check`` of the database at ``path``, in a thread, while a block
    (or a decorated function) runs: a replay, so that the check reads pages while the
    replay decodes rows, each on its own CPU. Leaving waits for the check.

    Leaving raises :class:`~kumo.store.event_log.StoreDamagedError` naming the damage
    if the check found any, in place of whatever the block raised (a damaged page
    explains the read that failed on it; the block's error is chained). A database
    that does not exist yet is not checked. Not re-entrant.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread: threading.Thread | None = None
        self._found: list[Damage] = []

    def __enter__(self) -> None:
        self._found = []
        self._thread = None
        if self.path.is_file():
            self._thread = threading.Thread(target=self._check, name="kumo-quick-check")
            self._thread.start()

    def _check(self) -> None:
        # Not a database, gone, or unreadable: the block's own open says so.
        with suppress(OSError, sqlite3.Error):
            self._found = check_structure(self.path, thorough=False)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._found:
            raise damage_error(self.path, self._found) from error


def checked_beside(path: Path) -> StructureCheck:
    """A :class:`StructureCheck` of the database at ``path``."""
    return StructureCheck(path)

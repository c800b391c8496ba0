"""Where things live in a data directory; every layer that reads one agrees here."""

from __future__ import annotations

from typing import Final

DATABASE: Final = "events.sqlite3"
"""The event log and the spool (SQLite, WAL mode)."""
LOGS: Final = "logs"
"""The delivery-log segments and their checkpoint; :mod:`kumo.store.delivery_files`
owns what is inside."""
LOCK: Final = "kumo.lock"
"""Held (``flock``) by the engine that has the directory open."""
COMPACTION_LOCK: Final = "compaction.lock"
"""Held (``flock``) by the compaction running on the directory, if any."""
SNAPSHOTS: Final = "snapshots"
"""Snapshots of the folded state; :mod:`kumo.store.snapshots` owns what is inside."""
ARCHIVE: Final = "archive"
"""Archive segments of old events; :mod:`kumo.store.archive` owns what is inside."""

"""The SQLite event store: gapless, chained, spooled, refusing a damaged log."""

from __future__ import annotations

import sqlite3
import threading
from array import array
from pathlib import Path
from time import monotonic

import pytest

from kumo.model.criteria import Criteria
from kumo.model.events import Bounced, BounceIssued, Event, Message, MessageReceived
from kumo.model.settings import EngineSettings
from kumo.store.event_log import LogCorruptError
from kumo.store.sqlite_log import (
    EVENTS_PER_STATEMENT,
    GENESIS,
    SqliteEventStore,
    chain_link,
)


def received(n: int) -> MessageReceived:
    return MessageReceived(f"{n:032x}", "q", "s@x", f"r{n}@y", 3)


def test_commit_assigns_gapless_seqs_and_spools_bodies(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "log.db")
    first = store.commit([received(1), received(2)], time=10, bodies={0: b"one", 1: b"two"})
    second = store.commit([BounceIssued("r", Criteria(), "why", 99)], time=20, bodies={})
    assert [c.seq for c in first + second] == [1, 2, 3]
    assert [c.time for c in first + second] == [10, 10, 20]
    assert store.spool_body(1) == b"one"
    bounced = Bounced("r", "q", [Message("m1", "s@x", "r1@y", 3, 10, 1)])
    store.commit([bounced], time=30, bodies={})
    assert store.spool_body(1) == b"one"  # owed a purge
    assert (store.owed, store.owing) == (1, True)
    assert store.purge_spool(10) == 1
    assert store.spool_body(1) is None
    assert store.spool_body(2) == b"two"
    assert (store.owed, store.owing) == (0, False)
    assert [c.event for c in store.read(0, 10)] == [
        received(1),
        received(2),
        BounceIssued("r", Criteria(), "why", 99),
        bounced,
    ]
    assert store.read(2, 1)[0].seq == 3
    store.close()
    reopened = SqliteEventStore(tmp_path / "log.db", readonly=True)
    assert (reopened.last_seq, reopened.last_time) == (4, 30)
    assert [len(chunk) for chunk in reopened.scan(chunk=3)] == [3, 1]


def test_a_head_and_body_pair_is_spooled_joined(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "log.db")
    shared = b"Subject: s\r\n\r\nbody"
    store.commit(
        [received(1), received(2)],
        time=10,
        bodies={0: (b"To: a@x\r\n", shared), 1: (b"To: b@x\r\n", shared)},
    )
    assert store.spool_body(1) == b"To: a@x\r\n" + shared
    assert store.spool_body(2) == b"To: b@x\r\n" + shared
    store.close()


def test_rows_form_a_hash_chain(tmp_path: Path) -> None:
    """Also across the statements that write a transaction's events
    (:data:`EVENTS_PER_STATEMENT` at most each)."""
    store = SqliteEventStore(tmp_path / "log.db")
    events: list[Event] = [received(n) for n in range(2 * EVENTS_PER_STATEMENT + 5)]
    store.commit(events, time=7, bodies={})
    store.commit(events[:3], time=8, bodies={})
    assert [c.event for c in store.read(0, 1_000)] == events + events[:3]
    store.close()
    with sqlite3.connect(tmp_path / "log.db") as db:
        rows = db.execute("SELECT seq, time, type, body, chain FROM events ORDER BY seq").fetchall()
    assert [row[0] for row in rows] == list(range(1, len(events) + 4))
    previous = GENESIS
    for seq, time, kind, body, chain in rows:
        previous = chain_link(previous, seq, time, kind, body)
        assert chain == previous


def test_event_ids_are_unique_and_grow_with_the_log(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "log.db")
    for time in (5, 5, 9):
        store.commit([received(n) for n in range(50)], time=time, bodies={})
    store.close()
    with sqlite3.connect(tmp_path / "log.db") as db:
        rows = db.execute("SELECT seq, id, time FROM events ORDER BY seq").fetchall()
    ids = [row[1] for row in rows]
    assert len(set(ids)) == len(ids) == 150
    assert all(event_id.startswith(f"{time:016x}") for _, event_id, time in rows)
    # Within a transaction and across transactions of later times, ids only grow, so
    # that the unique index is appended to, not scattered over.
    assert ids[:50] == sorted(ids[:50])
    assert max(ids[:100]) < min(ids[100:])


def test_a_failed_commit_appends_nothing(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "log.db")
    store.commit([received(1)], time=1, bodies={})
    store._db.execute("CREATE TRIGGER no BEFORE INSERT ON spool BEGIN SELECT RAISE(FAIL, 'x'); END")
    with pytest.raises(sqlite3.IntegrityError):
        store.commit([received(2)], time=2, bodies={0: b"x"})
    assert store.last_seq == 1
    assert len(store.read(0, 10)) == 1


def test_reading_a_log_with_a_gap_or_a_bad_body_names_the_seq(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "log.db")
    store.commit([received(n) for n in range(4)], time=1, bodies={})
    store._db.execute("DELETE FROM events WHERE seq = 2")
    with pytest.raises(LogCorruptError, match=r"at seq 2: missing events 2\.\.2"):
        store.read(0, 10)
    store._db.execute("UPDATE events SET body = x'7b' WHERE seq = 3")
    with pytest.raises(LogCorruptError, match="at seq 3") as caught:
        store.read(2, 10)
    assert caught.value.seq == 3


def test_meta(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "log.db")
    assert store.get_meta("node_id") is None
    store.set_meta("node_id", "n1")
    assert store.get_meta("node_id") == "n1"


def test_a_commit_that_need_not_be_durable_skips_only_the_fsync(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "log.db")
    synchronous: list[int] = []
    for durable in (False, False, True, False):
        store.commit([received(len(synchronous))], time=1, bodies={}, durable=durable)
        synchronous.append(store._db.execute("PRAGMA synchronous").fetchone()[0])
    assert synchronous == [1, 1, 2, 1]  # NORMAL, NORMAL, FULL, NORMAL
    # Committed all the same: another connection reads them, a reopened store too.
    other = SqliteEventStore(tmp_path / "log.db", readonly=True)
    assert [c.seq for c in other.read(0, 10)] == [1, 2, 3, 4]
    other.close()
    store.close()
    assert SqliteEventStore(tmp_path / "log.db").last_seq == 4


def test_a_writer_without_auto_checkpoint_leaves_the_wal_to_a_checkpointer(
    tmp_path: Path,
) -> None:
    writer = SqliteEventStore(tmp_path / "log.db", auto_checkpoint=False)
    checkpointer = SqliteEventStore(tmp_path / "log.db")
    big = b"x" * 3000  # about a page of spool per message
    for index in range(1500):  # past SQLite's own threshold of 1,000 pages
        writer.commit([received(index)], time=1, bodies={0: big})
    frames, copied = checkpointer.checkpoint()
    # The commits copied nothing back themselves: the checkpoint found them all.
    assert frames >= 1500
    assert copied == frames
    # Everything copied, the next commit starts the WAL over.
    writer.commit([received(1500)], time=1, bodies={})
    assert checkpointer.checkpoint()[0] < 10
    wal = tmp_path / "log.db-wal"
    size = wal.stat().st_size
    for index in range(1501, 1600):
        writer.commit([received(index)], time=1, bodies={0: big})
    assert wal.stat().st_size <= size
    checkpointer.close()
    writer.close()
    assert SqliteEventStore(tmp_path / "log.db").last_seq == 1600


def test_a_checkpoint_that_copied_the_whole_wal_restarts_it_without_waiting(
    tmp_path: Path,
) -> None:
    """Once the WAL holds ``wal_restart_pages`` and all are copied, the checkpoint also
    runs a RESTART, so that the next commit writes the WAL from its start (a writer that
    commits every few ms otherwise always begins while some of it is uncopied, and the
    WAL grows for as long as the commits go on). With a commit under way it gives up at
    once rather than wait SQLite's busy timeout, which it leaves as it found it."""
    settings = EngineSettings(wal_restart_pages=100)
    writer = SqliteEventStore(tmp_path / "log.db", auto_checkpoint=False, settings=settings)
    checkpointer = SqliteEventStore(tmp_path / "log.db", settings=settings)
    big = b"x" * 3000  # about a page of spool per message
    for index in range(150):
        writer.commit([received(index)], time=1, bodies={0: big})
    under_way = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    under_way.execute("BEGIN IMMEDIATE")
    started = monotonic()
    frames, copied = checkpointer.checkpoint()
    waited = monotonic() - started
    under_way.execute("ROLLBACK")
    under_way.close()
    assert waited < 2.5  # SQLite's busy timeout is 5 s: it did not wait for it
    assert frames >= 150
    assert copied == frames
    assert checkpointer.checkpoint() == (frames, frames)  # now with nothing under way
    writer.commit([received(150)], time=1, bodies={})
    assert checkpointer.checkpoint()[0] < 10  # that commit started the WAL over
    (timeout,) = sqlite3.connect(tmp_path / "log.db").execute("PRAGMA busy_timeout").fetchone()
    assert checkpointer._db.execute("PRAGMA busy_timeout").fetchone() == (timeout,)
    checkpointer.close()
    writer.close()
    assert SqliteEventStore(tmp_path / "log.db").last_seq == 151


class _CommitsDuringCopies(SqliteEventStore):
    """A checkpointer beside a writer whose transactions run while each PASSIVE copy
    does (the engine's writer commits every few ms): during the n-th copy, a transaction
    of ``batches[n]`` pages. Records the checkpoints it runs."""

    def __init__(self, path: Path, batches: list[int]) -> None:
        super().__init__(path, settings=EngineSettings(wal_restart_pages=100))
        self.batches = batches
        self.modes: list[str] = []
        self._other = sqlite3.connect(path, isolation_level=None)
        # A cache this small spills the transaction's pages into the WAL as it writes
        # them, before the copy: a writer that begins once everything is copied would
        # start the WAL over instead (which the engine's, always mid-commit, never does).
        self._other.execute("PRAGMA cache_size=5")
        self._written = 0
        self._db.set_trace_callback(self._traced)

    def _traced(self, statement: str) -> None:
        if statement.startswith("PRAGMA wal_checkpoint("):
            self.modes.append(statement.removeprefix("PRAGMA wal_checkpoint(").rstrip(")"))

    def _passive(self) -> tuple[int, int, int]:
        if not self.batches:
            return super()._passive()
        self._other.execute("BEGIN IMMEDIATE")  # begun before the copy, committed after
        for _ in range(self.batches.pop(0)):
            self._written += 1
            self._other.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)", (f"page {self._written}", "x" * 3000)
            )
        result = super()._passive()
        self._other.execute("COMMIT")
        return result

    def close(self) -> None:
        self._other.close()
        super().close()


def test_a_restart_first_copies_what_came_during_the_copy_without_the_lock(
    tmp_path: Path,
) -> None:
    """The RESTART holds the writer's lock while it copies the frames committed since
    the PASSIVE copy began, and syncs the database: further PASSIVE copies take those
    first (``RESTART_TRIES`` at most), until few came during the last
    (``RESTART_LEFT_FRAMES``)."""
    writer = SqliteEventStore(tmp_path / "log.db", auto_checkpoint=False)
    # Many frames during the first copy, a few during the second, none after.
    checkpointer = _CommitsDuringCopies(tmp_path / "log.db", [120, 2])
    for index in range(150):
        writer.commit([received(index)], time=1, bodies={0: b"x" * 3000})
    frames, copied = checkpointer.checkpoint()
    assert checkpointer.modes == ["PASSIVE", "PASSIVE", "PASSIVE", "RESTART"]
    assert copied == frames
    assert checkpointer.batches == []
    writer.commit([received(writer.last_seq + 1)], time=1, bodies={})
    assert checkpointer.checkpoint()[0] < 10  # that commit started the WAL over
    checkpointer.close()
    writer.close()


def test_the_writer_asks_for_a_held_write_lock_again_until_it_has_it(tmp_path: Path) -> None:
    """Another connection holds the write lock (a checkpoint's RESTART, a compaction):
    the engine's writer (no busy handler) tries ``BEGIN IMMEDIATE`` again and again
    rather than sleeping SQLite's growing steps, and commits once the lock is free."""
    writer = SqliteEventStore(tmp_path / "log.db", auto_checkpoint=False)
    writer.commit([received(1)], time=1, bodies={})
    tries: list[str] = []
    retried = threading.Event()

    def traced(statement: str) -> None:
        if statement == "BEGIN IMMEDIATE":
            tries.append(statement)
            if len(tries) == 3:
                retried.set()

    writer._db.set_trace_callback(traced)
    holder = sqlite3.connect(tmp_path / "log.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")

    def release() -> None:
        retried.wait(10)
        holder.execute("COMMIT")

    releaser = threading.Thread(target=release)
    releaser.start()
    assert [c.seq for c in writer.commit([received(2)], time=1, bodies={})] == [2]
    releaser.join()
    assert len(tries) >= 3
    holder.close()
    writer.close()


def test_a_write_lock_held_past_the_timeout_fails_the_commit_and_writes_nothing(
    tmp_path: Path,
) -> None:
    settings = EngineSettings(write_lock_timeout=0.05)
    writer = SqliteEventStore(tmp_path / "log.db", auto_checkpoint=False, settings=settings)
    writer.commit([received(1)], time=1, bodies={})
    holder = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        writer.commit([received(2)], time=1, bodies={})
    holder.execute("COMMIT")
    assert writer.last_seq == 1
    assert [c.seq for c in writer.commit([received(2)], time=1, bodies={})] == [2]
    holder.close()
    writer.close()


def test_opening_the_log_makes_what_a_killed_writer_left_durable(tmp_path: Path) -> None:
    def events_in_the_database_file() -> int:
        # The main file alone, without its WAL: what a checkpoint has copied (and synced).
        copy = tmp_path / "copy.db"
        copy.write_bytes((tmp_path / "log.db").read_bytes())
        with sqlite3.connect(copy) as db:
            count: int = db.execute("SELECT count(*) FROM events").fetchone()[0]
        copy.unlink()
        return count

    killed = SqliteEventStore(tmp_path / "log.db")
    killed.commit([received(1), received(2)], time=1, bodies={}, durable=False)
    assert events_in_the_database_file() == 0  # in the WAL only
    # The next writer opens the log while the first one's WAL is still there (as after
    # a SIGKILL): it checkpoints it, syncing the WAL first, before it takes over.
    SqliteEventStore(tmp_path / "log.db").close()
    assert events_in_the_database_file() == 2
    killed.close()


def test_purges_take_the_oldest_owed_first_and_the_flag_outlives_the_process(
    tmp_path: Path,
) -> None:
    """``spool_owed`` is committed with the first event that owes a purge and cleared
    with the last purge: a store reopened in between knows it may hold contents of
    messages that left, and owes what it is told to (what the engine finds)."""
    store = SqliteEventStore(tmp_path / "log.db")
    store.commit([received(n) for n in range(1, 6)], time=1, bodies={})
    gone = [Message(f"{n:032x}", "s@x", f"r{n}@y", 3, 1, n) for n in (4, 2, 5)]
    store.commit([Bounced("r", "q", gone[:2])], time=2, bodies={})
    store.commit([Bounced("r", "q", gone[2:])], time=3, bodies={})
    assert list(store.spool_seqs(chunk=2)) == [
        array("q", [1, 2]),
        array("q", [3, 4]),
        array("q", [5]),
    ]
    assert store.purge_spool(2) == 2  # seqs 4 and 2, as they left
    assert [store.spool_body(seq) is None for seq in range(1, 6)] == [
        False,
        True,
        False,
        True,
        False,
    ]
    store.close()

    reopened = SqliteEventStore(tmp_path / "log.db")
    assert (reopened.owed, reopened.owing) == (0, True)  # what was owed is forgotten
    reopened.owe([5])
    assert reopened.purge_spool(10) == 1
    assert (reopened.owed, reopened.owing) == (0, False)
    reopened.close()
    assert not SqliteEventStore(tmp_path / "log.db").owing

"""Folding a stored log: the fast path equals the plain fold of every event."""

from __future__ import annotations

from pathlib import Path

import pytest

from kumo.model.criteria import Criteria
from kumo.model.events import Bounced, BounceIssued, Event, Message, MessageReceived
from kumo.model.state import State
from kumo.store.event_log import LogCorruptError
from kumo.store.replay import fold_log
from kumo.store.sqlite_log import SqliteEventStore


def stored_log(path: Path) -> SqliteEventStore:
    store = SqliteEventStore(path / "log.db")
    received: list[Event] = [
        MessageReceived(f"{n:032x}", f"q{n % 3}", "same@sender", f"r{n}@x", n) for n in range(9)
    ]
    store.commit(received, time=100, bodies={})
    store.commit([BounceIssued("r", Criteria(domain="q1"), "why", 10**12)], time=200, bodies={})
    taken = [Message(f"{n:032x}", "same@sender", f"r{n}@x", n, 100, n + 1) for n in (1, 4, 7)]
    store.commit([Bounced("r", "q1", taken)], time=300, bodies={})
    return store


def test_fast_fold_equals_the_plain_fold(tmp_path: Path) -> None:
    store = stored_log(tmp_path)
    plain = State()
    for batch in store.scan():
        for committed in batch:
            plain.apply(committed)
    fast = fold_log(store)
    assert fast.queues == plain.queues
    assert fast.queue_counts == plain.queue_counts == {"q0": 3, "q2": 3}
    assert (fast.last_seq, fast.last_time) == (11, 300)
    assert fast.rules.views(250) == plain.rules.views(250)
    assert fast.queues is not None
    senders = {id(m.sender) for queue in fast.queues.values() for m in queue}
    assert len(senders) == 1  # equal senders are shared, not copied per message


def test_fold_stops_where_told_and_reports_progress(tmp_path: Path) -> None:
    store = stored_log(tmp_path)
    seen: list[int] = []
    state = fold_log(store, until=lambda seq, time: time >= 200, progress=seen.append)
    assert state.last_seq == 9
    assert state.rules.rules == {}
    resumed = fold_log(store, state, progress=seen.append)
    assert resumed.last_seq == 11
    assert seen == [11]


def test_a_damaged_body_is_reported_with_its_seq(tmp_path: Path) -> None:
    store = stored_log(tmp_path)
    store._db.execute("UPDATE events SET body = x'7b7d' WHERE seq = 4")
    with pytest.raises(LogCorruptError, match="at seq 4"):
        fold_log(store)

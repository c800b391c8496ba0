"""The invariants (docs/architecture.md), checked against a data directory and an engine."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from kumo.model.events import Bounced, MessageReceived
from kumo.model.recovery import owed_bounces
from kumo.model.state import State
from kumo.runtime.engine import Engine
from kumo.store.data_dir import open_event_log
from tests.runtime.harness import log_records


def fold(data_dir: Path) -> tuple[State, list[str], list[Bounced]]:
    """The fold of the log from scratch, the received ids in order, and every Bounced."""
    store = open_event_log(data_dir, readonly=True)
    try:
        state = State()
        received: list[str] = []
        bounced: list[Bounced] = []
        for batch in store.scan():
            for committed in batch:
                state.apply(committed)
                event = committed.event
                if isinstance(event, MessageReceived):
                    received.append(event.message_id)
                elif isinstance(event, Bounced):
                    bounced.append(event)
        assert store.spool_count() == sum(state.queue_counts.values())
    finally:
        store.close()
    return state, received, bounced


def check_invariants(data_dir: Path, engine: Engine) -> State:
    """Assert conservation, counters, replay equivalence and exactly-once records.

    Call after ``await engine.wait_idle()``.
    """
    state, received, bounced = fold(data_dir)
    # Conservation: each received message is queued xor bounced, each at most once.
    assert len(set(received)) == len(received)
    bounced_ids = Counter(m.id for b in bounced for m in b.messages)
    assert not [i for i, n in bounced_ids.items() if n > 1], "a message was bounced twice"
    queued = engine.queued_messages()
    queued_ids = Counter(i for ids in queued.values() for i in ids)
    assert set(bounced_ids).isdisjoint(queued_ids)
    assert set(bounced_ids) | set(queued_ids) == set(received)
    # Nothing owed: every decision the rules call for is recorded.
    assert owed_bounces(state) == []
    # Replay equivalence: the running engine's state equals the fold from scratch.
    assert state.queues is not None
    assert {q: [m.id for m in ms] for q, ms in state.queues.items()} == queued
    projection = engine.projection()
    assert projection.queue_counts == state.queue_counts
    assert (projection.received_total, projection.bounced_total) == (
        state.received_total,
        state.bounced_total,
    )
    now = engine.clock.now()
    assert projection.rules.views(now) == state.rules.views(now)
    # Counters equal the Bounced events per rule and queue.
    counted: Counter[tuple[str, str]] = Counter()
    for event in bounced:
        counted[(event.rule_id, event.queue)] += len(event.messages)
    for rule in state.rules.rules.values():
        for queue, count in rule.bounced.items():
            assert counted.pop((rule.id, queue)) == count
    assert not counted
    # The delivery log: one Reception per received message, one AdminBounce per
    # bounced message unless its rule suppresses logging; nothing twice.
    records = log_records(data_dir)
    receptions = [r["id"] for r in records if r["type"] == "Reception"]
    assert receptions == received
    admin = Counter(str(r["id"]) for r in records if r["type"] == "AdminBounce")
    expected = Counter(
        m.id
        for b in bounced
        if not state.rules.rules[b.rule_id].suppress_logging
        for m in b.messages
    )
    assert admin == expected
    return state

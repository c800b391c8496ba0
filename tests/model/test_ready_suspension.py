"""Ready-queue suspensions: the book (by example and against a dict, by property), how a
queue holds its messages for one, the fold, the router, the snapshot, the record and
the invariant check. The model machine (``test_engine_machine.py``) drives them through
random histories with the rest of the engine."""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.criteria import Criteria
from kumo.model.events import (
    Committed,
    Event,
    MessageReceived,
    ReadySuspendCancelled,
    ReadySuspendExpired,
    ReadySuspendIssued,
    Suspended,
    SuspendIssued,
    decode_event,
    encode_event,
)
from kumo.model.invariants import InvariantCheck
from kumo.model.log_record import outcome_record
from kumo.model.ready_suspension import ReadyHold, ReadySuspensionBook
from kumo.model.recovery import recover
from kumo.model.router import Router
from kumo.model.snapshot import decode_snapshot, encode_snapshot, state_differences
from kumo.model.state import QueueState, State, message_from

SECOND = 1_000_000_000
T0 = 1_000 * SECOND
MX = "unspecified->mx.example.com@smtp_client"
OTHER = "unspecified->mx.other.example@smtp_client"


def issued(rule_id: str, name: str = MX, lifetime: int = 300, reason: str = "r") -> Event:
    return ReadySuspendIssued(rule_id, name, reason, T0 + lifetime * SECOND, "ops", T0)


class Log:
    """A log under construction: each event gets the next seq, at ``time``."""

    def __init__(self) -> None:
        self.events: list[Committed] = []

    def add(self, event: Event, time: int = T0) -> Committed:
        committed = Committed(len(self.events) + 1, time, event)
        self.events.append(committed)
        return committed

    def receive(self, queue: str, number: int, time: int = T0) -> Committed:
        return self.add(MessageReceived(f"{number:032x}", queue, "s@x", f"r{number}@y", 10), time)

    def fold(self) -> State:
        state = State()
        for committed in self.events:
            state.apply(committed)
        return state


# -- the book ---------------------------------------------------------------------------


def test_the_book_keys_by_name_replaces_cancels_and_expires() -> None:
    log, book = Log(), ReadySuspensionBook()
    first = book.apply(log.add(issued("s1", reason="one")))
    assert first is not None
    assert book.suspended(MX, T0) is first
    assert book.suspended(OTHER, T0) is None
    book.apply(log.add(issued("s2", OTHER)))
    second = book.apply(log.add(issued("s3", reason="three")))
    assert (first.end, first.ended_by) == ("replaced", "s3")
    assert book.suspended(MX, T0) is second
    assert [(v.id, v.name, v.remaining) for v in book.views(T0 + SECOND)] == [
        ("s2", OTHER, 299 * SECOND),
        ("s3", MX, 299 * SECOND),
    ]
    # Cancelling what is not live changes nothing; the live one ends.
    assert book.apply(log.add(ReadySuspendCancelled("s1", "ops"))) is None
    assert book.apply(log.add(ReadySuspendCancelled("s3", "ops"))) is second
    assert second is not None
    assert (second.end, second.ended_by, book.suspended(MX, T0)) == ("cancelled", "ops", None)
    assert book.next_expiry() == T0 + 300 * SECOND
    assert [s.id for s in book.due_to_expire(T0 + 300 * SECOND)] == ["s2"]
    book.apply(log.add(ReadySuspendExpired("s2"), T0 + 300 * SECOND))
    assert book.views(T0) == []
    assert book.next_expiry() is None
    assert book.rules["s2"].status(T0) == "expired"


def test_one_issued_already_expired_never_holds_nor_replaces() -> None:
    log, book = Log(), ReadySuspensionBook()
    book.apply(log.add(issued("s1")))
    born_expired = book.apply(log.add(issued("s2", lifetime=-5)))
    assert born_expired is not None
    assert born_expired.issued_expired
    assert book.rules["s1"].end is None
    assert book.suspended(MX, T0) is book.rules["s1"]
    assert not book.is_live("s2", T0)


def test_a_suspension_past_its_expiry_is_expired_not_replaced() -> None:
    log, book = Log(), ReadySuspensionBook()
    book.apply(log.add(issued("s1", lifetime=10)))
    assert book.suspended(MX, T0 + 10 * SECOND) is None
    book.apply(log.add(issued("s2"), T0 + 20 * SECOND))
    assert book.rules["s1"].end == "expired"


def test_a_copy_folds_on_its_own() -> None:
    log, book = Log(), ReadySuspensionBook()
    book.apply(log.add(issued("s1")))
    copy = book.copy()
    copy.apply(log.add(ReadySuspendCancelled("s1", "ops")))
    assert book.is_live("s1", T0)
    assert not copy.is_live("s1", T0)
    assert [h.id for h in book.holds()] == ["s1"]
    assert copy.holds() == ()


NAMES = st.sampled_from([MX, OTHER])
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("issue"), NAMES, st.sampled_from([-1, 0, 5, 60])),
        st.tuples(st.just("cancel"), st.integers(0, 6), st.just(0)),
        st.tuples(st.just("expire"), st.integers(0, 6), st.just(0)),
        st.tuples(st.just("wait"), st.just(""), st.integers(1, 30)),
    ),
    max_size=25,
)


@given(STEPS)
def test_the_book_is_a_dict_keyed_by_name(steps: list[tuple[str, Any, int]]) -> None:
    """Against a plain reference: per name the latest suspension issued live, until its
    expiry or its cancel; a cancel or an expiry of anything else changes nothing."""
    log, book = Log(), ReadySuspensionBook()
    live: dict[str, tuple[str, int]] = {}
    """Name -> (id, expiry) of the suspension the reference says holds it."""
    ids: list[str] = []
    now = T0
    for kind, what, number in steps:
        if kind == "wait":
            now += number * SECOND
            continue
        if kind == "issue":
            rule_id = f"s{len(ids)}"
            ids.append(rule_id)
            expires = now + number * SECOND
            book.apply(log.add(ReadySuspendIssued(rule_id, what, "r", expires, "", now), now))
            if expires > now:
                live[what] = (rule_id, expires)
            continue
        rule_id = ids[what] if what < len(ids) else "unknown"
        event: Event = (
            ReadySuspendCancelled(rule_id, "ops")
            if kind == "cancel"
            else ReadySuspendExpired(rule_id)
        )
        was_live = book.is_live(rule_id, now)
        ended = book.apply(log.add(event, now))
        assert (ended is not None) >= was_live
        for name, (held, _) in list(live.items()):
            if held == rule_id:
                del live[name]
        for name in (MX, OTHER):
            expected = live.get(name)
            found = book.suspended(name, now)
            if expected is None or expected[1] <= now:
                assert found is None
            else:
                assert found is not None
                assert (found.id, found.expires_at) == expected
        assert {v.name: v.id for v in book.views(now)} == {
            name: held for name, (held, expires) in live.items() if expires > now
        }


# -- a queue holds --------------------------------------------------------------------


def _queue_with(log: Log, count: int, queue: str = "a.example") -> QueueState:
    state = QueueState(queue)
    for number in range(1, count + 1):
        committed = log.receive(queue, number)
        assert isinstance(committed.event, MessageReceived)
        assert state.apply(committed) is None
    return state


def test_a_queue_holds_its_due_messages_for_the_ready_queue_they_go_to() -> None:
    log = Log()
    state = _queue_with(log, 2)
    assert state.concerns(log.add(issued("s1")).event)
    state.apply(log.events[-1])
    assert state.hold_ready(OTHER, T0) == []
    held = state.hold_ready(MX, T0 + SECOND)
    assert [(e.rule_id, e.ready_queue, e.attempts) for e in held if isinstance(e, Suspended)] == [
        ("s1", MX, 0),
        ("s1", MX, 0),
    ]
    assert not state.messages
    assert state.next_due() == T0 + 300 * SECOND
    # Nothing more to hold: each message is held once.
    assert state.hold_ready(MX, T0 + 2 * SECOND) == []
    # Past its expiry it holds nothing, and the held are due then.
    assert state.wake(T0 + 300 * SECOND) == 2


def test_a_cancel_releases_what_it_held_and_only_that() -> None:
    log = Log()
    state = _queue_with(log, 1)
    state.apply(log.add(issued("s1")))
    state.apply(log.add(issued("s2", OTHER)))
    state.hold_ready(MX, T0)
    state.apply(log.receive("a.example", 2))
    state.hold_ready(OTHER, T0)
    assert set(state.held_by.values()) == {"s1", "s2"}
    cancel = log.add(ReadySuspendCancelled("s1", "ops"))
    assert state.concerns(cancel.event)
    state.apply(cancel)
    assert state.messages.ids() == [f"{1:032x}"]
    assert list(state.held_by.values()) == ["s2"]
    assert state.hold_ready(MX, T0) == []
    expiry = log.add(ReadySuspendExpired("s2"))
    state.apply(expiry)
    assert not state.ready_suspensions
    assert not state.held_by
    assert len(state.messages) == 2
    assert not state.concerns(log.add(ReadySuspendCancelled("s2", "ops")).event)


def test_a_replacement_releases_what_the_replaced_one_held() -> None:
    log = Log()
    state = _queue_with(log, 1)
    state.apply(log.add(issued("s1", reason="first")))
    state.hold_ready(MX, T0)
    state.apply(log.add(issued("s2", reason="second", lifetime=600)))
    [again] = state.hold_ready(MX, T0)
    assert isinstance(again, Suspended)
    assert (again.rule_id, again.reason, state.next_due()) == ("s2", "second", T0 + 600 * SECOND)


def test_ready_suspensions_leave_arrivals_to_the_fast_path() -> None:
    """A ready-queue suspension decides nothing at arrival (the hold comes at the
    hand-over, where the destination is known)."""
    log = Log()
    state = QueueState("a.example", ready_suspensions=[ReadyHold("s1", MX, "r", T0 + SECOND)])
    assert state.settle([log.receive("a.example", 1)])


def test_the_fold_and_a_restart_keep_held_messages_held_until_the_end() -> None:
    log = Log()
    state = _queue_with(log, 2)
    state.apply(log.add(issued("s1")))
    for event in state.hold_ready(MX, T0):
        log.add(event)
    fold = log.fold()
    assert {mid: (r.due, r.held_by) for mid, r in fold.schedule.items()} == {
        f"{n:032x}": (T0 + 300 * SECOND, "s1") for n in (1, 2)
    }
    recovery = recover(fold, chunk=10)
    router = Router(fold.rules.copy(), fold.suspends.copy(), fold.ready_suspends.copy())
    restarted = QueueState(
        "a.example",
        recovery.queues["a.example"],
        router.open_queue("a.example"),
        recovery.schedule,
        router.suspensions_of("a.example"),
        router.ready_suspensions(),
    )
    assert not restarted.messages
    assert set(restarted.held_by.values()) == {"s1"}
    # Cancelled before the restart: due at once, as the running queue has them.
    log.add(ReadySuspendCancelled("s1", "ops"))
    fold = log.fold()
    recovery = recover(fold, chunk=10)
    router = Router(fold.rules.copy(), fold.suspends.copy(), fold.ready_suspends.copy())
    restarted = QueueState(
        "a.example",
        recovery.queues["a.example"],
        (),
        recovery.schedule,
        (),
        router.ready_suspensions(),
    )
    assert len(restarted.messages) == 2
    assert not restarted.held_by
    assert InvariantCheck.over(log.events).violations == []


# -- the router -----------------------------------------------------------------------


def test_the_router_gives_every_queue_every_live_ready_suspension() -> None:
    log, router = Log(), Router()
    routing = router.route([log.receive("a.example", 1), log.receive("b.example", 2)])
    assert [q.ready_suspensions for q in routing.new_queues] == [(), ()]
    routing = router.route([log.add(issued("s1")), log.add(issued("gone", OTHER, lifetime=0))])
    assert {name: [c.seq for c in events] for name, events in routing.deliveries.items()} == {
        "a.example": [3],
        "b.example": [3],
    }
    routing = router.route([log.receive("c.example", 5)])
    [new] = routing.new_queues
    assert [hold.id for hold in new.ready_suspensions] == ["s1"]
    # Its end goes to every queue; an end of what is not live goes nowhere.
    routing = router.route(
        [log.add(ReadySuspendCancelled("s1", "ops")), log.add(ReadySuspendExpired("s1"))]
    )
    assert {name: [c.seq for c in events] for name, events in routing.deliveries.items()} == {
        "a.example": [6],
        "b.example": [6],
        "c.example": [6],
    }
    assert router.ready_suspensions() == ()


# -- the log's other readers ---------------------------------------------------------


def test_the_events_round_trip() -> None:
    log = Log()
    message = message_from(
        log.receive("a.example", 1), MessageReceived(f"{1:032x}", "a.example", "s@x", "r@y", 10)
    )
    for event in (
        issued("s1"),
        ReadySuspendIssued("s1", MX, "r", T0),
        ReadySuspendCancelled("s1", "ops"),
        ReadySuspendExpired("s1"),
        Suspended("s1", "a.example", message, 2, "r", ready_queue=MX),
        Suspended("s1", "a.example", message, 2, "r"),
    ):
        assert decode_event(encode_event(event)) == event
    # A scheduled-queue hold is stored as before ready-queue suspensions existed.
    assert b"ready_queue" not in encode_event(Suspended("s1", "a.example", message, 0, "r"))


def test_the_record_is_kumomtas_no_eligible_source() -> None:
    log = Log()
    committed = log.receive("a.example", 1)
    assert isinstance(committed.event, MessageReceived)
    message = message_from(committed, committed.event)
    record = outcome_record(
        Suspended("s1", "a.example", message, 3, "maintenance", ready_queue=MX),
        at=T0 + SECOND,
        node_id="n",
    )
    assert record["type"] == "TransientFailure"
    assert (record["site"], record["queue"], record["num_attempts"]) == ("", "a.example", 3)
    assert record["response"] == {
        "code": 451,
        "enhanced_code": {"class": 4, "subject": 4, "detail": 4},
        "content": "KumoMTA internal: no sources for a.example pool=`unspecified` are "
        "eligible for selection at this time",
        "command": None,
    }
    assert (record["egress_pool"], record["egress_source"], record["peer_address"]) == (
        "unspecified",
        None,
        None,
    )
    assert list(record) == list(
        outcome_record(Suspended("s1", "a.example", message, 3, "r"), at=T0, node_id="n")
    )


def test_a_snapshot_keeps_the_book() -> None:
    log = Log()
    log.receive("a.example", 1)
    log.add(issued("s1"))
    log.add(issued("s2"))
    log.add(ReadySuspendCancelled("s2", "ops"))
    log.add(issued("s3", OTHER))
    fold = log.fold()
    restored, _ = decode_snapshot(encode_snapshot(fold, b"\0" * 32))
    assert state_differences(fold, restored) == []
    assert [attrs.asdict(s) for s in restored.ready_suspends.rules.values()] == [
        attrs.asdict(s) for s in fold.ready_suspends.rules.values()
    ]
    assert restored.ready_suspends.suspended(OTHER, T0) is not None
    restored.ready_suspends = ReadySuspensionBook()
    assert any("rule s3" in problem for problem in state_differences(fold, restored))


def test_the_check_refuses_a_hold_by_a_suspension_that_cannot_hold_it() -> None:
    log = Log()
    committed = log.receive("a.example", 1)
    assert isinstance(committed.event, MessageReceived)
    message = message_from(committed, committed.event)
    log.add(issued("s1"))
    log.add(SuspendIssued("x1", Criteria(domain="b.example"), "r", T0 + SECOND))
    log.add(Suspended("s1", "a.example", message, 0, "r", ready_queue=MX))
    assert InvariantCheck.over(log.events).violations == []
    for forged in (
        Suspended("s1", "a.example", message, 0, "r", ready_queue=OTHER),
        Suspended("nope", "a.example", message, 0, "r", ready_queue=MX),
        Suspended("s1", "a.example", message, 0, "r"),
        Suspended("x1", "a.example", message, 0, "r"),
    ):
        check = InvariantCheck.over([*log.events, Committed(len(log.events) + 1, T0, forged)])
        assert [v.check for v in check.violations] == ["attribution"], forged

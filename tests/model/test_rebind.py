"""Rebind in the model: what a queue moves (:class:`QueueState`), where the router takes
it, how the fold and a restart see it (:class:`State`, :mod:`kumo.model.recovery`), and
what :class:`InvariantCheck` holds a log with rebinds to."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kumo.model.criteria import Criteria
from kumo.model.events import (
    Attempt,
    Bounced,
    BounceIssued,
    Committed,
    Event,
    Message,
    MessageReceived,
    RebindIssued,
    Rebound,
    SuspendIssued,
    TransientlyFailed,
)
from kumo.model.invariants import InvariantCheck
from kumo.model.message_queue import MessageQueue
from kumo.model.queue_name import rebound_queue_name
from kumo.model.recovery import owed_bounces, owed_rebinds, recover
from kumo.model.retry import RetryPolicy
from kumo.model.router import NewQueue, Router
from kumo.model.smtp_reply import Disposition
from kumo.model.state import QueueState, Retry, State, SweepRule

SECOND = 1_000_000_000
HOUR = 3600 * SECOND
FAILED = Attempt("", 451, (4, 4, 4), "try later", None)


def mid(n: int) -> str:
    return f"{n:032x}"


def msg(n: int, seq: int | None = None) -> Message:
    return Message(mid(n), "s@x.org", f"r{n}@a.com", 10, (seq or n) * SECOND, seq or n)


def received(n: int, queue: str = "a.com") -> Committed:
    return Committed(n, n * SECOND, MessageReceived(mid(n), queue, "s@x.org", f"r{n}@a.com", 10))


def issued_rebind(seq: int, data: dict[str, str], *, always_flush: bool = False) -> Committed:
    event = RebindIssued(f"b{seq}", Criteria(domain="a.com"), data, "move", always_flush)
    return Committed(seq, seq * SECOND, event)


def at(seq: int, event: Event) -> Committed:
    return Committed(seq, seq * SECOND, event)


def queue_with(*, waiting: int = 0, held: int = 0, due: int = 0) -> QueueState:
    """A queue ``a.com`` holding ``due`` messages due now (ids from 1), ``waiting`` that
    failed once and wait (next ids), ``held`` that a suspension holds (next ids)."""
    total = due + waiting + held
    schedule: dict[str, Retry] = {}
    for n in range(due + 1, due + waiting + 1):
        schedule[mid(n)] = Retry(HOUR, 1, n, n * SECOND)
    for n in range(due + waiting + 1, total + 1):
        schedule[mid(n)] = Retry(HOUR, 0, n, n * SECOND, "s1")
    suspension = SweepRule("s1", Criteria(domain="a.com"), HOUR, False, "hold")
    return QueueState(
        "a.com",
        MessageQueue(msg(n) for n in range(1, total + 1)),
        suspensions=(suspension,) if held else (),
        schedule=schedule,
    )


# -- QueueState -------------------------------------------------------------------------


def test_a_rebind_moves_the_scheduled_messages_with_their_attempts() -> None:
    state = queue_with(due=3, waiting=2, held=1)
    [handed] = state.hand(1)  # message 1 sits in a ready queue or a connection
    decision = state.apply(issued_rebind(20, {"routing_domain": "relay.net"}))
    assert isinstance(decision, Rebound)
    assert (decision.queue, decision.to_queue, decision.rebind_id) == (
        "a.com",
        "a.com!relay.net",
        "b20",
    )
    moved = dict(zip(decision.messages.ids(), decision.attempts, strict=True))
    assert moved == {mid(2): 0, mid(3): 0, mid(4): 1, mid(5): 1, mid(6): 0}
    # The handed message stays, and only it.
    assert state.held_ids() == [handed.message.id]
    assert (state.waiting, state.held_by, state.attempts) == ({}, {}, {})


def test_a_message_whose_failed_attempt_is_on_its_way_back_is_not_moved() -> None:
    state = queue_with(due=2)
    [handed] = state.hand(1)
    [failed] = state.attempted(
        handed.message.id,
        Disposition.TRANSIENT_FAILURE,
        FAILED,
        now=10 * SECOND,
        policy=RetryPolicy(),
        uniform=0.5,
    )
    decision = state.apply(issued_rebind(20, {"tenant": "t"}))
    assert isinstance(decision, Rebound)
    assert decision.messages.ids() == [mid(2)]
    assert state.held_ids() == [mid(1)]
    assert isinstance(failed, TransientlyFailed)
    # Its failure comes back after the rebind: it waits in the old queue.
    assert state.apply(at(21, failed)) is None
    assert list(state.waiting) == [mid(1)]


def test_an_unchanged_name_moves_nothing_and_flushes_only_when_asked() -> None:
    state = queue_with(due=1, waiting=2, held=1)
    assert state.apply(issued_rebind(20, {"queue": "a.com"})) is None
    assert (len(state.messages), len(state.waiting)) == (1, 3)
    assert state.apply(issued_rebind(21, {}, always_flush=True)) is None
    # The suspension still holds its message; the others are due now.
    assert state.messages.ids() == [mid(1), mid(2), mid(3)]
    assert list(state.waiting) == [mid(4)]
    assert state.attempts == {mid(2): 1, mid(3): 1}


def test_an_empty_queue_makes_no_rebound() -> None:
    assert queue_with().apply(issued_rebind(20, {"tenant": "t"})) is None


def test_the_new_queue_takes_them_as_arrivals_at_the_rebound() -> None:
    moved = Rebound("b", "a.com", "t@a.com", [msg(1), msg(2)], [2, 0], "move")
    plain = QueueState("t@a.com")
    assert plain.concerns(moved)
    assert plain.apply(at(30, moved)) is None
    assert plain.messages.ids() == [mid(1), mid(2)]
    assert plain.attempts == {mid(1): 2}
    rule = SweepRule("r", Criteria(tenant="t"), 31 * SECOND, False)
    ruled = QueueState("t@a.com", rules=(rule,))
    assert ruled.apply(at(30, moved)) == Bounced("r", "t@a.com", [msg(1), msg(2)])
    # A rule expired by the Rebound's commit takes nothing.
    late = QueueState("t@a.com", rules=(rule,))
    assert late.apply(at(31, moved)) is None


# -- Router -----------------------------------------------------------------------------


def test_the_router_takes_a_rebind_to_the_queues_it_matches_and_a_move_to_its_queue() -> None:
    router = Router()
    suspend = SuspendIssued("s", Criteria(routing_domain="relay.net"), "hold", HOUR)
    bounce = BounceIssued("r", Criteria(routing_domain="relay.net"), "no", HOUR)
    router.route([received(1), received(2, "b.com"), at(3, suspend), at(4, bounce)])
    routed = router.route([issued_rebind(5, {"routing_domain": "relay.net"})])
    assert (routed.new_queues, list(routed.deliveries)) == ([], ["a.com"])
    moved = Rebound("b5", "a.com", "a.com!relay.net", [msg(1)], [0], "move")
    routed = router.route([at(6, moved)])
    [opened] = routed.new_queues
    assert opened == NewQueue(
        "a.com!relay.net",
        (SweepRule("r", bounce.criteria, HOUR, False, "no"),),
        (SweepRule("s", suspend.criteria, HOUR, False, "hold"),),
    )
    assert routed.deliveries == {"a.com!relay.net": [at(6, moved)]}
    # The queue is open now: the next move into it opens nothing.
    assert router.route([at(7, moved)]).new_queues == []


# -- State and recovery -----------------------------------------------------------------


def test_the_fold_moves_messages_anchored_at_the_rebound() -> None:
    state = State()
    for committed in [received(1), received(2), received(3, "b.com")]:
        state.apply(committed)
    state.apply(issued_rebind(4, {"tenant": "t"}))
    state.apply(at(5, Rebound("b4", "a.com", "t@a.com", [msg(1), msg(2)], [3, 0], "move")))
    assert state.queue_counts == {"t@a.com": 2, "b.com": 1}
    assert state.queues is not None
    assert {name: q.ids() for name, q in state.queues.items()} == {
        "t@a.com": [mid(1), mid(2)],
        "b.com": [mid(3)],
    }
    assert state.schedule[mid(1)] == Retry(None, 3, 5, 5 * SECOND)
    assert state.rebound_total == 2
    # And back again, before the queues were read: no copy is lost or kept twice.
    state.apply(at(6, Rebound("b6", "t@a.com", "a.com", [msg(1)], [3], "back")))
    state.apply(at(7, Rebound("b7", "a.com", "t@a.com", [msg(1)], [3], "again")))
    assert {name: q.ids() for name, q in state.queues.items()} == {
        "t@a.com": [mid(2), mid(1)],
        "b.com": [mid(3)],
    }
    assert state.queue_counts == {"t@a.com": 2, "b.com": 1}


def test_a_crash_that_lost_the_bounce_after_a_rebound_owes_it() -> None:
    rule = BounceIssued("r", Criteria(tenant="t"), "closed", 100 * SECOND)
    log = [
        received(1),
        received(2),
        at(3, rule),
        issued_rebind(4, {"tenant": "t"}),
        at(5, Rebound("b4", "a.com", "t@a.com", [msg(1), msg(2)], [1, 0], "move")),
        # The crash: the Bounced the new queue decided at seq 5 never committed.
    ]
    state = State()
    for committed in log:
        state.apply(committed)
    [owed] = owed_bounces(state)
    assert owed == Bounced("r", "t@a.com", [msg(1), msg(2)])
    recovery = recover(state, chunk=10)
    assert recovery.owed == [owed]
    assert recovery.queues == {}
    # Before the rule was issued, the same move owes nothing (arrivals at seq 5 are
    # counted from then on).
    state = State()
    for committed in [received(1), issued_rebind(2, {"tenant": "t"})]:
        state.apply(committed)
    state.apply(at(3, Rebound("b2", "a.com", "t@a.com", [msg(1)], [0], "move")))
    assert owed_bounces(state) == []
    late = BounceIssued("r", Criteria(tenant="t"), "closed", 100 * SECOND)
    state.apply(at(4, late))
    # Issued after the move: its sweep owes the message.
    assert owed_bounces(state) == [Bounced("r", "t@a.com", [msg(1)])]


# -- a crash between a rebind and its moves -----------------------------------------------


def fold(log: list[Committed]) -> State:
    state = State()
    for committed in log:
        state.apply(committed)
    return state


def failed(seq: int, message: Message, queue: str = "a.com") -> Committed:
    return at(seq, TransientlyFailed(queue, message, 0, FAILED, HOUR))


def test_a_crash_before_the_rebound_owes_the_move_of_what_the_queue_held_then() -> None:
    """Held at the issue: moved (with its attempts, a suspension's hold or not). Arrived
    after it, or failed after it (its attempt was under way: the queue would not have
    moved it): stays."""
    log = [
        received(1),
        received(2),
        failed(3, msg(2)),
        at(4, SuspendIssued("s1", Criteria(domain="a.com"), "hold", HOUR)),
        received(5),
        issued_rebind(6, {"tenant": "t"}),
        received(7),  # after the rebind
        failed(8, msg(5)),  # in flight when the rebind came
        received(9, "b.com"),  # not matched
        # The crash: a.com's Rebound never committed.
    ]
    state = fold(log)
    assert state.rebinds["b6"].moved_from == frozenset()
    [move] = owed_rebinds(state)
    assert move == Rebound("b6", "a.com", "t@a.com", [msg(1), msg(2)], [0, 1], "move")
    recovery = recover(state, chunk=1)
    assert recovery.owed == [move]
    assert {name: q.ids() for name, q in recovery.queues.items()} == {
        "a.com": [mid(5), mid(7)],
        "b.com": [mid(9)],
    }
    assert mid(2) not in recovery.schedule
    # Once its Rebound is in the log, the fold says so, and nothing is owed again.
    state = fold([*log, at(10, move)])
    assert state.rebinds["b6"].moved_from == frozenset({"a.com"})
    assert owed_rebinds(state) == []
    assert recover(state, chunk=1).owed == []


def test_only_the_queues_a_crash_left_unmoved_owe_and_each_rebind_moves_in_its_turn() -> None:
    log = [
        received(1),
        received(2, "acme@a.com"),
        issued_rebind(3, {"routing_domain": "relay"}),
        at(4, Rebound("b3", "acme@a.com", "acme@a.com!relay", [msg(2)], [0], "move")),
        received(5),
        issued_rebind(6, {"tenant": "t"}),
        # The crash: a.com moved neither for b3 nor for b6.
    ]
    state = fold(log)
    assert owed_rebinds(state) == [
        Rebound("b3", "a.com", "a.com!relay", [msg(1)], [0], "move"),
        # Moved out by b3 first; only what came between the two is b6's.
        Rebound("b6", "a.com", "t@a.com", [msg(5)], [0], "move"),
        # Moved by b3 before b6 was issued (its Rebound is in the log): b6's too.
        Rebound("b6", "acme@a.com!relay", "t@a.com!relay", [msg(2)], [0], "move"),
    ]


def test_a_message_a_bounce_or_an_expiry_owes_stays_for_them() -> None:
    rule = BounceIssued("r", Criteria(domain="a.com"), "closed", 4 * SECOND)
    log = [
        received(1),
        received(2),
        at(3, rule),  # its sweep's Bounced was lost too
        at(4, TransientlyFailed("a.com", msg(2), 0, FAILED, None, expiry="too old")),
        received(5),
        issued_rebind(6, {"tenant": "t"}),
    ]
    state = fold(log)
    recovery = recover(state, chunk=10)
    kinds = [type(event).__name__ for event in recovery.owed]
    assert kinds == ["Expired", "Bounced", "Rebound"]
    assert recovery.owed[1] == Bounced("r", "a.com", [msg(1)])
    # msg(5) came once the rule had expired: the rebind moves it alone.
    assert recovery.owed[2] == Rebound("b6", "a.com", "t@a.com", [msg(5)], [0], "move")
    assert recovery.queues == {}


def test_a_rebind_that_keeps_the_name_owes_no_move_and_its_flush_survives_a_restart() -> None:
    log = [
        received(1),
        failed(2, msg(1)),
        issued_rebind(3, {}, always_flush=True),
    ]
    state = fold(log)
    assert owed_rebinds(state) == []
    # The flush made the waiting message due at once: a restart finds it due.
    assert state.schedule[mid(1)] == Retry(None, 1, 2, 2 * SECOND)
    recovery = recover(state, chunk=10)
    restarted = QueueState("a.com", recovery.queues["a.com"], schedule=recovery.schedule)
    assert restarted.messages.ids() == [mid(1)]
    assert restarted.waiting == {}
    # Without always_flush it waits on.
    state = fold([received(1), failed(2, msg(1)), issued_rebind(3, {})])
    assert state.schedule[mid(1)].due == HOUR


# -- InvariantCheck ---------------------------------------------------------------------


def test_a_log_with_rebinds_keeps_every_invariant() -> None:
    rule = BounceIssued("r", Criteria(tenant="t"), "closed", 100 * SECOND)
    log = [
        received(1),
        received(2),
        at(3, rule),
        issued_rebind(4, {"tenant": "t"}),
        at(5, Rebound("b4", "a.com", "t@a.com", [msg(1), msg(2)], [0, 0], "move")),
        at(6, Bounced("r", "t@a.com", [msg(1), msg(2)])),
        received(7),
        issued_rebind(8, {"campaign": "c"}),
        at(9, Rebound("b8", "a.com", "c:@a.com", [msg(7)], [0], "move")),
    ]
    check = InvariantCheck.over(log)
    assert check.violations == []
    assert check.queues == {"c:@a.com": [mid(7)]}
    assert check.owed() == {}


def test_a_rebound_out_of_the_wrong_queue_or_a_lost_bounce_is_found() -> None:
    rule = BounceIssued("r", Criteria(tenant="t"), "closed", 100 * SECOND)
    wrong = [
        received(1),
        at(2, Rebound("b", "b.com", "t@a.com", [msg(1)], [0], "move")),
    ]
    violation = InvariantCheck.over(wrong).violations[0]
    assert violation.check == "conservation"
    assert "rebound out of b.com but was received into a.com" in violation.problem
    # A bounce out of the old queue after the move is out of the wrong queue.
    moved = [
        received(1),
        at(2, rule),
        at(3, Rebound("b", "a.com", "c:@a.com", [msg(1)], [0], "move")),
        at(4, Bounced("r", "a.com", [msg(1)])),
    ]
    problems = [v.problem for v in InvariantCheck.over(moved).violations]
    assert any("bounced out of a.com but was rebound into c:@a.com" in p for p in problems)
    # Into a queue under a live rule without the Bounced: owed, not a violation.
    owed = [received(1), at(2, rule), at(3, Rebound("b", "a.com", "t@a.com", [msg(1)], [0], "m"))]
    check = InvariantCheck.over(owed)
    assert check.violations == []
    assert check.owed() == {"r": 1}


def test_the_moves_a_crash_left_owed_are_counted_per_rebind_as_a_start_makes_them() -> None:
    """What ``kumo replay --verify`` notes: per rebind, the messages the next start
    moves (:func:`recover`), those a bounce or an expiry owes left out."""
    rule = BounceIssued("r", Criteria(domain="a.com"), "closed", 4 * SECOND)
    crashes = {
        "one queue": (
            [
                received(1),
                received(2),
                failed(3, msg(2)),
                issued_rebind(4, {"tenant": "t"}),
                received(5),  # after the rebind: stays
                received(6, "b.com"),  # not matched
            ],
            {"b4": 2},
        ),
        "two rebinds": (
            [
                received(1),
                received(2, "acme@a.com"),
                issued_rebind(3, {"routing_domain": "relay"}),
                at(4, Rebound("b3", "acme@a.com", "acme@a.com!relay", [msg(2)], [0], "move")),
                received(5),
                issued_rebind(6, {"tenant": "t"}),
            ],
            {"b3": 1, "b6": 2},
        ),
        "a bounce and an expiry first": (
            [
                received(1),
                received(2),
                at(3, rule),
                at(4, TransientlyFailed("a.com", msg(2), 0, FAILED, None, expiry="too old")),
                received(5),
                issued_rebind(6, {"tenant": "t"}),
            ],
            {"b6": 1},
        ),
        "a flush": ([received(1), issued_rebind(2, {}, always_flush=True)], {}),
    }
    for name, (log, expected) in crashes.items():
        check = InvariantCheck.over(log)
        assert check.violations == [], name
        assert check.owed_rebinds() == expected, name
        moves: Counter[str] = Counter()
        for event in recover(fold(log), chunk=10).owed:
            if isinstance(event, Rebound):
                moves[event.rebind_id] += len(event.messages)
        assert dict(moves) == expected, name
        # Once the start has appended them, nothing is owed any more.
        done = [*log, *(at(100 + n, e) for n, e in enumerate(recover(fold(log), chunk=10).owed))]
        assert InvariantCheck.over(done).owed_rebinds() == {}, name


# -- owed moves, looked for only where they can be ----------------------------------------


def every_rebind_against_every_queue(state: State, taken: frozenset[str]) -> list[Rebound]:
    """What :func:`owed_rebinds` must find, as it was first written: each rebind whose
    moves are known checked against each queue, each message given to the first one
    issued after its place that names another queue. (The fast one skips the rebinds
    issued before a queue's oldest message, and flushes.)"""
    assert state.queues is not None
    rebinds = sorted(
        (seen for seen in state.rebinds.values() if seen.moved_from is not None),
        key=lambda seen: seen.seq,
    )
    owed: list[tuple[int, Rebound]] = []
    for queue, messages in state.queues.items():
        pending = [
            (seen, to_queue)
            for seen in rebinds
            if seen.moved_from is not None
            and queue not in seen.moved_from
            and seen.event.criteria.matches(queue)
            and (to_queue := rebound_queue_name(queue, seen.event.data_map)) != queue
        ]
        moving: dict[str, list[tuple[Message, int]]] = {}
        for message in messages:
            retried = state.schedule.get(message.id)
            anchor = message.seq if retried is None else retried.anchor_seq
            first = next((seen for seen, _ in pending if seen.seq > anchor), None)
            if first is not None and message.id not in taken:
                attempts = 0 if retried is None else retried.attempts
                moving.setdefault(first.event.rebind_id, []).append((message, attempts))
        for seen, to_queue in pending:
            moved = moving.get(seen.event.rebind_id)
            if moved:
                event = seen.event
                rebound = Rebound(
                    event.rebind_id,
                    queue,
                    to_queue,
                    [message for message, _ in moved],
                    [attempts for _, attempts in moved],
                    event.reason,
                    event.suppress_logging,
                )
                owed.append((seen.seq, rebound))
    owed.sort(key=lambda item: item[0])
    return [rebound for _, rebound in owed]


QUEUES = ("a.com", "t@a.com", "b.com", "acme@b.com!relay")
CRITERIA = (Criteria(domain="a.com"), Criteria(tenant="acme"), Criteria(domain="b.com"))
DATA: tuple[dict[str, str], ...] = (
    {},
    {"tenant": "t"},
    {"routing_domain": "relay"},
    {"queue": "a.com"},
    {"tenant": "acme"},
)

steps = st.lists(
    st.one_of(
        st.tuples(st.just("receive"), st.integers(0, len(QUEUES) - 1)),
        st.tuples(st.just("fail"), st.integers(0, 30)),
        st.tuples(
            st.just("rebind"), st.integers(0, len(CRITERIA) - 1), st.integers(0, len(DATA) - 1)
        ),
        st.tuples(st.just("moved"), st.integers(0, 30), st.integers(0, len(QUEUES) - 1)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(steps=steps, taken=st.sets(st.integers(1, 40)))
def test_the_moves_owed_are_those_of_every_rebind_against_every_queue(
    steps: list[tuple[Any, ...]], taken: set[int]
) -> None:
    """Receptions, failed attempts, rebinds (some that keep names, some flushes) and
    queues whose move the log records, in any order: the owed moves are those the
    exhaustive check finds."""
    state = State()
    received_ids: list[Message] = []
    rebind_ids: list[str] = []
    for seq, step in enumerate(steps, start=1):
        if step[0] == "receive":
            state.apply(received(seq, QUEUES[step[1]]))
            received_ids.append(msg(seq))
        elif step[0] == "fail" and received_ids:
            message = received_ids[step[1] % len(received_ids)]
            queue = next(q for q, m in (state.queues or {}).items() if message.id in m.ids())
            state.apply(failed(seq, message, queue))
        elif step[0] == "rebind":
            event = RebindIssued(f"b{seq}", CRITERIA[step[1]], DATA[step[2]], "move")
            state.apply(at(seq, event))
            rebind_ids.append(event.rebind_id)
        elif step[0] == "moved" and rebind_ids:
            # The log recorded this queue's move (which messages it took does not matter
            # here: only that the rebind owes this queue nothing more).
            rebind_id = rebind_ids[step[1] % len(rebind_ids)]
            state.rebinds[rebind_id] = state.rebinds[rebind_id].moved(QUEUES[step[2]])
    ids = frozenset(mid(n) for n in taken)
    assert owed_rebinds(state, taken=ids) == every_rebind_against_every_queue(state, ids)

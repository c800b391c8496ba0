"""The fold and the bounce decisions: actors and restart agree on every message's fate."""

from __future__ import annotations

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from kumo.model.criteria import Criteria
from kumo.model.events import (
    BounceCancelled,
    Bounced,
    BounceExpired,
    BounceIssued,
    Committed,
    Event,
    MessageReceived,
)
from kumo.model.recovery import owed_bounces
from kumo.model.state import QueueState, RuleBook, State, SweepRule

QUEUES = ["a.com", "t@a.com", "c:t@b.com", "b.com!r", "c:@a.com"]
CRITERIA = [
    Criteria(domain="a.com"),
    Criteria(tenant="t"),
    Criteria(),
    Criteria(queue_names=["b.com!r", "a.com"]),
    Criteria(campaign="c"),
    Criteria(campaign="c", tenant="t", domain="b.com"),
]
SECOND = 1_000_000_000

operations = st.lists(
    st.one_of(
        st.tuples(st.just("receive"), st.integers(0, len(QUEUES) - 1)),
        st.tuples(st.just("issue"), st.integers(0, len(CRITERIA) - 1), st.sampled_from([0, 5, 60])),
        st.tuples(st.just("cancel"), st.integers(0, 20)),
        st.tuples(st.just("advance"), st.integers(1, 30)),
    ),
    max_size=60,
)


class LiveSystem:
    """Drives QueueStates the way the broadcaster and the actors do, in log order."""

    def __init__(self) -> None:
        self.log: list[Committed] = []
        self.rules = RuleBook()
        self.queues: dict[str, QueueState] = {}
        self.holders: dict[str, set[str]] = {}
        self.decisions: list[Bounced] = []
        self.time = 1_000 * SECOND
        self.issued: list[str] = []

    def commit(self, event: Event) -> Committed:
        committed = Committed(len(self.log) + 1, self.time, event)
        self.log.append(committed)
        return committed

    def route(self, committed: Committed) -> None:
        event = committed.event
        targets: list[QueueState] = []
        match event:
            case MessageReceived():
                queue = self.queues.get(event.queue)
                if queue is None:
                    rules = [SweepRule.of(r) for r in self.rules.matching_live(event.queue)]
                    queue = self.queues[event.queue] = QueueState(event.queue, rules=rules)
                    for sweep in rules:
                        self.holders.setdefault(sweep.id, set()).add(event.queue)
                targets = [queue]
            case BounceIssued():
                rule = self.rules.apply(committed)
                assert rule is not None
                targets = [q for q in self.queues.values() if event.criteria.matches(q.parsed)]
                if not rule.issued_expired:
                    self.holders[rule.id] = {q.name for q in targets}
            case BounceCancelled() | BounceExpired():
                self.rules.apply(committed)
                targets = [self.queues[name] for name in self.holders.pop(event.rule_id, ())]
            case Bounced():
                self.rules.apply(committed)
        for queue in targets:
            decision = queue.apply(committed)
            if decision is not None:
                self.decisions.append(decision)
                self.route(self.commit(decision))

    def run(self, ops: list[tuple[object, ...]]) -> None:
        for op in ops:
            match op:
                case ("receive", int(index)):
                    number = len(self.log)
                    event: Event = MessageReceived(
                        f"{number:032x}", QUEUES[index], "s@x", f"r{number}@y", 10
                    )
                case ("issue", int(index), int(lifetime)):
                    rule_id = f"rule{len(self.issued)}"
                    self.issued.append(rule_id)
                    expires = self.time + lifetime * SECOND
                    event = BounceIssued(rule_id, CRITERIA[index], "why", expires)
                case ("cancel", int(index)):
                    if not self.issued:
                        continue
                    rule_id = self.issued[index % len(self.issued)]
                    if not self.rules.is_live(rule_id, self.time):
                        continue
                    event = BounceCancelled(rule_id)
                case ("advance", int(seconds)):
                    self.time += seconds * SECOND
                    for rule in self.rules.due_to_expire(self.time):
                        self.route(self.commit(BounceExpired(rule.id)))
                    continue
                case _:
                    raise AssertionError(op)
            self.route(self.commit(event))


def fates(bounces: list[Bounced]) -> dict[str, tuple[str, str]]:
    return {m.id: (b.rule_id, b.queue) for b in bounces for m in b.messages}


@settings(max_examples=300, deadline=None)
@given(ops=operations, lost=st.data())
def test_restart_finds_exactly_the_decisions_a_crash_lost(
    ops: list[tuple[object, ...]], lost: st.DataObject
) -> None:
    system = LiveSystem()
    system.run(ops)
    decided = [c for c in system.log if isinstance(c.event, Bounced)]
    dropped = {c.seq for c in decided if lost.draw(st.booleans())}
    state = State()
    for committed in system.log:
        if committed.seq not in dropped:
            state.apply(committed)
    owed = fates(owed_bounces(state))
    expected = fates([c.event for c in decided if c.seq in dropped])  # type: ignore[misc]
    assert owed == expected


@settings(max_examples=200, deadline=None)
@given(ops=operations)
def test_fold_matches_the_live_system(ops: list[tuple[object, ...]]) -> None:
    system = LiveSystem()
    system.run(ops)
    state = State()
    for committed in system.log:
        state.apply(committed)
    assert owed_bounces(state) == []
    live_queues = {name: q.messages for name, q in system.queues.items() if q.messages}
    assert state.queues == live_queues
    assert state.queue_counts == {name: len(m) for name, m in live_queues.items()}
    counted: dict[str, dict[str, int]] = {}
    for decision in system.decisions:
        per_queue = counted.setdefault(decision.rule_id, {})
        per_queue[decision.queue] = per_queue.get(decision.queue, 0) + len(decision.messages)
    assert {r.id: r.bounced for r in state.rules.rules.values() if r.bounced} == counted
    assert state.bounced_total + sum(state.queue_counts.values()) == state.received_total


def _committed(seq: int, time: int, event: Event) -> Committed:
    return Committed(seq, time, event)


def test_rulebook_lifecycle_and_views() -> None:
    book = RuleBook()
    criteria = Criteria(domain="d")
    book.apply(_committed(1, 10, BounceIssued("r1", criteria, "one", 100, issued_by="a")))
    book.apply(_committed(2, 20, BounceIssued("r2", criteria, "two", 200)))
    assert book.rules["r1"].end == "replaced"
    assert book.rules["r1"].ended_by == "r2"
    [view] = book.views(50)
    assert (view.id, view.remaining) == ("r2", 150)
    book.apply(_committed(3, 30, BounceCancelled("r2", cancelled_by="b")))
    assert book.rules["r2"].status(40) == "cancelled"
    assert book.views(40) == []
    # Cancelling what is not live changes nothing.
    before = attrs.asdict(book.rules["r2"])
    book.apply(_committed(4, 40, BounceCancelled("r2", cancelled_by="c")))
    assert attrs.asdict(book.rules["r2"]) == before


def test_rule_past_expiry_is_expired_not_replaced() -> None:
    book = RuleBook()
    criteria = Criteria(tenant="t")
    book.apply(_committed(1, 10, BounceIssued("r1", criteria, "one", 15)))
    book.apply(_committed(2, 20, BounceIssued("r2", criteria, "two", 200)))
    assert book.rules["r1"].end == "expired"
    assert book.next_expiry() == 200


def test_copy_is_independent() -> None:
    book = RuleBook()
    book.apply(_committed(1, 10, BounceIssued("r1", Criteria(), "x", 100)))
    clone = book.copy()
    clone.apply(_committed(2, 20, BounceCancelled("r1")))
    assert book.is_live("r1", 50)
    assert not clone.is_live("r1", 50)


def test_settle_folds_arrivals_only_where_nothing_can_be_decided() -> None:
    arrivals = [
        Committed(seq, 10 * seq, MessageReceived(f"{seq:032x}", "a.com", "s@x", f"r{seq}@a.com", 1))
        for seq in (1, 2, 3)
    ]
    settled, applied = QueueState("a.com"), QueueState("a.com")
    assert settled.settle(arrivals)
    for committed in arrivals:
        assert applied.apply(committed) is None
    assert list(settled.messages) == list(applied.messages)
    # A queue holding a rule decides every arrival: settle changes nothing.
    rule = SweepRule("r", Criteria(), expires_at=10**12, issued_expired=False)
    ruled = QueueState("a.com", rules=[rule])
    assert not ruled.settle(arrivals)
    assert not ruled.messages
    # Neither does an event other than an arrival.
    issued = Committed(4, 40, BounceIssued("r", Criteria(), "why", 10**12))
    assert not settled.settle([*arrivals, issued])
    assert len(settled.messages) == 3

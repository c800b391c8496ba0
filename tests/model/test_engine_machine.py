"""The model, model-checked: a state machine drives the real Router, QueueStates and fold.

:class:`EngineModel` is the engine without trio: a log (a list), the projection folded
at each commit, a :class:`~kumo.model.router.Router` that routes the committed events
(lagging behind the log, in batches, as the broadcaster does) into per-queue inboxes,
one :class:`~kumo.model.state.QueueState` per queue that applies its inbox in order
(sweeps taken in chunks of random size, other queues acting between the chunks), and the
writer's background lane, where the queues' ``Bounced`` decisions wait until they are
committed and routed in turn. Hypothesis interleaves clients' requests (inject, issue,
cancel), time passing, those internal steps, and crashes (the lane and the queues are
lost; the log is folded from scratch and :func:`~kumo.model.recovery.recover` rebuilds
the queues as ``open_engine`` does).

After every step the machine is checked against a fresh fold of its log, against
:class:`~kumo.model.invariants.InvariantCheck`, and against the independent
:class:`tests.reference_model.ReferenceModel`.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kumo.model.criteria import Criteria
from kumo.model.events import (
    BounceCancelled,
    Bounced,
    BounceExpired,
    BounceIssued,
    Committed,
    Event,
    Message,
    MessageReceived,
)
from kumo.model.invariants import InvariantCheck
from kumo.model.recovery import owed_bounces, recover
from kumo.model.router import Router
from kumo.model.state import QueueState, RuleBook, State, message_from
from tests.reference_model import CRITERIA, QUEUES, ReferenceModel

SECOND = 1_000_000_000
LIFETIMES = st.sampled_from([-20, 0, 1, 5, 60, 300, 3600])
"""Seconds from issue to expiry: in the past, now (issued already expired), or later."""
INJECTIONS = st.one_of(
    st.lists(st.sampled_from(QUEUES), min_size=1, max_size=3),
    st.tuples(st.sampled_from(QUEUES), st.integers(2, 5)).map(lambda qn: [qn[0]] * qn[1]),
)
"""The queues of one inject request's messages: a few queues, or several to one."""
CHUNKS = st.sampled_from([None, 1, 2, 3])
"""How many messages a sweep takes at a time (None: all at once)."""


def fates(bounces: Iterable[Bounced]) -> dict[str, tuple[str, str]]:
    """Message id -> (rule id, queue) of the bounce that takes it."""
    return {m.id: (b.rule_id, b.queue) for b in bounces for m in b.messages}


def rules_of(book: RuleBook) -> list[dict[str, Any]]:
    """Every rule of a book, counters and ending included, as comparable values."""
    return [attrs.asdict(rule) for rule in book.rules.values()]


class EngineModel(RuleBasedStateMachine):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.time = 1_000 * SECOND
        self.log: list[Committed] = []
        self.projection = State(keep_messages=False)
        self.router = Router()
        self.routed = 0
        """How much of the log the router has routed."""
        self.queues: dict[str, QueueState] = {}
        self.inboxes: dict[str, deque[Committed]] = {}
        self.lane: deque[Bounced] = deque()
        """Decisions submitted to the writer and not yet committed."""
        self.reference = ReferenceModel()
        self.criteria: dict[str, Mapping[str, Any]] = {}
        """Rule id -> the criteria it was issued with, in issue order."""
        self.received = 0

    # -- the engine's moving parts -----------------------------------------------------

    def commit(self, events: list[Event]) -> list[Committed]:
        """One transaction: the events get the next seqs and the current time."""
        start = len(self.log) + 1
        committed = [Committed(start + i, self.time, event) for i, event in enumerate(events)]
        self.log.extend(committed)
        for item in committed:
            self.projection.apply(item)
        return committed

    def route(self, count: int) -> None:
        """The broadcaster: route the next ``count`` committed events as one batch."""
        batch = self.log[self.routed : self.routed + count]
        self.routed += len(batch)
        routing = self.router.route(batch)
        for new in routing.new_queues:
            assert new.name not in self.queues
            self.queues[new.name] = QueueState(new.name, rules=new.rules)
            self.inboxes[new.name] = deque()
        for name, events in routing.deliveries.items():
            self.inboxes[name].extend(events)

    def has_work(self, name: str) -> bool:
        return bool(self.inboxes[name]) or self.queues[name].sweeping is not None

    def act(self, name: str, limit: int | None) -> None:
        """A queue's actor: the next chunk of its sweep, else its next event (a sweep
        it starts takes ``limit`` messages now; ``limit=0`` only decides it)."""
        state = self.queues[name]
        if state.sweeping is not None:
            decision = state.continue_sweep(limit or None)
            assert decision is not None
        else:
            committed = self.inboxes[name].popleft()
            # What the router hands a queue is what the queue says concerns it (a
            # lagging actor filters the log with ``concerns`` instead).
            assert state.concerns(committed.event)
            decision = state.apply(committed, limit=limit)
            if limit == 0 and isinstance(committed.event, BounceIssued):
                assert decision is None
        if decision is not None:
            assert decision.messages
            self.lane.append(decision)

    def commit_decisions(self, count: int) -> None:
        """The writer: commit the first ``count`` decisions of its lane, in one transaction."""
        taken = [self.lane.popleft() for _ in range(min(count, len(self.lane)))]
        self.commit(list(taken))

    def quiescent(self) -> bool:
        """Nothing routed, decided or committed is still under way."""
        return (
            self.routed == len(self.log)
            and not self.lane
            and not any(self.has_work(name) for name in self.queues)
        )

    def settle_all(self, chunk: int | None = None) -> None:
        """Run everything under way to its end; sweeps as the actors take them (decided
        first, then ``chunk`` messages at a time) when ``chunk`` is given."""
        while not self.quiescent():
            self.route(len(self.log) - self.routed)
            for name in self.queues:
                while self.has_work(name):
                    starts = self.queues[name].sweeping is None
                    self.act(name, 0 if starts and chunk is not None else chunk)
            self.commit_decisions(len(self.lane))

    def expire_due(self) -> None:
        """What the engine's RuleExpiry appends: the rules past expiry, not yet ended."""
        due = self.projection.rules.due_to_expire(self.time)
        for ending in due:
            assert not self.reference.is_live(ending.id, self.time)
        if due:
            self.commit([BounceExpired(ending.id) for ending in due])

    def issue_rule(self, criteria: Mapping[str, Any], lifetime: int, suppress: bool) -> None:
        rule_id = f"rule{len(self.criteria)}"
        self.criteria[rule_id] = criteria
        expires = self.time + lifetime * SECOND
        self.commit(
            [
                BounceIssued(
                    rule_id,
                    Criteria(**criteria),
                    "why",
                    expires,
                    suppress_logging=suppress,
                    issued_by="ops",
                )
            ]
        )
        self.reference.issue(rule_id, criteria, self.time, expires)

    # -- what clients do ---------------------------------------------------------------

    @initialize(data=st.data())
    def clients_begin(self, data: st.DataObject) -> None:
        """A few messages and rules to start from, interleaved: Hypothesis turns rules
        off at random for a whole example (swarm testing), and an example without any
        message or rule would check little."""
        for _ in range(data.draw(st.integers(0, 6))):
            if data.draw(st.booleans()):
                self.inject(data.draw(INJECTIONS))
            else:
                criteria = data.draw(st.sampled_from(CRITERIA))
                self.issue_rule(criteria, data.draw(LIFETIMES), data.draw(st.booleans()))

    @rule(queues=INJECTIONS)
    def inject(self, queues: list[str]) -> None:
        events: list[Event] = []
        for queue in queues:
            self.received += 1
            message_id = f"{self.received:032x}"
            events.append(MessageReceived(message_id, queue, "s@x", f"r{self.received}@y", 10))
            self.reference.receive(message_id, queue, self.time)
        self.commit(events)

    @rule(data=st.data(), lifetime=LIFETIMES, suppress=st.booleans())
    def issue(self, data: st.DataObject, lifetime: int, suppress: bool) -> None:
        """POST, with one of a few criteria or with a live rule's (which it replaces)."""
        choices = [st.sampled_from(CRITERIA)]
        live = [view.id for view in self.projection.rules.views(self.time)]
        if live:
            choices.append(st.sampled_from([self.criteria[rule_id] for rule_id in live]))
        self.issue_rule(data.draw(st.one_of(choices)), lifetime, suppress)

    def raced(self) -> list[str]:
        """Rules a cancel could have found live whose end reached the log before it."""
        return [
            rule.id
            for rule in self.projection.rules.rules.values()
            if not rule.issued_expired
            and (rule.end in ("replaced", "expired") or rule.expires_at <= self.time)
        ]

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        """DELETE with a live id, any id ever issued (replaced, cancelled, expired), or
        an unknown one: the engine appends only for a rule its projection calls live.
        Or a cancel that lost a race: checked while its rule was live, committed after
        the rule was replaced or expired (the log may hold that; it changes nothing)."""
        raced = self.raced()
        if len(raced) > 0 and data.draw(st.booleans()):
            self.commit([BounceCancelled(data.draw(st.sampled_from(raced)), "ops")])
            return
        live = [view.id for view in self.projection.rules.views(self.time)]
        choices = [st.just("unknown")]
        if live:
            choices.append(st.sampled_from(live))
        if self.criteria:
            choices.append(st.sampled_from(list(self.criteria)))
        rule_id = data.draw(st.one_of(choices))
        accepted = self.projection.rules.is_live(rule_id, self.time)
        assert accepted == self.reference.cancel(rule_id, self.time)
        if accepted:
            self.commit([BounceCancelled(rule_id, cancelled_by="ops")])

    # -- time, and the engine's own steps ----------------------------------------------

    @rule(data=st.data(), expire=st.booleans())
    def time_passes(self, data: st.DataObject, expire: bool) -> None:
        """The clock moves, by some seconds or exactly to the next expiry (an arrival
        then finds a rule at its last instant: no longer live); the rule expiry may or
        may not have caught up yet."""
        choices = [st.integers(1, 30).map(lambda seconds: self.time + seconds * SECOND)]
        upcoming = self.projection.rules.next_expiry()
        if upcoming is not None and upcoming > self.time:
            choices.append(st.just(upcoming))
        self.time = data.draw(st.one_of(choices))
        if expire:
            self.expire_due()

    @rule(data=st.data())
    def rules_expire(self, data: st.DataObject) -> None:
        """The rule expiry catches up. Or one of its ``BounceExpired`` lost a race: an
        equal rule's issue ended its rule first (the log may hold that too)."""
        ended = [r.id for r in self.projection.rules.rules.values() if r.end == "expired"]
        if len(ended) > 0 and data.draw(st.booleans()):
            self.commit([BounceExpired(data.draw(st.sampled_from(ended)))])
        else:
            self.expire_due()

    @precondition(lambda self: not self.quiescent())
    @rule(data=st.data())
    def the_engine_works(self, data: st.DataObject) -> None:
        """A few steps of the broadcaster, the queues' actors and the writer, in any
        order they can come in."""
        for _ in range(data.draw(st.integers(1, 4))):
            busy = [name for name in self.queues if self.has_work(name)]
            parts = [*(["broadcaster"] if self.routed < len(self.log) else [])]
            parts += [*(["actor"] if busy else []), *(["writer"] if self.lane else [])]
            if not parts:
                return
            match data.draw(st.sampled_from(parts)):
                case "broadcaster":
                    self.route(data.draw(st.integers(1, 4)))
                case "actor":
                    name = data.draw(st.sampled_from(busy))
                    self.act(name, data.draw(st.one_of(st.just(0), CHUNKS)))
                case _:
                    self.commit_decisions(data.draw(st.integers(1, 4)))

    @rule(chunk=CHUNKS)
    def settle(self, chunk: int | None) -> None:
        """Everything under way is done."""
        self.settle_all(chunk)

    @rule(chunk=st.integers(1, 3))
    def crash_and_restart(self, chunk: int) -> None:
        """The lane, the inboxes and the queues are lost; the log is not. Restart as
        ``open_engine`` does: fold, recover, open the queues, submit what is owed."""
        lost = fates(self.lane)
        state = State()
        for committed in self.log:
            state.apply(committed)
        recovery = recover(state, chunk=chunk)
        owed = fates(recovery.owed)
        # Exactly what the rules call for and no Bounced records, the lost decisions
        # among it, each for the same rule and queue.
        assert owed == self.in_flight()
        assert lost.items() <= owed.items()
        assert all(0 < len(bounce.messages) <= chunk for bounce in recovery.owed)
        self.projection = state
        self.router = Router(state.rules.copy())
        self.routed = len(self.log)
        self.queues, self.inboxes = {}, {}
        for name, messages in recovery.queues.items():
            self.queues[name] = QueueState(name, messages, self.router.open_queue(name))
            self.inboxes[name] = deque()
        self.lane = deque(recovery.owed)

    # -- what a crash would lose, and a forged log ---------------------------------------

    @precondition(lambda self: any(isinstance(c.event, Bounced) for c in self.log))
    @rule(data=st.data())
    def restart_finds_the_bounces_a_crash_lost(self, data: st.DataObject) -> None:
        """Were any committed ``Bounced`` lost (the fsync window), a fold without them
        owes exactly their messages, to the same rules, plus what is still in flight."""
        decided = {c.seq: c.event for c in self.log if isinstance(c.event, Bounced)}
        dropped = {seq: bounce for seq, bounce in decided.items() if data.draw(st.booleans())}
        state = State()
        for committed in self.log:
            if committed.seq not in dropped:
                state.apply(committed)
        assert fates(owed_bounces(state)) == fates(dropped.values()) | self.in_flight()

    @precondition(
        lambda self: len(self.criteria) > 1 and any(isinstance(c.event, Bounced) for c in self.log)
    )
    @rule(data=st.data())
    def a_bounce_given_to_another_rule_is_an_attribution_violation(
        self, data: st.DataObject
    ) -> None:
        bounces = [c for c in self.log if isinstance(c.event, Bounced)]
        target = data.draw(st.sampled_from(bounces))
        assert isinstance(target.event, Bounced)
        wrong = data.draw(st.sampled_from([r for r in self.criteria if r != target.event.rule_id]))
        forged = Committed(
            target.seq, target.time, Bounced(wrong, target.event.queue, target.event.messages)
        )
        invariants = check([forged if c.seq == target.seq else c for c in self.log])
        # Given to a rule issued later, the bounce names a rule unknown at that point.
        assert any(
            v.seq == target.seq and v.check in ("attribution", "conservation")
            for v in invariants.violations
        )
        assert all(v.seq == target.seq for v in invariants.violations if v.check == "attribution")

    # -- the checks --------------------------------------------------------------------

    def in_flight(self) -> dict[str, tuple[str, str]]:
        """Message id -> (rule, queue): what the reference says a rule takes and no
        committed ``Bounced`` records yet."""
        bounced = {m.id for c in self.log if isinstance(c.event, Bounced) for m in c.event.messages}
        messages = self.reference.messages
        return {
            mid: (rule, messages[mid].queue)
            for mid, rule in self.reference.fates().items()
            if mid not in bounced
        }

    def held(self) -> dict[str, list[Message]]:
        """Queue -> the messages the log has queued there, found where the running parts
        hold them: in the queue, in the lane's decisions, or in events not yet applied."""
        held: dict[str, list[Message]] = {}
        for name, state in self.queues.items():
            held.setdefault(name, []).extend(state.messages)
            for committed in self.inboxes[name]:
                if isinstance(committed.event, MessageReceived):
                    held[name].append(message_from(committed, committed.event))
        for decision in self.lane:
            held.setdefault(decision.queue, []).extend(decision.messages)
        for committed in self.log[self.routed :]:
            if isinstance(committed.event, MessageReceived):
                held.setdefault(committed.event.queue, []).append(
                    message_from(committed, committed.event)
                )
        return {name: sorted(ms, key=lambda m: m.seq) for name, ms in held.items() if ms}

    @invariant()
    def agrees_with_replay_invariants_and_reference(self) -> None:
        fold = State()
        for committed in self.log:
            fold.apply(committed)
        self.check_replay(fold)
        self.check_reference(fold)
        self.check_invariant_check(fold)

    def check_replay(self, fold: State) -> None:
        """The running projection, router and queues equal a fold of the log."""
        projection, now = self.projection, self.time
        assert (projection.last_seq, projection.last_time) == (fold.last_seq, fold.last_time)
        assert (projection.received_total, projection.bounced_total) == (
            fold.received_total,
            fold.bounced_total,
        )
        assert projection.queue_counts == fold.queue_counts
        assert fold.bounced_total + sum(fold.queue_counts.values()) == fold.received_total
        assert rules_of(projection.rules) == rules_of(fold.rules)
        assert projection.rules.views(now) == fold.rules.views(now)
        assert fold.queues is not None
        assert {name: list(ms) for name, ms in fold.queues.items()} == self.held()
        assert fold.queue_counts == {name: len(ms) for name, ms in fold.queues.items()}
        if self.routed == len(self.log):
            assert rules_of(self.router.rules) == rules_of(fold.rules)
            for name, state in self.queues.items():
                if not self.has_work(name):
                    # A queue holds exactly the rules not yet ended that match it.
                    assert [r.id for r in state.rules] == [
                        r.id for r in fold.rules.matching_live(name)
                    ]
        if self.quiescent():
            assert owed_bounces(fold) == []
            live_queues = {name: q.messages for name, q in self.queues.items() if q.messages}
            assert fold.queues == live_queues
            assert fold.queue_counts == {name: len(m) for name, m in live_queues.items()}

    def check_reference(self, fold: State) -> None:
        """Listing, counters, gauges and conservation as the reference model has them."""
        reference, projection, now = self.reference, self.projection, self.time
        bounced: dict[str, tuple[str, str]] = {}
        counted: dict[str, Counter[str]] = {}
        for committed in self.log:
            if isinstance(committed.event, Bounced):
                bounce = committed.event
                counted.setdefault(bounce.rule_id, Counter())[bounce.queue] += len(bounce.messages)
                for message in bounce.messages:
                    assert message.id not in bounced, "a message was bounced twice"
                    bounced[message.id] = (bounce.rule_id, bounce.queue)
        received = [c.event.message_id for c in self.log if isinstance(c.event, MessageReceived)]
        assert received == list(reference.messages)
        # Every Bounced is attributed to the rule the reference says, out of its queue.
        expected = {
            mid: (rule, reference.messages[mid].queue) for mid, rule in reference.fates().items()
        }
        assert {mid: expected.get(mid) for mid in bounced} == bounced
        # Conservation: received = queued + bounced, nothing in both.
        assert fold.queues is not None
        queued = [m.id for ms in fold.queues.values() for m in ms]
        assert len(queued) + len(bounced) == len(received)
        assert set(queued) | set(bounced) == set(received)
        # GET, counters and gauges.
        listed = [
            (v.id, v.remaining, dict(v.bounced), v.total_bounced)
            for v in projection.rules.views(now)
        ]
        assert listed == [
            (r.id, r.remaining, r.bounced, r.total_bounced) for r in reference.listing(now, bounced)
        ]
        assert projection.received_total == len(reference.messages)
        assert projection.bounced_total == len(bounced)
        assert projection.queue_counts == reference.queue_counts(bounced)
        # Every rule's counters (listed or not) equal its Bounced events, and the
        # reference's count of the messages it took.
        counters = {r.id: r.bounced for r in projection.rules.rules.values() if r.bounced}
        assert counters == {rule_id: dict(per_queue) for rule_id, per_queue in counted.items()}
        assert counters == reference.bounced(bounced)
        # What is under way: the recovery's owed bounces, and the lane's decisions.
        in_flight = self.in_flight()
        assert fates(owed_bounces(fold)) == in_flight
        assert fates(self.lane).items() <= in_flight.items()
        if self.quiescent():
            assert in_flight == {}
            assert reference.listing(now) == reference.listing(now, bounced)
            assert projection.queue_counts == reference.queue_counts()
            assert counters == reference.bounced()

    def check_invariant_check(self, fold: State) -> None:
        """``kumo replay --verify``'s checks are silent on the machine's log."""
        invariants = check(self.log)
        assert invariants.violations == []
        assert invariants.owed() == dict(Counter(rule for rule, _ in self.in_flight().values()))
        assert fold.queues is not None
        assert invariants.queued() == {q: [m.id for m in ms] for q, ms in fold.queues.items()}
        if self.quiescent():
            assert invariants.owed() == {}
            queued = {q: len(ids) for q, ids in invariants.queued().items()}
            assert queued == {q: len(s.messages) for q, s in self.queues.items() if s.messages}


def check(log: list[Committed]) -> InvariantCheck:
    return InvariantCheck.over(log)


EngineModel.TestCase.settings = settings(max_examples=60, stateful_step_count=50, deadline=None)
TestEngineModel = EngineModel.TestCase

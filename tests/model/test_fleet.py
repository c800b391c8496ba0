"""kumo.model.fleet: the outbox, the stream's entries, and taking each action once."""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Iterator

import attrs
import orjson
import pytest
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
    Message,
    ReadySuspendCancelled,
    ReadySuspendExpired,
    ReadySuspendIssued,
    RebindIssued,
    SuspendCancelled,
    SuspendExpired,
    SuspendIssued,
    decode_event,
    encode_event,
)
from kumo.model.fleet import (
    ADMIN_KINDS,
    FleetAction,
    FleetEntryError,
    FleetSettings,
    RedisUrlError,
    RuleCounters,
    StreamEntry,
    check_redis_url,
    counter_nodes_key,
    counters_key,
    decode_counters,
    decode_entry,
    encode_counters,
    encode_entry,
    epoch_key,
    fleet_event_id,
    fleet_views,
    owed_entries,
    plan_follow,
    retry_delay,
    rule_counters,
    standing_entries,
)
from kumo.model.ready_suspension import ReadySuspensionBook
from kumo.model.retention import base_projection
from kumo.model.router import Router
from kumo.model.snapshot import decode_snapshot, encode_snapshot
from kumo.model.state import QueueState, RuleBook, State

HOUR = 3600 * 10**9
A, B, C = "node-a", "node-b", "node-c"


def issued(rule_id: str, origin: str = "", *, expires_at: int = HOUR, at: int = 0) -> BounceIssued:
    return BounceIssued(
        rule_id=rule_id,
        criteria=Criteria(campaign=rule_id),
        reason="why",
        expires_at=expires_at,
        issued_by="ops",
        issued_at=at,
        origin=origin,
    )


def cancelled(rule_id: str, *, origin: str = "") -> BounceCancelled:
    return BounceCancelled(rule_id=rule_id, cancelled_by="oncall", origin=origin)


def suspended(rule_id: str, origin: str = "", *, expires_at: int = HOUR) -> SuspendIssued:
    return SuspendIssued(
        rule_id=rule_id,
        criteria=Criteria(domain=f"{rule_id}.example"),
        reason="maintenance",
        expires_at=expires_at,
        issued_by="ops",
        issued_at=0,
        origin=origin,
    )


def lifted(rule_id: str, *, origin: str = "") -> SuspendCancelled:
    return SuspendCancelled(rule_id=rule_id, cancelled_by="oncall", origin=origin)


def ready(
    rule_id: str, origin: str = "", *, name: str = "", at: int = 0, expires_at: int = HOUR
) -> ReadySuspendIssued:
    return ReadySuspendIssued(
        rule_id=rule_id,
        name=name or f"unspecified->mx.{rule_id}.example@smtp_client",
        reason="maintenance",
        expires_at=expires_at,
        issued_by="ops",
        issued_at=at,
        origin=origin,
    )


def ready_lifted(rule_id: str, *, origin: str = "") -> ReadySuspendCancelled:
    return ReadySuspendCancelled(rule_id=rule_id, cancelled_by="oncall", origin=origin)


def rebind(rebind_id: str, origin: str = "") -> RebindIssued:
    return RebindIssued(
        rebind_id=rebind_id,
        criteria=Criteria(domain=f"{rebind_id}.example"),
        data={"routing_domain": "relay.example"},
        reason="move",
        issued_by="ops",
        issued_at=0,
        origin=origin,
    )


class Node:
    """A node's log as far as fleet mode sees it: its rule books, folded in order."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.state = State(keep_messages=False)
        self.log: list[Event] = []
        self.published_seq = 0
        self.position = 0

    @property
    def seq(self) -> int:
        return len(self.log)

    def append(self, *events: Event) -> None:
        for event in events:
            self.log.append(event)
            self.state.apply(Committed(self.seq, self.seq, event))

    def live(self) -> set[str]:
        return {
            rule.id
            for book in (self.state.rules, self.state.suspends)
            for rule in book.live_rules()
        } | {suspension.id for suspension in self.state.ready_suspends.live_rules()}


def test_fleet_event_ids_name_one_action_of_one_rule() -> None:
    assert fleet_event_id(issued("r1")) == "r1:issued"
    assert fleet_event_id(cancelled("r1", origin=A)) == "r1:cancelled"


def test_an_entry_round_trips_through_its_stream_fields() -> None:
    entry = StreamEntry.of(issued("r1"), A)
    fields = encode_entry(entry)
    assert fields["id"] == b"r1:issued"
    assert fields["origin"] == b"node-a"
    assert orjson.loads(fields["event"])["origin"] == A
    assert decode_entry(fields) == entry
    assert decode_entry({key.encode(): value for key, value in fields.items()}) == entry


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({b"origin": b"a", b"event": b"{}"}, "without the field 'id'"),
        ({b"id": b"r:issued", b"origin": b"a", b"event": b"nope"}, "not JSON"),
        (
            {b"id": b"r:expired", b"origin": b"a", b"event": encode_event(BounceExpired("r"))},
            "carries a BounceExpired",
        ),
        (
            {
                b"id": b"x:issued",
                b"origin": b"node-a",
                b"event": encode_event(issued("r", origin=A)),
            },
            "does not name",
        ),
        (
            {
                b"id": b"r:issued",
                b"origin": b"node-b",
                b"event": encode_event(issued("r", origin=A)),
            },
            "is not 'node-b'",
        ),
        ({b"id": b"\xff", b"origin": b"a", b"event": b"{}"}, "not UTF-8"),
    ],
)
def test_entries_that_are_not_fleet_actions_are_refused_by_name(
    fields: dict[bytes, bytes], problem: str
) -> None:
    with pytest.raises(FleetEntryError, match=problem):
        decode_entry(fields)


@given(st.dictionaries(st.binary(max_size=8), st.binary(max_size=40), max_size=4))
def test_garbage_entries_only_raise_the_declared_error(fields: dict[bytes, bytes]) -> None:
    with contextlib.suppress(FleetEntryError):
        decode_entry(fields)


def test_the_outbox_holds_this_node_s_actions_after_the_published_position() -> None:
    node = Node(A)
    node.append(issued("mine"), issued("theirs", origin=B))
    node.append(cancelled("theirs"), cancelled("mine", origin=C))
    owed = owed_entries(node.state, A, after_seq=0, through_seq=node.seq)
    assert [(item.seq, item.entry.fleet_id) for item in owed] == [
        (1, "mine:issued"),
        (3, "theirs:cancelled"),
    ]
    assert all(item.entry.origin == A for item in owed)
    assert owed_entries(node.state, A, after_seq=1, through_seq=node.seq)[0].seq == 3
    assert owed_entries(node.state, A, after_seq=0, through_seq=2)[0].seq == 1
    assert owed_entries(node.state, A, after_seq=3, through_seq=node.seq) == []


def test_what_still_matters_is_every_live_or_cancelled_rule_not_yet_expired() -> None:
    node = Node(A)
    node.append(issued("live"), issued("cancelled", origin=B), cancelled("cancelled", origin=C))
    node.append(issued("expired", expires_at=10), BounceExpired("expired"))
    node.append(issued("old"), issued("new"))  # different criteria: both live
    replaced = issued("replaced")
    node.append(replaced, attrs.evolve(issued("replacer"), criteria=replaced.criteria))
    standing = standing_entries(node.state, A, now=100)
    assert [(entry.fleet_id, entry.origin) for entry in standing] == [
        ("live:issued", A),
        ("cancelled:issued", B),
        ("cancelled:cancelled", C),
        ("old:issued", A),
        ("new:issued", A),
        ("replacer:issued", A),
    ]
    assert standing_entries(node.state, A, now=HOUR) == []


def test_a_node_takes_another_node_s_action_once() -> None:
    node = Node(B)
    entries = [StreamEntry.of(issued("r"), A), StreamEntry.of(issued("r"), A)]
    plan = plan_follow(entries, node.state, B, now=0)
    assert plan.events == (issued("r", origin=A),)
    assert plan.applied_before == 1
    node.append(*plan.events)
    again = plan_follow([*entries, StreamEntry.of(issued("mine"), B)], node.state, B, now=0)
    assert (again.events, again.applied_before, again.own) == ((), 2, 1)
    cancel = plan_follow([StreamEntry.of(cancelled("r"), C)] * 2, node.state, B, now=0)
    assert cancel.events == (cancelled("r", origin=C),)
    node.append(*cancel.events)
    assert (
        plan_follow([StreamEntry.of(cancelled("r"), A)], node.state, B, now=0).applied_before == 1
    )
    unknown = plan_follow([StreamEntry.of(cancelled("nope"), A)], node.state, B, now=0)
    assert (unknown.events, unknown.unknown) == ((), 1)


def test_suspensions_travel_as_bounce_rules_do() -> None:
    assert [kind.kind for kind in ADMIN_KINDS] == ["bounce", "suspend", "ready-suspend"]
    entry = StreamEntry.of(suspended("s1"), A)
    assert entry.fleet_id == "s1:issued"
    assert decode_entry(encode_entry(entry)) == entry
    assert decode_entry(encode_entry(StreamEntry.of(lifted("s1"), C))).event == lifted(
        "s1", origin=C
    )

    a = Node(A)
    a.append(suspended("s1"), issued("r1"), lifted("s1"))
    owed = owed_entries(a.state, A, after_seq=0, through_seq=a.seq)
    assert [(item.seq, item.entry.fleet_id) for item in owed] == [
        (1, "s1:issued"),
        (2, "r1:issued"),
        (3, "s1:cancelled"),
    ]
    assert [entry.fleet_id for entry in standing_entries(a.state, A, now=0)] == [
        "s1:issued",
        "s1:cancelled",
        "r1:issued",
    ]

    b = Node(B)
    stream = [item.entry for item in owed[:1]] * 2
    plan = plan_follow(stream, b.state, B, now=0)
    assert plan.events == (suspended("s1", origin=A),)
    assert plan.applied_before == 1
    b.append(*plan.events)
    assert b.state.suspends.rules["s1"].origin == A
    assert b.state.rules.rules == {}
    lift = plan_follow([StreamEntry.of(lifted("s1"), C)] * 2, b.state, B, now=0)
    assert lift.events == (lifted("s1", origin=C),)
    b.append(*lift.events)
    rule = b.state.suspends.rules["s1"]
    assert (rule.end, rule.ended_origin) == ("cancelled", C)
    # A bounce cancel does not end a suspension of the same id, nor the reverse.
    assert plan_follow([StreamEntry.of(cancelled("s1"), C)], b.state, B, now=0).unknown == 1


def test_a_suspension_that_ended_before_the_node_heard_of_it_holds_nothing_there() -> None:
    node = Node(B)
    batch = [
        StreamEntry.of(suspended("gone", expires_at=50), A),
        StreamEntry.of(suspended("lifted"), A),
        StreamEntry.of(lifted("lifted"), C),
        StreamEntry.of(suspended("live"), A),
    ]
    plan = plan_follow(batch, node.state, B, now=100)
    # The two that ended are taken marked so: they hold nothing, they keep their place.
    assert [(fleet_event_id(e), e.arrived_ended) for e in plan.events] == [  # type: ignore[union-attr]
        ("gone:issued", "expired"),
        ("lifted:issued", "cancelled"),
        ("live:issued", None),
    ]
    assert plan.ended == 3
    node.append(*plan.events)
    assert node.live() == {"live"}
    gone, lifted_ = (node.state.suspends.rules[rule_id] for rule_id in ("gone", "lifted"))
    assert (gone.end, lifted_.end) == ("expired", "cancelled")
    assert gone.ended_on_arrival
    assert lifted_.ended_on_arrival
    # Ended where it came from: not an action of this node, owed to nobody.
    assert owed_entries(node.state, B, after_seq=0, through_seq=node.seq) == []


def test_suspend_events_without_an_origin_decode_as_local() -> None:
    for event in (suspended("s"), lifted("s")):
        body = orjson.loads(encode_event(event))
        assert "origin" not in body
    node = Node(A)
    node.append(suspended("s", origin=B), SuspendExpired("s"))
    assert node.state.suspends.rules["s"].origin == B


def test_a_rule_that_ended_before_the_node_heard_of_it_bounces_nothing_there() -> None:
    node = Node(B)
    batch = [
        StreamEntry.of(issued("expired", expires_at=50, at=0), A),
        StreamEntry.of(issued("cancelled"), A),
        StreamEntry.of(cancelled("cancelled"), C),
        StreamEntry.of(cancelled("expired"), A),
        StreamEntry.of(issued("sweep-once", expires_at=0, at=0), A),
        StreamEntry.of(issued("live"), A),
    ]
    plan = plan_follow(batch, node.state, B, now=100)
    assert [(fleet_event_id(e), e.arrived_ended) for e in plan.events] == [  # type: ignore[union-attr]
        ("expired:issued", "cancelled"),  # the batch cancels it too
        ("cancelled:issued", "cancelled"),
        ("sweep-once:issued", None),
        ("live:issued", None),
    ]
    assert plan.ended == 4
    node.append(*plan.events)
    assert node.live() == {"live"}
    assert [rule.id for rule in node.state.rules.live_rules()] == ["live"]


def test_settings_and_urls() -> None:
    settings_ = FleetSettings("redis://127.0.0.1:6379/0")
    assert settings_.stream == "kumo:admin"
    assert epoch_key(settings_.stream) == "kumo:admin:epoch"
    assert [retry_delay(n, settings_) for n in (1, 2, 3, 10, 10**6)] == [0.1, 0.2, 0.4, 5.0, 5.0]
    assert check_redis_url("rediss://user:pw@redis.internal:6380/3")
    for bad in ("redis://h:0", "redis://h/1?x=1", "tcp://h", "redis:///1"):
        with pytest.raises(RedisUrlError):
            check_redis_url(bad)
    with pytest.raises(ValueError, match="block must be positive"):
        FleetSettings("redis://h", block=0)


def test_origins_are_folded_into_the_rules_and_kept_by_snapshots() -> None:
    state = State()
    events: list[Event] = [issued("r", origin=A), cancelled("r", origin=C)]
    for seq, event in enumerate(events, start=1):
        state.apply(Committed(seq, seq, event))
    rule = state.rules.rules["r"]
    assert (rule.origin, rule.ended_origin, rule.ended_by) == (A, C, "oncall")
    restored, _ = decode_snapshot(encode_snapshot(state, b"\x00" * 16))
    assert attrs.asdict(restored.rules.rules["r"]) == attrs.asdict(rule)


# -- the fleet as a whole: nodes, one stream, at-least-once delivery, a reset -------------

NODE_IDS = (A, B, C)
steps = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "issue",
                "cancel",
                "publish",
                "publish_again",
                "follow",
                "follow_crash",
                "reset",
                "rebind",
            ]
        ),
        st.integers(0, 2),
        st.integers(1, 4),
    ),
    max_size=60,
)


class Fleet:
    """Three nodes and their stream, driven the way the runtime drives the model."""

    def __init__(self) -> None:
        self.nodes = [Node(node_id) for node_id in NODE_IDS]
        self.stream: list[StreamEntry] = []
        self.pending_republish: set[str] = set()
        self.issued = 0
        self.everywhere_issued: set[str] = set()
        self.everywhere_cancelled: set[str] = set()
        self.rebinds: set[str] = set()
        self.rebinds_before_reset: set[str] = set()
        """Rebinds asked before the last reset: not republished (they were one-shot),
        so a node that had not read one by then never does."""

    def issue(self, node: Node, kind: int) -> None:
        self.issued += 1
        rule_id = f"r{self.issued}"
        if kind == 3:
            node.append(ready(rule_id))
        else:
            node.append(issued(rule_id) if kind % 2 else suspended(rule_id))
        self.everywhere_issued.add(rule_id)

    def rebind(self, node: Node) -> None:
        self.issued += 1
        rebind_id = f"m{self.issued}"
        node.append(rebind(rebind_id))
        self.rebinds.add(rebind_id)

    def cancel(self, node: Node, pick: int) -> None:
        live = sorted(node.live())
        if live:
            rule_id = live[pick % len(live)]
            if rule_id in node.state.rules.rules:
                node.append(cancelled(rule_id))
            elif rule_id in node.state.ready_suspends.rules:
                node.append(ready_lifted(rule_id))
            else:
                node.append(lifted(rule_id))
            self.everywhere_cancelled.add(rule_id)

    def publish(self, node: Node, *, again: bool = False) -> None:
        if node.node_id in self.pending_republish:
            self.stream += standing_entries(
                node.state, node.node_id, now=0, rebinds_after=node.published_seq
            )
            node.published_seq = node.seq
            self.pending_republish.discard(node.node_id)
        owed = owed_entries(
            node.state, node.node_id, after_seq=node.published_seq, through_seq=node.seq
        )
        self.stream += [item.entry for item in owed]
        if not again:  # again: the XADDs went out, the position was not stored
            node.published_seq = node.seq

    def follow(self, node: Node, count: int, *, crash: bool = False) -> None:
        batch = self.stream[node.position : node.position + count]
        plan = plan_follow(batch, node.state, node.node_id, now=0)
        node.append(*plan.events)
        if not crash:  # crash: appended, the position not stored
            node.position += len(batch)

    def reset(self) -> None:
        self.rebinds_before_reset = set(self.rebinds)
        self.stream = []
        for node in self.nodes:
            node.position = 0
        self.pending_republish = set(NODE_IDS)

    def settle(self) -> None:
        for _ in range(2):
            for node in self.nodes:
                self.publish(node)
            for node in self.nodes:
                self.follow(node, len(self.stream))


def actions_of(node: Node) -> Iterator[tuple[str, str]]:
    for event in node.log:
        if isinstance(event, FleetAction):
            yield type(event).__name__, fleet_event_id(event)


@settings(max_examples=300, deadline=None)
@given(steps)
def test_every_node_converges_and_holds_each_action_once(plan: list[tuple[str, int, int]]) -> None:
    fleet = Fleet()
    for step, index, count in plan:
        node = fleet.nodes[index]
        match step:
            case "issue":
                fleet.issue(node, count)
            case "cancel":
                fleet.cancel(node, count)
            case "publish" | "publish_again":
                fleet.publish(node, again=step == "publish_again")
            case "follow" | "follow_crash":
                fleet.follow(node, count, crash=step == "follow_crash")
            case "reset":
                fleet.reset()
            case "rebind":
                fleet.rebind(node)
    fleet.settle()
    expected = fleet.everywhere_issued - fleet.everywhere_cancelled
    for node in fleet.nodes:
        assert node.live() == expected
        counts = Counter(actions_of(node))
        assert [action for action, seen in counts.items() if seen > 1] == []
        for event in node.log:
            assert isinstance(event, FleetAction)
            # A node's own actions are local; another's carry their origin.
            assert event.origin != node.node_id
        # Every rebind asked since the last loss of the stream reached every node; one
        # asked before it may have missed a node that had not read it yet.
        seen = set(node.state.rebinds)
        assert fleet.rebinds - fleet.rebinds_before_reset <= seen <= fleet.rebinds


# -- equal rules issued at once on several nodes -----------------------------------------

RACE = Criteria(campaign="race")


def equal_rule(kind: str, rule_id: str, at: int) -> BounceIssued | SuspendIssued:
    if kind == "bounce":
        return attrs.evolve(issued(rule_id, at=at), criteria=RACE)
    return attrs.evolve(suspended(rule_id), criteria=RACE, issued_at=at)


def winners(node: Node) -> dict[str, list[str]]:
    return {
        book.kind: [rule.id for rule in book.live_rules()]
        for book in (node.state.rules, node.state.suspends)
    }


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(1, 3)), min_size=1, max_size=8),
    st.sampled_from(["bounce", "suspend"]),
    st.randoms(use_true_random=False),
)
def test_equal_rules_issued_at_once_leave_the_same_winner_on_every_node(
    issues: list[tuple[int, int]], kind: str, rnd: random.Random
) -> None:
    # Each node issues its rules with a clock of its own that moves forward (steps of
    # 1 to 3: nodes often issue at the same instant); every node reads the others'
    # rules in their order, interleaved with its own in any order.
    clocks = [0, 0, 0]
    per_node: list[list[BounceIssued | SuspendIssued]] = [[], [], []]
    for number, (origin, step) in enumerate(issues):
        clocks[origin] += step
        per_node[origin].append(equal_rule(kind, f"r{number}", clocks[origin]))
    nodes = [Node(node_id) for node_id in NODE_IDS]
    for index, node in enumerate(nodes):
        pending = [list(events) for events in per_node]
        while any(pending):
            source = rnd.choice([i for i, events in enumerate(pending) if events])
            event = pending[source].pop(0)
            if source == index:
                node.append(event)
            else:
                entry = StreamEntry.of(event, NODE_IDS[source])
                node.append(*plan_follow([entry], node.state, node.node_id, now=0).events)
    last = max(
        (event for events in per_node for event in events),
        key=lambda event: (event.issued_at, event.rule_id),
    )
    expected = {"bounce": [], "suspend": [], kind: [last.rule_id]}
    for node in nodes:
        assert winners(node) == expected
        book = node.state.book(kind)  # type: ignore[arg-type]
        for rule in book.rules.values():
            if rule.id != last.rule_id:
                assert (rule.end, rule.ended_by is not None) == ("replaced", True)


def test_a_rule_that_lost_on_arrival_is_recorded_replaced_and_routed_nowhere() -> None:
    node = Node(B)
    node.append(equal_rule("bounce", "later", at=10))  # issued here
    plan = plan_follow([StreamEntry.of(equal_rule("bounce", "earlier", at=5), A)], node.state, B, 0)
    router = Router(node.state.rules.copy())
    routing = router.route([Committed(node.seq + 1, 20, plan.events[0])])
    node.append(*plan.events)
    lost = node.state.rules.rules["earlier"]
    assert lost.lost_on_arrival
    assert (lost.end, lost.ended_by, lost.origin) == ("replaced", "later", A)
    assert [rule.id for rule in node.state.rules.live_rules()] == ["later"]
    assert routing.deliveries == {}
    assert router.passed_over(plan.events[0])
    assert not router.passed_over(equal_rule("bounce", "later", at=10))


def test_on_a_node_alone_the_later_equal_rule_replaces_whatever_its_clock_says() -> None:
    node = Node(A)
    node.append(equal_rule("bounce", "first", at=10), equal_rule("bounce", "second", at=5))
    assert [rule.id for rule in node.state.rules.live_rules()] == ["second"]
    assert node.state.rules.rules["first"].end == "replaced"
    assert not node.state.rules.rules["second"].lost_on_arrival


# -- the fleet's figures ----------------------------------------------------------------


def test_counters_round_trip_and_sum_over_the_nodes_that_report() -> None:
    node = Node(A)
    node.append(issued("r1"), issued("r2"))
    node.append(Bounced("r1", "q1", [Message("a" * 32, "s", "r", 1, 0, 1)]))
    mine = rule_counters(node.state.rules, now=0)
    assert mine == {"r1": RuleCounters({"q1": 1}, 1), "r2": RuleCounters({}, 0)}
    assert decode_counters(encode_counters(mine)) == mine
    theirs = {"r1": RuleCounters({"q1": 2, "q2": 4}, 6), "gone": RuleCounters({"q": 9}, 9)}
    views = fleet_views(node.state.rules.views(0), [theirs, {}])
    assert [(v.id, dict(v.bounced), v.total_bounced) for v in views] == [
        ("r1", {"q1": 3, "q2": 4}, 7),
        ("r2", {}, 0),
    ]
    assert counters_key("kumo:admin", A) == "kumo:admin:counters:node-a"
    assert counter_nodes_key("kumo:admin") == "kumo:admin:counters"


@given(st.binary(max_size=60))
def test_garbage_counters_only_raise_the_declared_error(data: bytes) -> None:
    with contextlib.suppress(FleetEntryError):
        decode_counters(data)
    for bad in (b"[]", b'{"r": {"bounced": {"q": "1"}, "total_bounced": 1}}', b'{"r": 1}'):
        with pytest.raises(FleetEntryError):
            decode_counters(bad)


# -- ready-queue suspensions and rebinds --------------------------------------------------


def test_ready_queue_suspensions_travel_as_suspensions_do() -> None:
    entry = StreamEntry.of(ready("q1"), A)
    assert entry.fleet_id == "q1:issued"
    assert decode_entry(encode_entry(entry)) == entry
    assert decode_entry(encode_entry(StreamEntry.of(ready_lifted("q1"), C))).event == (
        ready_lifted("q1", origin=C)
    )

    a = Node(A)
    a.append(ready("q1"), issued("r1"), ready_lifted("q1"), ready("q2"))
    owed = owed_entries(a.state, A, after_seq=0, through_seq=a.seq)
    assert [(item.seq, item.entry.fleet_id) for item in owed] == [
        (1, "q1:issued"),
        (2, "r1:issued"),
        (3, "q1:cancelled"),
        (4, "q2:issued"),
    ]
    assert owed[0].entry.event == ready("q1", origin=A)
    assert [entry.fleet_id for entry in standing_entries(a.state, A, now=0)] == [
        "q1:issued",
        "q1:cancelled",
        "r1:issued",
        "q2:issued",
    ]

    b = Node(B)
    plan = plan_follow([owed[0].entry] * 2, b.state, B, now=0)
    assert plan.events == (ready("q1", origin=A),)
    assert plan.applied_before == 1
    b.append(*plan.events)
    suspension = b.state.ready_suspends.rules["q1"]
    assert suspension.origin == A
    assert b.state.ready_suspends.suspended(suspension.name, 0) is suspension
    lift = plan_follow([StreamEntry.of(ready_lifted("q1"), C)] * 2, b.state, B, now=0)
    assert lift.events == (ready_lifted("q1", origin=C),)
    b.append(*lift.events)
    assert (suspension.end, suspension.ended_origin) == ("cancelled", C)
    assert plan_follow([StreamEntry.of(lifted("q1"), C)], b.state, B, now=0).unknown == 1
    # Ended before this node heard of it: nothing to hold.
    late = [StreamEntry.of(ready("gone", expires_at=50), A), StreamEntry.of(ready("live"), A)]
    taken = plan_follow(late, b.state, B, now=100).events
    assert [(fleet_event_id(e), e.arrived_ended) for e in taken] == [  # type: ignore[union-attr]
        ("gone:issued", "expired"),
        ("live:issued", None),
    ]
    b.append(*taken)
    assert b.state.ready_suspends.rules["gone"].ended_on_arrival
    assert [s.id for s in b.state.ready_suspends.live_rules()] == ["live"]


def test_ready_suspend_and_rebind_events_without_an_origin_decode_as_before() -> None:
    for event in (ready("q"), ready_lifted("q"), rebind("m")):
        body = encode_event(event)
        assert "origin" not in orjson.loads(body)
        assert decode_event(body) == event
    for event in (ready("q", origin=A), ready_lifted("q", origin=A), rebind("m", origin=A)):
        assert decode_event(encode_event(event)) == event
    node = Node(A)
    node.append(ready("q", origin=B), ReadySuspendExpired("q"))
    assert node.state.ready_suspends.rules["q"].origin == B


RACE_QUEUE = "unspecified->mx.race.example@smtp_client"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(1, 3)), min_size=1, max_size=8),
    st.randoms(use_true_random=False),
)
def test_ready_suspensions_of_one_name_leave_the_same_winner_on_every_node(
    issues: list[tuple[int, int]], rnd: random.Random
) -> None:
    # As test_equal_rules_issued_at_once_leave_the_same_winner_on_every_node, for the
    # book keyed by name.
    clocks = [0, 0, 0]
    per_node: list[list[ReadySuspendIssued]] = [[], [], []]
    for number, (origin, step) in enumerate(issues):
        clocks[origin] += step
        per_node[origin].append(ready(f"q{number}", name=RACE_QUEUE, at=clocks[origin]))
    nodes = [Node(node_id) for node_id in NODE_IDS]
    for index, node in enumerate(nodes):
        pending = [list(events) for events in per_node]
        while any(pending):
            source = rnd.choice([i for i, events in enumerate(pending) if events])
            event = pending[source].pop(0)
            if source == index:
                node.append(event)
            else:
                entry = StreamEntry.of(event, NODE_IDS[source])
                node.append(*plan_follow([entry], node.state, node.node_id, now=0).events)
    last = max(
        (event for events in per_node for event in events),
        key=lambda event: (event.issued_at or 0, event.rule_id),
    )
    for node in nodes:
        book = node.state.ready_suspends
        assert [s.id for s in book.live_rules()] == [last.rule_id]
        held = book.suspended(RACE_QUEUE, 0)
        assert held is not None
        assert held.id == last.rule_id
        for suspension in book.rules.values():
            if suspension.id != last.rule_id:
                assert suspension.end == "replaced"
                assert suspension.ended_by is not None
        # A snapshot (a restart) keeps the order: a late copy still loses.
        restored = type(book).restore(book.copy().rules.values())
        assert [s.id for s in restored.live_rules()] == [last.rule_id]


def test_a_ready_suspension_that_lost_on_arrival_holds_nothing_and_is_routed_nowhere() -> None:
    node = Node(B)
    node.append(ready("later", name=RACE_QUEUE, at=10))
    plan = plan_follow(
        [StreamEntry.of(ready("earlier", name=RACE_QUEUE, at=5), A)], node.state, B, 0
    )
    router = Router(ready_suspends=node.state.ready_suspends.copy())
    router.open_queue("race.example")
    routing = router.route([Committed(node.seq + 1, 20, plan.events[0])])
    node.append(*plan.events)
    lost = node.state.ready_suspends.rules["earlier"]
    assert lost.lost_on_arrival
    assert (lost.end, lost.ended_by, lost.origin) == ("replaced", "later", A)
    assert [s.id for s in node.state.ready_suspends.live_rules()] == ["later"]
    assert routing.deliveries == {}
    assert router.passed_over(plan.events[0])
    assert [hold.id for hold in router.ready_suspensions()] == ["later"]


def test_a_rebind_is_owed_once_by_its_node_and_taken_once_by_the_others() -> None:
    a = Node(A)
    a.append(rebind("m1"), issued("r1"))
    owed = owed_entries(a.state, A, after_seq=0, through_seq=a.seq)
    assert [(item.seq, item.entry.fleet_id) for item in owed] == [
        (1, "m1:issued"),
        (2, "r1:issued"),
    ]
    assert owed[0].entry.event == rebind("m1", origin=A)
    assert owed_entries(a.state, A, after_seq=1, through_seq=a.seq)[0].seq == 2
    # Not given again to a stream Redis lost: it was done.
    assert [e.fleet_id for e in standing_entries(a.state, A, now=0)] == ["r1:issued"]
    # Unless the stream was lost before it was published: then it is owed still.
    assert [e.fleet_id for e in standing_entries(a.state, A, now=0, rebinds_after=0)] == [
        "m1:issued",
        "r1:issued",
    ]
    assert [e.fleet_id for e in standing_entries(a.state, A, now=0, rebinds_after=1)] == [
        "r1:issued"
    ]
    assert decode_entry(encode_entry(owed[0].entry)) == owed[0].entry

    b = Node(B)
    plan = plan_follow([owed[0].entry, owed[0].entry], b.state, B, now=HOUR * 24)
    assert plan.events == (rebind("m1", origin=A),)  # read a day later, still applied
    assert plan.applied_before == 1
    b.append(*plan.events)
    assert b.state.rebinds["m1"].event.origin == A
    assert plan_follow([owed[0].entry], b.state, B, now=0).applied_before == 1
    assert plan_follow([owed[0].entry], a.state, A, now=0).own == 1
    # Taken from another node: never owed by this one.
    assert owed_entries(b.state, B, after_seq=0, through_seq=b.seq) == []


def test_the_rebinds_seen_survive_a_snapshot_and_a_retention_cut() -> None:
    state = State()
    for seq, event in enumerate([rebind("m1"), rebind("m2", origin=A)], start=1):
        state.apply(Committed(seq, seq, event))
    restored, _ = decode_snapshot(encode_snapshot(state, b"\x00" * 16))
    assert restored.rebinds == state.rebinds
    assert base_projection(restored).rebinds == state.rebinds
    entry = StreamEntry.of(rebind("m2"), A)
    assert plan_follow([entry], base_projection(restored), B, now=0).applied_before == 1


# -- equal rules whose winner ended before a node heard of it ----------------------------


def racing(kind: str, rule_id: str, at: int, expires_at: int) -> FleetAction:
    if kind == "ready":
        return ready(rule_id, name=RACE_QUEUE, at=at, expires_at=expires_at)
    return attrs.evolve(equal_rule(kind, rule_id, at), expires_at=expires_at)


def ended(kind: str, rule_id: str, how: str) -> Event:
    match kind, how:
        case "bounce", "cancelled":
            return cancelled(rule_id)
        case "suspend", "cancelled":
            return lifted(rule_id)
        case "ready", "cancelled":
            return ready_lifted(rule_id)
        case "bounce", _:
            return BounceExpired(rule_id)
        case "suspend", _:
            return SuspendExpired(rule_id)
    return ReadySuspendExpired(rule_id)


def book_of(node: Node, kind: str) -> RuleBook | ReadySuspensionBook:
    return node.state.ready_suspends if kind == "ready" else node.state.book(kind)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(1, 3)), min_size=1, max_size=8),
    st.sampled_from(["bounce", "suspend", "ready"]),
    st.sampled_from(["live", "cancelled", "expired"]),
    st.randoms(use_true_random=False),
)
def test_equal_rules_leave_the_same_outcome_on_every_node_even_if_the_winner_ended_unheard(
    issues: list[tuple[int, int]], kind: str, winner_end: str, rnd: random.Random
) -> None:
    # Rules with equal criteria raced on three nodes; the one last in the fleet's order
    # may end (cancelled on its node, or expired) before some node hears of it, and
    # the stream may carry it before or after the rules it beat. Every node reads the
    # stream (one order of every node's entries) in batches of 1 to 3, so a batch may
    # hold the winner's issue and its cancel; each appends its own rules at any point.
    clocks = [0, 0, 0]
    drafts: list[tuple[int, int, str]] = []
    for number, (origin, step) in enumerate(issues):
        clocks[origin] += step
        drafts.append((origin, clocks[origin], f"r{number}"))
    winner = max(drafts, key=lambda draft: (draft[1], draft[2]))[2]
    read_at = 1_000  # every rule is issued by then; the winner expired, if it does
    per_node: list[list[Event]] = [[], [], []]
    for origin, at, rule_id in drafts:
        lasts = rule_id == winner and winner_end == "expired"
        per_node[origin].append(racing(kind, rule_id, at, at + 1 if lasts else HOUR))
        if rule_id == winner and winner_end != "live":
            per_node[origin].append(ended(kind, rule_id, winner_end))
    # The stream: each node's actions in its order, interleaved (expiries are not sent).
    stream: list[StreamEntry] = []
    pending = [[e for e in events if isinstance(e, FleetAction)] for events in per_node]
    while any(pending):
        source = rnd.choice([i for i, events in enumerate(pending) if events])
        stream.append(StreamEntry.of(pending[source].pop(0), NODE_IDS[source]))
    nodes = [Node(node_id) for node_id in NODE_IDS]
    for index, node in enumerate(nodes):
        own = list(per_node[index])
        position = 0
        while own or position < len(stream):
            if own and (position == len(stream) or rnd.random() < 0.3):
                node.append(own.pop(0))
                continue
            batch = stream[position : position + rnd.randint(1, 3)]
            position += len(batch)
            node.append(*plan_follow(batch, node.state, node.node_id, now=read_at).events)
    expected = [winner] if winner_end == "live" else []
    for node in nodes:
        book = book_of(node, kind)
        assert [rule.id for rule in book.live_rules()] == expected, node.node_id
        for rule in book.rules.values():
            if rule.id != winner:
                assert rule.end in ("replaced", "expired"), (node.node_id, rule)
        assert winner in book.rules, node.node_id  # it takes part in the order everywhere


def test_a_rule_that_arrived_ended_ends_its_live_equal_in_the_queues_and_sweeps_nothing() -> None:
    # Node B holds A's earlier rule, live; C's later equal rule arrives already ended.
    queue = "race:t@x.example"
    router = Router()
    router.open_queue(queue)
    state = QueueState(queue)
    earlier = attrs.evolve(equal_rule("bounce", "earlier", at=5), origin=A)
    routed = router.route([Committed(1, 1, earlier)])
    assert [c.event for c in routed.deliveries[queue]] == [earlier]
    state.apply(routed.deliveries[queue][0])
    assert [rule.id for rule in state.rules] == ["earlier"]
    later = attrs.evolve(equal_rule("bounce", "later", at=9), origin=C, arrived_ended="cancelled")
    routed = router.route([Committed(2, 2, later)])
    assert [c.event for c in routed.deliveries[queue]] == [later]
    assert state.apply(routed.deliveries[queue][0]) is None  # it sweeps nothing
    assert state.sweeping is None
    assert state.rules == []
    assert list(router.rules.live_rules()) == []
    assert router.rules.rules["earlier"].end == "replaced"
    assert not router.passed_over(later)  # a queue catching up drops its equal too
    # The earlier rule's cancel, read later, concerns no queue any more.
    assert router.route([Committed(3, 3, cancelled("earlier", origin=A))]).deliveries == {}

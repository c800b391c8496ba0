"""The audit folds over hand-written logs: timeline, state at a time, message stories."""

from __future__ import annotations

from kumo.model.audit import MessageStory, Timeline, TimelineFilter, state_at
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
    ReadySuspendCancelled,
    ReadySuspendExpired,
    ReadySuspendIssued,
    SuspendCancelled,
    Suspended,
    SuspendExpired,
    SuspendIssued,
)
from kumo.model.state import State

SECOND = 1_000_000_000
MINUTE = 60 * SECOND
T0 = 1_767_225_600 * SECOND


def spool_id(label: str) -> str:
    """A message id (32 hex digits, as MessageReceived requires) that spells ``label``."""
    return label.encode().hex().rjust(32, "0")


class Log:
    """Commits events with consecutive seqs at a time the test moves."""

    def __init__(self) -> None:
        self.events: list[Committed] = []
        self.time = T0

    def at(self, minutes: float) -> Log:
        self.time = T0 + round(minutes * MINUTE)
        return self

    def add(self, event: Event) -> Committed:
        committed = Committed(len(self.events) + 1, self.time, event)
        self.events.append(committed)
        return committed

    def receive(self, label: str, queue: str) -> Message:
        message_id = spool_id(label)
        committed = self.add(MessageReceived(message_id, queue, "s@x.org", f"{label}@x", 10))
        return Message(message_id, "s@x.org", f"{label}@x", 10, committed.time, committed.seq)

    def issue(
        self,
        rule_id: str,
        minutes: float,
        by: str = "ops",
        suppress: bool = False,
        **criteria: object,
    ) -> None:
        self.add(
            BounceIssued(
                rule_id,
                Criteria(**criteria),  # type: ignore[arg-type]
                f"reason {rule_id}",
                self.time + round(minutes * MINUTE),
                suppress_logging=suppress,
                issued_by=by,
            )
        )


def timeline_of(log: Log) -> Timeline:
    timeline = Timeline()
    for committed in log.events:
        timeline.apply(committed)
    return timeline


def a_day() -> tuple[Log, dict[str, Message]]:
    log = Log()
    messages = {
        "m1": log.receive("m1", "acme@a.com"),
        "m2": log.receive("m2", "beta@a.com"),
    }
    log.at(1).issue("r1", 60, by="alice", tenant="acme")
    log.add(Bounced("r1", "acme@a.com", [messages["m1"]]))
    log.at(2).issue("r2", 60, by="bob", tenant="acme")  # replaces r1
    log.at(3).issue("r3", 5, by="carol", domain="a.com")
    log.add(Bounced("r3", "beta@a.com", [messages["m2"]]))
    messages["m3"] = log.at(4).receive("m3", "acme@a.com")
    log.add(Bounced("r2", "acme@a.com", [messages["m3"]]))
    log.at(5).add(BounceCancelled("r2", cancelled_by="alice"))
    log.at(8.5).add(BounceExpired("r3"))  # noticed late
    log.at(9).issue("r4", 0, by="dave", queue_names=["x"])  # issued already expired
    log.at(10).issue("r5", 30, by="erin")
    messages["m4"] = log.at(11).receive("m4", "zeta@b.com")
    return log, messages


def test_actions_tell_who_did_what_to_which_rule_in_order() -> None:
    log, _ = a_day()
    actions = timeline_of(log).actions(T0 + 20 * MINUTE)
    assert [(a.action, a.rule_id, a.principal, a.status) for a in actions] == [
        ("issued", "r1", "alice", "replaced"),
        ("issued", "r2", "bob", "cancelled"),
        ("replaced", "r1", "bob", "replaced"),
        ("issued", "r3", "carol", "expired"),
        ("cancelled", "r2", "alice", "cancelled"),
        ("expired", "r3", None, "expired"),
        ("issued", "r4", "dave", "expired"),
        ("expired", "r4", None, "expired"),
        ("issued", "r5", "erin", "live"),
    ]
    by_rule = {a.rule_id: a for a in actions if a.action == "issued"}
    assert by_rule["r1"].ended_by == "r2"
    assert by_rule["r1"].ended_at == T0 + 2 * MINUTE
    assert by_rule["r2"].ended_by == "alice"
    # An expiry is dated at the rule's expires_at, not when the log noticed it.
    assert by_rule["r3"].ended_at == T0 + 8 * MINUTE
    expired_r3 = next(a for a in actions if a.action == "expired" and a.rule_id == "r3")
    assert (expired_r3.time, expired_r3.seq) == (T0 + 8 * MINUTE, 11)
    assert by_rule["r1"].bounced == {"acme@a.com": 1}
    assert by_rule["r5"].ended_at is None


def test_an_expiry_the_log_has_not_recorded_yet_is_shown_without_seq() -> None:
    log, _ = a_day()
    timeline = timeline_of(log)
    [expiry] = [a for a in timeline.actions(T0 + 41 * MINUTE) if a.rule_id == "r5"][1:]
    assert (expiry.action, expiry.seq, expiry.time) == ("expired", None, T0 + 40 * MINUTE)
    assert expiry.status == "expired"
    assert [a.action for a in timeline.actions(T0 + 39 * MINUTE) if a.rule_id == "r5"] == ["issued"]


def test_a_reissue_after_expiry_closes_the_old_rule_as_expired_not_replaced() -> None:
    log = Log()
    log.issue("old", 5, tenant="t")
    log.at(10).issue("new", 5, tenant="t")
    actions = timeline_of(log).actions(T0 + 11 * MINUTE)
    assert [(a.time, a.action, a.rule_id) for a in actions] == [
        (T0, "issued", "old"),
        (T0 + 5 * MINUTE, "expired", "old"),
        (T0 + 10 * MINUTE, "issued", "new"),
    ]


def test_filters() -> None:
    log, _ = a_day()
    timeline = timeline_of(log)
    now = T0 + 20 * MINUTE

    def picked(**where: str | int) -> list[tuple[str, str]]:
        actions = timeline.actions(now, TimelineFilter(**where))  # type: ignore[arg-type]
        return [(a.action, a.rule_id) for a in actions]

    assert picked(since=T0 + 5 * MINUTE, until=T0 + 9 * MINUTE) == [
        ("cancelled", "r2"),
        ("expired", "r3"),
        ("issued", "r4"),
        ("expired", "r4"),
    ]
    assert picked(rule_id="r2") == [("issued", "r2"), ("cancelled", "r2")]
    assert picked(principal="alice") == [("issued", "r1"), ("cancelled", "r2")]
    # Queue: the rules that match it or bounced there, counters narrowed to it.
    narrowed = timeline.actions(now, TimelineFilter(queue="beta@a.com"))
    assert {(a.rule_id, a.total_bounced) for a in narrowed} == {("r3", 1), ("r5", 0)}
    assert all(a.bounced in ({"beta@a.com": 1}, {}) for a in narrowed)


def test_state_at_folds_up_to_the_moment() -> None:
    log, _ = a_day()
    state = state_at(log.events, T0 + 3 * MINUTE)
    assert [view.id for view in state.rules.views(T0 + 3 * MINUTE)] == ["r2", "r3"]
    assert state.queue_counts == {}
    state = state_at(log.events, T0 + 2 * MINUTE)
    assert state.queue_counts == {"beta@a.com": 1}
    assert [view.id for view in state.rules.views(T0 + 2 * MINUTE)] == ["r2"]
    assert state_at(log.events, T0 - 1).last_seq == 0


def test_story_of_swept_arrived_queued_and_unknown_messages() -> None:
    log, _ = a_day()

    def story(label: str) -> MessageStory:
        told = MessageStory(spool_id(label))
        for committed in log.events:
            told.apply(committed)
        return told

    swept = story("m1")
    assert swept.status == "bounced"
    [received] = swept.received
    assert (received.seq, received.queue, received.sender) == (1, "acme@a.com", "s@x.org")
    [outcome] = swept.bounces()
    assert (outcome.rule_id, outcome.how, outcome.reason, outcome.issued_by) == (
        "r1",
        "by sweep",
        "reason r1",
        "alice",
    )
    [outcome] = story("m3").bounces()
    assert (outcome.rule_id, outcome.how) == ("r2", "at arrival")
    assert story("m4").status == "queued"
    assert story("m4").bounces() == []
    assert story("nope").status == "unknown"


def test_story_reports_a_bounce_by_a_rule_the_log_never_issued() -> None:
    log = Log()
    message = log.receive("m", "q")
    log.add(Bounced("ghost", "q", [message]))
    told = MessageStory(spool_id("m"))
    for committed in log.events:
        told.apply(committed)
    [outcome] = told.bounces()
    assert (outcome.rule_id, outcome.how, outcome.reason) == ("ghost", None, None)


# -- after a retention cut ------------------------------------------------------------


def base_at(log: Log, cut: int) -> State:
    """The state a retention pass keeps at ``cut``: the fold of the events up to it."""
    state = State()
    for committed in log.events[:cut]:
        state.apply(committed)
    return state


def test_a_timeline_from_the_base_at_any_cut_is_the_whole_logs() -> None:
    log, _ = a_day()
    now = T0 + 41 * MINUTE
    whole = timeline_of(log).actions(now)
    for cut in range(1, len(log.events) + 1):
        base = base_at(log, cut)
        timeline = Timeline.from_base(base)
        for committed in log.events[cut:]:
            timeline.apply(committed)
        assert timeline.actions(now) == whole, cut
        for where in (TimelineFilter(queue="acme@a.com"), TimelineFilter(principal="alice")):
            assert timeline.actions(now, where) == timeline_of(log).actions(now, where), cut
        # The base is left as it was.
        assert base.rules.rules.keys() == base_at(log, cut).rules.rules.keys()


def test_state_at_from_the_base_is_the_whole_logs_from_the_cut_on() -> None:
    log, _ = a_day()
    for cut in range(1, len(log.events) + 1):
        base = base_at(log, cut)
        for minutes in range(0, 13):
            at = T0 + minutes * MINUTE
            if at < base.last_time:
                continue
            whole = state_at(log.events, at)
            kept = state_at(log.events[cut:], at, base)
            assert kept.queue_counts == whole.queue_counts, (cut, minutes)
            assert kept.rules.views(at) == whole.rules.views(at), (cut, minutes)
            assert (kept.received_total, kept.bounced_total) == (
                whole.received_total,
                whole.bounced_total,
            )


def test_a_story_from_the_base_tells_what_the_kept_log_and_the_base_know() -> None:
    log, messages = a_day()

    def story(label: str, cut: int) -> MessageStory:
        told = MessageStory(spool_id(label), base_at(log, cut))
        for committed in log.events[cut:]:
            told.apply(committed)
        return told

    # m4 arrived at seq 14 and is still queued: after a cut past it, the base tells it,
    # without the protocol its deleted event held.
    [received] = story("m4", 14).received
    m4 = messages["m4"]
    assert (received.seq, received.time, received.queue) == (m4.seq, m4.received_at, "zeta@b.com")
    assert (received.sender, received.recipient, received.size) == ("s@x.org", "m4@x", 10)
    assert received.protocol is None
    assert story("m4", 14).status == "queued"
    # m3 arrived at seq 8 and was bounced at seq 9: with a cut between, the bounce and
    # its rule are told, how included (r2 was issued before m3 came: at arrival).
    told = story("m3", 8)
    assert told.status == "bounced"
    [outcome] = told.bounces()
    assert (outcome.rule_id, outcome.how, outcome.issued_by) == ("r2", "at arrival", "bob")
    # m1 came and went before the cut: the kept log cannot tell it.
    gone = story("m1", 5)
    assert (gone.status, gone.received, gone.bounces()) == ("before the cut", [], [])
    assert story("nope", 5).status == "before the cut"


# -- suspensions --------------------------------------------------------------------------


def a_suspension_day() -> tuple[Log, dict[str, Message]]:
    """s1 holds m1 and m2, m2 is bounced while held, s1 is cancelled (releasing m1);
    s2 holds m3 and expires (recorded late); s3 is replaced by s4, which is live."""
    log = Log()
    m = {name: log.receive(name, "acme@a.com") for name in ("m1", "m2")}
    m["m3"] = log.receive("m3", "b.com")
    log.at(1).add(SuspendIssued("s1", Criteria(domain="a.com"), "mx down", T0 + 60 * MINUTE, "ops"))
    log.add(Suspended("s1", "acme@a.com", m["m1"], 0, "mx down"))
    log.add(Suspended("s1", "acme@a.com", m["m2"], 0, "mx down"))
    log.at(2).issue("r1", 60, by="bob", queue_names=["acme@a.com"])
    log.add(Bounced("r1", "acme@a.com", [m["m2"]]))
    log.at(3).add(SuspendCancelled("s1", cancelled_by="alice"))
    log.add(SuspendIssued("s2", Criteria(domain="b.com"), "window", T0 + 5 * MINUTE, "carol"))
    log.add(Suspended("s2", "b.com", m["m3"], 1, "window"))
    log.at(7).add(SuspendExpired("s2"))
    log.add(SuspendIssued("s3", Criteria(tenant="x"), "first", T0 + 60 * MINUTE, "dave"))
    log.at(8).add(SuspendIssued("s4", Criteria(tenant="x"), "second", T0 + 60 * MINUTE, "erin"))
    return log, m


def test_suspension_actions_with_what_each_held_and_released() -> None:
    log, _ = a_suspension_day()
    actions = timeline_of(log).actions(T0 + 10 * MINUTE)
    suspensions = [a for a in actions if a.kind == "suspend"]
    assert [(a.action, a.rule_id, a.principal, a.status) for a in suspensions] == [
        ("issued", "s1", "ops", "cancelled"),
        ("cancelled", "s1", "alice", "cancelled"),
        ("issued", "s2", "carol", "expired"),
        ("expired", "s2", None, "expired"),
        ("issued", "s3", "dave", "replaced"),
        ("issued", "s4", "erin", "live"),
        ("replaced", "s3", "erin", "replaced"),
    ]
    by_id = {a.rule_id: a for a in suspensions if a.action == "issued"}
    assert (by_id["s1"].held, by_id["s1"].released) == ({"acme@a.com": 2}, 1)  # m2 bounced
    assert (by_id["s2"].held, by_id["s2"].released, by_id["s2"].time) == (
        {"b.com": 1},
        1,
        T0 + 3 * MINUTE,
    )
    assert suspensions[3].time == T0 + 5 * MINUTE  # dated at its expiry, recorded at 7
    assert (by_id["s3"].released, by_id["s4"].released) == (0, 0)
    assert all(a.bounced == {} and a.total_bounced == 0 for a in suspensions)
    [rule] = [a for a in actions if a.kind == "bounce"]
    assert (rule.rule_id, rule.bounced, rule.held) == ("r1", {"acme@a.com": 1}, {})
    # Filters treat a suspension as a rule.
    only = timeline_of(log).actions(T0 + 10 * MINUTE, TimelineFilter(rule_id="s2"))
    assert [a.action for a in only] == ["issued", "expired"]
    queue = timeline_of(log).actions(T0 + 10 * MINUTE, TimelineFilter(queue="b.com"))
    assert {a.rule_id for a in queue} == {"s2"}


def test_an_expiry_not_recorded_yet_releases_what_the_suspension_holds() -> None:
    log = Log()
    message = log.receive("m1", "a.com")
    log.at(1).add(SuspendIssued("s1", Criteria(domain="a.com"), "r", T0 + 2 * MINUTE, "ops"))
    log.add(Suspended("s1", "a.com", message, 0, "r"))
    timeline = timeline_of(log)
    [issued] = timeline.actions(T0 + MINUTE)
    assert (issued.status, issued.released) == ("live", 0)
    issued, expired = timeline.actions(T0 + 3 * MINUTE)
    assert (expired.action, expired.seq, expired.released) == ("expired", None, 1)


def test_a_held_messages_story_ends_its_hold_when_the_suspension_ends() -> None:
    log, m = a_suspension_day()
    stories = {name: MessageStory(m[name].id) for name in ("m1", "m2", "m3")}
    for committed in log.events:
        for story in stories.values():
            story.apply(committed)
    [released] = stories["m1"].releases
    assert (released.rule_id, released.end, released.by, released.queue) == (
        "s1",
        "cancelled",
        "alice",
        "acme@a.com",
    )
    assert released.time == T0 + 3 * MINUTE
    assert stories["m2"].releases == []  # bounced while held: nothing to release
    assert stories["m2"].status == "bounced"
    [expired] = stories["m3"].releases
    assert (expired.end, expired.by, expired.time) == ("expired", None, T0 + 5 * MINUTE)


def test_a_timeline_from_the_base_keeps_the_suspensions_actions() -> None:
    log, _ = a_suspension_day()
    now = T0 + 10 * MINUTE
    whole = [(a.action, a.rule_id, a.kind, a.status) for a in timeline_of(log).actions(now)]
    for cut in range(1, len(log.events) + 1):
        timeline = Timeline.from_base(base_at(log, cut))
        for committed in log.events[cut:]:
            timeline.apply(committed)
        kept = [(a.action, a.rule_id, a.kind, a.status) for a in timeline.actions(now)]
        assert sorted(kept) == sorted(whole), cut
        # What s1 released at its cancel (seq 9) is known from any cut before it: the
        # base says which messages it held there. From a cut after it, it is not.
        [s1] = [a for a in timeline.actions(now, TimelineFilter(rule_id="s1")) if a.seq == 9]
        assert s1.released == (1 if cut < 9 else 0), cut


def a_fleet_day() -> Log:
    """Rules of one campaign from three nodes of a fleet, seen from a fourth."""
    log = Log()
    log.at(1).issue("r1", 60, by="alice", campaign="spring")  # here
    log.at(2).add(
        BounceIssued(
            "r2",
            Criteria(campaign="spring"),
            "from a",
            T0 + 62 * MINUTE,
            issued_by="bob",
            issued_at=T0 + 2 * MINUTE,
            origin="node-a",
        )
    )
    # Issued on node-b before r2, read after it: it lost the race on arrival.
    log.at(3).add(
        BounceIssued(
            "r0",
            Criteria(campaign="spring"),
            "from b",
            T0 + 61 * MINUTE,
            issued_by="carol",
            issued_at=T0 + 1 * MINUTE + 1,
            origin="node-b",
        )
    )
    log.at(4).add(BounceCancelled("r2", cancelled_by="dave", origin="node-c"))
    return log


def test_fleet_actions_name_the_node_they_came_from() -> None:
    log = a_fleet_day()
    now = T0 + 10 * MINUTE
    actions = timeline_of(log).actions(now)
    assert [(a.action, a.rule_id, a.principal, a.origin) for a in actions] == [
        ("issued", "r1", "alice", ""),
        ("issued", "r2", "bob", "node-a"),
        ("replaced", "r1", "bob", "node-a"),
        ("issued", "r0", "carol", "node-b"),
        ("replaced", "r0", "bob", "node-a"),
        ("cancelled", "r2", "dave", "node-c"),
    ]
    assert {a.rule_id: a.ended_by for a in actions} == {"r1": "r2", "r2": "dave", "r0": "r2"}
    for cut in range(1, len(log.events) + 1):
        timeline = Timeline.from_base(base_at(log, cut))
        for committed in log.events[cut:]:
            timeline.apply(committed)
        # From a base, an issue is dated at its issued_at (r0 moves before r2).
        assert sorted((a.action, a.rule_id, a.origin) for a in timeline.actions(now)) == sorted(
            (a.action, a.rule_id, a.origin) for a in actions
        ), cut


def test_a_rule_that_arrived_ended_is_issued_and_ended_at_once_and_replaces_its_equal() -> None:
    """Node-c's rule was cancelled there before this node heard of it: it bounced
    nothing here, yet it outranks (and so ends) the equal rule issued here before it."""
    log = Log()
    log.at(1).issue("r1", 60, by="alice", campaign="spring")
    log.at(3).add(
        BounceIssued(
            "r3",
            Criteria(campaign="spring"),
            "from c",
            T0 + 63 * MINUTE,
            issued_by="erin",
            issued_at=T0 + 2 * MINUTE,
            origin="node-c",
            arrived_ended="cancelled",
        )
    )
    actions = timeline_of(log).actions(T0 + 10 * MINUTE)
    assert [(a.action, a.rule_id, a.principal, a.origin) for a in actions] == [
        ("issued", "r1", "alice", ""),
        ("issued", "r3", "erin", "node-c"),
        ("cancelled", "r3", None, "node-c"),
        ("replaced", "r1", "erin", "node-c"),
    ]


# -- ready-queue suspensions ---------------------------------------------------------------

READY_A = "unspecified->mx.a.com@smtp_client"
READY_B = "unspecified->mx.b.com@smtp_client"
READY_C = "unspecified->mx.c.com@smtp_client"


def ready_hold(rule_id: str, queue: str, message: Message, ready_queue: str) -> Suspended:
    return Suspended(rule_id, queue, message, 0, f"reason {rule_id}", ready_queue=ready_queue)


def a_ready_suspension_day() -> tuple[Log, dict[str, Message]]:
    """q1 (ready queue A) holds m1 and m2, m2 is bounced while held, q1 is cancelled
    (releasing m1); q2 (B) holds m3 and expires (recorded late); q3 (C) holds m4 and is
    replaced by q4 of another node, which holds m4 again and is live."""
    log = Log()
    m = {name: log.receive(name, "acme@a.com") for name in ("m1", "m2")}
    m["m3"] = log.receive("m3", "b.com")
    m["m4"] = log.receive("m4", "c.com")
    log.at(1).add(ReadySuspendIssued("q1", READY_A, "reason q1", T0 + 60 * MINUTE, "ops"))
    log.add(ready_hold("q1", "acme@a.com", m["m1"], READY_A))
    log.add(ready_hold("q1", "acme@a.com", m["m2"], READY_A))
    log.at(2).issue("r1", 60, by="bob", queue_names=["acme@a.com"])
    log.add(Bounced("r1", "acme@a.com", [m["m2"]]))
    log.at(3).add(ReadySuspendCancelled("q1", cancelled_by="alice"))
    log.add(ReadySuspendIssued("q2", READY_B, "reason q2", T0 + 5 * MINUTE, "carol"))
    log.add(ready_hold("q2", "b.com", m["m3"], READY_B))
    log.at(7).add(ReadySuspendExpired("q2"))
    log.add(ReadySuspendIssued("q3", READY_C, "reason q3", T0 + 60 * MINUTE, "dave"))
    log.add(ready_hold("q3", "c.com", m["m4"], READY_C))
    log.at(8).add(
        ReadySuspendIssued(
            "q4",
            READY_C,
            "reason q4",
            T0 + 60 * MINUTE,
            "erin",
            issued_at=T0 + 8 * MINUTE,
            origin="node-a",
        )
    )
    log.add(ready_hold("q4", "c.com", m["m4"], READY_C))
    return log, m


def test_ready_queue_suspensions_are_in_the_timeline_with_what_each_held_and_released() -> None:
    log, _ = a_ready_suspension_day()
    actions = timeline_of(log).actions(T0 + 10 * MINUTE)
    ready = [a for a in actions if a.kind == "suspend-ready-q"]
    assert [(a.action, a.rule_id, a.principal, a.origin, a.status) for a in ready] == [
        ("issued", "q1", "ops", "", "cancelled"),
        ("cancelled", "q1", "alice", "", "cancelled"),
        ("issued", "q2", "carol", "", "expired"),
        ("expired", "q2", None, "", "expired"),
        ("issued", "q3", "dave", "", "replaced"),
        ("issued", "q4", "erin", "node-a", "live"),
        ("replaced", "q3", "erin", "node-a", "replaced"),
    ]
    by_id = {a.rule_id: a for a in ready if a.action == "issued"}
    q1, q2, q3, q4 = (by_id[name] for name in ("q1", "q2", "q3", "q4"))
    assert (q1.held, q1.released) == ({"acme@a.com": 2}, 1)  # m2 bounced while held
    assert (q2.held, q2.released, q2.ended_at) == ({"b.com": 1}, 1, T0 + 5 * MINUTE)
    # A replacement releases what the replaced one held (the queue lets it meet the
    # new one, which holds it again).
    assert (q3.held, q3.released, q3.ended_by) == ({"c.com": 1}, 1, "q4")
    assert (q4.held, q4.released, q4.ended_at) == ({"c.com": 1}, 0, None)
    assert ready[3].time == T0 + 5 * MINUTE  # dated at its expiry, recorded at 7
    assert (q1.ready_queue, q1.criteria, q1.target) == (READY_A, None, f"ready_queue={READY_A}")
    assert (q1.reason, q1.expires_at, q1.ended_by) == ("reason q1", T0 + 60 * MINUTE, "alice")
    assert all(a.bounced == {} and a.total_bounced == 0 for a in ready)
    assert not any(a.suppress_logging for a in ready)
    [rule] = [a for a in actions if a.kind == "bounce"]
    assert (rule.rule_id, rule.bounced, rule.ready_queue) == ("r1", {"acme@a.com": 1}, None)


def test_filters_find_a_ready_queue_suspension_by_id_scheduled_queue_or_ready_queue() -> None:
    log, _ = a_ready_suspension_day()
    timeline, now = timeline_of(log), T0 + 10 * MINUTE
    only = timeline.actions(now, TimelineFilter(rule_id="q2"))
    assert [a.action for a in only] == ["issued", "expired"]
    assert timeline.rule("q2") is not None
    # A scheduled queue keeps the suspensions that held its messages...
    assert {a.rule_id for a in timeline.actions(now, TimelineFilter(queue="b.com"))} == {"q2"}
    # ... and a ready queue's name the suspensions of that ready queue, counts whole.
    by_name = timeline.actions(now, TimelineFilter(queue=READY_C))
    assert {a.rule_id for a in by_name} == {"q3", "q4"}
    assert all(a.held == {"c.com": 1} for a in by_name)
    assert [a.action for a in timeline.actions(now, TimelineFilter(principal="alice"))] == [
        "cancelled"
    ]


def test_a_ready_suspensions_expiry_not_recorded_yet_releases_what_it_holds() -> None:
    log = Log()
    message = log.receive("m1", "a.com")
    log.at(1).add(ReadySuspendIssued("q1", READY_A, "r", T0 + 2 * MINUTE, "ops"))
    log.add(ready_hold("q1", "a.com", message, READY_A))
    timeline = timeline_of(log)
    [issued] = timeline.actions(T0 + MINUTE)
    assert (issued.status, issued.released) == ("live", 0)
    issued, expired = timeline.actions(T0 + 3 * MINUTE)
    assert (expired.action, expired.seq, expired.released) == ("expired", None, 1)
    assert (expired.kind, expired.ready_queue) == ("suspend-ready-q", READY_A)


def test_a_message_held_by_a_ready_queue_suspension_is_released_at_its_end() -> None:
    log, m = a_ready_suspension_day()
    stories = {name: MessageStory(m[name].id) for name in ("m1", "m2", "m3", "m4")}
    for committed in log.events:
        for story in stories.values():
            story.apply(committed)
    [cancelled] = stories["m1"].releases
    assert (cancelled.rule_id, cancelled.end, cancelled.by, cancelled.queue) == (
        "q1",
        "cancelled",
        "alice",
        "acme@a.com",
    )
    assert (cancelled.time, cancelled.ready_queue) == (T0 + 3 * MINUTE, READY_A)
    assert stories["m2"].releases == []  # bounced while held
    [expired] = stories["m3"].releases
    assert (expired.end, expired.by, expired.time) == ("expired", None, T0 + 5 * MINUTE)
    [replaced] = stories["m4"].releases  # then held again by q4, which is live
    assert (replaced.rule_id, replaced.end, replaced.by) == ("q3", "replaced", "q4")
    assert [type(c.event) for c in stories["m4"].outcomes] == [Suspended, Suspended]


def test_a_timeline_from_the_base_keeps_the_ready_queue_suspensions_actions() -> None:
    log, _ = a_ready_suspension_day()
    now = T0 + 10 * MINUTE
    whole = [
        (a.action, a.rule_id, a.kind, a.status, a.principal, a.origin, a.ready_queue)
        for a in timeline_of(log).actions(now)
    ]
    cancel_seq = next(c.seq for c in log.events if isinstance(c.event, ReadySuspendCancelled))
    for cut in range(1, len(log.events) + 1):
        timeline = Timeline.from_base(base_at(log, cut))
        for committed in log.events[cut:]:
            timeline.apply(committed)
        kept = [
            (a.action, a.rule_id, a.kind, a.status, a.principal, a.origin, a.ready_queue)
            for a in timeline.actions(now)
        ]
        assert sorted(kept, key=repr) == sorted(whole, key=repr), cut
        # What q1 released at its cancel is known from any cut before it.
        [q1] = [
            a for a in timeline.actions(now, TimelineFilter(rule_id="q1")) if a.seq == cancel_seq
        ]
        assert q1.released == (1 if cut < cancel_seq else 0), cut


def test_a_suspension_that_lost_on_arrival_is_replaced_by_the_winners_issuer() -> None:
    """The winner is looked up among the rules of the loser's kind (a suspension, a
    ready-queue suspension), not among the bounce rules."""
    log = Log()
    log.at(2).add(SuspendIssued("s1", Criteria(domain="a.com"), "here", T0 + 60 * MINUTE, "alice"))
    log.add(ReadySuspendIssued("q1", READY_A, "here", T0 + 60 * MINUTE, "alice"))
    early = T0 + MINUTE  # issued on node-b before the ones here, read after them
    log.at(3).add(
        SuspendIssued(
            "s0",
            Criteria(domain="a.com"),
            "there",
            T0 + 60 * MINUTE,
            "bob",
            issued_at=early,
            origin="node-b",
        )
    )
    log.add(ReadySuspendIssued("q0", READY_A, "there", T0 + 60 * MINUTE, "bob", early, "node-b"))
    actions = timeline_of(log).actions(T0 + 10 * MINUTE)
    lost = [(a.rule_id, a.principal, a.kind) for a in actions if a.action == "replaced"]
    assert lost == [("s0", "alice", "suspend"), ("q0", "alice", "suspend-ready-q")]


def test_a_suspension_that_arrived_ended_releases_what_its_equal_held() -> None:
    """s2 of node-c was lifted there before this node heard of it; it outranks s1,
    which ends replaced here, and the mail s1 held is due again (nothing holds it)."""
    log = Log()
    m1 = log.receive("m1", "acme@a.com")
    log.at(1).add(SuspendIssued("s1", Criteria(domain="a.com"), "mx down", T0 + 60 * MINUTE))
    log.add(Suspended("s1", "acme@a.com", m1, 0, "mx down"))
    log.at(2).add(
        SuspendIssued(
            "s2",
            Criteria(domain="a.com"),
            "mx down",
            T0 + 60 * MINUTE,
            "erin",
            issued_at=T0 + 2 * MINUTE,
            origin="node-c",
            arrived_ended="cancelled",
        )
    )
    actions = timeline_of(log).actions(T0 + 10 * MINUTE)
    assert [(a.action, a.rule_id, a.status) for a in actions] == [
        ("issued", "s1", "replaced"),
        ("issued", "s2", "cancelled"),
        ("cancelled", "s2", "cancelled"),
        ("replaced", "s1", "replaced"),
    ]
    s1 = next(a for a in actions if a.rule_id == "s1" and a.action == "issued")
    assert (s1.held, s1.released) == ({"acme@a.com": 1}, 1)


def test_state_at_with_a_timeline_lists_the_suspensions_live_then_with_what_each_held() -> None:
    """Both kinds, in issue order, with what each held by then; one cancelled, expired
    (recorded or not) or replaced by then is gone; ``queue`` narrows as the timeline's
    filter does."""
    log = Log()
    m = {name: log.receive(name, "acme@a.com") for name in ("m1", "m2")}
    m["m3"] = log.receive("m3", "c.com")
    log.at(1).add(SuspendIssued("s1", Criteria(domain="a.com"), "mx down", T0 + 9 * MINUTE, "ops"))
    log.add(Suspended("s1", "acme@a.com", m["m1"], 0, "mx down"))
    log.at(2).add(ReadySuspendIssued("q1", READY_C, "reason q1", T0 + 60 * MINUTE, "dave"))
    log.add(ready_hold("q1", "c.com", m["m3"], READY_C))
    log.at(3).add(Suspended("s1", "acme@a.com", m["m2"], 0, "mx down"))
    log.at(4).add(
        ReadySuspendIssued("q2", READY_C, "reason q2", T0 + 60 * MINUTE, "erin", origin="node-a")
    )  # replaces q1
    log.add(ready_hold("q2", "c.com", m["m3"], READY_C))
    log.at(5).add(SuspendIssued("s2", Criteria(tenant="x"), "later", T0 + 60 * MINUTE, "bob"))
    log.at(6).add(SuspendCancelled("s2", cancelled_by="alice"))

    def live(minutes: float, queue: str | None = None) -> list[tuple[str, str, dict[str, int]]]:
        timeline = Timeline()
        at = T0 + round(minutes * MINUTE)
        state_at(log.events, at, timeline=timeline)
        return [(s.id, s.kind, dict(s.held)) for s in timeline.live_suspensions(at, queue)]

    assert live(0.5) == []
    assert live(1) == [("s1", "suspend", {"acme@a.com": 1})]  # an event at the moment is done
    assert live(2) == [
        ("s1", "suspend", {"acme@a.com": 1}),
        ("q1", "suspend-ready-q", {"c.com": 1}),
    ]
    assert live(5) == [
        ("s1", "suspend", {"acme@a.com": 2}),
        ("q2", "suspend-ready-q", {"c.com": 1}),
        ("s2", "suspend", {}),
    ]
    assert live(10) == [("q2", "suspend-ready-q", {"c.com": 1})]  # s1's expiry not recorded
    assert live(5, "acme@a.com") == [("s1", "suspend", {"acme@a.com": 2})]
    assert live(5, "beta@a.com") == [("s1", "suspend", {})]  # matches, held none there
    assert live(5, READY_C) == [("q2", "suspend-ready-q", {"c.com": 1})]
    assert live(5, "c.com") == [("q2", "suspend-ready-q", {"c.com": 1})]

    timeline = Timeline()
    state = state_at(log.events, T0 + 5 * MINUTE, timeline=timeline)
    assert [view.id for view in state.suspends.views(T0 + 5 * MINUTE)] == ["s1", "s2"]
    s1, q2, _ = timeline.live_suspensions(T0 + 5 * MINUTE)
    assert (s1.criteria, s1.ready_queue, s1.target) == (
        Criteria(domain="a.com"),
        None,
        "domain=a.com",
    )
    assert (s1.reason, s1.issued_by, s1.origin, s1.total_held) == ("mx down", "ops", "", 2)
    assert (s1.remaining, s1.expires_at) == (4 * MINUTE, T0 + 9 * MINUTE)
    assert (q2.ready_queue, q2.criteria, q2.target) == (READY_C, None, f"ready_queue={READY_C}")
    assert (q2.reason, q2.issued_by, q2.origin) == ("reason q2", "erin", "node-a")

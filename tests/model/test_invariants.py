"""The invariant checks: precise (which check, which seq) on each kind of broken log.

That they are silent on any log the model's own decisions produce, and that a bounce
given to another rule is caught, is checked by the state machine in
``test_engine_machine.py``.
"""

from __future__ import annotations

from typing import Any

import orjson

from kumo.model.criteria import Criteria
from kumo.model.events import (
    Attempt,
    BounceCancelled,
    Bounced,
    BounceIssued,
    Committed,
    Message,
    MessageReceived,
    PeerAddress,
    RebindIssued,
    Rebound,
    Rejected,
    TransientlyFailed,
)
from kumo.model.invariants import DeliveryLogCheck, InvariantCheck, Violation
from kumo.model.log_record import bounce_content
from kumo.model.state import State
from kumo.runtime.delivery_log import encode_records

M1, M2, M3 = (f"{n:032x}" for n in (1, 2, 3))
"""Message ids of the example log: 32 hex digits, as MessageReceived requires."""


def message(seq: int, message_id: str = M1) -> Message:
    return Message(message_id, "s@x", "r@x", 5, 1_000, seq)


def received(seq: int, message_id: str = M1, queue: str = "a.com") -> Committed:
    return Committed(seq, 1_000, MessageReceived(message_id, queue, "s@x", "r@x", 5))


def issued(seq: int, rule_id: str = "r", suppress: bool = False, **criteria: str) -> Committed:
    return Committed(
        seq,
        1_000,
        BounceIssued(rule_id, Criteria(**criteria), "why", 10**18, suppress_logging=suppress),
    )


def bounced(seq: int, *messages: Message, rule_id: str = "r", queue: str = "a.com") -> Committed:
    return Committed(seq, 1_000, Bounced(rule_id, queue, messages))


def check(log: list[Committed]) -> InvariantCheck:
    return InvariantCheck.over(log)


def problems(log: list[Committed]) -> list[tuple[str, int | None, str]]:
    return [(v.check, v.seq, v.problem) for v in check(log).violations]


def test_received_twice() -> None:
    """The duplicate, and what it did to the rebuilt gauges, are both reported."""
    found = problems([received(1), received(2)])
    assert found[0] == ("conservation", 2, f"message {M1} received again (first at seq 1)")
    assert {kind for kind, _, _ in found[1:]} == {"counters"}


def test_bounced_twice() -> None:
    log = [received(1), issued(2, domain="a.com"), bounced(3, message(1)), bounced(4, message(1))]
    [(kind, seq, problem)] = problems(log)
    assert (kind, seq) == ("conservation", 4)
    assert "bounced again (first at seq 3)" in problem


def test_bounced_without_being_received() -> None:
    [(kind, seq, problem)] = problems([issued(1, domain="a.com"), bounced(2, message(7, "ghost"))])
    assert (kind, seq) == ("conservation", 2)
    assert "ghost bounced but never received" in problem


def test_bounced_by_a_rule_never_issued() -> None:
    found = problems([received(1), bounced(2, message(1), rule_id="nobody")])
    assert ("conservation", 2, "bounced by rule nobody, never issued") in found


def test_bounced_out_of_another_queue() -> None:
    log = [received(1, queue="b.com"), issued(2), bounced(3, message(1), queue="a.com")]
    found = problems(log)
    assert any(kind == "conservation" and "received into b.com" in p for kind, _, p in found)


def test_rule_that_does_not_match_the_queue() -> None:
    log = [received(1), issued(2, domain="other.com"), bounced(3, message(1))]
    found = problems(log)
    assert found[0][:2] == ("attribution", 3)
    assert "does not match queue a.com" in found[0][2]


def test_a_message_nobody_was_due_to_bounce() -> None:
    """A rule cancelled before the message arrived cannot bounce it."""
    log = [
        issued(1, domain="a.com"),
        Committed(2, 1_000, BounceCancelled("r")),
        received(3),
        bounced(4, message(3)),
    ]
    [(kind, seq, problem)] = problems(log)
    assert (kind, seq) == ("attribution", 4)
    assert "no rule was live when it arrived or issued after" in problem


def test_the_most_recent_live_rule_takes_an_arrival() -> None:
    log = [
        issued(1, "old", domain="a.com"),
        issued(2, "new", tenant="t"),
        received(3, queue="t@a.com"),
        bounced(4, message(3), rule_id="old", queue="t@a.com"),
    ]
    [(kind, seq, problem)] = problems(log)
    assert (kind, seq) == ("attribution", 4)
    assert "rule new was due to take it" in problem


def test_owed_bounces_are_reported_not_violations() -> None:
    invariants = check([received(1), issued(2, domain="a.com")])
    assert invariants.violations == []
    assert invariants.owed() == {"r": 1}


def test_a_rebuilt_counter_that_disagrees_is_a_counters_violation() -> None:
    invariants = InvariantCheck()
    for committed in [received(1), issued(2, domain="a.com"), bounced(3, message(1))]:
        invariants.apply(committed)
    invariants.projection.rules.rules["r"].bounced["a.com"] = 5
    assert invariants.finish() == [
        Violation("counters", "rule r", "counter for a.com is 5, its Bounced events hold 1"),
        Violation("counters", "rule r", "total_bounced 1 is not the sum of its queues"),
    ]


# -- the delivery log ----------------------------------------------------------------


def delivery(log: list[Committed], *, checkpoint: int | None = None) -> DeliveryLogCheck:
    invariants = check(log)
    last = log[-1].seq if log else 0
    return DeliveryLogCheck(
        invariants, checkpoint_seq=last if checkpoint is None else checkpoint, last_seq=last
    )


LOG = [
    received(1, M1),
    received(2, M2),
    issued(3, "loud", domain="a.com"),
    bounced(4, message(1, M1), message(2, M2), rule_id="loud"),
    received(5, M3, queue="b.com"),
    issued(6, "quiet", suppress=True, domain="b.com"),
    bounced(7, message(5, M3), rule_id="quiet", queue="b.com"),
]
CONTENT = bounce_content("why")


def feed_all(check: DeliveryLogCheck, skip: str = "") -> None:
    for line, (kind, mid, queue) in enumerate(
        [
            ("Reception", M1, "a.com"),
            ("Reception", M2, "a.com"),
            ("AdminBounce", M1, "a.com"),
            ("AdminBounce", M2, "a.com"),
            ("Reception", M3, "b.com"),
        ],
        start=1,
    ):
        if f"{kind}:{mid}" != skip:
            check.record(kind, mid, queue, CONTENT if kind == "AdminBounce" else "", f"l{line}")


def test_complete_delivery_log() -> None:
    check = delivery(LOG)
    feed_all(check)
    assert check.finish() == []
    assert check.pending() == 0
    assert dict(check.seen) == {"Reception": 3, "AdminBounce": 2}


def test_missing_record_names_the_event() -> None:
    check = delivery(LOG)
    feed_all(check, skip=f"AdminBounce:{M2}")
    [violation] = check.finish()
    assert (violation.check, violation.where, violation.seq) == ("delivery-log", "seq 4", 4)
    assert f"no AdminBounce record for 1 message(s) of this event: {M2}" in violation.problem


def test_records_after_the_checkpoint_are_not_yet_due() -> None:
    check = delivery(LOG, checkpoint=3)
    check.record("Reception", M1, "a.com", "", "l1")
    check.record("Reception", M2, "a.com", "", "l2")
    assert check.finish() == []
    assert check.pending() == 3


def test_duplicate_unknown_suppressed_and_wrong_records() -> None:
    check = delivery(LOG)
    feed_all(check)
    check.record("Reception", M1, "a.com", "", "dup")
    check.record("Reception", "zz", "a.com", "", "unknown")
    check.record("AdminBounce", M3, "b.com", CONTENT, "suppressed")
    check.record("AdminBounce", "m1x", "a.com", CONTENT, "never bounced")
    check.record("Delivery", M1, "a.com", "", "no delivery")
    check.record("Feedback", M1, "a.com", "", "other kinds are not ours to judge")
    found = {(v.where, v.problem) for v in check.finish()}
    assert found == {
        ("no delivery", f"Delivery for {M1}, but the log holds only 0 mail-path event(s)"),
        ("dup", f"duplicate Reception record for {M1}"),
        ("unknown", "Reception for zz, which the log never received"),
        ("suppressed", f"AdminBounce for {M3}, whose rule quiet suppresses logging"),
        ("never bounced", "AdminBounce for m1x, which the log never bounced"),
    }


def test_wrong_queue_and_content() -> None:
    check = delivery(LOG[:4])
    check.record("Reception", M1, "b.com", "", "l1")
    check.record("AdminBounce", M1, "a.com", "Administrator bounced with reason: other", "l2")
    problems = sorted(v.problem for v in check.finish() if v.where in ("l1", "l2"))
    assert problems == [
        f"AdminBounce for {M1} has content 'Administrator bounced with reason: other'",
        f"Reception for {M1} names queue b.com, log says a.com",
    ]


def test_checkpoint_past_the_end_means_a_truncated_log() -> None:
    check = DeliveryLogCheck(check_log := InvariantCheck(), checkpoint_seq=9, last_seq=7)
    assert check_log.violations == []
    [violation] = check.finish()
    assert (violation.check, violation.seq) == ("checkpoint", 8)
    assert "events 8..9 are missing (the log was truncated)" in violation.problem


def rejected(seq: int) -> Committed:
    event = Rejected(
        503, "5.5.0 RCPT TO must be issued first", "DATA", "", "", PeerAddress("", "::1")
    )
    return Committed(seq, 1_000, event)


REJECTING_LOG = [received(1, M1), rejected(2), rejected(3), rejected(4)]


def test_rejections_change_nothing_and_are_counted() -> None:
    invariants = check(REJECTING_LOG)
    assert invariants.violations == []
    assert invariants.rejected == [2, 3, 4]
    assert invariants.queued() == {"a.com": [M1]}


def test_rejection_records_are_counted_against_the_rejected_events() -> None:
    complete = delivery(REJECTING_LOG)
    complete.record("Reception", M1, "a.com", "", "l1")
    for line in range(2, 5):
        complete.record("Rejection", "", "", "relaying", f"l{line}")
    assert complete.finish() == []
    assert complete.pending() == 0

    missing = delivery(REJECTING_LOG)
    missing.record("Reception", M1, "a.com", "", "l1")
    missing.record("Rejection", "", "", "", "l2")
    [violation] = missing.finish()
    assert (violation.check, violation.seq) == ("delivery-log", 3)
    assert violation.problem.startswith("2 Rejection record(s) missing")

    extra = delivery(REJECTING_LOG)
    extra.record("Reception", M1, "a.com", "", "l1")
    for line in range(2, 6):
        extra.record("Rejection", "", "", "", f"l{line}")
    [violation] = extra.finish()
    assert violation.problem == "4 Rejection records, but the log holds only 3 Rejected event(s)"


def test_rejection_records_after_the_checkpoint_are_not_yet_due() -> None:
    early = delivery(REJECTING_LOG, checkpoint=2)
    early.record("Reception", M1, "a.com", "", "l1")
    early.record("Rejection", "", "", "", "l2")
    assert early.finish() == []
    assert early.pending() == 2


# -- every field of a record (issue 12: forged fields passed) -------------------------


def records_for(log: list[Committed]) -> list[dict[str, Any]]:
    """The records kumo writes for ``log`` (node ``n``)."""
    rules = {"loud": ("why", False), "quiet": ("why", True)}
    return [orjson.loads(line) for line in encode_records(log, rules, "n")]


def test_the_records_kumo_writes_pass_every_field() -> None:
    check = delivery(LOG)
    for line, record in enumerate(records_for(LOG), start=1):
        check.check(record, f"l{line}")
    assert check.finish() == []
    assert dict(check.seen) == {"Reception": 3, "AdminBounce": 2}


def test_a_forged_field_is_named_with_both_values() -> None:
    records = records_for(LOG)
    records[0]["recipient"] = "forged@x"
    records[3]["size"], records[3]["created"], records[3]["site"] = 6, 7, "x"
    records[3]["response"]["code"] = 250
    del records[4]["reception_protocol"]
    check = delivery(LOG)
    for line, record in enumerate(records, start=1):
        check.check(record, f"l{line}")
    assert [(v.where, v.problem) for v in check.finish()] == [
        (
            "l1",
            f"Reception for {M1} differs from the log's event at seq 1: recipient "
            "'forged@x', log says 'r@x'",
        ),
        (
            "l4",
            f"AdminBounce for {M2} differs from the log's event at seq 4: site 'x', log "
            "says 'localhost'; size 6, log says 5; response.code 250, log says 551 (and 1 more "
            "field(s))",
        ),
        (
            "l5",
            f"Reception for {M3} differs from the log's event at seq 5: reception_protocol "
            "(absent), log says 'HTTP'",
        ),
    ]


def test_any_node_id_passes_but_none() -> None:
    records = records_for(LOG[:1])
    records[0]["nodeid"] = "another node"
    check = delivery(LOG[:1])
    check.check(records[0], "l1")
    assert check.finish() == []
    records[0]["nodeid"] = ""
    check = delivery(LOG[:1])
    check.check(records[0], "l1")
    [violation] = check.finish()
    assert violation.problem.endswith("nodeid '', log says ''")


def test_rejection_records_are_compared_with_their_events_in_order() -> None:
    records = records_for(REJECTING_LOG)
    records[2]["recipient"] = "forged@x"
    check = delivery(REJECTING_LOG)
    for line, record in enumerate(records, start=1):
        check.check(record, f"l{line}")
    assert [(v.where, v.problem) for v in check.finish()] == [
        (
            "l3",
            "Rejection for a rejection differs from the log's event at seq 3: recipient "
            "'forged@x', log says ''",
        ),
    ]


def test_a_bounce_must_carry_the_message_as_received() -> None:
    forged = Message(M1, "s@x", "other@x", 5, 1_000, 1)
    found = problems([received(1), issued(2, domain="a.com"), bounced(3, forged)])
    assert found == [
        (
            "conservation",
            3,
            f"message {M1} is bounced as from s@x to other@x, 5 bytes, but "
            "was received from s@x to r@x, 5 bytes",
        ),
    ]


def test_without_a_checkpoint_the_records_say_how_far_the_files_go() -> None:
    invariants = check(LOG)
    check_ = DeliveryLogCheck(invariants, checkpoint_seq=None, last_seq=7)
    check_.record("Reception", M2, "a.com", "", "l1")  # M1's Reception (seq 1) is gone
    assert check_.due_through == 2
    [violation] = check_.finish()
    assert (violation.where, violation.problem) == (
        "seq 1",
        f"no Reception record for 1 message(s) of this event: {M1}",
    )
    assert check_.pending() == 3  # the bounces of seq 4 and M3's Reception
    nothing = DeliveryLogCheck(invariants, checkpoint_seq=None, last_seq=7)
    assert (nothing.finish(), nothing.pending()) == ([], 5)


# -- from a base at a retention cut ---------------------------------------------------

M4, M5, M6 = (f"{n:032x}" for n in (4, 5, 6))


def at_time(committed: Committed) -> Committed:
    """The event committed at a time of its own (ns = seq), as a real log's are."""
    event = committed.event
    if isinstance(event, Bounced):
        # Its messages carry their reception times.
        messages = tuple(m._replace(received_at=m.seq) for m in event.messages)
        event = Bounced(event.rule_id, event.queue, messages)
    return Committed(committed.seq, committed.seq, event)


RETAINED_LOG = [
    at_time(committed)
    for committed in [
        received(1, M1),
        received(2, M2),
        issued(3, "loud", domain="a.com"),  # its sweep takes M1, then M2
        bounced(4, message(1, M1), rule_id="loud"),
        rejected(5),
        received(6, M3, queue="b.com"),
        received(7, M4),  # arrives while loud is live: loud takes it at arrival
        bounced(8, message(2, M2), message(7, M4), rule_id="loud"),
        issued(9, "quiet", suppress=True, domain="b.com"),
        rejected(10),
        received(11, M5, queue="b.com"),  # quiet's, still owed (a crash cut it short)
        bounced(12, message(6, M3), rule_id="quiet", queue="b.com"),
        Committed(13, 1_000, BounceCancelled("loud")),
        received(14, M6),  # nobody's
        rejected(15),
    ]
]


def base_at(log: list[Committed], cut: int) -> State:
    """The state a retention pass keeps at ``cut``: the fold of the events up to it."""
    state = State()
    for committed in log[:cut]:
        state.apply(committed)
    return state


def check_from(log: list[Committed], cut: int) -> InvariantCheck:
    invariants = InvariantCheck(base_at(log, cut) if cut else None)
    for committed in log[cut:]:
        invariants.apply(committed)
    invariants.finish()
    return invariants


def test_a_check_from_the_base_at_any_cut_agrees_with_the_whole_log() -> None:
    whole = check_from(RETAINED_LOG, 0)
    assert whole.violations == []
    assert whole.owed() == {"quiet": 1}
    for cut in range(1, len(RETAINED_LOG) + 1):
        kept = check_from(RETAINED_LOG, cut)
        assert kept.violations == [], cut
        assert kept.cut == cut
        assert kept.queued() == whole.queued(), cut
        assert kept.owed() == whole.owed(), cut
        assert kept.tally == whole.tally, cut
        assert kept.projection.received_total == whole.projection.received_total == 6
        assert len(kept.received) + kept.gone_before_cut == 6


def test_a_base_leaves_the_check_the_same_violations_after_the_cut() -> None:
    log = [
        *RETAINED_LOG[:11],
        # M5 arrived while quiet was live: a sweep of another rule may not take it.
        at_time(issued(12, "late", domain="b.com")),
        at_time(bounced(13, message(11, M5), rule_id="late", queue="b.com")),
        at_time(bounced(14, message(7, M4), rule_id="loud")),  # M4 is gone already
    ]
    whole = [(v.check, v.seq) for v in check_from(log, 0).violations]
    assert whole == [("attribution", 13), ("conservation", 14)]
    for cut in range(1, 12):
        assert [(v.check, v.seq) for v in check_from(log, cut).violations] == whole, cut


def test_a_base_that_counts_fewer_received_than_it_queues_is_a_violation() -> None:
    base = base_at(RETAINED_LOG, 7)
    base.received_total = 1
    [violation] = InvariantCheck(base).violations
    assert (violation.check, violation.seq) == ("counters", 7)
    assert "counts 1 messages received, but holds 3 queued" in violation.problem


def test_the_records_before_the_cut_are_counted_and_the_rest_compared() -> None:
    records = records_for(RETAINED_LOG)
    for cut in range(1, len(RETAINED_LOG) + 1):
        delivery_check = DeliveryLogCheck(
            check_from(RETAINED_LOG, cut), checkpoint_seq=15, last_seq=15
        )
        for line, record in enumerate(records, start=1):
            delivery_check.check(record, f"l{line}")
        assert delivery_check.finish() == [], cut
        before = len(records_for(RETAINED_LOG[:cut]))
        assert delivery_check.before_cut == before, cut
        assert sum(delivery_check.seen.values()) == len(records) - before, cut


# The records of RETAINED_LOG, in order: Reception M1, M2 (seqs 1, 2), AdminBounce M1
# (4), Rejection (5), Reception M3, M4 (6, 7), AdminBounce M2, M4 (8), Rejection (10),
# Reception M5 (11), Reception M6 (14), Rejection (15): eight up to seq 8.
CUT = 8


def test_after_the_records_before_the_cut_every_record_is_judged() -> None:
    records = records_for(RETAINED_LOG)
    assert len(records_for(RETAINED_LOG[:CUT])) == 8
    stray = {**records[0], "id": "f" * 32}
    forged = {**records[11], "recipient": "forged@x"}
    check_ = DeliveryLogCheck(check_from(RETAINED_LOG, CUT), checkpoint_seq=15, last_seq=15)
    for line, record in enumerate([*records[:11], stray, forged], start=1):
        check_.check(record, f"l{line}")
    assert [(v.where, v.problem.split(":")[0]) for v in check_.finish()] == [
        ("l12", f"Reception for {'f' * 32}, which the log never received"),
        ("l13", "Rejection for a rejection differs from the log's event at seq 15"),
    ]
    assert check_.before_cut == 8


def test_a_record_missing_after_the_cut_is_still_found() -> None:
    records = records_for(RETAINED_LOG)
    # Without the first kept Rejection's record (seq 10), the Reception of M5 ends the
    # records before the cut, and the last Rejection is taken for seq 10's.
    check_ = DeliveryLogCheck(check_from(RETAINED_LOG, CUT), checkpoint_seq=15, last_seq=15)
    for line, record in enumerate([*records[:8], *records[9:]], start=1):
        check_.check(record, f"l{line}")
    found = [(v.where, v.seq, v.problem.split(":")[0]) for v in check_.finish()]
    assert found == [
        ("l11", None, "Rejection for a rejection differs from the log's event at seq 10"),
        ("seq 15", 15, "1 Rejection record(s) missing"),
    ]
    assert check_.before_cut == 8
    # And a Reception missing after the cut is named with its event.
    check_ = DeliveryLogCheck(check_from(RETAINED_LOG, CUT), checkpoint_seq=15, last_seq=15)
    for line, record in enumerate([*records[:10], *records[11:]], start=1):
        check_.check(record, f"l{line}")
    [violation] = check_.finish()
    assert (violation.seq, violation.problem) == (
        14,
        f"no Reception record for 1 message(s) of this event: {M6}",
    )


def test_a_failure_before_a_retention_cut_still_anchors_the_attribution() -> None:
    """A message was in flight through rule A's sweep (A then cancelled); it failed
    while rule B was live, and the cut came before B's bounce of it was logged (a crash
    lost it; the restart owes it). Checked from a base at the cut, the bounce that
    follows is B's, as it is over the whole log, not A's (the first issued after it
    arrived)."""
    now = 1_000 * 10**9
    message = Message(f"{1:032x}", "s@x", "r@a.com", 10, now, 1)
    attempt = Attempt("", 451, (4, 4, 4), "no", None)
    log = [
        Committed(1, now, MessageReceived(message.id, "a.com", "s@x", "r@a.com", 10)),
        Committed(2, now, BounceIssued("A", Criteria(domain="a.com"), "why", now + 10**12)),
        Committed(3, now, BounceCancelled("A", "ops")),
        Committed(4, now, BounceIssued("B", Criteria(), "why", now + 10**12)),
        Committed(5, now, TransientlyFailed("a.com", message, 0, attempt, now + 60 * 10**9)),
    ]
    after = [Committed(6, now, Bounced("B", "a.com", [message]))]
    assert InvariantCheck.over(log + after).violations == []
    base = State()
    for committed in log:
        base.apply(committed)
    check = InvariantCheck(base)
    for committed in after:
        check.apply(committed)
    assert check.finish() == []


REBIND_LOG = [
    received(1, M1),
    received(2, M2),
    Committed(3, 1_000, RebindIssued("b", Criteria(domain="a.com"), {"tenant": "t"}, "why")),
    Committed(
        4, 2_000, Rebound("b", "a.com", "t@a.com", [message(1, M1), message(2, M2)], [0, 1], "why")
    ),
    Committed(5, 3_000, Rebound("b", "t@a.com", "a.com", [message(1, M1)], [0], "back", True)),
    Committed(6, 4_000, Rebound("b", "t@a.com", "b@a.com", [message(2, M2)], [1], "again")),
]


def test_admin_rebind_records_are_checked_in_order_field_by_field() -> None:
    records = records_for(REBIND_LOG)
    assert [r["type"] for r in records] == ["Reception"] * 2 + ["AdminRebind"] * 3
    check = delivery(REBIND_LOG)
    for line, record in enumerate(records, start=1):
        check.check(record, f"l{line}")
    assert check.finish() == []
    assert check.pending() == 0
    # A forged record, and one missing.
    records[3]["num_attempts"] = 7
    check = delivery(REBIND_LOG)
    for line, record in enumerate(records[:-1], start=1):
        check.check(record, f"l{line}")
    problems = [(v.where, v.problem) for v in check.finish()]
    assert problems[0] == (
        "l4",
        f"AdminRebind for {M2} differs from the log's event at seq 4: num_attempts 7, log says 1",
    )
    assert problems[1][0] == "seq 6"
    assert "1 AdminRebind record(s) missing" in problems[1][1]
    # In the wrong order: the next record the log calls for is another message's.
    check = delivery(REBIND_LOG)
    for line, record in enumerate([*records[:2], records[3], records[2]], start=1):
        check.check(record, f"l{line}")
    assert any("the log's next rebound message" in v.problem for v in check.finish())

"""Dry runs: what a request's criteria match, from the queue index and the gauges."""

from __future__ import annotations

from kumo.model.criteria import Criteria
from kumo.model.dry_run import (
    DryRun,
    QueueMatch,
    QueueMove,
    RebindDryRun,
    dry_run,
    matching_queues,
    messages_matching,
    rebind_dry_run,
)
from kumo.model.events import BounceCancelled, BounceIssued, Committed
from kumo.model.queue_index import QueueIndex
from kumo.model.queue_name import QueueName, rebound_queue_name
from kumo.model.state import RuleBook

SECOND = 1_000_000_000
QUEUES = {
    "example.com": 4,
    "acme@example.com": 3,
    "spring:acme@gmail.com": 2,
    "gmail.com!mx.out": 1,
    "emptied.org": 0,
}


def index_of(names: dict[str, int]) -> QueueIndex[str]:
    index: QueueIndex[str] = QueueIndex()
    for name in names:
        index.add(name, QueueName.parse(name), name)
    return index


def counts() -> dict[str, int]:
    # The gauges list non-empty queues only.
    return {name: count for name, count in QUEUES.items() if count}


def test_matching_queues_are_those_the_criteria_match_that_hold_messages_by_name() -> None:
    index = index_of(QUEUES)
    assert matching_queues(Criteria(domain="example.com"), index, counts()) == (
        QueueMatch("acme@example.com", 3),
        QueueMatch("example.com", 4),
    )
    assert matching_queues(Criteria(tenant="acme"), index, counts()) == (
        QueueMatch("acme@example.com", 3),
        QueueMatch("spring:acme@gmail.com", 2),
    )
    assert matching_queues(Criteria(routing_domain="mx.out"), index, counts()) == (
        QueueMatch("gmail.com!mx.out", 1),
    )
    assert matching_queues(Criteria(queue_names=["emptied.org", "nowhere"]), index, counts()) == ()
    everything = matching_queues(Criteria(), index, counts())
    assert [match.queue for match in everything] == sorted(counts())
    # Case-sensitive, as the rules match.
    assert matching_queues(Criteria(domain="Example.com"), index, counts()) == ()


def test_the_answer_is_the_rules_own_matcher_over_every_queue() -> None:
    index = index_of(QUEUES)
    for criteria in (
        Criteria(),
        Criteria(domain="gmail.com"),
        Criteria(campaign="spring", tenant="acme"),
        Criteria(tenant="acme", domain="example.com"),
        Criteria(queue_names=["example.com", "gmail.com!mx.out"]),
    ):
        expected = {name for name, count in counts().items() if criteria.matches(name)}
        found = matching_queues(criteria, index, counts())
        assert {match.queue for match in found} == expected
        assert messages_matching(criteria, index, counts()) == sum(
            counts()[name] for name in expected
        )


def _issued(book: RuleBook, seq: int, rule_id: str, criteria: Criteria, expires_at: int) -> None:
    event = BounceIssued(rule_id=rule_id, criteria=criteria, reason="r", expires_at=expires_at)
    book.apply(Committed(seq, seq * SECOND, event))


def test_replaces_names_the_live_rule_with_equal_criteria() -> None:
    index, book = index_of(QUEUES), RuleBook()
    criteria = Criteria(domain="example.com")
    _issued(book, 1, "r1", criteria, 100 * SECOND)
    _issued(book, 2, "r2", Criteria(domain="gmail.com"), 100 * SECOND)
    now = 10 * SECOND
    result = dry_run(
        criteria, index=index, counts=counts(), book=book, now=now, expires_at=now + 60 * SECOND
    )
    assert result == DryRun(
        (QueueMatch("acme@example.com", 3), QueueMatch("example.com", 4)), replaces="r1"
    )
    assert result.total_messages == 7
    # Born expired: sweeps once, replaces nothing.
    assert (
        dry_run(criteria, index=index, counts=counts(), book=book, now=now, expires_at=now).replaces
        is None
    )
    # No book (a verb that replaces nothing), a rule past its expiry, a cancelled rule.
    assert dry_run(criteria, index=index, counts=counts()).replaces is None
    later = 200 * SECOND
    assert dry_run(criteria, index=index, counts=counts(), book=book, now=later).replaces is None
    book.apply(Committed(3, 3 * SECOND, BounceCancelled(rule_id="r1")))
    assert dry_run(criteria, index=index, counts=counts(), book=book, now=now).replaces is None


def test_nothing_matched_is_an_empty_answer() -> None:
    result = dry_run(Criteria(domain="nowhere.example"), index=index_of(QUEUES), counts=counts())
    assert result == DryRun(())
    assert result.total_messages == 0


def test_a_rebind_dry_run_says_where_each_matching_queue_would_go() -> None:
    index = index_of(QUEUES)
    data = {"routing_domain": "relay.example"}
    result = rebind_dry_run(
        Criteria(domain="example.com"), data, always_flush=False, index=index, counts=counts()
    )
    assert result == RebindDryRun(
        (
            QueueMove("acme@example.com", 3, "acme@example.com!relay.example"),
            QueueMove("example.com", 4, "example.com!relay.example"),
        )
    )
    assert (result.total_messages, result.total_moving) == (7, 7)


def test_a_queue_whose_name_stays_is_unchanged_and_flushed_only_with_always_flush() -> None:
    index = index_of(QUEUES)
    tenant = Criteria(tenant="acme")
    for flush in (False, True):
        result = rebind_dry_run(
            tenant, {"tenant": "acme"}, always_flush=flush, index=index, counts=counts()
        )
        assert result.queues == (
            QueueMove("acme@example.com", 3, None, flush),
            QueueMove("spring:acme@gmail.com", 2, None, flush),
        )
        assert (result.total_messages, result.total_moving) == (5, 0)
    # Some move, some stay: a moving queue is never "flushed".
    result = rebind_dry_run(
        Criteria(), {"campaign": "spring"}, always_flush=True, index=index, counts=counts()
    )
    moves = {move.queue: (move.to_queue, move.flushed) for move in result.queues}
    assert moves == {
        "acme@example.com": ("spring:acme@example.com", False),
        "example.com": ("spring:@example.com", False),
        "gmail.com!mx.out": ("spring:@gmail.com!mx.out", False),
        "spring:acme@gmail.com": (None, True),
    }
    assert (result.total_messages, result.total_moving) == (10, 8)


def test_a_rebind_dry_run_uses_the_bounce_matcher_and_the_queues_own_rename() -> None:
    index = index_of(QUEUES)
    for criteria in (Criteria(), Criteria(domain="gmail.com"), Criteria(tenant="acme")):
        for data in ({}, {"queue": "elsewhere.org"}, {"tenant": ""}, {"campaign": "x"}):
            result = rebind_dry_run(
                criteria, data, always_flush=False, index=index, counts=counts()
            )
            matched = matching_queues(criteria, index, counts())
            assert [(m.queue, m.messages) for m in result.queues] == [
                (m.queue, m.messages) for m in matched
            ]
            for move in result.queues:
                renamed = rebound_queue_name(move.queue, data)
                assert move.to_queue == (None if renamed == move.queue else renamed)

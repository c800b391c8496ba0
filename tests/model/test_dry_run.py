"""Dry runs: what a request's criteria match, from the queue index and the gauges."""

from __future__ import annotations

from kumo.model.criteria import Criteria
from kumo.model.dry_run import DryRun, QueueMatch, dry_run, matching_queues, messages_matching
from kumo.model.events import BounceCancelled, BounceIssued, Committed
from kumo.model.queue_index import QueueIndex
from kumo.model.queue_name import QueueName
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

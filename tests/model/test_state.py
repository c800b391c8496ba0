"""The rule book, by example.

That the queues' decisions, the fold and the restart agree on every message's fate is
checked by the state machine in ``test_engine_machine.py``, which drives the real router.
"""

from __future__ import annotations

import attrs

from kumo.model.criteria import Criteria
from kumo.model.events import BounceCancelled, BounceIssued, Committed, Event, MessageReceived
from kumo.model.state import QueueState, RuleBook, SweepRule


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

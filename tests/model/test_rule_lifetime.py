"""The lifetime every admin rule shares (kumo/model/rule_lifetime.py)."""

from __future__ import annotations

import attrs
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kumo.model.rule_lifetime import Lifetime, NotEnded, RuleEnd


@attrs.define(slots=True)
class _Rule(Lifetime):
    issued_seq: int = 5
    issued_at: int = 100
    expires_at: int = 200
    ended_seq: int | None = None
    end: RuleEnd | None = None


def test_live_until_it_expires_or_ends() -> None:
    rule = _Rule()
    assert (rule.live_at(100), rule.live_at(199), rule.live_at(200)) == (True, True, False)
    assert (rule.status(150), rule.status(250)) == ("live", "expired")
    ended = _Rule(ended_seq=7, end="cancelled")
    assert not ended.live_at(150)
    assert ended.status(150) == "cancelled"


def test_issued_expired_is_never_live() -> None:
    rule = _Rule(expires_at=100)
    assert rule.issued_expired
    assert not rule.live_at(50)
    assert rule.status(50) == "expired"


def test_lost_on_arrival_is_replaced_by_its_own_issue() -> None:
    assert _Rule(ended_seq=5, end="replaced").lost_on_arrival
    assert not _Rule(ended_seq=6, end="replaced").lost_on_arrival
    assert not _Rule(ended_seq=5, end="cancelled").lost_on_arrival
    assert not hasattr(_Rule(), "__dict__")  # the mixin keeps the records slotted


@attrs.frozen(eq=False)
class _Expiring:
    id: str
    expires_at: int


class NotEndedMachine(RuleBasedStateMachine):
    """:class:`NotEnded` against a dict scanned whole, as the books did before it."""

    def __init__(self) -> None:
        super().__init__()
        self.index: NotEnded[_Expiring] = NotEnded()
        self.reference: dict[str, _Expiring] = {}
        self.issued = 0

    @rule(expires_at=st.integers(0, 50))
    def add(self, expires_at: int) -> None:
        added = _Expiring(f"r{self.issued}", expires_at)
        self.issued += 1
        self.index.add(added)
        self.reference[added.id] = added

    @precondition(lambda self: self.reference)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        ended = data.draw(st.sampled_from(list(self.reference.values())))
        self.index.remove(ended)
        del self.reference[ended.id]

    @rule(now=st.integers(-1, 51))
    def due_and_live(self, now: int) -> None:
        rules = list(self.reference.values())
        assert self.index.due(now) == [r for r in rules if r.expires_at <= now]
        assert self.index.live_at(now) == [r for r in rules if now < r.expires_at]

    @invariant()
    def agrees(self) -> None:
        rules = list(self.reference.values())
        assert list(self.index) == rules
        assert len(self.index) == len(rules)
        assert self.index.next_expiry() == min((r.expires_at for r in rules), default=None)
        for each in rules:
            assert self.index.get(each.id) is each


TestNotEnded = NotEndedMachine.TestCase
TestNotEnded.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)


def test_the_heap_forgets_ended_rules() -> None:
    """Ended rules never at the top of the heap do not pile up: it is built again once
    they outnumber the live ones."""
    index: NotEnded[_Expiring] = NotEnded()
    keep = _Expiring("keep", 0)
    index.add(keep)
    for number in range(1_000):
        ended = _Expiring(f"r{number}", 10)
        index.add(ended)
        index.remove(ended)
    assert len(index._expiries) <= 2 * len(index) + 65
    assert index.due(10) == [keep]

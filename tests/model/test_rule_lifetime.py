"""The lifetime every admin rule shares (kumo/model/rule_lifetime.py)."""

from __future__ import annotations

import attrs

from kumo.model.rule_lifetime import Lifetime, RuleEnd


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

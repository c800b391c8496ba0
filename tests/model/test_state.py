"""The rule book, by example, and where a queue holds its messages, by property.

That the queues' decisions, the fold and the restart agree on every message's fate is
checked by the state machine in ``test_engine_machine.py``, which drives the real router.
"""

from __future__ import annotations

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from kumo.model.criteria import Criteria
from kumo.model.events import (
    Attempt,
    BounceCancelled,
    Bounced,
    BounceIssued,
    Committed,
    Delivered,
    Event,
    Expired,
    Message,
    MessageReceived,
    PermanentlyFailed,
    Rebound,
    TransientlyFailed,
)
from kumo.model.retry import RetryPolicy
from kumo.model.smtp_reply import Disposition
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
        Committed(
            seq,
            10 * seq,
            MessageReceived(f"{seq:032x}", "a.com", "s@x", f"r{seq}@a.com", 1, protocol),
        )
        for seq, protocol in ((1, "HTTP"), (2, "ESMTP"), (3, "HTTP"))
    ]
    settled, applied = QueueState("a.com"), QueueState("a.com")
    assert settled.settle(arrivals)
    for committed in arrivals:
        assert applied.apply(committed) is None
    assert list(settled.messages) == list(applied.messages)
    # Each keeps how it came in (its records say it).
    assert [m.protocol for m in settled.messages] == ["HTTP", "ESMTP", "HTTP"]
    # A queue holding a rule decides every arrival: settle changes nothing.
    rule = SweepRule("r", Criteria(), expires_at=10**12, issued_expired=False)
    ruled = QueueState("a.com", rules=[rule])
    assert not ruled.settle(arrivals)
    assert not ruled.messages
    # Neither does an event other than an arrival.
    issued = Committed(4, 40, BounceIssued("r", Criteria(), "why", 10**12))
    assert not settled.settle([*arrivals, issued])
    assert len(settled.messages) == 3


SECOND = 1_000_000_000
POLICY = RetryPolicy(retry_interval=60 * SECOND, max_age=400 * SECOND)
"""Retries 60, 120, 240 s after the failures: the third or fourth failure expires."""
OPERATIONS = st.sampled_from(
    ["receive", "hand", "take_back", "attempted", "returns", "wake", "issue", "cancel", "time"]
)


def _check_places(state: QueueState, held: set[str]) -> None:
    """Every message held is in exactly one of the queue's four places, and its
    length, its ids and its next due time say so."""
    due, waiting, handed = state.messages.ids(), list(state.waiting), list(state.handed)
    everywhere = [*due, *waiting, *handed, *state.returning]
    assert len(everywhere) == len(set(everywhere)), "a message is in two places"
    assert set(everywhere) == held
    assert len(state) == len(held)
    assert state.held_ids() == everywhere
    assert set(state.attempts) <= held
    dues = [when for _, when in state.waiting.values()]
    assert state.next_due() == (min(dues) if dues else None)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_queue_holds_each_message_in_one_place(data: st.DataObject) -> None:
    """Whatever a queue is told (arrivals, hand-overs, returns, outcomes, wake-ups,
    rules), each message it holds is in one place, and nothing else is held."""
    state = QueueState("a.com")
    held: set[str] = set()
    now = 1_000 * SECOND
    failures: list[TransientlyFailed] = []
    """Failed attempts' events not yet back from the log."""

    def leave(events: list[Event] | Bounced | Expired | Rebound | None) -> None:
        assert not isinstance(events, Rebound)  # no rebind in this test
        for event in [events] if isinstance(events, Bounced | Expired) else events or []:
            if isinstance(event, Bounced):
                assert {m.id for m in event.messages} <= held
                held.difference_update(m.id for m in event.messages)
            elif isinstance(event, Delivered | PermanentlyFailed | Expired):
                held.remove(event.message.id)
            else:
                assert isinstance(event, TransientlyFailed)
                assert event.message.id in held

    for seq in range(1, data.draw(st.integers(1, 40)) + 1):
        operation = data.draw(OPERATIONS)
        if operation == "receive":
            message = Message(f"{seq:032x}", "s@x", "r@y", 1, now, seq)
            bounce = state.receive(message)
            held.add(message.id)
            leave(bounce)
        elif operation == "hand":
            for entry in state.hand(data.draw(st.integers(0, 3))):
                assert entry.attempts == state.attempts.get(entry.message.id, 0)
        elif operation == "take_back":
            chosen = data.draw(st.lists(st.sampled_from([*state.handed, "0" * 32]), max_size=3))
            state.take_back(chosen)
        elif operation == "attempted":
            message_id = data.draw(st.sampled_from([*state.handed, "0" * 32]))
            was_handed = message_id in state.handed
            disposition = data.draw(st.sampled_from(list(Disposition)))
            attempt = Attempt("site", 451, None, "", None)
            events = state.attempted(
                message_id,
                disposition,
                attempt,
                now=now,
                policy=POLICY,
                uniform=data.draw(st.floats(0, 1, exclude_max=True)),
            )
            assert bool(events) == was_handed
            leave(events)
            failures += [event for event in events if isinstance(event, TransientlyFailed)]
        elif operation == "returns" and failures:
            failure = failures.pop(data.draw(st.integers(0, len(failures) - 1)))
            assert failure.message.id in state.returning
            leave(state.apply(Committed(seq, now, failure)))
            assert failure.message.id not in state.returning
        elif operation == "wake":
            waiting = len(state.waiting)
            moved = state.wake(now)
            assert moved == waiting - len(state.waiting)
            assert all(when > now for _, when in state.waiting.values())
        elif operation == "cancel" and state.rules:
            rule_id = data.draw(st.sampled_from([rule.id for rule in state.rules]))
            state.apply(Committed(seq, now, BounceCancelled(rule_id)))
        elif operation in ("issue", "cancel"):
            lifetime = data.draw(st.sampled_from([-20, 0, 5, 300]))
            issued = BounceIssued(
                f"r{seq}", Criteria(domain="a.com"), "why", now + lifetime * SECOND
            )
            limit = data.draw(st.sampled_from([None, 0, 1, 2]))
            leave(state.apply(Committed(seq, now, issued), limit=limit))
            _check_places(state, held)
            while state.sweeping is not None:
                # Nothing is handed over while a sweep owes messages.
                assert state.hand(3) == []
                leave(state.continue_sweep(data.draw(st.sampled_from([None, 1, 2]))))
            # The sweep took what was due and what waited, not what was handed over.
            assert not state.messages
            assert not state.waiting
        else:
            now += data.draw(st.integers(1, 200)) * SECOND
        _check_places(state, held)

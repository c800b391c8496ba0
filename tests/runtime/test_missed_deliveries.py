"""What the broadcaster could not hand over, and what the archive must keep for it."""

from __future__ import annotations

from kumo.runtime.queue_actor import MissedDeliveries


def test_a_missed_range_is_needed_until_its_actor_has_read_it() -> None:
    missed = MissedDeliveries()
    assert missed.first_needed() is None
    missed.record("a", 10, 12)
    missed.record("b", 15, 15)
    missed.record("a", 13, 20)  # extends a's range; its first stays
    assert (len(missed), missed.first_needed()) == (2, 10)
    assert missed.take("a") == (10, 20)
    # Taken: no longer lagging for the broadcaster, still being read from the log.
    assert "a" not in missed
    assert missed.first_needed() == 10
    missed.read("a")
    assert missed.first_needed() == 15
    assert missed.take("b") == (15, 15)
    missed.read("b")
    assert missed.first_needed() is None
    assert missed.take("b") is None

"""The lifetime every admin rule shares (a bounce rule, a suspension, a ready-queue
suspension): issued, live until it expires or ends by an event, and how an audit
names where it stands. Pure; the books that keep rules use it."""

from __future__ import annotations

from typing import Literal, TypeAlias

RuleEnd: TypeAlias = Literal["cancelled", "replaced", "expired"]
"""How a rule ended by an event (an expiry with no event yet is seen by the clock)."""


class Lifetime:
    """What a rule's fields say of its life; mixed into the attrs records that hold
    those fields (no state of its own)."""

    __slots__ = ()

    issued_seq: int
    issued_at: int
    expires_at: int
    ended_seq: int | None
    end: RuleEnd | None

    @property
    def issued_expired(self) -> bool:
        """Issued already expired: never live (a bounce rule sweeps once)."""
        return self.expires_at <= self.issued_at

    @property
    def lost_on_arrival(self) -> bool:
        """Replaced by the event that issued it: an equal rule of another node that the
        fleet's order puts after it was already known here
        (:func:`kumo.model.fleet_order.outranks`). It never was live here."""
        return self.end == "replaced" and self.ended_seq == self.issued_seq

    @property
    def ended_on_arrival(self) -> bool:
        """Ended by the event that issued it: it lost on arrival
        (:attr:`lost_on_arrival`), or fleet mode brought it from another node after it
        had ended there (``arrived_ended`` on its issue). It never was live here."""
        return self.end is not None and self.ended_seq == self.issued_seq

    def live_at(self, time: int) -> bool:
        """Live at ``time`` as far as the events folded so far tell."""
        return self.end is None and not self.issued_expired and time < self.expires_at

    def status(self, now: int) -> str:
        """``live``, ``expired``, ``cancelled`` or ``replaced``, as an audit reports it."""
        if self.end is not None:
            return self.end
        return "live" if self.live_at(now) else "expired"

"""The lifetime every admin rule shares (a bounce rule, a suspension, a ready-queue
suspension): issued, live until it expires or ends by an event, and how an audit
names where it stands. Pure; the books that keep rules use it."""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Generic, Literal, Protocol, TypeAlias, TypeVar

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


class _Expiring(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def expires_at(self) -> int: ...


R = TypeVar("R", bound=_Expiring)


class NotEnded(Generic[R]):
    """A book's rules not yet ended by an event, by id in issue order, with their
    expiries in a heap: what expires next costs O(1), the rules due at a moment
    O(due log due), where a scan of every rule cost O(n). The engine asks both after
    every rule issued (:class:`kumo.runtime.rule_expiry.RuleExpiry`), and GET's listing
    whether any rule is past its expiry; a probe keeps thousands of rules live.

    The heap forgets a rule lazily: its entry stays until it reaches the top, or until
    ended rules outnumber the live ones and the heap is built again."""

    __slots__ = ("_by_id", "_expiries", "_issued")

    def __init__(self) -> None:
        self._by_id: dict[str, R] = {}
        self._expiries: list[tuple[int, int, R]] = []
        """(expires_at, issue number, rule): the issue number orders equal expiries
        and is never equal, so rules are never compared."""
        self._issued = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[R]:
        """In issue order."""
        return iter(self._by_id.values())

    def get(self, rule_id: str) -> R | None:
        return self._by_id.get(rule_id)

    def add(self, rule: R) -> None:
        """``rule`` is live from now on, after every rule added before it."""
        self._by_id[rule.id] = rule
        heapq.heappush(self._expiries, (rule.expires_at, self._issued, rule))
        self._issued += 1

    def remove(self, rule: R) -> None:
        """``rule`` ended (it was added)."""
        del self._by_id[rule.id]
        if len(self._expiries) > 2 * len(self._by_id) + 64:
            self._expiries = [entry for entry in self._expiries if self._holds(entry)]
            heapq.heapify(self._expiries)

    def next_expiry(self) -> int | None:
        """The earliest ``expires_at`` of the rules, if any."""
        expiries = self._expiries
        while expiries and not self._holds(expiries[0]):
            heapq.heappop(expiries)
        return expiries[0][0] if expiries else None

    def due(self, now: int) -> list[R]:
        """The rules whose expiry is at or before ``now``, in issue order."""
        expiries = self._expiries
        found: list[tuple[int, R]] = []
        # Entries at or before ``now`` are a subtree from the top of the heap.
        below = [0] if expiries else []
        while below:
            at = below.pop()
            entry = expiries[at]
            if entry[0] > now:
                continue
            if self._holds(entry):
                found.append((entry[1], entry[2]))
            below += (child for child in (2 * at + 1, 2 * at + 2) if child < len(expiries))
        found.sort()  # by issue number, never equal: rules are never compared
        return [rule for _, rule in found]

    def live_at(self, now: int) -> list[R]:
        """The rules whose expiry is after ``now``, in issue order: a copy of them all
        while none is due (the common case, which costs no comparison per rule)."""
        next_expiry = self.next_expiry()
        if next_expiry is None or now < next_expiry:
            return list(self._by_id.values())
        return [rule for rule in self._by_id.values() if now < rule.expires_at]

    def _holds(self, entry: tuple[int, int, R]) -> bool:
        """Whether ``entry`` is the heap's entry of a rule not yet ended."""
        rule = entry[2]
        return self._by_id.get(rule.id) is rule

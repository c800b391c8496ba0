"""The fleet's order of two equal admin actions: which one stays.

Two rules with equal criteria (two ready-queue suspensions of the same name) replace
one another: on a node alone the later one in its log stays. In a fleet two nodes may
issue equal ones at once and read each other's in either order, so the order must come
from the events alone, the same on every node (docs/fleet.md, "Equal rules issued at
once"). A pure function of plain values; the books that keep rules use it.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, Protocol, TypeVar

__all__ = ["FleetRanking", "Ranked", "outranks"]


class Ranked(Protocol):
    """What the fleet's order of equal rules looks at (a rule, a ready-queue
    suspension, a queue's copy of a rule)."""

    @property
    def id(self) -> str: ...
    @property
    def issued_at(self) -> int: ...
    @property
    def origin(self) -> str: ...


def outranks(rule: Ranked, other: Ranked) -> bool:
    """Whether ``rule``, issued (or read) after ``other`` with equal criteria, comes
    after it in the order that decides which of two equal rules stays.

    Two rules of the same node (the same ``origin``; ``""``: this node) keep that
    node's order, the order of its log, which the fleet's stream carries to every
    node: the later one replaces the earlier, as on a node alone. Two rules of
    different nodes are ordered by ``(issued_at, id)``, which every node computes from
    the events alone: whichever node reads them, in whichever order, keeps the same one
    (docs/fleet.md, "Equal rules issued at once"). Both agree as long as a node issues
    its rules with a clock that does not go back (NTP slews, it does not step).
    """
    if rule.origin == other.origin:
        return True
    return (rule.issued_at, rule.id) > (other.issued_at, other.id)


K = TypeVar("K", bound=Hashable)
R = TypeVar("R", bound=Ranked)


class FleetRanking(Generic[K, R]):
    """For each key (a rule's criteria, a ready-queue suspension's name) and each node,
    the rule of that node with that key that comes last in the fleet's order, live or
    not: what decides whether a rule of another node that arrives now lost already."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[K, dict[str, R]] = {}
        """Key -> origin -> that node's last rule of that key in the fleet's order."""

    def outranked_by(self, key: K, rule: R) -> R | None:
        """The known rule with ``key``, of another node, that comes after ``rule`` in
        the fleet's order (the last such), if any. Never one on a node alone."""
        last = self._last.get(key)
        if not last:
            return None
        winner: R | None = None
        for other in last.values():
            if not outranks(rule, other) and (winner is None or outranks(other, winner)):
                winner = other
        return winner

    def rank(self, key: K, rule: R) -> None:
        """Take ``rule`` (issued or read now) into the order of ``key``."""
        last = self._last.setdefault(key, {})
        previous = last.get(rule.origin)
        if previous is None or outranks(rule, previous):
            last[rule.origin] = rule

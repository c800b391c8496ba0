"""The fleet's order of two equal admin actions: which one stays.

Two rules with equal criteria (two ready-queue suspensions of the same name) replace
one another: on a node alone the later one in its log stays. In a fleet two nodes may
issue equal ones at once and read each other's in either order, so the order must come
from the events alone, the same on every node (docs/fleet.md, "Equal rules issued at
once"). A pure function of plain values; the books that keep rules use it.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Ranked", "outranks"]


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

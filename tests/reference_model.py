"""SPEC sections 2, 3, 7 and 8.5 restated as a small reference model, for the state machines.

It imports nothing of kumo: rules and messages are plain records in plain dicts, each
message's fate is computed directly from the SPEC's sentences, and queue names are
matched through a table of their parts (SPEC section 1) rather than a parser. The model
machine (``tests/model/test_engine_machine.py``) and the engine machine
(``tests/runtime/test_engine_machine.py``) both tell it what happened, in log order,
and compare what kumo shows with what it says.

The mail path enters it in two ways (SPEC 3.3 and 8.5): a transient failure puts the
message back into its queue, where a rule live at that moment takes it as it would take
an arrival (a retry is a re-entry); and a message that leaves by the mail path
(delivered, refused for good, expired) has no fate any more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any, Final

import attrs

QUEUE_PARTS: Final[Mapping[str, tuple[str | None, str | None, str, str | None]]] = {
    # name: (campaign, tenant, domain, routing_domain), read off SPEC section 1's table.
    "a.com": (None, None, "a.com", None),
    "t@a.com": (None, "t", "a.com", None),
    "c:t@b.com": ("c", "t", "b.com", None),
    "b.com!r": (None, None, "b.com", "r"),
    "c:@a.com": ("c", "", "a.com", None),
    "c:t@b.com!r": ("c", "t", "b.com", "r"),
}
"""The small set of queues the machines inject into."""
QUEUES: Final = tuple(QUEUE_PARTS)

CRITERIA: Final[tuple[Mapping[str, Any], ...]] = (
    {"domain": "a.com"},
    {"tenant": "t"},
    {},
    {"queue_names": ["b.com!r", "a.com"]},
    # Equal to the one above: queue names compare as sets (SPEC section 7).
    {"queue_names": ["a.com", "b.com!r", "a.com"]},
    {"campaign": "c"},
    {"campaign": "c", "tenant": "t", "domain": "b.com"},
    # All four parts set: catches arrivals too (KumoMTA's bug, not copied).
    {"campaign": "c", "tenant": "t", "domain": "b.com", "routing_domain": "r"},
    # Case-sensitive: matches none of the queues.
    {"domain": "A.com"},
)
"""Criteria the machines issue rules with, as keyword arguments of ``Criteria``: few, so
that a new rule's criteria often equal a live rule's."""

REBINDS: Final[tuple[tuple[Mapping[str, Any], Mapping[str, str]], ...]] = (
    ({"domain": "a.com"}, {"campaign": "c"}),
    ({"campaign": "c"}, {"campaign": ""}),
    ({"routing_domain": "r"}, {"routing_domain": ""}),
    ({"tenant": "t"}, {"tenant": ""}),
)
"""Rebinds the machines issue (criteria, data): chosen so that every queue they move
messages to, from :data:`QUEUES` or from one of these, is in :data:`REBOUND_PARTS`."""

REBOUND_PARTS: Final[Mapping[str, tuple[str | None, str | None, str, str | None]]] = {
    "c:t@a.com": ("c", "t", "a.com", None),
    "t@b.com": (None, "t", "b.com", None),
    "t@b.com!r": (None, "t", "b.com", "r"),
    "b.com": (None, None, "b.com", None),
    "c:@b.com": ("c", "", "b.com", None),
    "c:@b.com!r": ("c", "", "b.com", "r"),
}
"""The queues only :data:`REBINDS` put messages in, with their parts."""

PARTS: Final = ("campaign", "tenant", "domain", "routing_domain")

CriteriaKey = tuple[str | None, str | None, str | None, str | None, frozenset[str]]


def criteria_key(criteria: Mapping[str, Any]) -> CriteriaKey:
    """What makes two criteria equal: the four parts, and the queue names as a set."""
    campaign, tenant, domain, routing_domain = (criteria.get(part) for part in PARTS)
    return (campaign, tenant, domain, routing_domain, frozenset(criteria.get("queue_names", ())))


def matches(key: CriteriaKey, queue: str) -> bool:
    """SPEC section 2: exact names when given, else every part set equals the queue's."""
    *parts, names = key
    if names:
        return queue in names
    return all(
        wanted is None or present == wanted
        for wanted, present in zip(
            parts, QUEUE_PARTS.get(queue) or REBOUND_PARTS[queue], strict=True
        )
    )


@attrs.define
class ReferenceRule:
    id: str
    key: CriteriaKey
    order: int
    """Its place among everything the model was told (issue order)."""
    issued_at: int
    expires_at: int
    ended: int | None = None
    """The place of whatever ended it: a cancel, or its replacement."""

    @property
    def issued_expired(self) -> bool:
        return self.expires_at <= self.issued_at

    def live(self, order: int, time: int) -> bool:
        """Live at that place of the log and that time (SPEC sections 2, 3)."""
        return (
            self.order < order
            and not self.issued_expired
            and (self.ended is None or self.ended > order)
            and time < self.expires_at
        )


@attrs.define
class ReferenceMessage:
    id: str
    queue: str
    order: int
    received_at: int
    entered: int = 0
    """The place it last entered its queue: its arrival, or its last transient failure."""
    entered_at: int = 0
    """The time of that entry."""
    left: str | None = None
    """How it left by the mail path (``delivered``, ``failed``, ``expired``), if it did."""
    expiring: bool = False
    """Its last transient failure expired it (the ``TransientlyFailed`` carries the
    expiry): it leaves by its ``Expired``, which no rule takes from it (not a retry)."""


@attrs.frozen
class Listed:
    """A rule as GET lists it, reduced to what the reference can say."""

    id: str
    remaining: int
    bounced: dict[str, int]
    total_bounced: int


class ReferenceModel:
    """Rules and messages in the order the log has them; fates computed on demand."""

    def __init__(self) -> None:
        self.rules: dict[str, ReferenceRule] = {}
        self.messages: dict[str, ReferenceMessage] = {}
        self._order = 0
        self._fates: dict[str, str] | None = None

    def _next(self) -> int:
        self._order += 1
        self._fates = None
        return self._order

    # -- what happened ----------------------------------------------------------------

    def receive(self, message_id: str, queue: str, time: int) -> None:
        assert message_id not in self.messages
        order = self._next()
        self.messages[message_id] = ReferenceMessage(message_id, queue, order, time, order, time)

    def fail(self, message_id: str, time: int, *, expiring: bool = False) -> None:
        """An attempt failed transiently at ``time``: the message re-enters its queue,
        or, ``expiring``, only waits for its ``Expired``."""
        message = self.messages[message_id]
        assert message.left is None, f"{message_id} attempted after it left"
        message.entered, message.entered_at = self._next(), time
        message.expiring = expiring

    def rebound(self, message_id: str, queue: str, time: int) -> None:
        """A rebind moved the message to ``queue`` at ``time``: it enters that queue then,
        as an arrival (SPEC 9; a rule live then takes it)."""
        message = self.messages[message_id]
        assert message.left is None, f"{message_id} rebound after it left"
        assert queue != message.queue
        message.queue = queue
        message.entered, message.entered_at = self._next(), time

    def leave(self, message_id: str, how: str) -> None:
        """The message left by the mail path: ``delivered``, ``failed`` or ``expired``."""
        message = self.messages[message_id]
        assert message.left is None, f"{message_id} left twice"
        assert how in ("delivered", "failed", "expired")
        self._next()
        message.left = how

    def issue(self, rule_id: str, criteria: Mapping[str, Any], time: int, expires_at: int) -> None:
        order = self._next()
        rule = ReferenceRule(rule_id, criteria_key(criteria), order, time, expires_at)
        if not rule.issued_expired:
            # A new rule ends the live one with equal criteria (SPEC section 2); one
            # issued already expired never replaces anything (section 7).
            for other in self.rules.values():
                if other.key == rule.key and other.live(order, time):
                    other.ended = order
        self.rules[rule_id] = rule

    def cancel(self, rule_id: str, time: int) -> bool:
        """DELETE: True (200) for a live rule, which ends; False (404) for any other id."""
        order = self._next()
        rule = self.rules.get(rule_id)
        if rule is None or not rule.live(order, time):
            return False
        rule.ended = order
        return True

    # -- what follows -----------------------------------------------------------------

    def fate(self, message_id: str) -> str | None:
        """The rule that bounces the message, if any (SPEC sections 3, 7 and 8.5): the
        most recently issued rule live and matching when it last entered its queue
        (its arrival, or its last transient failure), else the first matching rule
        issued after that (that rule's sweep; an already-expired rule sweeps too).
        None for a message that left by the mail path, or that its last failure
        expired (no rule takes the place of an expiry)."""
        message = self.messages[message_id]
        if message.left is not None or message.expiring:
            return None
        matching = [rule for rule in self.rules.values() if matches(rule.key, message.queue)]
        at_entry = [rule for rule in matching if rule.live(message.entered, message.entered_at)]
        if at_entry:
            return at_entry[-1].id
        return next((rule.id for rule in matching if rule.order > message.entered), None)

    def fates(self) -> dict[str, str]:
        """Message id -> the rule that bounces it, for every message some rule takes."""
        if self._fates is None:
            fates = {mid: self.fate(mid) for mid in self.messages}
            self._fates = {mid: rule for mid, rule in fates.items() if rule is not None}
        return dict(self._fates)

    def is_live(self, rule_id: str, time: int) -> bool:
        rule = self.rules.get(rule_id)
        return rule is not None and rule.live(self._order + 1, time)

    def live_ids(self, time: int) -> list[str]:
        return [rule.id for rule in self.rules.values() if rule.live(self._order + 1, time)]

    def left(self) -> dict[str, int]:
        """How many messages left by the mail path, per way (``delivered`` ...)."""
        return dict(Counter(m.left for m in self.messages.values() if m.left is not None))

    def queued(self, bounced: Collection[str] | None = None) -> dict[str, list[str]]:
        """Queue -> ids still queued, in arrival order (non-empty queues only).

        ``bounced`` (default: every message with a fate) is what has left already, with
        what left by the mail path.
        """
        gone = self.fates() if bounced is None else bounced
        queues: dict[str, list[str]] = {}
        for message in self.messages.values():
            if message.id not in gone and message.left is None:
                queues.setdefault(message.queue, []).append(message.id)
        return queues

    def queue_counts(self, bounced: Collection[str] | None = None) -> dict[str, int]:
        return {queue: len(ids) for queue, ids in self.queued(bounced).items()}

    def bounced(self, bounced: Collection[str] | None = None) -> dict[str, dict[str, int]]:
        """Rule id -> queue -> messages it bounced there (of ``bounced``, default every
        message with a fate), for every rule that bounced any."""
        fates = self.fates()
        counted: dict[str, Counter[str]] = {}
        for mid in fates.keys() if bounced is None else bounced:
            counted.setdefault(fates[mid], Counter())[self.messages[mid].queue] += 1
        return {rule_id: dict(per_queue) for rule_id, per_queue in counted.items()}

    def listing(self, now: int, bounced: Collection[str] | None = None) -> list[Listed]:
        """GET at ``now``: the live rules in issue order, each with the messages it
        bounced per queue (of ``bounced``, default every message with a fate)."""
        counted = self.bounced(bounced)
        listed = []
        for rule_id in self.live_ids(now):
            per_queue = counted.get(rule_id, {})
            remaining = self.rules[rule_id].expires_at - now
            listed.append(Listed(rule_id, remaining, per_queue, sum(per_queue.values())))
        return listed

"""Audits of the event log: who bounced what, when, why, and how many, per queue.

Three folds over committed events, fed in log order, each once; no I/O, no clock:

- :class:`Timeline`: every rule's history (issued, replaced, cancelled, expired) as a
  list of :class:`RuleAction`, each carrying the rule's criteria, reason, counters and
  fate, so that one row answers "who did this, and what came of it";
- :func:`state_at`: the state (live rules with their counters, queue gauges) as it was
  at a moment, by folding the prefix of the log committed by then;
- :class:`MessageStory`: what became of one message: received, then bounced by which
  rule and why, or still queued.

The rule lifecycle (what replaces what, when a rule counts as expired) is
:class:`kumo.model.state.RuleBook`'s, the same fold the engine runs, so an audit cannot
disagree with what the server did.

After retention (:mod:`kumo.model.retention`) the log begins after a cut, and each fold
starts from the base there, the state at the cut: the rules it holds (every rule ever
issued, with its counters and its end) still tell every rule's actions, and its queued
messages their reception; what no audit can tell any more is the story of a message
that came and went before the cut, and the state at a moment before it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, Literal, TypeAlias

import attrs

from kumo.model.criteria import Criteria
from kumo.model.events import (
    Bounced,
    BounceIssued,
    Committed,
    Delivered,
    Expired,
    MessageReceived,
    Outcome,
    PermanentlyFailed,
)
from kumo.model.retention import base_projection
from kumo.model.state import Rule, RuleBook, State

ActionKind: TypeAlias = Literal["issued", "replaced", "cancelled", "expired"]
RuleStatus: TypeAlias = Literal["live", "expired", "cancelled", "replaced"]


@attrs.frozen(slots=True)
class RuleAction:
    """One thing that happened to a rule, with the rule as it stands at the audit's end.

    ``time`` is when it took effect: the commit time of the event that did it, except
    for an expiry, which is dated at the rule's ``expires_at`` (the moment it stopped
    matching), however late the log recorded it. ``seq`` is the log position of the
    event that recorded it; ``None`` for an expiry that the log does not record yet
    (the server was down when the rule's time ran out).
    """

    seq: int | None
    time: int
    action: ActionKind
    rule_id: str
    principal: str | None
    """Who: the issuer; the canceller; for a replacement the replacing rule's issuer;
    ``None`` for an expiry, which nobody asked for."""
    origin: str
    """Where: the fleet node (its ``node_id``) the issue, the cancel or the replacing
    rule came from; ``""`` for an action taken on this node, and for an expiry (every
    node ends a rule by itself)."""
    criteria: Criteria
    reason: str
    issued_at: int
    expires_at: int
    suppress_logging: bool
    status: RuleStatus
    """The rule's fate at the audit's reference time."""
    ended_at: int | None
    """When the rule stopped matching (its expiry, for an expired one), if it has."""
    ended_by: str | None
    """The id of the rule that replaced it, who cancelled it, or ``None``."""
    bounced: Mapping[str, int]
    """Queue name -> messages this rule bounced there (all queues, or the one filtered)."""
    total_bounced: int


@attrs.frozen(slots=True)
class TimelineFilter:
    """Which actions an audit shows. Every field that is set must hold.

    ``since`` and ``until`` bound the action's ``time`` (inclusive). ``queue`` keeps the
    rules that match that queue name or bounced messages in it, and narrows their
    counters to that queue. ``principal`` keeps the actions that principal took.
    """

    since: int | None = None
    until: int | None = None
    rule_id: str | None = None
    queue: str | None = None
    principal: str | None = None


_Recorded: TypeAlias = tuple[int | None, int, ActionKind, str, str | None, str]
"""(seq, time, action, rule id, principal, origin) as the log records them."""


def _status(rule: Rule, now: int) -> RuleStatus:
    if rule.end is not None:
        return rule.end
    return "live" if rule.live_at(now) else "expired"


class Timeline:
    """The fold behind ``kumo audit``: every rule's actions, in the order they happened.

    Feed it every committed event in log order with :meth:`apply` (events that are not
    about rules only update counters; ``MessageReceived`` may be left out), then call
    :meth:`actions` with the reference time that decides which rules count as live.
    """

    __slots__ = ("_recorded", "rules")

    def __init__(self) -> None:
        self.rules = RuleBook()
        self._recorded: list[_Recorded] = []

    @classmethod
    def from_base(cls, base: State) -> Timeline:
        """The timeline of a log that begins after a retention cut, ``base`` being the
        state there (left as it is): every rule's actions before the cut, as the rules
        it holds record them, with their counters; then :meth:`apply` the kept events.

        An action before the cut is what the full log gives, but for one detail: an
        issue is dated at the rule's ``issued_at`` (the request's clock reading, a
        moment before its commit), which is what the rule keeps of it.
        """
        timeline = cls()
        timeline.rules = base.rules.copy()
        rules = timeline.rules.rules
        # In the order apply() records them (actions() keeps it among equal times): by
        # seq; at one seq the issue first, then the rules it ended, in issue order.
        recorded: list[tuple[int, int, int, _Recorded]] = []
        for order, rule in enumerate(rules.values()):
            seq = rule.issued_seq
            recorded.append(
                (seq, 0, 0, (seq, rule.issued_at, "issued", rule.id, rule.issued_by, rule.origin))
            )
            if rule.issued_expired:
                recorded.append((seq, 0, 1, (seq, rule.expires_at, "expired", rule.id, None, "")))
            ended, ended_at = rule.ended_seq, rule.ended_at
            if ended is None or ended_at is None:
                continue
            if rule.end == "expired":
                action: _Recorded = (ended, rule.expires_at, "expired", rule.id, None, "")
            elif rule.end == "replaced":
                replacing = rules.get(rule.ended_by or "")
                by, where = (
                    (None, "") if replacing is None else (replacing.issued_by, replacing.origin)
                )
                action = (ended, ended_at, "replaced", rule.id, by, where)
            else:
                action = (ended, ended_at, "cancelled", rule.id, rule.ended_by, rule.ended_origin)
            recorded.append((ended, 1, order, action))
        recorded.sort(key=lambda item: item[:3])
        timeline._recorded = [action for *_, action in recorded]
        return timeline

    def apply(self, committed: Committed) -> None:
        """Fold one committed event; events must come in log order, each once."""
        event = committed.event
        if isinstance(event, Bounced | MessageReceived):
            self.rules.apply(committed)
            return
        live_before = list(self.rules.live_rules())
        rule = self.rules.apply(committed)
        seq, time = committed.seq, committed.time
        record = self._recorded.append
        if isinstance(event, BounceIssued) and rule is not None:
            record((seq, time, "issued", rule.id, rule.issued_by, rule.origin))
            if rule.issued_expired:
                record((seq, rule.expires_at, "expired", rule.id, None, ""))
            elif rule.lost_on_arrival:
                winner = self.rules.rules.get(rule.ended_by or "")
                by, where = (None, "") if winner is None else (winner.issued_by, winner.origin)
                record((seq, time, "replaced", rule.id, by, where))
        for ended in live_before:
            if ended.ended_seq != seq or ended.end is None:
                continue
            if ended.end == "expired":
                record((seq, ended.expires_at, "expired", ended.id, None, ""))
            elif ended.end == "replaced":
                by, where = (None, "") if rule is None else (rule.issued_by, rule.origin)
                record((seq, time, "replaced", ended.id, by, where))
            else:
                record((seq, time, "cancelled", ended.id, ended.ended_by, ended.ended_origin))

    def actions(self, now: int, where: TimelineFilter | None = None) -> list[RuleAction]:
        """The actions that ``where`` keeps, ordered by ``time`` then log position.

        ``now`` is the reference time: a rule not ended by an event is ``live`` if its
        expiry is after ``now``, else ``expired``, with an unrecorded expiry action.
        """
        where = where or TimelineFilter()
        recorded = list(self._recorded)
        for rule in self.rules.live_rules():
            if not rule.live_at(now):
                recorded.append((None, rule.expires_at, "expired", rule.id, None, ""))
        recorded.sort(key=lambda item: (item[1], item[0] if item[0] is not None else 2**63))
        actions: list[RuleAction] = []
        for seq, time, action, rule_id, principal, origin in recorded:
            if where.since is not None and time < where.since:
                continue
            if where.until is not None and time > where.until:
                continue
            if where.rule_id is not None and rule_id != where.rule_id:
                continue
            if where.principal is not None and principal != where.principal:
                continue
            rule = self.rules.rules[rule_id]
            bounced: Mapping[str, int] = rule.bounced
            if where.queue is not None:
                if not (rule.criteria.matches(where.queue) or where.queue in rule.bounced):
                    continue
                count = rule.bounced.get(where.queue, 0)
                bounced = {where.queue: count} if count else {}
            actions.append(
                RuleAction(
                    seq=seq,
                    time=time,
                    action=action,
                    rule_id=rule_id,
                    principal=principal,
                    origin=origin,
                    criteria=rule.criteria,
                    reason=rule.reason,
                    issued_at=rule.issued_at,
                    expires_at=rule.expires_at,
                    suppress_logging=rule.suppress_logging,
                    status=_status(rule, now),
                    ended_at=_ended_at(rule, now),
                    ended_by=rule.ended_by,
                    bounced=dict(bounced),
                    total_bounced=sum(bounced.values()),
                )
            )
        return actions


def _ended_at(rule: Rule, now: int) -> int | None:
    """When the rule stopped matching: its cancel or replacement, else its expiry."""
    if rule.end in ("cancelled", "replaced"):
        return rule.ended_at
    return rule.expires_at if rule.end == "expired" or rule.expires_at <= now else None


def state_at(events: Iterable[Committed], at: int, base: State | None = None) -> State:
    """The fold (rules, counters, queue gauges; no messages) of the events up to ``at``.

    Events committed after ``at`` are ignored (the log's commit times never decrease,
    so they are a suffix). Read the live rules with ``state.rules.views(at)`` and the
    gauges with ``state.queue_counts``: they are what GET and ``/metrics`` showed then.
    ``base``: the state at a retention cut, where ``events`` begin (left as it is); the
    answer is only the state at ``at`` if ``at`` is not before the base's time.
    """
    state = State(keep_messages=False) if base is None else base_projection(base)
    apply = state.apply
    for committed in events:
        if committed.time > at:
            break
        apply(committed)
    return state


@attrs.frozen(slots=True)
class Reception:
    """A message's ``MessageReceived``: when, from whom, to which queue."""

    seq: int
    time: int
    queue: str
    sender: str
    recipient: str
    size: int
    protocol: str | None
    """``None`` when the event was deleted by retention and the reception is known from
    the base at the cut, which does not keep it."""


HowBounced: TypeAlias = Literal["at arrival", "by sweep"]


@attrs.frozen(slots=True)
class BounceOutcome:
    """A ``Bounced`` event that took the message, and the rule behind it."""

    seq: int
    time: int
    queue: str
    rule_id: str
    how: HowBounced | None
    """``at arrival`` when the rule was issued before the message came, ``by sweep``
    when the rule was issued later and drained the queue; ``None`` for an unknown rule."""
    reason: str | None
    criteria: Criteria | None
    issued_by: str | None
    issued_at: int | None
    suppress_logging: bool | None


MessageStatus: TypeAlias = Literal[
    "queued", "bounced", "delivered", "failed", "expired", "unknown", "before the cut"
]

_DEPARTED: Final[dict[type[Outcome], MessageStatus]] = {
    Delivered: "delivered",
    PermanentlyFailed: "failed",
    Expired: "expired",
}


class MessageStory:
    """The fold behind ``kumo audit --message``: one message, from reception to its end.

    Feed it, in log order, every rule event and at least the events that mention the
    message (others are ignored cheaply). A consistent log yields one reception and at
    most one bounce; more than that is reported as it is, not hidden.

    ``base``: the state at a retention cut, where the events fed begin (left as it
    is): a message queued there has its reception from it, and a message neither
    queued there nor named after it is ``before the cut``: it may have come and gone
    with the deleted events, or never have been.
    """

    __slots__ = ("_bounces", "cut", "message_id", "outcomes", "received", "rules")

    def __init__(self, message_id: str, base: State | None = None) -> None:
        self.message_id = message_id
        self.rules = RuleBook() if base is None else base.rules.copy()
        self.received: list[Reception] = []
        self._bounces: list[tuple[Committed, Bounced]] = []
        self.outcomes: list[Committed] = []
        """The mail-path events of the message (attempts, holds, its end), in log order."""
        self.cut = 0 if base is None else base.last_seq
        """The last seq of the base (0: the log begins at seq 1)."""
        queues = base.queues if base is not None and base.queues is not None else {}
        for queue, messages in queues.items():
            found = messages.find(message_id)
            if found is not None:
                self.received.append(
                    Reception(
                        seq=found.seq,
                        time=found.received_at,
                        queue=queue,
                        sender=found.sender,
                        recipient=found.recipient,
                        size=found.size,
                        protocol=None,
                    )
                )
                break

    def apply(self, committed: Committed) -> None:
        event = committed.event
        if isinstance(event, MessageReceived):
            if event.message_id == self.message_id:
                self.received.append(
                    Reception(
                        seq=committed.seq,
                        time=committed.time,
                        queue=event.queue,
                        sender=event.sender,
                        recipient=event.recipient,
                        size=event.size,
                        protocol=event.protocol,
                    )
                )
        elif isinstance(event, Bounced):
            if any(message.id == self.message_id for message in event.messages):
                self._bounces.append((committed, event))
        elif isinstance(event, Outcome):
            if event.message.id == self.message_id:
                self.outcomes.append(committed)
        else:
            self.rules.apply(committed)

    @property
    def status(self) -> MessageStatus:
        """``bounced`` once a ``Bounced`` names it, ``delivered``, ``failed`` or
        ``expired`` once the mail path took it out, else ``queued`` once received, else
        ``before the cut`` after a retention cut, ``unknown`` without one."""
        if self._bounces:
            return "bounced"
        for committed in reversed(self.outcomes):
            departed = _DEPARTED.get(type(committed.event))  # type: ignore[arg-type]
            if departed is not None:
                return departed
        if self.received:
            return "queued"
        return "before the cut" if self.cut else "unknown"

    def bounces(self) -> list[BounceOutcome]:
        """Every bounce of the message (one in a consistent log), in log order."""
        received_seq = self.received[0].seq if self.received else None
        outcomes = []
        for committed, event in self._bounces:
            rule = self.rules.rules.get(event.rule_id)
            how: HowBounced | None = None
            if rule is not None:
                swept = received_seq is not None and rule.issued_seq > received_seq
                how = "by sweep" if swept else "at arrival"
            outcomes.append(
                BounceOutcome(
                    seq=committed.seq,
                    time=committed.time,
                    queue=event.queue,
                    rule_id=event.rule_id,
                    how=how,
                    reason=rule.reason if rule else None,
                    criteria=rule.criteria if rule else None,
                    issued_by=rule.issued_by if rule else None,
                    issued_at=rule.issued_at if rule else None,
                    suppress_logging=rule.suppress_logging if rule else None,
                )
            )
        return outcomes

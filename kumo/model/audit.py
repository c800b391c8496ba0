"""Audits of the event log: who bounced what, when, why, and how many, per queue.

Three folds over committed events, fed in log order, each once; no I/O, no clock:

- :class:`Timeline`: every rule's and suspension's history (issued, replaced,
  cancelled, expired) as a list of :class:`RuleAction`, each carrying the rule's
  criteria (or, for a ready-queue suspension, the ready queue it names), reason,
  counters (messages bounced, or held by a suspension) and fate, so that one row
  answers "who did this, and what came of it";
- :func:`state_at`: the state (live rules with their counters, queue gauges) as it was
  at a moment, by folding the prefix of the log committed by then; with a
  :class:`Timeline` fed the same prefix, the suspensions live then
  (:meth:`Timeline.live_suspensions`);
- :class:`MessageStory`: what became of one message: received, then bounced by which
  rule and why, or still queued (and every queue a rebind moved it to).

Rebinds are one-shot actions, not rules: the timeline lists them beside the rules'
actions (:meth:`Timeline.rebinds`), each with how many messages it moved from which
queue to which.

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
    ReadySuspendCancelled,
    ReadySuspendExpired,
    ReadySuspendIssued,
    RebindIssued,
    Rebound,
    SuspendCancelled,
    Suspended,
    SuspendExpired,
    SuspendIssued,
)
from kumo.model.ready_suspension import ReadySuspension, ReadySuspensionBook
from kumo.model.retention import base_projection
from kumo.model.state import Rule, RuleBook, State

ActionKind: TypeAlias = Literal["issued", "replaced", "cancelled", "expired"]
RuleStatus: TypeAlias = Literal["live", "expired", "cancelled", "replaced"]
AuditedKind: TypeAlias = Literal["bounce", "suspend", "suspend-ready-q"]
"""What an audited rule is: a bounce rule, a suspension of scheduled queues, or a
suspension of one ready queue (named after the API path that issues it)."""
AnyRule: TypeAlias = Rule | ReadySuspension
AnyBook: TypeAlias = RuleBook | ReadySuspensionBook


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
    criteria: Criteria | None
    """What the rule matches; ``None`` for a ready-queue suspension, which names one
    ready queue instead (:attr:`ready_queue`)."""
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
    kind: AuditedKind = "bounce"
    """``bounce`` for a bounce rule, ``suspend`` for a suspension of scheduled queues,
    ``suspend-ready-q`` for a suspension of a ready queue (both bounce nothing)."""
    held: Mapping[str, int] = attrs.Factory(dict)
    """A suspension's: scheduled queue name -> messages it held there (each one
    ``Suspended`` event: one ``TransientFailure`` record), as :attr:`bounced` for a
    rule. A ready-queue suspension holds messages in the scheduled queues that feed
    its ready queue: those are the queues named here."""
    released: int = 0
    """A suspension's: the messages it still held when it ended (cancelled or expired;
    for a ready-queue suspension also replaced, since its queues release what it held
    at once), due again from then on; 0 while it is live."""
    ready_queue: str | None = None
    """A ready-queue suspension's ready queue (``unspecified->mx.example.com@smtp_client``);
    ``None`` for the other kinds."""

    @property
    def total_held(self) -> int:
        return sum(self.held.values())

    @property
    def target(self) -> str:
        """What the rule applies to, in words: its criteria (``domain=example.com``),
        or ``ready_queue=<name>`` for a ready-queue suspension."""
        if self.criteria is None:
            return f"ready_queue={self.ready_queue}"
        return self.criteria.describe()


@attrs.frozen(slots=True)
class LiveSuspension:
    """A suspension live at a moment (``kumo audit --at``): of scheduled queues (its
    ``criteria``) or of one ready queue (its ``ready_queue``), with what it had held by
    then, as the timeline counts it."""

    id: str
    kind: Literal["suspend", "suspend-ready-q"]
    criteria: Criteria | None
    """What it matches; ``None`` for a ready-queue suspension."""
    ready_queue: str | None
    """The ready queue a ready-queue suspension names; ``None`` for the other kind."""
    reason: str
    remaining: int
    """Nanoseconds from the moment to its expiry (positive: it is live)."""
    expires_at: int
    issued_at: int
    issued_by: str
    origin: str
    """The fleet node it was issued on; ``""``: this node."""
    held: Mapping[str, int]
    """Scheduled queue -> messages it held there by then (``Suspended`` events), as
    :attr:`RuleAction.held`."""

    @property
    def total_held(self) -> int:
        return sum(self.held.values())

    @property
    def target(self) -> str:
        """As :attr:`RuleAction.target`: its criteria, or ``ready_queue=<name>``."""
        if self.criteria is None:
            return f"ready_queue={self.ready_queue}"
        return self.criteria.describe()


@attrs.frozen(slots=True)
class TimelineFilter:
    """Which actions an audit shows. Every field that is set must hold.

    ``since`` and ``until`` bound the action's ``time`` (inclusive). ``queue`` keeps the
    rules (and suspensions) that match that queue name or bounced (held) messages in it,
    and narrows their counters to that queue; a ready-queue suspension is kept when it
    held messages of that scheduled queue, or when ``queue`` is its ready queue's name
    (then its counters stay whole: every message it held was bound there).
    ``principal`` keeps the actions that principal took. ``rule_id`` is a bounce
    rule's, a suspension's or a ready-queue suspension's id.
    """

    since: int | None = None
    until: int | None = None
    rule_id: str | None = None
    queue: str | None = None
    principal: str | None = None


@attrs.frozen(slots=True)
class RebindAction:
    """A rebind (``/api/admin/rebind/v1``) and what it moved, as far as the log tells."""

    seq: int
    time: int
    rebind_id: str
    principal: str
    criteria: Criteria
    data: Mapping[str, str]
    reason: str
    always_flush: bool
    suppress_logging: bool
    moved: Mapping[tuple[str, str], int]
    """(from queue, to queue) -> messages moved (its ``Rebound`` events)."""
    total_moved: int
    origin: str = ""
    """The node it was asked on, when fleet mode brought it here; ``""``: this node.
    ``moved`` is what it moved here."""


_Recorded: TypeAlias = tuple[int | None, int, ActionKind, str, str | None, str]
"""(seq, time, action, rule id, principal, origin) as the log records them."""


def _status(rule: AnyRule, now: int) -> RuleStatus:
    if rule.end is not None:
        return rule.end
    return "live" if rule.live_at(now) else "expired"


_SUSPENSION_EVENTS: Final = (SuspendIssued, SuspendCancelled, SuspendExpired)
_READY_SUSPENSION_EVENTS: Final = (ReadySuspendIssued, ReadySuspendCancelled, ReadySuspendExpired)


class Timeline:
    """The fold behind ``kumo audit``: every rule's and suspension's actions, in the
    order they happened.

    Feed it every committed event in log order with :meth:`apply` (events that are not
    about rules only update counters; ``MessageReceived`` may be left out), then call
    :meth:`actions` with the reference time that decides which rules count as live.
    Rule ids are UUIDs: a bounce rule, a suspension and a ready-queue suspension never
    share one.
    """

    __slots__ = (
        "_holding",
        "_rebinds",
        "_recorded",
        "held",
        "ready_suspends",
        "released",
        "rules",
        "suspends",
    )

    def __init__(self) -> None:
        self.rules = RuleBook()
        # Rebind id -> its committed RebindIssued and what its Rebound events moved.
        self._rebinds: dict[str, tuple[Committed, dict[tuple[str, str], int]]] = {}
        self.suspends = RuleBook("suspend")
        self.ready_suspends = ReadySuspensionBook()
        self.held: dict[str, dict[str, int]] = {}
        """Suspension id (of either kind) -> scheduled queue -> messages it held there
        (``Suspended`` events)."""
        self.released: dict[str, int] = {}
        """Suspension id -> messages it still held when its cancel or expiry was
        recorded (see :meth:`actions` for an expiry not recorded yet)."""
        self._holding: dict[str, str] = {}
        """Message id -> the suspension holding it, until it leaves or is released."""
        self._recorded: list[_Recorded] = []

    def _released_by(self, rule: AnyRule, now: int) -> int:
        """What suspension ``rule`` released at its end (0 for a bounce rule, or a
        suspension still live at ``now``); an expiry not recorded yet releases what
        it holds."""
        if rule.id in self.released:
            return self.released[rule.id]
        if rule.id in self.rules.rules or rule.end is not None or rule.live_at(now):
            return 0
        return sum(1 for by in self._holding.values() if by == rule.id)

    def rule(self, rule_id: str) -> AnyRule | None:
        """The bounce rule, suspension or ready-queue suspension ``rule_id``, if the log
        issued it."""
        return (
            self.rules.rules.get(rule_id)
            or self.suspends.rules.get(rule_id)
            or self.ready_suspends.rules.get(rule_id)
        )

    def _kind(self, rule_id: str) -> AuditedKind:
        if rule_id in self.suspends.rules:
            return "suspend"
        return "suspend-ready-q" if rule_id in self.ready_suspends.rules else "bounce"

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
        timeline.suspends = base.suspends.copy()
        timeline.ready_suspends = base.ready_suspends.copy()
        # In the order apply() records them (actions() keeps it among equal times): by
        # seq; at one seq the issue first, then the rules it ended, in issue order.
        # (What a suspension held before the cut is not in the base: its counts start
        # at the cut. Which messages it holds there is: those it releases later count.)
        for message_id, retry in base.schedule.items():
            if retry.held_by is not None:
                timeline._holding[message_id] = retry.held_by
        recorded: list[tuple[int, int, int, _Recorded]] = []
        everything: list[AnyRule] = [
            *timeline.rules.rules.values(),
            *timeline.suspends.rules.values(),
            *timeline.ready_suspends.rules.values(),
        ]
        for order, rule in enumerate(everything):
            # A replacement is by a rule of the same kind.
            rules = timeline._book_of(rule.id).rules
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

    def _book_of(self, rule_id: str) -> AnyBook:
        """The book that holds ``rule_id`` (the bounce rules' if none does)."""
        if rule_id in self.suspends.rules:
            return self.suspends
        return self.ready_suspends if rule_id in self.ready_suspends.rules else self.rules

    def apply(self, committed: Committed) -> None:
        """Fold one committed event; events must come in log order, each once."""
        event = committed.event
        holding = self._holding
        if isinstance(event, Bounced | MessageReceived):
            self.rules.apply(committed)
            if holding and isinstance(event, Bounced):
                for message_id in event.messages.ids():
                    holding.pop(message_id, None)
            return
        if isinstance(event, RebindIssued):
            self._rebinds[event.rebind_id] = (committed, {})
            return
        if isinstance(event, Rebound):
            entry = self._rebinds.get(event.rebind_id)
            if entry is not None:
                key = (event.queue, event.to_queue)
                entry[1][key] = entry[1].get(key, 0) + len(event.messages)
            if holding:
                # Moved out of the queue a suspension held them in: no longer held.
                for message_id in event.messages.ids():
                    holding.pop(message_id, None)
            return
        if isinstance(event, Suspended):
            held = self.held.setdefault(event.rule_id, {})
            held[event.queue] = held.get(event.queue, 0) + 1
            holding[event.message.id] = event.rule_id
            return
        if isinstance(event, Outcome):
            if holding:
                holding.pop(event.message.id, None)
            return
        if isinstance(event, SuspendCancelled | SuspendExpired):
            self._release(event.rule_id)
        book: AnyBook
        if isinstance(event, _SUSPENSION_EVENTS):
            book = self.suspends
        elif isinstance(event, _READY_SUSPENSION_EVENTS):
            book = self.ready_suspends
        else:
            book = self.rules
        live_before: list[AnyRule] = list(book.live_rules())
        rule = book.apply(committed)
        seq, time = committed.seq, committed.time
        record = self._recorded.append
        if isinstance(event, BounceIssued | SuspendIssued | ReadySuspendIssued) and rule:
            record((seq, time, "issued", rule.id, rule.issued_by, rule.origin))
            if rule.issued_expired:
                record((seq, rule.expires_at, "expired", rule.id, None, ""))
            elif rule.lost_on_arrival:
                # The winner is of the same kind: look it up in the same book.
                winner = book.rules.get(rule.ended_by or "")
                by, where = (None, "") if winner is None else (winner.issued_by, winner.origin)
                record((seq, time, "replaced", rule.id, by, where))
            elif rule.ended_on_arrival and rule.end is not None:
                # Fleet mode brought it after it had ended on its node.
                when = rule.expires_at if rule.end == "expired" else time
                record((seq, when, rule.end, rule.id, None, rule.origin))
        for ended in live_before:
            if ended.ended_seq != seq or ended.end is None:
                continue
            if book is self.ready_suspends or (
                book is self.suspends and rule is not None and rule.ended_on_arrival
            ):
                # Whatever ends a ready-queue suspension (a cancel, an expiry, a later
                # one of its name), its queues release what it held at once
                # (QueueState.apply): those messages meet the new one afresh. So do a
                # suspension's when an equal one that arrived ended replaces it.
                self._release_held(ended.id)
            if ended.end == "expired":
                record((seq, ended.expires_at, "expired", ended.id, None, ""))
            elif ended.end == "replaced":
                by, where = (None, "") if rule is None else (rule.issued_by, rule.origin)
                record((seq, time, "replaced", ended.id, by, where))
            else:
                record((seq, time, "cancelled", ended.id, ended.ended_by, ended.ended_origin))

    def _release(self, suspension_id: str) -> None:
        """A suspension's end is recorded: the messages it still held are due again."""
        if not any(rule.id == suspension_id for rule in self.suspends.live_rules()):
            return  # not live (unknown, or ended before): the book ignores it too
        self._release_held(suspension_id)

    def _release_held(self, suspension_id: str) -> None:
        released = [mid for mid, by in self._holding.items() if by == suspension_id]
        for message_id in released:
            del self._holding[message_id]
        self.released[suspension_id] = self.released.get(suspension_id, 0) + len(released)

    def actions(self, now: int, where: TimelineFilter | None = None) -> list[RuleAction]:
        """The actions that ``where`` keeps, ordered by ``time`` then log position.

        ``now`` is the reference time: a rule not ended by an event is ``live`` if its
        expiry is after ``now``, else ``expired``, with an unrecorded expiry action.
        """
        where = where or TimelineFilter()
        recorded = list(self._recorded)
        live: list[AnyRule] = [
            *self.rules.live_rules(),
            *self.suspends.live_rules(),
            *self.ready_suspends.live_rules(),
        ]
        for unended in live:
            if not unended.live_at(now):
                recorded.append((None, unended.expires_at, "expired", unended.id, None, ""))
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
            rule = self.rule(rule_id)
            assert rule is not None, rule_id
            bounced: Mapping[str, int] = rule.bounced if isinstance(rule, Rule) else {}
            held: Mapping[str, int] = self.held.get(rule_id, {})
            if where.queue is not None:
                narrowed = _narrowed(rule, bounced, held, where.queue)
                if narrowed is None:
                    continue
                bounced, held = narrowed
            actions.append(
                RuleAction(
                    seq=seq,
                    time=time,
                    action=action,
                    rule_id=rule_id,
                    principal=principal,
                    origin=origin,
                    criteria=rule.criteria if isinstance(rule, Rule) else None,
                    reason=rule.reason,
                    issued_at=rule.issued_at,
                    expires_at=rule.expires_at,
                    suppress_logging=isinstance(rule, Rule) and rule.suppress_logging,
                    status=_status(rule, now),
                    ended_at=_ended_at(rule, now),
                    ended_by=rule.ended_by,
                    bounced=dict(bounced),
                    total_bounced=sum(bounced.values()),
                    kind=self._kind(rule_id),
                    held=dict(held),
                    released=self._released_by(rule, now),
                    ready_queue=rule.name if isinstance(rule, ReadySuspension) else None,
                )
            )
        return actions

    def live_suspensions(self, at: int, queue: str | None = None) -> list[LiveSuspension]:
        """The suspensions of either kind live at ``at``, in issue order, each with what
        it held by then: fold only the events committed up to ``at`` (as
        :func:`state_at` does). ``queue`` keeps those that match it or held messages in
        it, and counts only what they held there, as :attr:`TimelineFilter.queue` does."""
        live: list[tuple[int, LiveSuspension]] = []
        unended: list[AnyRule] = [*self.suspends.live_rules(), *self.ready_suspends.live_rules()]
        for rule in unended:
            if not rule.live_at(at):
                continue
            held: Mapping[str, int] = self.held.get(rule.id, {})
            if queue is not None:
                narrowed = _narrowed(rule, {}, held, queue)
                if narrowed is None:
                    continue
                held = narrowed[1]
            ready = isinstance(rule, ReadySuspension)
            suspension = LiveSuspension(
                id=rule.id,
                kind="suspend-ready-q" if ready else "suspend",
                criteria=rule.criteria if isinstance(rule, Rule) else None,
                ready_queue=rule.name if isinstance(rule, ReadySuspension) else None,
                reason=rule.reason,
                remaining=rule.expires_at - at,
                expires_at=rule.expires_at,
                issued_at=rule.issued_at,
                issued_by=rule.issued_by,
                origin=rule.origin,
                held=dict(held),
            )
            live.append((rule.issued_seq, suspension))
        live.sort(key=lambda item: item[0])
        return [suspension for _, suspension in live]

    def rebinds(self, where: TimelineFilter | None = None) -> list[RebindAction]:
        """The rebinds that ``where`` keeps (``rule_id`` names a rebind's id; ``queue``
        keeps those that match it or moved messages out of or into it), in log order.
        Rebinds issued before a retention cut are not in the base: not listed."""
        where = where or TimelineFilter()
        actions: list[RebindAction] = []
        for committed, moved in self._rebinds.values():
            event = committed.event
            assert isinstance(event, RebindIssued)
            time = committed.time
            if where.since is not None and time < where.since:
                continue
            if where.until is not None and time > where.until:
                continue
            if where.rule_id is not None and event.rebind_id != where.rule_id:
                continue
            if where.principal is not None and event.issued_by != where.principal:
                continue
            shown = dict(moved)
            if where.queue is not None:
                shown = {key: n for key, n in moved.items() if where.queue in key}
                if not shown and not event.criteria.matches(where.queue):
                    continue
            actions.append(
                RebindAction(
                    seq=committed.seq,
                    time=time,
                    rebind_id=event.rebind_id,
                    principal=event.issued_by,
                    criteria=event.criteria,
                    data=event.data_map,
                    reason=event.reason,
                    always_flush=event.always_flush,
                    suppress_logging=event.suppress_logging,
                    moved=shown,
                    total_moved=sum(shown.values()),
                    origin=event.origin,
                )
            )
        return actions


def _narrowed(
    rule: AnyRule, bounced: Mapping[str, int], held: Mapping[str, int], queue: str
) -> tuple[Mapping[str, int], Mapping[str, int]] | None:
    """``rule``'s counters (``bounced``, ``held``) as a filter on ``queue`` shows them:
    None when the rule neither matches ``queue`` nor bounced or held messages there;
    else only what it did there, but whole for the ready-queue suspension of the ready
    queue ``queue`` (every message it held was bound there)."""
    matched = rule.criteria.matches(queue) if isinstance(rule, Rule) else rule.name == queue
    if not (matched or queue in bounced or queue in held):
        return None
    if isinstance(rule, ReadySuspension) and matched:
        return bounced, held
    return _only(bounced, queue), _only(held, queue)


def _only(counts: Mapping[str, int], queue: str) -> Mapping[str, int]:
    count = counts.get(queue, 0)
    return {queue: count} if count else {}


def _ended_at(rule: AnyRule, now: int) -> int | None:
    """When the rule stopped matching: its cancel or replacement, else its expiry."""
    if rule.end in ("cancelled", "replaced"):
        return rule.ended_at
    return rule.expires_at if rule.end == "expired" or rule.expires_at <= now else None


def state_at(
    events: Iterable[Committed],
    at: int,
    base: State | None = None,
    timeline: Timeline | None = None,
) -> State:
    """The fold (rules, counters, queue gauges; no messages) of the events up to ``at``.

    Events committed after ``at`` are ignored (the log's commit times never decrease,
    so they are a suffix). Read the live rules with ``state.rules.views(at)`` and the
    gauges with ``state.queue_counts``: they are what GET and ``/metrics`` showed then.
    ``base``: the state at a retention cut, where ``events`` begin (left as it is); the
    answer is only the state at ``at`` if ``at`` is not before the base's time.
    ``timeline`` (one that starts where ``events`` do) is fed the same events but the
    ``MessageReceived``, in one pass: read the suspensions live then with
    :meth:`Timeline.live_suspensions`.
    """
    state = State(keep_messages=False) if base is None else base_projection(base)
    apply = state.apply
    for committed in events:
        if committed.time > at:
            break
        apply(committed)
        if timeline is not None and type(committed.event) is not MessageReceived:
            timeline.apply(committed)
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


@attrs.frozen(slots=True)
class Release:
    """The end of a suspension that held the message: it was due again from then on."""

    seq: int
    """The event that ended the suspension (its cancel, its recorded expiry, or for a
    ready-queue suspension the issue of the one that replaced it)."""
    time: int
    """When it stopped holding: the cancel's (replacement's) commit time, or the
    suspension's expiry."""
    queue: str
    rule_id: str
    end: Literal["cancelled", "expired", "replaced"]
    by: str | None
    """Who cancelled it, or the id of the ready-queue suspension that replaced it;
    None for an expiry."""
    ready_queue: str | None = None
    """The ready queue the suspension named, for a ready-queue suspension."""


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

    __slots__ = (
        "_bounces",
        "_held",
        "_rebinds",
        "cut",
        "message_id",
        "moves",
        "outcomes",
        "ready_suspends",
        "received",
        "releases",
        "rules",
        "suspends",
    )

    def __init__(self, message_id: str, base: State | None = None) -> None:
        self.message_id = message_id
        self.rules = RuleBook() if base is None else base.rules.copy()
        self.suspends = RuleBook("suspend") if base is None else base.suspends.copy()
        self.ready_suspends = ReadySuspensionBook() if base is None else base.ready_suspends.copy()
        self.received: list[Reception] = []
        self._bounces: list[tuple[Committed, Bounced]] = []
        self.outcomes: list[Committed] = []
        """The mail-path events of the message (attempts, holds, its end), in log order."""
        self.moves: list[tuple[Committed, Rebound, RebindIssued | None]] = []
        """The rebinds that moved the message, in log order, each with its request
        (``None`` if the log does not hold it)."""
        self._rebinds: dict[str, RebindIssued] = {}
        self.releases: list[Release] = []
        """The ends of the suspensions that held it while it waited, in log order."""
        self._held: tuple[str, str] | None = None
        """(suspension id, queue) while a suspension holds the message."""
        self.cut = 0 if base is None else base.last_seq
        """The last seq of the base (0: the log begins at seq 1)."""
        if base is not None:
            retry = base.schedule.get(message_id)
            if retry is not None and retry.held_by is not None:
                self._held = (retry.held_by, "")
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
                self._held = None
        elif isinstance(event, Outcome):
            if event.message.id == self.message_id:
                self.outcomes.append(committed)
                self._held = (event.rule_id, event.queue) if isinstance(event, Suspended) else None
        elif isinstance(event, RebindIssued):
            self._rebinds[event.rebind_id] = event
        elif isinstance(event, Rebound):
            if self.message_id in event.messages.ids():
                self.moves.append((committed, event, self._rebinds.get(event.rebind_id)))
                self._held = None
        elif isinstance(event, _SUSPENSION_EVENTS):
            self.suspends.apply(committed)
            held = self._held
            if held is None or isinstance(event, SuspendIssued) or event.rule_id != held[0]:
                return
            suspension = self.suspends.rules.get(event.rule_id)
            if suspension is None or suspension.ended_seq != committed.seq:
                return  # not live any more: it ended before (a replacement keeps it)
            self._release(committed, suspension, None)
        elif isinstance(event, _READY_SUSPENSION_EVENTS):
            self.ready_suspends.apply(committed)
            held = self._held
            if held is None:
                return
            ready = self.ready_suspends.rules.get(held[0])
            # Any end releases what a ready-queue suspension held, a replacement too
            # (its queues let the messages meet the new one afresh).
            if ready is not None and ready.ended_seq == committed.seq:
                self._release(committed, ready, ready.name)
        else:
            self.rules.apply(committed)

    def _release(self, committed: Committed, suspension: AnyRule, ready_queue: str | None) -> None:
        """The message's hold ends with ``suspension``, which ``committed`` ended."""
        held = self._held
        assert held is not None
        assert suspension.end is not None
        expired = suspension.end == "expired"
        self.releases.append(
            Release(
                seq=committed.seq,
                time=suspension.expires_at if expired else committed.time,
                queue=held[1] or self._queue(),
                rule_id=suspension.id,
                end=suspension.end,
                by=None if expired else suspension.ended_by,
                ready_queue=ready_queue,
            )
        )
        self._held = None

    def _queue(self) -> str:
        return self.received[-1].queue if self.received else ""

    @property
    def queue(self) -> str | None:
        """The queue the message is (or was last) in: where a rebind last moved it, else
        where it was received."""
        if self.moves:
            return self.moves[-1][1].to_queue
        return self.received[-1].queue if self.received else None

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

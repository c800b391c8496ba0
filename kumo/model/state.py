"""The fold of events into state, and the bounce decisions (docs/rules.md).

Everything here is plain Python over plain values: no trio, no I/O. The runtime uses
three pieces of it:

- :class:`RuleBook`, the rules and their per-queue counters, folded in log order;
- :class:`QueueState`, one scheduled queue as its actor holds it: its messages and the
  live rules that match it; it *decides* what to bounce when a message arrives or a
  rule is issued;
- :class:`State`, the whole fold (rules, counters, and optionally the queued messages),
  which a restart rebuilds from the log, and which finds the bounces that a crash cut
  short (:meth:`State.unfinished_bounces`).

The decisions are pure functions of the log: a message is bounced by the most recently
issued rule that matches its queue and is live when it arrives (its ``MessageReceived``
commit time and position), or else by the first matching rule issued after it arrived
(that rule's sweep). The actors apply that rule incrementally; the restart applies it
to what the log holds. Tests check that both agree.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Literal, NamedTuple, TypeAlias

import attrs

from kumo.model import retry
from kumo.model.criteria import Criteria
from kumo.model.events import (
    Attempt,
    BounceCancelled,
    Bounced,
    BounceExpired,
    BounceIssued,
    Committed,
    Delivered,
    Event,
    Expired,
    Message,
    MessageReceived,
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
    TransientlyFailed,
    issue_time,
)
from kumo.model.fleet_order import FleetRanking
from kumo.model.message import HTTP
from kumo.model.message_queue import MessageQueue
from kumo.model.queue_name import QueueName, rebound_queue_name
from kumo.model.ready_suspension import ReadyHold, ReadySuspensionBook
from kumo.model.rule_lifetime import Lifetime, NotEnded, RuleEnd
from kumo.model.smtp_reply import Disposition


@attrs.define(slots=True, eq=False)
class Rule(Lifetime):
    """A bounce rule as the log tells it, from issue to end, with its counters."""

    id: str
    criteria: Criteria
    reason: str
    issued_seq: int
    issued_at: int
    expires_at: int
    suppress_logging: bool
    issued_by: str
    ended_seq: int | None = None
    ended_at: int | None = None
    end: RuleEnd | None = None
    ended_by: str | None = None
    """Who cancelled it, or the id of the rule that replaced it."""
    origin: str = ""
    """The node it was issued on when fleet mode brought it here; ``""``: this node."""
    ended_origin: str = ""
    """The node its cancel was asked on when fleet mode brought it here; ``""``: this
    node (and for any other end)."""
    bounced: dict[str, int] = attrs.Factory(dict)
    total_bounced: int = 0


@attrs.frozen
class LiveRules:
    """A book's live rules at one moment, oldest first, with what makes their views.

    GET's listing (:class:`kumo.http.rule_listing.RuleListing`) reads the rules' ids,
    counters and expiry itself and asks for a rule's :class:`RuleView` only when its
    figures moved: thousands of rules are live under a probe, and most never change.
    Read it right away: the rules are the book's own records, which later events move.
    """

    now: int
    rules: list[Rule]
    pending: Callable[[Criteria], int]
    """A rule's :attr:`RuleView.pending`, from its criteria."""

    def view(self, rule: Rule, pending: int) -> RuleView:
        """``rule`` as GET lists it, with ``pending`` (``self.pending(rule.criteria)``)."""
        # Positional: built for many rules at a time.
        return RuleView(
            rule.id,
            rule.criteria,
            rule.reason,
            rule.expires_at - self.now,
            rule.expires_at,
            rule.issued_at,
            rule.issued_by,
            rule.suppress_logging,
            dict(rule.bounced),
            rule.total_bounced,
            pending,
        )

    def views(self) -> list[RuleView]:
        pending = self.pending
        return [self.view(rule, pending(rule.criteria)) for rule in self.rules]


def _nothing_pending(_: Criteria) -> int:
    return 0


class RuleView(NamedTuple):
    """A live rule as GET /api/admin/bounce/v1 shows it.

    A named tuple, as :class:`~kumo.model.message.Message` is: GET builds one for every
    live rule each time it is asked (thousands of rules, every few ms under a probe),
    and a tuple is built in a third of the time of a frozen attrs record.
    """

    id: str
    criteria: Criteria
    reason: str
    remaining: int
    expires_at: int
    issued_at: int
    issued_by: str
    suppress_logging: bool
    bounced: Mapping[str, int]
    total_bounced: int
    pending: int = 0
    """Messages still held in the queues the rule matches (a kumo extension): what its
    sweep, and the attempts under way that it waits for, still owe; 0 when done. The
    engine fills it in (:meth:`kumo.runtime.projection.Projection.pending`)."""


RuleKind: TypeAlias = Literal["bounce", "suspend"]


_RULE_EVENTS: dict[RuleKind, tuple[type[Event], type[Event], type[Event]]] = {
    "bounce": (BounceIssued, BounceCancelled, BounceExpired),
    "suspend": (SuspendIssued, SuspendCancelled, SuspendExpired),
}
"""Each kind of rule's issue, cancel and expiry events."""

RULE_ISSUES: frozenset[type[Event]] = frozenset(events[0] for events in _RULE_EVENTS.values())
"""The events that issue a rule, of any kind."""
RULE_ENDS: frozenset[type[Event]] = frozenset(
    event for events in _RULE_EVENTS.values() for event in events[1:]
)
"""The events that end a rule (a cancel, an expiry), of any kind."""


class RuleBook:
    """Every rule of one kind ever issued, folded in log order; the live ones in issue
    order. Bounce rules (the default) also count the messages each bounced."""

    __slots__ = ("_by_criteria", "_events", "_live", "_ranked", "kind", "rules")

    def __init__(self, kind: RuleKind = "bounce") -> None:
        self.kind: RuleKind = kind
        self._events = _RULE_EVENTS[kind]
        self.rules: dict[str, Rule] = {}
        self._live: NotEnded[Rule] = NotEnded()
        self._by_criteria: dict[Criteria, Rule] = {}
        self._ranked: FleetRanking[Criteria, Rule] = FleetRanking()
        """By criteria: what decides whether a rule of another node that arrives now
        lost already (:func:`~kumo.model.fleet_order.outranks`)."""

    @classmethod
    def restore(cls, rules: Iterable[Rule], kind: RuleKind = "bounce") -> RuleBook:
        """The book that folded ``rules`` (every rule, in issue order, as it stands)."""
        book = cls(kind)
        for rule in rules:
            book.rules[rule.id] = rule
            if not rule.issued_expired:
                book._ranked.rank(rule.criteria, rule)
            if rule.end is None and not rule.issued_expired:
                book._live.add(rule)
                book._by_criteria[rule.criteria] = rule
        return book

    def copy(self) -> RuleBook:
        """An independent copy (counters included) that can be folded on its own."""
        return RuleBook.restore(
            (attrs.evolve(rule, bounced=dict(rule.bounced)) for rule in self.rules.values()),
            self.kind,
        )

    def live_rules(self) -> Iterator[Rule]:
        """Rules not yet ended by an event, oldest first (some may be past expiry)."""
        return iter(self._live)

    def live_equal(self, criteria: Criteria) -> Rule | None:
        """The rule not yet ended whose criteria equal ``criteria``, if any."""
        return self._by_criteria.get(criteria)

    def is_live(self, rule_id: str, now: int) -> bool:
        rule = self._live.get(rule_id)
        return rule is not None and rule.live_at(now)

    def apply(self, committed: Committed) -> Rule | None:
        """Fold one event; return the rule of this book it concerns, if any."""
        event = committed.event
        kind = type(event)
        issued, cancelled, expired = self._events
        if kind is issued:
            assert isinstance(event, BounceIssued | SuspendIssued)
            return self._issue(event, committed)
        if kind is cancelled:
            assert isinstance(event, BounceCancelled | SuspendCancelled)
            return self._end(
                event.rule_id, "cancelled", committed, event.cancelled_by, event.origin
            )
        if kind is expired:
            assert isinstance(event, BounceExpired | SuspendExpired)
            return self._end(event.rule_id, "expired", committed, None)
        if kind is Bounced:
            assert isinstance(event, Bounced)
            rule = self.rules.get(event.rule_id)
            count = len(event.messages)
            if rule is not None and count:
                # A queue enters the map with its first bounced message, never with 0:
                # the map changes only when total_bounced moves (GET's listing cache
                # re-encodes it then: kumo.http.rule_listing).
                rule.bounced[event.queue] = rule.bounced.get(event.queue, 0) + count
                rule.total_bounced += count
            return rule
        return None

    def _issue(self, event: BounceIssued | SuspendIssued, committed: Committed) -> Rule:
        seq, time = committed.seq, committed.time
        rule = Rule(
            id=event.rule_id,
            criteria=event.criteria,
            reason=event.reason,
            issued_seq=seq,
            issued_at=issue_time(committed),
            expires_at=event.expires_at,
            suppress_logging=isinstance(event, BounceIssued) and event.suppress_logging,
            issued_by=event.issued_by,
            origin=event.origin,
        )
        self.rules[rule.id] = rule
        if rule.issued_expired:
            return rule
        winner = self._ranked.outranked_by(rule.criteria, rule)
        self._ranked.rank(rule.criteria, rule)
        if winner is not None:
            # An equal rule of another node that comes after it in the fleet's order is
            # known here (live or not): this one lost the race wherever it is read.
            rule.end, rule.ended_seq, rule.ended_at, rule.ended_by = (
                "replaced",
                seq,
                time,
                winner.id,
            )
            return rule
        previous = self._by_criteria.get(rule.criteria)
        if previous is not None:
            # Equal criteria replace a live rule; one already past its expiry simply
            # expired, whether or not its BounceExpired made it into the log yet.
            if previous.live_at(time):
                self._close(previous, "replaced", seq, time, rule.id)
            else:
                self._close(previous, "expired", seq, time, None)
        if event.arrived_ended is not None:
            # It ended on its node before this one heard of it: it bounces (holds)
            # nothing here, but the equal rule it comes after in the fleet's order is over.
            rule.end, rule.ended_seq, rule.ended_at = event.arrived_ended, seq, time
            rule.ended_origin = rule.origin
            return rule
        self._live.add(rule)
        self._by_criteria[rule.criteria] = rule
        return rule

    def _end(
        self, rule_id: str, end: RuleEnd, committed: Committed, by: str | None, origin: str = ""
    ) -> Rule | None:
        rule = self._live.get(rule_id)
        if rule is not None:
            self._close(rule, end, committed.seq, committed.time, by, origin)
        return rule

    def _close(
        self, rule: Rule, end: RuleEnd, seq: int, time: int, by: str | None, origin: str = ""
    ) -> None:
        rule.end, rule.ended_seq, rule.ended_at, rule.ended_by = end, seq, time, by
        rule.ended_origin = origin
        self._live.remove(rule)
        if self._by_criteria.get(rule.criteria) is rule:
            del self._by_criteria[rule.criteria]

    def views(self, now: int, pending: Callable[[Criteria], int] | None = None) -> list[RuleView]:
        """The rules GET lists at ``now``: live ones, oldest first; ``pending`` gives each
        its :attr:`RuleView.pending` from its criteria (0 without it)."""
        return self.live(now, pending).views()

    def live(self, now: int, pending: Callable[[Criteria], int] | None = None) -> LiveRules:
        """The rules :meth:`views` lists, without making their views."""
        # ``expires_at`` alone for live_at(now): the book keeps only rules neither ended
        # nor issued expired in ``_live``.
        rules = self._live.live_at(now)
        return LiveRules(now, rules, pending or _nothing_pending)

    def next_expiry(self) -> int | None:
        """The earliest ``expires_at`` of the rules not yet ended, if any."""
        return self._live.next_expiry()

    def due_to_expire(self, now: int) -> list[Rule]:
        """Rules not yet ended whose expiry is at or before ``now``, in issue order."""
        return self._live.due(now)

    def matching_live(self, queue: QueueName | str) -> list[Rule]:
        """Rules not yet ended that match ``queue``, oldest first."""
        return [rule for rule in self._live if rule.criteria.matches(queue)]


def message_from(committed: Committed, event: MessageReceived) -> Message:
    """The queued message that a committed ``MessageReceived`` puts in its queue."""
    return Message(
        id=event.message_id,
        sender=event.sender,
        recipient=event.recipient,
        size=event.size,
        received_at=committed.time,
        seq=committed.seq,
        protocol=event.protocol,
    )


@attrs.frozen(slots=True)
class SweepRule:
    """What a queue needs to know of a rule to apply it: nothing that changes later."""

    id: str
    criteria: Criteria
    expires_at: int
    issued_expired: bool
    reason: str = ""

    @classmethod
    def of(cls, rule: Rule) -> SweepRule:
        return cls(rule.id, rule.criteria, rule.expires_at, rule.issued_expired, rule.reason)

    @classmethod
    def issued(cls, committed: Committed) -> SweepRule:
        """The rule a committed ``BounceIssued`` (or ``SuspendIssued``) issues: one object
        for all the queues it reaches (10,000 queues would otherwise each make their
        own, all alive, at once, for the garbage collector to walk)."""
        return _issued_rule(committed)

    def live_at(self, time: int) -> bool:
        return not self.issued_expired and time < self.expires_at


@functools.lru_cache(maxsize=16)
def _issued_rule(committed: Committed) -> SweepRule:
    event = committed.event
    assert isinstance(event, BounceIssued | SuspendIssued)
    return SweepRule(
        event.rule_id,
        event.criteria,
        event.expires_at,
        event.expires_at <= issue_time(committed),
        event.reason,
    )


@attrs.frozen(slots=True)
class Retry:
    """Where a message stands in its retries, as the log tells it (only for messages
    that have failed at least once)."""

    due: int | None
    """When it is due again (None: at once)."""
    attempts: int
    """Attempts made so far."""
    anchor_seq: int
    """Seq of its last ``TransientlyFailed``: rules issued before it no longer owe it a
    sweep (it was in flight when they swept, or they were not yet issued)."""
    anchor_time: int = 0
    """That event's commit time: a rule live then takes the message (the ``Bounced``
    that follows in the same submission, unless a crash lost it)."""
    held_by: str | None = None
    """The suspension that holds it (``due`` is then that suspension's expiry; it is
    due at once if the suspension ended before)."""
    expiry: str | None = None
    """The ``Expiration`` text when its last failure expires it (its ``Expired`` owed)."""


@attrs.frozen(slots=True)
class Handed:
    """A message a queue handed to its destination, with its attempts so far."""

    message: Message
    attempts: int


class QueueState:
    """One scheduled queue as its actor holds it, deciding in log order.

    Feed it the events that concern its queue, in log order; each call returns the
    ``Bounced`` event it decided on, if any, and has already removed those messages.

    A sweep may be taken in chunks: :meth:`apply` with a ``limit`` takes at most that
    many messages of a sweep and leaves the rest owed (:attr:`sweeping`); the owner takes
    them with :meth:`continue_sweep` before it applies the next event. The messages are
    the sweeping rule's either way: the decision was made when its event was applied.

    The mail path (docs/mail-path.md): a message is in one of three places here.
    :attr:`messages` holds those due now, in order; :attr:`waiting` those due later
    (after a transient failure); :attr:`handed` those handed to a destination (ready
    or in flight), which only their outcome (:meth:`attempted`) or :meth:`take_back`
    returns. A sweep takes the first two; the owner takes back from its ready queue
    what no connection holds before it applies a rule (a message in flight is not
    interrupted, and a transient failure under a live rule bounces it then).
    """

    __slots__ = (
        "_timeline",
        "attempts",
        "handed",
        "held_by",
        "messages",
        "name",
        "parsed",
        "ready_suspensions",
        "returning",
        "rules",
        "suspensions",
        "sweeping",
        "waiting",
    )

    def __init__(
        self,
        name: str,
        messages: MessageQueue | None = None,
        rules: Iterable[SweepRule] = (),
        schedule: Mapping[str, Retry] | None = None,
        suspensions: Iterable[SweepRule] = (),
        ready_suspensions: Iterable[ReadyHold] = (),
    ) -> None:
        """``schedule``: the retries of the messages that have failed or wait for a
        suspension (message id -> :class:`Retry`), from the fold of the log; those due
        later start waiting. ``suspensions``: the live suspensions that match.
        ``ready_suspensions``: every live ready-queue suspension (any queue may feed
        the ready queue one names)."""
        self.name = name
        self.parsed = QueueName.parse(name)
        self.messages = messages if messages is not None else MessageQueue()
        self.rules: list[SweepRule] = list(rules)
        """Live rules that match this queue, oldest first."""
        self.sweeping: SweepRule | None = None
        """The rule whose sweep still owes messages (only with a ``limit``)."""
        self.waiting: dict[str, tuple[Message, int]] = {}
        """Message id -> (message, due time) of those due later."""
        self._timeline: list[tuple[int, str]] = []
        """(due, id) of :attr:`waiting`, a heap; entries no longer waiting are skipped."""
        self.attempts: dict[str, int] = {}
        """Message id -> attempts made, for those held that have failed before."""
        self.handed: dict[str, Handed] = {}
        """Message id -> the messages handed to a destination, awaiting their outcome."""
        self.suspensions: list[SweepRule] = list(suspensions)
        """Live suspensions that match this queue, oldest first."""
        self.ready_suspensions: dict[str, ReadyHold] = {
            hold.name: hold for hold in ready_suspensions if not hold.issued_expired
        }
        """Ready queue name -> its live suspension (every one: which ready queue this
        queue's messages go to is the runtime's to resolve)."""
        self.held_by: dict[str, str] = {}
        """Message id -> the suspension it waits for (those waiting for one)."""
        self.returning: dict[str, tuple[Message, int]] = {}
        """Message id -> (message, attempts) of those whose attempt failed transiently,
        until their ``TransientlyFailed`` comes back through the log to be decided."""
        if schedule:
            later: list[Message] = []
            live = {rule.id for rule in self.suspensions}
            live.update(hold.id for hold in self.ready_suspensions.values())
            for message in self.messages:
                entry = schedule.get(message.id)
                if entry is None:
                    continue
                if entry.attempts:
                    self.attempts[message.id] = entry.attempts
                if entry.held_by is not None and entry.held_by not in live:
                    continue  # its suspension ended: due now
                if entry.due is not None:
                    later.append(message)
                    self._wait(message, entry.due)
                    if entry.held_by is not None:
                        self.held_by[message.id] = entry.held_by
            if later:
                self.messages.remove({message.id for message in later})

    def __len__(self) -> int:
        """Every message the queue holds, wherever it is."""
        return len(self.messages) + len(self.waiting) + len(self.handed) + len(self.returning)

    def held_ids(self) -> list[str]:
        """The ids of every message held: due now (in order), waiting, handed."""
        return [*self.messages.ids(), *self.waiting, *self.handed, *self.returning]

    def schedule_of(self, message_id: str) -> tuple[int | None, int]:
        """(when it is due, None for now; its attempts so far) of a held message."""
        returning = self.returning.get(message_id)
        if returning is not None:
            return None, returning[1]
        waiting = self.waiting.get(message_id)
        return (None if waiting is None else waiting[1]), self.attempts.get(message_id, 0)

    def find(self, message_id: str) -> Message | None:
        """The held message ``message_id``, wherever it is here."""
        waiting = self.waiting.get(message_id)
        if waiting is not None:
            return waiting[0]
        handed = self.handed.get(message_id)
        if handed is not None:
            return handed.message
        returning = self.returning.get(message_id)
        if returning is not None:
            return returning[0]
        return self.messages.find(message_id)

    def concerns(self, event: Event) -> bool:
        """Whether ``event`` changes this queue (used when catching up from the log)."""
        match event:
            case MessageReceived():
                return event.queue == self.name
            case BounceIssued():
                return event.criteria.matches(self.parsed)
            case BounceCancelled() | BounceExpired():
                return any(rule.id == event.rule_id for rule in self.rules)
            case SuspendIssued():
                return event.criteria.matches(self.parsed)
            case SuspendCancelled() | SuspendExpired():
                return any(rule.id == event.rule_id for rule in self.suspensions)
            case ReadySuspendIssued():
                return True
            case ReadySuspendCancelled() | ReadySuspendExpired():
                return self._ready_hold(event.rule_id) is not None
            case TransientlyFailed():
                return event.queue == self.name
            case RebindIssued():
                return event.criteria.matches(self.parsed)
            case Rebound():
                return event.to_queue == self.name
            case _:
                return False

    def apply(
        self, committed: Committed, *, limit: int | None = None
    ) -> Bounced | Expired | Rebound | None:
        """Fold one event that concerns this queue; return the bounce (or the expiry of
        a message whose attempt failed, or the move of a rebind) it decides.

        ``limit`` bounds the messages a sweep takes now (see the class docstring); with
        ``limit=0`` a sweep is decided and nothing is taken yet.
        """
        if self.sweeping is not None:
            raise RuntimeError(f"queue {self.name!r} still owes the sweep of a rule")
        event = committed.event
        match event:
            case MessageReceived():
                return self.receive(message_from(committed, event))
            case BounceIssued():
                if event.arrived_ended is not None:
                    # Ended before this node heard of it: it only ends its equal here.
                    self.rules = [r for r in self.rules if r.criteria != event.criteria]
                    return None
                return self.issue(SweepRule.issued(committed), limit=limit)
            case BounceCancelled() | BounceExpired():
                self.rules = [rule for rule in self.rules if rule.id != event.rule_id]
                return None
            case SuspendIssued():
                suspension = SweepRule.issued(committed)
                if not suspension.issued_expired:
                    for equal in [s for s in self.suspensions if s.criteria == event.criteria]:
                        self.suspensions.remove(equal)
                        if event.arrived_ended is not None:
                            # Nothing holds what the replaced one held: it is due.
                            self._release(equal.id)
                    if event.arrived_ended is None:
                        self.suspensions.append(suspension)
                return None
            case SuspendCancelled() | SuspendExpired():
                self.suspensions = [s for s in self.suspensions if s.id != event.rule_id]
                self._release(event.rule_id)
                return None
            case ReadySuspendIssued():
                hold = ReadyHold.issued(committed)
                if not hold.issued_expired:
                    replaced = self.ready_suspensions.pop(hold.name, None)
                    if event.arrived_ended is None:
                        self.ready_suspensions[hold.name] = hold
                    if replaced is not None:
                        # What the replaced one held is due, and meets the new one
                        # (as a restart finds it: held by a suspension no longer live).
                        self._release(replaced.id)
                return None
            case ReadySuspendCancelled() | ReadySuspendExpired():
                ended = self._ready_hold(event.rule_id)
                if ended is not None:
                    del self.ready_suspensions[ended.name]
                    self._release(ended.id)
                return None
            case TransientlyFailed():
                return self._returned(committed, event)
            case RebindIssued():
                return self.rebind(event)
            case Rebound():
                return self.receive_rebound(committed, event)
            case _:
                return None

    def settle(self, events: Sequence[Committed]) -> bool:
        """Fold ``events`` if none of them asks for a decision; else change nothing.

        Arrivals into a queue that holds no rule only join it: nothing can be decided.
        Returns whether ``events`` were folded (all arrivals, no rule held).
        """
        if self.rules or self.suspensions or self.sweeping is not None:
            return False
        if not all(type(committed.event) is MessageReceived for committed in events):
            return False
        append = self.messages.add
        for committed in events:
            event = committed.event
            assert type(event) is MessageReceived
            append(
                event.message_id,
                event.sender,
                event.recipient,
                event.size,
                committed.time,
                committed.seq,
                event.protocol,
            )
        return True

    def receive(self, message: Message) -> Bounced | None:
        """A message arrives: the most recent live matching rule bounces it at once."""
        rule = counting_rule(self.rules, message.received_at)
        if rule is not None:
            return Bounced(rule_id=rule.id, queue=self.name, messages=(message,))
        self.messages.append(message)
        return None

    def issue(self, rule: SweepRule, *, limit: int | None = None) -> Bounced | None:
        """A matching rule is issued: it replaces its equal and sweeps the queue (the
        messages due now and those waiting; not those handed to a destination)."""
        if not rule.issued_expired:
            self.rules = [r for r in self.rules if r.criteria != rule.criteria]
            self.rules.append(rule)
        if self.waiting:
            for message, _ in self.waiting.values():
                self.messages.append(message)
            self.waiting.clear()
            self._timeline.clear()
            self.held_by.clear()
        if not self.messages:
            return None
        self.sweeping = rule
        return self.continue_sweep(limit)

    def continue_sweep(self, limit: int | None = None) -> Bounced | None:
        """Take up to ``limit`` (default: all) more messages of the sweep under way."""
        rule = self.sweeping
        if rule is None or limit == 0:
            return None
        taken = self.messages.take_all() if limit is None else self.messages.take(limit)
        if not self.messages:
            self.sweeping = None
        if self.attempts:
            for message_id in taken.ids():
                self.attempts.pop(message_id, None)
        return Bounced(rule_id=rule.id, queue=self.name, messages=taken)

    # -- rebind ------------------------------------------------------------------------

    def rebind(self, event: RebindIssued) -> Rebound | None:
        """A matching rebind: the messages the scheduled queue holds (due now, and
        waiting, for a retry or a suspension; not those handed to a destination nor
        those whose failed attempt is on its way back) move to the queue their merged
        metadata names, each with its attempts; the ``Rebound`` says which.

        If the name does not change, nothing moves: with ``always_flush`` the waiting
        messages that no suspension holds are due now; without it nothing changes (the
        due times stay).
        """
        to_queue = rebound_queue_name(self.name, event.data_map)
        if to_queue == self.name:
            if event.always_flush:
                for message_id in [m for m in self.waiting if m not in self.held_by]:
                    message, _ = self.waiting.pop(message_id)
                    self.messages.append(message)
            return None
        moved = list(self.messages.take_all())
        moved += [message for message, _ in self.waiting.values()]
        if not moved:
            return None
        self.waiting.clear()
        self._timeline.clear()
        self.held_by.clear()
        attempts = [self.attempts.pop(message.id, 0) for message in moved]
        return Rebound(
            event.rebind_id,
            self.name,
            to_queue,
            moved,
            attempts,
            event.reason,
            event.suppress_logging,
        )

    def receive_rebound(self, committed: Committed, event: Rebound) -> Bounced | None:
        """Messages rebound into this queue arrive at the ``Rebound``'s commit: the most
        recent live matching rule bounces them then (all of them: one event), else they
        are due now with their attempts kept (a live suspension holds them when the
        owner next hands messages out)."""
        rule = counting_rule(self.rules, committed.time)
        if rule is not None:
            return Bounced(rule_id=rule.id, queue=self.name, messages=event.messages)
        for message, attempts in zip(event.messages, event.attempts, strict=True):
            self.messages.append(message)
            if attempts:
                self.attempts[message.id] = attempts
        return None

    # -- the mail path -----------------------------------------------------------------

    def _wait(self, message: Message, due: int) -> None:
        self.waiting[message.id] = (message, due)
        heapq.heappush(self._timeline, (due, message.id))

    def next_due(self) -> int | None:
        """When the earliest waiting message is due, if one waits."""
        timeline, waiting = self._timeline, self.waiting
        while timeline:
            due, message_id = timeline[0]
            entry = waiting.get(message_id)
            if entry is not None and entry[1] == due:
                return due
            heapq.heappop(timeline)
        return None

    def wake(self, now: int) -> int:
        """Move the waiting messages due at ``now`` to those due now; return how many."""
        moved = 0
        timeline, waiting = self._timeline, self.waiting
        while timeline and timeline[0][0] <= now:
            due, message_id = heapq.heappop(timeline)
            entry = waiting.get(message_id)
            if entry is not None and entry[1] == due:
                del waiting[message_id]
                self.held_by.pop(message_id, None)
                self.messages.append(entry[0])
                moved += 1
        return moved

    def suspended(self, now: int) -> SweepRule | None:
        """The suspension that holds this queue's due messages at ``now``: the most
        recently issued live one."""
        for suspension in reversed(self.suspensions):
            if suspension.live_at(now):
                return suspension
        return None

    def hold(self, now: int) -> list[Event]:
        """If a suspension is live at ``now``, every due message waits for it (until its
        expiry, or its end if sooner), its attempts unchanged: one ``Suspended`` each."""
        suspension = self.suspended(now)
        if suspension is None or not self.messages or self.sweeping is not None:
            return []
        held: list[Event] = []
        for message in self.messages.take_all():
            self._wait(message, suspension.expires_at)
            self.held_by[message.id] = suspension.id
            held.append(
                Suspended(
                    suspension.id,
                    self.name,
                    message,
                    self.attempts.get(message.id, 0),
                    suspension.reason,
                )
            )
        return held

    def _ready_hold(self, rule_id: str) -> ReadyHold | None:
        return next((h for h in self.ready_suspensions.values() if h.id == rule_id), None)

    def hold_ready(self, ready_queue: str, now: int) -> list[Event]:
        """If a suspension of ``ready_queue`` (where the due messages go now: the
        runtime resolved it) is live at ``now``, every due message waits for it (until
        its expiry, or its end if sooner), its attempts unchanged: one ``Suspended``
        each, naming the ready queue."""
        hold = self.ready_suspensions.get(ready_queue)
        if hold is None or not hold.live_at(now) or not self.messages or self.sweeping is not None:
            return []
        held: list[Event] = []
        for message in self.messages.take_all():
            self._wait(message, hold.expires_at)
            self.held_by[message.id] = hold.id
            held.append(
                Suspended(
                    hold.id,
                    self.name,
                    message,
                    self.attempts.get(message.id, 0),
                    hold.reason,
                    ready_queue=ready_queue,
                )
            )
        return held

    def _release(self, suspension_id: str) -> None:
        """A suspension ended: the messages it held are due now."""
        released = [mid for mid, rule_id in self.held_by.items() if rule_id == suspension_id]
        for message_id in released:
            del self.held_by[message_id]
            message, _ = self.waiting.pop(message_id)
            self.messages.append(message)

    def hand(self, limit: int) -> list[Handed]:
        """Hand up to ``limit`` messages due now to the destination, oldest first."""
        if limit <= 0 or not self.messages or self.sweeping is not None:
            return []
        handed = [
            Handed(message, self.attempts.get(message.id, 0))
            for message in self.messages.take(limit)
        ]
        for entry in handed:
            self.handed[entry.message.id] = entry
        return handed

    def take_back(self, message_ids: Iterable[str]) -> None:
        """Messages handed out and returned unattempted (withdrawn from the ready queue
        before a rule applies, or when delivery stops): due now again, in order."""
        for message_id in message_ids:
            entry = self.handed.pop(message_id, None)
            if entry is not None:
                self.messages.append(entry.message)

    def attempted(
        self,
        message_id: str,
        disposition: Disposition,
        attempt: Attempt,
        *,
        now: int,
        policy: retry.RetryPolicy,
        uniform: float,
    ) -> list[Event]:
        """A handed message's attempt ended: the events that record what follows.

        Delivery and bounce take it out; a transient failure computes its next due
        time by ``policy`` (``uniform`` the draw of its jitter), or that it expires, and
        the message waits in :attr:`returning` for the event to come back through the
        log, where it is decided (:meth:`_returned`). Empty if it was not handed.
        """
        entry = self.handed.pop(message_id, None)
        if entry is None:
            return []
        message, attempts = entry.message, entry.attempts
        if disposition is Disposition.DELIVERY:
            self.attempts.pop(message_id, None)
            return [Delivered(self.name, message, attempts, attempt)]
        if disposition is Disposition.BOUNCE:
            self.attempts.pop(message_id, None)
            return [PermanentlyFailed(self.name, message, attempts, attempt)]
        failures = attempts + 1
        outcome = retry.reschedule_after_failure(
            policy,
            created_at=message.received_at,
            failed_at=now,
            failures=failures,
            uniform=uniform,
        )
        # What follows is decided when the event comes back through the log
        # (:meth:`_returned`), at its place in the log.
        self.returning[message_id] = (message, failures)
        if isinstance(outcome, retry.Expired):
            return [
                TransientlyFailed(
                    self.name, message, attempts, attempt, None, expiry=outcome.content
                )
            ]
        return [TransientlyFailed(self.name, message, attempts, attempt, outcome.due)]

    def _returned(self, committed: Committed, event: TransientlyFailed) -> Bounced | Expired | None:
        """A failed attempt's event, back in log order: the message expires, or a rule
        live at its commit bounces it (as an arrival then), or it waits until due."""
        entry = self.returning.pop(event.message.id, None)
        if entry is None:
            # Decided already: a restart's fold put the message where it belongs.
            return None
        message, attempts = entry
        if event.expiry is not None:
            self.attempts.pop(message.id, None)
            return Expired(self.name, message, attempts, event.expiry)
        rule = counting_rule(self.rules, committed.time)
        if rule is not None:
            self.attempts.pop(message.id, None)
            return Bounced(rule_id=rule.id, queue=self.name, messages=(message,))
        self.attempts[message.id] = attempts
        assert event.due is not None
        self._wait(message, event.due)
        return None


def counting_rule(rules: Sequence[SweepRule], received_at: int) -> SweepRule | None:
    """The rule a message arriving at ``received_at`` is counted to, if any.

    ``rules`` are the live rules that match its queue, oldest first: the most recently
    issued one still live at the arrival takes it.
    """
    for rule in reversed(rules):
        if received_at < rule.expires_at:
            return rule
    return None


@attrs.frozen(slots=True)
class SeenRebind:
    """A rebind this node's log holds, at its position: what fleet mode needs of it to
    publish it once (one issued here) and to take another node's once, and what a
    restart needs to finish it (:func:`kumo.model.recovery.owed_rebinds`)."""

    seq: int
    event: RebindIssued
    moved_from: frozenset[str] | None = frozenset()
    """The queues its ``Rebound`` events moved messages out of, so far (each queue
    moves once per rebind). ``None`` when not known: a snapshot written before kumo
    kept it; such a rebind owes nothing."""

    def moved(self, queue: str) -> SeenRebind:
        """This rebind once its ``Rebound`` out of ``queue`` is folded."""
        if self.moved_from is None:
            return self
        return attrs.evolve(self, moved_from=self.moved_from | {queue})


class State:
    """The fold of the whole log: rules, counters, gauges and (optionally) messages.

    With ``keep_messages`` the fold holds every queued message and the retries of
    those that failed (a restart, an audit, a replay check); without it, it is the
    running engine's projection, whose queues live in the actors.
    """

    def __init__(self, *, keep_messages: bool = True) -> None:
        self.rules = RuleBook()
        self.suspends = RuleBook("suspend")
        self.ready_suspends = ReadySuspensionBook()
        self.queue_counts: dict[str, int] = {}
        self._queues: dict[str, MessageQueue] | None = {} if keep_messages else None
        self._leaving: dict[str, set[str]] = {}
        """Queue -> ids that left it one by one, not yet taken out of its columns (one
        removal per queue when the queues are next read, not one per message)."""
        self.schedule: dict[str, Retry] = {}
        """Message id -> its retries, for the queued messages that have failed (only
        with ``keep_messages``)."""
        self.received_total = 0
        self.bounced_total = 0
        self.delivered_total = 0
        self.failed_total = 0
        """Messages bounced by their destination (or refused before a connection)."""
        self.expired_total = 0
        self.transient_failures_total = 0
        """Attempts that failed transiently (``TransientlyFailed``), connection or not."""
        self.rebound_total = 0
        """Messages moved to another queue by a rebind (``Rebound``); not a departure."""
        self.rebinds: dict[str, SeenRebind] = {}
        """Rebind id -> every rebind the log holds, in log order. Rebinds are admin
        actions, a handful a day: kept for good (snapshots and a retention cut keep
        them), so that fleet mode applies each one once per node however late it reads
        it again."""
        self.last_seq = 0
        self.last_time = 0

    def book(self, kind: RuleKind) -> RuleBook:
        """The rule book of ``kind``: bounce rules or suspensions."""
        return self.suspends if kind == "suspend" else self.rules

    @property
    def queues(self) -> dict[str, MessageQueue] | None:
        """Queue name -> its messages (non-empty queues), or None without messages."""
        if self._leaving:
            self._take_out_leaving()
        return self._queues

    @queues.setter
    def queues(self, queues: dict[str, MessageQueue] | None) -> None:
        self._queues = queues
        self._leaving.clear()

    def apply(self, committed: Committed) -> None:
        """Fold one committed event. Events must come in log order, each once."""
        event = committed.event
        if type(event) is MessageReceived:
            self.apply_received(
                committed.seq,
                committed.time,
                event.queue,
                event.message_id,
                event.sender,
                event.recipient,
                event.size,
                event.protocol,
            )
            return
        self.last_seq = committed.seq
        self.last_time = committed.time
        match event:
            case Bounced():
                self.bounced_total += len(event.messages)
                self._count_out(event.queue, len(event.messages))
                if self._queues is not None:
                    self._remove(event)
                self.rules.apply(committed)
            case Delivered() | PermanentlyFailed() | Expired():
                if type(event) is Delivered:
                    self.delivered_total += 1
                elif type(event) is Expired:
                    self.expired_total += 1
                else:
                    self.failed_total += 1
                self._count_out(event.queue, 1)
                if self._queues is not None:
                    self._leaving.setdefault(event.queue, set()).add(event.message.id)
                    self.schedule.pop(event.message.id, None)
            case TransientlyFailed():
                self.transient_failures_total += 1
                if self._queues is not None:
                    self.schedule[event.message.id] = Retry(
                        event.due,
                        event.attempts + 1,
                        committed.seq,
                        committed.time,
                        expiry=event.expiry,
                    )
            case Suspended():
                if self._queues is not None:
                    message = event.message
                    before = self.schedule.get(message.id)
                    book = self.suspends if event.ready_queue is None else self.ready_suspends
                    suspension = book.rules.get(event.rule_id)
                    self.schedule[message.id] = Retry(
                        None if suspension is None else suspension.expires_at,
                        event.attempts,
                        message.seq if before is None else before.anchor_seq,
                        message.received_at if before is None else before.anchor_time,
                        event.rule_id,
                    )
            case SuspendIssued() | SuspendCancelled() | SuspendExpired():
                self.suspends.apply(committed)
            case Rebound():
                self._move(committed, event)
                seen = self.rebinds.get(event.rebind_id)
                if seen is not None:
                    self.rebinds[event.rebind_id] = seen.moved(event.queue)
            case RebindIssued():
                # What it moves is decided by the queues it matches (their Rebound
                # events follow); the fold remembers that it was seen, and what its
                # always_flush made due at once, which no event records.
                self.rebinds[event.rebind_id] = SeenRebind(committed.seq, event)
                if event.always_flush and self.schedule:
                    self._flush(event)
            case ReadySuspendIssued() | ReadySuspendCancelled() | ReadySuspendExpired():
                self.ready_suspends.apply(committed)
            case _:
                self.rules.apply(committed)

    def _flush(self, event: RebindIssued) -> None:
        """An ``always_flush`` rebind: in each matching queue whose name it leaves as
        it is, the messages waiting for a retry are due at once, as the queue makes
        them (:meth:`QueueState.rebind`); those a suspension holds wait on."""
        queues = self.queues
        if queues is None:
            return
        data = event.data_map
        schedule = self.schedule
        for name, messages in queues.items():
            if not event.criteria.matches(name) or rebound_queue_name(name, data) != name:
                continue
            for message_id in messages.ids():
                retried = schedule.get(message_id)
                if retried is not None and retried.due is not None and retried.held_by is None:
                    schedule[message_id] = attrs.evolve(retried, due=None)

    def _move(self, committed: Committed, event: Rebound) -> None:
        """Messages rebound: out of one queue, into another, as arrivals there at the
        ``Rebound``'s commit (the anchor a rule live then counts them from), due now,
        their attempts kept."""
        count = len(event.messages)
        self.rebound_total += count
        self._count_out(event.queue, count)
        counts = self.queue_counts
        counts[event.to_queue] = counts.get(event.to_queue, 0) + count
        if self._queues is None:
            return
        ids = event.messages.ids()
        self._leaving.setdefault(event.queue, set()).update(ids)
        if event.to_queue in self._leaving:
            # Those leaving it may be coming back (rebound there and back again): take
            # them out before the ones arriving go in.
            self._take_out_leaving()
        queued = self._queues.get(event.to_queue)
        if queued is None:
            queued = self._queues[event.to_queue] = MessageQueue()
        for message, attempts in zip(event.messages, event.attempts, strict=True):
            queued.append(message)
            self.schedule[message.id] = Retry(None, attempts, committed.seq, committed.time)

    def _count_out(self, queue: str, count: int) -> None:
        remaining = self.queue_counts.get(queue, 0) - count
        if remaining > 0:
            self.queue_counts[queue] = remaining
        else:
            self.queue_counts.pop(queue, None)

    def apply_received(
        self,
        seq: int,
        time: int,
        queue: str,
        message_id: str,
        sender: str,
        recipient: str,
        size: int,
        protocol: str = HTTP,
    ) -> None:
        """Fold a ``MessageReceived`` committed at ``seq`` and ``time``, given as its
        fields: the replay's fast path (no event, no :class:`Message` built). Like
        :meth:`apply`, it moves the fold's position to ``seq``.
        """
        self.last_seq = seq
        self.last_time = time
        self.received_total += 1
        counts = self.queue_counts
        counts[queue] = counts.get(queue, 0) + 1
        if self._queues is not None:
            queued = self._queues.get(queue)
            if queued is None:
                queued = self._queues[queue] = MessageQueue()
            queued.add(message_id, sender, recipient, size, time, seq, protocol)

    def _remove(self, event: Bounced) -> None:
        ids = event.messages.ids()
        self._leaving.setdefault(event.queue, set()).update(ids)
        if self.schedule:
            for message_id in ids:
                self.schedule.pop(message_id, None)

    def _take_out_leaving(self) -> None:
        queues = self._queues
        assert queues is not None
        for name, ids in self._leaving.items():
            queued = queues.get(name)
            if queued is not None:
                queued.remove(ids)
                if not queued:
                    del queues[name]
        self._leaving.clear()

    def detach_queues(self) -> dict[str, MessageQueue]:
        """Hand the queued messages over (to the actors); the fold keeps only counts."""
        queues, self.queues = self.queues or {}, None
        return queues

    @property
    def departed_total(self) -> int:
        """Messages that left by the mail path: delivered, failed or expired."""
        return self.delivered_total + self.failed_total + self.expired_total

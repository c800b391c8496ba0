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

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Literal, TypeAlias

import attrs

from kumo.model.criteria import Criteria
from kumo.model.events import (
    BounceCancelled,
    Bounced,
    BounceExpired,
    BounceIssued,
    Committed,
    Event,
    Message,
    MessageReceived,
    Rejected,
    issue_time,
)
from kumo.model.message_queue import MessageQueue
from kumo.model.queue_name import QueueName

RuleEnd: TypeAlias = Literal["cancelled", "replaced", "expired"]


@attrs.define(slots=True, eq=False)
class Rule:
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

    @property
    def issued_expired(self) -> bool:
        """A rule issued already expired sweeps once and is never live."""
        return self.expires_at <= self.issued_at

    def live_at(self, time: int) -> bool:
        """Live at ``time`` as far as the events folded so far tell."""
        return self.end is None and not self.issued_expired and time < self.expires_at

    def status(self, now: int) -> str:
        """``live``, ``expired``, ``cancelled`` or ``replaced``, as an audit reports it."""
        if self.end is not None:
            return self.end
        return "live" if self.live_at(now) else "expired"


@attrs.frozen(slots=True)
class RuleView:
    """A live rule as GET /api/admin/bounce/v1 shows it."""

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


class RuleBook:
    """Every rule ever issued, folded in log order; the live ones in issue order."""

    __slots__ = ("_by_criteria", "_live", "rules")

    def __init__(self) -> None:
        self.rules: dict[str, Rule] = {}
        self._live: dict[str, Rule] = {}
        self._by_criteria: dict[Criteria, Rule] = {}

    @classmethod
    def restore(cls, rules: Iterable[Rule]) -> RuleBook:
        """The book that folded ``rules`` (every rule, in issue order, as it stands)."""
        book = cls()
        for rule in rules:
            book.rules[rule.id] = rule
            if rule.end is None and not rule.issued_expired:
                book._live[rule.id] = rule
                book._by_criteria[rule.criteria] = rule
        return book

    def copy(self) -> RuleBook:
        """An independent copy (counters included) that can be folded on its own."""
        return RuleBook.restore(
            attrs.evolve(rule, bounced=dict(rule.bounced)) for rule in self.rules.values()
        )

    def live_rules(self) -> Iterator[Rule]:
        """Rules not yet ended by an event, oldest first (some may be past expiry)."""
        return iter(self._live.values())

    def live_equal(self, criteria: Criteria) -> Rule | None:
        """The rule not yet ended whose criteria equal ``criteria``, if any."""
        return self._by_criteria.get(criteria)

    def is_live(self, rule_id: str, now: int) -> bool:
        rule = self._live.get(rule_id)
        return rule is not None and rule.live_at(now)

    def apply(self, committed: Committed) -> Rule | None:
        """Fold one event; return the rule it concerns, if any."""
        event = committed.event
        match event:
            case BounceIssued():
                return self._issue(event, committed)
            case BounceCancelled():
                return self._end(
                    event.rule_id, "cancelled", committed, event.cancelled_by, event.origin
                )
            case BounceExpired():
                return self._end(event.rule_id, "expired", committed, None)
            case Bounced():
                rule = self.rules.get(event.rule_id)
                if rule is not None:
                    count = len(event.messages)
                    rule.bounced[event.queue] = rule.bounced.get(event.queue, 0) + count
                    rule.total_bounced += count
                return rule
            case MessageReceived() | Rejected():
                return None

    def _issue(self, event: BounceIssued, committed: Committed) -> Rule:
        seq, time = committed.seq, committed.time
        rule = Rule(
            id=event.rule_id,
            criteria=event.criteria,
            reason=event.reason,
            issued_seq=seq,
            issued_at=issue_time(committed),
            expires_at=event.expires_at,
            suppress_logging=event.suppress_logging,
            issued_by=event.issued_by,
            origin=event.origin,
        )
        self.rules[rule.id] = rule
        if rule.issued_expired:
            return rule
        previous = self._by_criteria.get(rule.criteria)
        if previous is not None:
            # Equal criteria replace a live rule; one already past its expiry simply
            # expired, whether or not its BounceExpired made it into the log yet.
            if previous.live_at(time):
                self._close(previous, "replaced", seq, time, rule.id)
            else:
                self._close(previous, "expired", seq, time, None)
        self._live[rule.id] = rule
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
        del self._live[rule.id]
        if self._by_criteria.get(rule.criteria) is rule:
            del self._by_criteria[rule.criteria]

    def views(self, now: int) -> list[RuleView]:
        """The rules GET lists at ``now``: live ones, oldest first."""
        return [
            RuleView(
                id=rule.id,
                criteria=rule.criteria,
                reason=rule.reason,
                remaining=rule.expires_at - now,
                expires_at=rule.expires_at,
                issued_at=rule.issued_at,
                issued_by=rule.issued_by,
                suppress_logging=rule.suppress_logging,
                bounced=dict(rule.bounced),
                total_bounced=rule.total_bounced,
            )
            for rule in self._live.values()
            if rule.live_at(now)
        ]

    def next_expiry(self) -> int | None:
        """The earliest ``expires_at`` of the rules not yet ended, if any."""
        return min((rule.expires_at for rule in self._live.values()), default=None)

    def due_to_expire(self, now: int) -> list[Rule]:
        """Rules not yet ended whose expiry is at or before ``now``."""
        return [rule for rule in self._live.values() if rule.expires_at <= now]

    def matching_live(self, queue: QueueName | str) -> list[Rule]:
        """Rules not yet ended that match ``queue``, oldest first."""
        return [rule for rule in self._live.values() if rule.criteria.matches(queue)]


def message_from(committed: Committed, event: MessageReceived) -> Message:
    """The queued message that a committed ``MessageReceived`` puts in its queue."""
    return Message(
        id=event.message_id,
        sender=event.sender,
        recipient=event.recipient,
        size=event.size,
        received_at=committed.time,
        seq=committed.seq,
    )


@attrs.frozen(slots=True)
class SweepRule:
    """What a queue needs to know of a rule to apply it: nothing that changes later."""

    id: str
    criteria: Criteria
    expires_at: int
    issued_expired: bool

    @classmethod
    def of(cls, rule: Rule) -> SweepRule:
        return cls(rule.id, rule.criteria, rule.expires_at, rule.issued_expired)

    @classmethod
    def issued(cls, committed: Committed, event: BounceIssued) -> SweepRule:
        """The rule a committed ``BounceIssued`` issues."""
        return cls(
            event.rule_id,
            event.criteria,
            event.expires_at,
            event.expires_at <= issue_time(committed),
        )


class QueueState:
    """One scheduled queue as its actor holds it, deciding bounces in log order.

    Feed it the events that concern its queue, in log order; each call returns the
    ``Bounced`` event it decided on, if any, and has already removed those messages.

    A sweep may be taken in chunks: :meth:`apply` with a ``limit`` takes at most that
    many messages of a sweep and leaves the rest owed (:attr:`sweeping`); the owner takes
    them with :meth:`continue_sweep` before it applies the next event. The messages are
    the sweeping rule's either way: the decision was made when its event was applied.
    """

    __slots__ = ("messages", "name", "parsed", "rules", "sweeping")

    def __init__(
        self,
        name: str,
        messages: MessageQueue | None = None,
        rules: Iterable[SweepRule] = (),
    ) -> None:
        self.name = name
        self.parsed = QueueName.parse(name)
        self.messages = messages if messages is not None else MessageQueue()
        self.rules: list[SweepRule] = list(rules)
        """Live rules that match this queue, oldest first."""
        self.sweeping: SweepRule | None = None
        """The rule whose sweep still owes messages (only with a ``limit``)."""

    def concerns(self, event: Event) -> bool:
        """Whether ``event`` changes this queue (used when catching up from the log)."""
        match event:
            case MessageReceived():
                return event.queue == self.name
            case BounceIssued():
                return event.criteria.matches(self.parsed)
            case BounceCancelled() | BounceExpired():
                return any(rule.id == event.rule_id for rule in self.rules)
            case Bounced() | Rejected():
                return False

    def apply(self, committed: Committed, *, limit: int | None = None) -> Bounced | None:
        """Fold one event that concerns this queue; return the bounce it decides.

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
                return self.issue(SweepRule.issued(committed, event), limit=limit)
            case BounceCancelled() | BounceExpired():
                self.rules = [rule for rule in self.rules if rule.id != event.rule_id]
                return None
            case Bounced() | Rejected():
                return None

    def settle(self, events: Sequence[Committed]) -> bool:
        """Fold ``events`` if none of them asks for a decision; else change nothing.

        Arrivals into a queue that holds no rule only join it: nothing can be decided.
        Returns whether ``events`` were folded (all arrivals, no rule held).
        """
        if self.rules or self.sweeping is not None:
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
        """A matching rule is issued: it replaces its equal and sweeps the queue."""
        if not rule.issued_expired:
            self.rules = [r for r in self.rules if r.criteria != rule.criteria]
            self.rules.append(rule)
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
        return Bounced(rule_id=rule.id, queue=self.name, messages=taken)


def counting_rule(rules: Sequence[SweepRule], received_at: int) -> SweepRule | None:
    """The rule a message arriving at ``received_at`` is counted to, if any.

    ``rules`` are the live rules that match its queue, oldest first: the most recently
    issued one still live at the arrival takes it.
    """
    for rule in reversed(rules):
        if received_at < rule.expires_at:
            return rule
    return None


class State:
    """The fold of the whole log: rules, counters, gauges and (optionally) messages.

    With ``keep_messages`` the fold holds every queued message (a restart, an audit,
    a replay check); without it, it is the running engine's projection, whose queues
    live in the actors.
    """

    def __init__(self, *, keep_messages: bool = True) -> None:
        self.rules = RuleBook()
        self.queue_counts: dict[str, int] = {}
        self.queues: dict[str, MessageQueue] | None = {} if keep_messages else None
        self.received_total = 0
        self.bounced_total = 0
        self.last_seq = 0
        self.last_time = 0

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
            )
            return
        self.last_seq = committed.seq
        self.last_time = committed.time
        match event:
            case Bounced():
                count = len(event.messages)
                self.bounced_total += count
                remaining = self.queue_counts.get(event.queue, 0) - count
                if remaining > 0:
                    self.queue_counts[event.queue] = remaining
                else:
                    self.queue_counts.pop(event.queue, None)
                if self.queues is not None:
                    self._remove(event)
                self.rules.apply(committed)
            case _:
                self.rules.apply(committed)

    def apply_received(
        self,
        seq: int,
        time: int,
        queue: str,
        message_id: str,
        sender: str,
        recipient: str,
        size: int,
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
        if self.queues is not None:
            queued = self.queues.get(queue)
            if queued is None:
                queued = self.queues[queue] = MessageQueue()
            queued.add(message_id, sender, recipient, size, time, seq)

    def _remove(self, event: Bounced) -> None:
        assert self.queues is not None
        queued = self.queues.get(event.queue)
        if queued is not None:
            queued.remove(set(event.messages.ids()))
            if not queued:
                del self.queues[event.queue]

    def detach_queues(self) -> dict[str, MessageQueue]:
        """Hand the queued messages over (to the actors); the fold keeps only counts."""
        queues, self.queues = self.queues or {}, None
        return queues

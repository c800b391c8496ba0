"""Which queues each committed event concerns, decided in log order (no trio, no I/O).

The broadcaster feeds every committed batch to :meth:`Router.route` and only carries
out the answer: it starts the queues the answer names (with the rules it gives them)
and hands each queue the events listed for it. The rules are:

- a ``MessageReceived`` concerns its queue; the first one of a queue opens the queue
  with the rules that are live at that point of the log (oldest first);
- a ``BounceIssued`` concerns every open queue its criteria match (found through a
  :class:`~kumo.model.queue_index.QueueIndex`, so that issuing a rule costs what it
  matches); those queues then hold the rule, unless it was issued already expired;
- a ``BounceCancelled`` or ``BounceExpired`` concerns exactly the queues that hold the
  rule;
- a ``Bounced`` concerns no queue (the queue that decided it already acted on it);
- a ``TransientlyFailed`` concerns its queue: the queue decides what follows a failed
  attempt when its event comes back, in log order, as it decides an arrival;
- suspensions are routed as rules are;
- a ``RebindIssued`` concerns every open queue its criteria match (each decides what
  moves, and emits a ``Rebound``); a ``Rebound`` concerns the queue it moves messages
  to, which it opens (with its live rules and suspensions) as an arrival does.
- the issue of a rule that loses to an equal rule of another node on arrival (fleet
  mode: :func:`kumo.model.fleet_order.outranks`) concerns no queue: it never is live here.
- a ``ReadySuspendIssued`` (not issued already expired) concerns every open queue, and
  its end (``ReadySuspendCancelled``, ``ReadySuspendExpired``, when it ends a live one)
  too: which ready queue a scheduled queue feeds is the runtime's to resolve (DNS), so
  every queue knows every live ready-queue suspension, and a queue opens with them.

Which rule a message is counted to is decided by the queue itself
(:meth:`kumo.model.state.QueueState.receive`, one rule for all: the most recently
issued live rule that matches), with the rules the router gave it.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from kumo.model.criteria import Criteria
from kumo.model.events import (
    BounceCancelled,
    BounceExpired,
    BounceIssued,
    Committed,
    Event,
    MessageReceived,
    ReadySuspendCancelled,
    ReadySuspendExpired,
    ReadySuspendIssued,
    RebindIssued,
    Rebound,
    SuspendCancelled,
    SuspendExpired,
    SuspendIssued,
    TransientlyFailed,
)
from kumo.model.queue_index import QueueIndex
from kumo.model.queue_name import QueueName
from kumo.model.ready_suspension import ReadyHold, ReadySuspensionBook
from kumo.model.state import RuleBook, SweepRule

_EVERY_QUEUE = Criteria()
"""Criteria that match every queue: where a ready-queue suspension's events go."""


@attrs.frozen
class NewQueue:
    """A queue to open before the events of a routing are handed over."""

    name: str
    rules: tuple[SweepRule, ...]
    """The live rules that match the queue at the point of the log where it opens,
    oldest first."""
    suspensions: tuple[SweepRule, ...] = ()
    """The live suspensions that match it then, oldest first."""
    ready_suspensions: tuple[ReadyHold, ...] = ()
    """The live ready-queue suspensions then (all of them), oldest first."""


@attrs.frozen
class Routing:
    """What to do with one committed batch: open these queues, then hand these events."""

    new_queues: list[NewQueue]
    deliveries: dict[str, list[Committed]]
    """Queue name -> the events of the batch that concern it, in log order (queues in
    the order they were first concerned). Read only: queues concerned by the same
    events share one list (:class:`_Deliveries`)."""


class _Deliveries:
    """:attr:`Routing.deliveries` as :meth:`Router.route` builds it.

    An event that concerns many queues (a match-everything rule over 10,000 queues)
    gives all the queues it is the first event of one list, shared, rather than a list
    each: a list per queue was most of routing such a rule, 3-4.6 ms in one step of the
    broadcaster, which the POST that issued the rule waited for (docs/benchmarks.md,
    thirteenth session, "A rule's queues share its list"). A shared list is copied
    before an event is added for one of its queues alone.
    """

    __slots__ = ("_shared", "lists")

    def __init__(self) -> None:
        self.lists: dict[str, list[Committed]] = {}
        self._shared: dict[int, list[Committed]] = {}
        """The shared lists by id (kept here, so that no other list takes an id)."""

    def one(self, queue: str, committed: Committed) -> None:
        """``committed`` concerns ``queue``."""
        held = self.lists.get(queue)
        if held is None:
            self.lists[queue] = [committed]
        elif self._shared and id(held) in self._shared:
            self.lists[queue] = [*held, committed]
        else:
            held.append(committed)

    def every(self, queues: Iterable[str], committed: Committed) -> None:
        """``committed`` concerns each of ``queues``."""
        lists = self.lists
        shared = [committed]
        self._shared[id(shared)] = shared
        if not lists:
            lists.update(dict.fromkeys(queues, shared))
            return
        for queue in queues:
            if queue in lists:
                self.one(queue, committed)
            else:
                lists[queue] = shared


class Router:
    """The routing policy, folded over the log; see the module docstring.

    It keeps its own :class:`RuleBook` (a copy, folded as it routes) so that it knows the
    rules live at each point of the log, whatever the engine's projection has folded.
    """

    __slots__ = ("_holders", "_index", "ready_suspends", "rules", "suspends")

    def __init__(
        self,
        rules: RuleBook | None = None,
        suspends: RuleBook | None = None,
        ready_suspends: ReadySuspensionBook | None = None,
    ) -> None:
        self.rules = rules if rules is not None else RuleBook()
        self.suspends = suspends if suspends is not None else RuleBook("suspend")
        self.ready_suspends = ready_suspends or ReadySuspensionBook()
        self._index: QueueIndex[str] = QueueIndex()
        self._holders: dict[str, set[str]] = {}
        """Rule id (bounce or suspension) -> the queues that hold it (not yet ended)."""

    def open_queue(self, name: str) -> tuple[SweepRule, ...]:
        """Open ``name`` (unknown so far); return the live rules it holds from now on
        (and its live suspensions from :meth:`suspensions_of`)."""
        parsed = QueueName.parse(name)
        self._index.add(name, parsed, name)
        rules = tuple(SweepRule.of(rule) for rule in self.rules.matching_live(parsed))
        for rule in (*rules, *self.suspensions_of(name)):
            self._holders.setdefault(rule.id, set()).add(name)
        return rules

    def suspensions_of(self, name: str) -> tuple[SweepRule, ...]:
        """The live suspensions that match queue ``name``, oldest first."""
        return tuple(SweepRule.of(rule) for rule in self.suspends.matching_live(name))

    def passed_over(self, event: Event) -> bool:
        """Whether ``event``, already routed, is the issue of a rule that lost to an
        equal rule of another node on arrival (:attr:`~kumo.model.state.Rule.lost_on_arrival`):
        it concerns no queue, so an actor reading the log to catch up skips it."""
        if type(event) is BounceIssued:
            rule = self.rules.rules.get(event.rule_id)
        elif type(event) is SuspendIssued:
            rule = self.suspends.rules.get(event.rule_id)
        elif type(event) is ReadySuspendIssued:
            ready = self.ready_suspends.rules.get(event.rule_id)
            return ready is not None and ready.lost_on_arrival
        else:
            return False
        return rule is not None and rule.lost_on_arrival

    def ready_suspensions(self) -> tuple[ReadyHold, ...]:
        """The live ready-queue suspensions, oldest first: every queue holds them all."""
        return self.ready_suspends.holds()

    def route(self, batch: Iterable[Committed]) -> Routing:
        """Fold ``batch`` (in log order, each event once) and say where it goes."""
        new_queues: list[NewQueue] = []
        deliveries = _Deliveries()
        for committed in batch:
            event = committed.event
            match event:
                case MessageReceived():
                    if event.queue not in self._index:
                        rules = self.open_queue(event.queue)
                        suspensions = self.suspensions_of(event.queue)
                        new_queues.append(
                            NewQueue(event.queue, rules, suspensions, self.ready_suspensions())
                        )
                    deliveries.one(event.queue, committed)
                case BounceIssued() | SuspendIssued():
                    book = self.rules if type(event) is BounceIssued else self.suspends
                    previous = book.live_equal(event.criteria)
                    rule = book.apply(committed)
                    assert rule is not None
                    if rule.lost_on_arrival:
                        # An equal rule of another node outranks it: it concerns no
                        # queue, and the live equal rule stays where it is.
                        continue
                    if previous is not None and previous.end is not None:
                        # Replaced (or found expired): its queues drop it on their own.
                        self._holders.pop(previous.id, None)
                    matched = self._index.matching(event.criteria)
                    deliveries.every(matched, committed)
                    # One that arrived ended only makes its queues drop its equal.
                    if not (rule.issued_expired or rule.ended_on_arrival):
                        self._holders.setdefault(rule.id, set()).update(matched)
                case BounceCancelled() | BounceExpired() | SuspendCancelled() | SuspendExpired():
                    book = (
                        self.suspends
                        if isinstance(event, SuspendCancelled | SuspendExpired)
                        else self.rules
                    )
                    book.apply(committed)
                    deliveries.every(self._holders.pop(event.rule_id, ()), committed)
                case ReadySuspendIssued() | ReadySuspendCancelled() | ReadySuspendExpired():
                    changed = self.ready_suspends.apply(committed)
                    ended = type(event) is not ReadySuspendIssued
                    # One that lost to another node's of the same name holds nothing.
                    if changed is not None and (
                        ended or not (changed.issued_expired or changed.lost_on_arrival)
                    ):
                        deliveries.every(self._index.matching(_EVERY_QUEUE), committed)
                case TransientlyFailed():
                    # Back to its queue, which decides what follows in log order.
                    deliveries.one(event.queue, committed)
                case RebindIssued():
                    deliveries.every(self._index.matching(event.criteria), committed)
                case Rebound():
                    if event.to_queue not in self._index:
                        rules = self.open_queue(event.to_queue)
                        suspensions = self.suspensions_of(event.to_queue)
                        new_queues.append(
                            NewQueue(event.to_queue, rules, suspensions, self.ready_suspensions())
                        )
                    deliveries.one(event.to_queue, committed)
                case _:
                    self.rules.apply(committed)
        return Routing(new_queues, deliveries.lists)

"""The invariants (docs/architecture.md), checked over a log and its delivery log. Pure.

:class:`InvariantCheck` folds committed events (all of them, in log order) and finds:

- **conservation**: every received message is queued xor bounced; none is received
  twice, bounced twice, bounced without being received, or bounced out of a queue it
  was not in; a rebind (``Rebound``) moves a message from the queue it is in to
  another, and adds or removes none;
- **attribution**: a message is bounced by the rule it counts to (docs/rules.md): the most
  recently issued rule that matches its queue and was live when it arrived, else the
  first matching rule issued after it arrived (that rule's sweep); a message rebound
  arrives in its new queue at its ``Rebound``;
- **counters**: the projection the engine serves (:class:`kumo.model.state.State`,
  rebuilt here) equals a count of the ``Bounced`` events per rule and queue, and its
  queue gauges equal what was received minus what was bounced.

:class:`DeliveryLogCheck` then compares the delivery-log records with what the log
says must be there: one ``Reception`` per received message, one ``AdminBounce`` per
bounced message unless its rule suppresses logging, one ``AdminRebind`` per message
of a ``Rebound`` unless it suppresses logging (in log order), one ``Rejection`` per ``Rejected``
event (the n-th record for the n-th event: a rejection names no message), nothing
else, nothing twice, each record field for field the one kumo writes for its event
(:mod:`kumo.model.log_record`), for every event up to the delivery log's checkpoint
(or without one, up to the last event a record is for), and a checkpoint that does
not point past the end of the log (which would mean the log lost its tail).

**After retention** (:mod:`kumo.model.retention`) the log begins at a cut, after seq
``N``, and the events up to ``N`` are gone. Both checks then start from the *base*, the
state at ``N`` (``InvariantCheck(base)``): its queued messages count as received (at
their own seqs), its rules and counters as issued and counted, and every check goes on
from there, so conservation, attribution and counters hold for the kept log exactly as
for a whole one. What cannot be checked any more is what only the deleted events said:
that the base's own counters are the sum of their ``Bounced`` events, and the
delivery-log records of events up to ``N`` (they come first in the files; see
:class:`DeliveryLogCheck`, which counts them and compares none of them).
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Final, NamedTuple

import attrs

from kumo.model.events import (
    DEPARTURES,
    Bounced,
    BounceIssued,
    Committed,
    MessageReceived,
    Outcome,
    PeerAddress,
    Rebound,
    Rejected,
    Suspended,
    TransientlyFailed,
)
from kumo.model.log_record import (
    OUTCOME_KINDS,
    admin_bounce_record,
    admin_rebind_records,
    bounce_content,
    outcome_record,
    reception_record,
    rejection_record,
)
from kumo.model.message import HTTP, Message
from kumo.model.queue_name import QueueName
from kumo.model.recovery import PendingRebinds, live_at_failure
from kumo.model.retention import base_projection
from kumo.model.state import Rule, State


@attrs.frozen(slots=True)
class Violation:
    """One broken invariant: which check, where (a seq, a file and line), and what."""

    check: str
    where: str
    problem: str
    seq: int | None = None
    """The log position it concerns, when there is one (for sorting and tools)."""


def at_seq(seq: int) -> str:
    """The ``where`` of a violation found at a log position."""
    return f"seq {seq}"


@attrs.frozen(slots=True)
class _Received:
    seq: int
    time: int
    queue: str
    arrival_rule: str | None
    """The rule that had to bounce it at arrival, if one was live and matching."""
    sender: str
    recipient: str
    size: int
    protocol: str
    peer: PeerAddress | None


class InvariantCheck:
    """Folds committed events and checks conservation, attribution and counters.

    Call :meth:`apply` with every committed event in log order, then :meth:`finish`
    once. Memory grows with the number of messages (a few hundred bytes each).

    ``base``: the state at a retention cut (it must hold its messages), for a log that
    begins after it; :meth:`apply` then takes the events after ``base.last_seq``. The
    check keeps what it needs of it (it reads ``base`` once, here, and never changes it).
    """

    def __init__(self, base: State | None = None) -> None:
        self.projection = State(keep_messages=False) if base is None else base_projection(base)
        self.violations: list[Violation] = []
        self.received: dict[str, _Received] = {}
        self.bounced: dict[str, tuple[int, str, str]] = {}
        """Message id -> (seq, queue, rule id) of the ``Bounced`` that took it."""
        self.bounced_protocols: dict[str, str] = {}
        """Message id -> the reception protocol its ``Bounced`` carries, for those not
        received over HTTP (what its AdminBounce record says: the event's, as written)."""
        self.tally: Counter[tuple[str, str]] = Counter()
        """(rule id, queue) -> messages the ``Bounced`` events give that rule there."""
        self.bounced_events = 0
        self.rejected: list[int] = []
        """The seqs of the ``Rejected`` events, in log order."""
        self.rejections: list[Committed] = []
        """The ``Rejected`` events themselves, in log order (their records' fields)."""
        self.bounce_times: dict[int, int] = {}
        """Seq -> commit time of each ``Bounced`` event (its records' time)."""
        self.departed: dict[str, tuple[int, str]] = {}
        """Message id -> (seq, event type) of the mail-path event that took it out
        (``Delivered``, ``PermanentlyFailed``, ``Expired``)."""
        self.outcomes: list[Committed] = []
        """The mail-path events, in log order (one record each)."""
        self.rebounds: list[Committed] = []
        """The ``Rebound`` events, in log order."""
        self._moved: dict[str, str] = {}
        """Message id -> the queue a rebind moved it to (its last ``Rebound``'s)."""
        self._expiring: set[str] = set()
        """Messages whose last failure expired them (their ``Expired`` comes next)."""
        self._anchors: dict[str, tuple[int, str | None]] = {}
        """Message id -> (seq of its last ``TransientlyFailed``, the rule live and
        matching then): what its attribution counts from after a failed attempt."""
        # Strings and sizes that repeat from message to message, held once each:
        # verification keeps a million messages.
        self._strings: dict[str, str] = {}
        self._sizes: dict[int, int] = {}
        self.queues: dict[str, list[str]] = {}
        """What :meth:`queued` returned when :meth:`finish` ran."""
        # Queue -> rules not ended by an event that match it, newest first; dropped
        # whenever a rule event changes what is live.
        self._live_matching: dict[str, list[Rule]] = {}
        # Queue -> (issued seq, rule id) of every matching rule issued after the queue
        # was first seen, in log order: where an unclaimed message's sweep comes from.
        self._issued_matching: dict[str, list[tuple[int, str]]] = {}
        self.cut = 0
        """The last seq of the base the check starts from (0: the log starts at seq 1)."""
        self.gone_before_cut = 0
        """Messages received and gone (bounced) before the cut: the base counts them in
        its ``received_total``, but no event of theirs is left."""
        if base is not None:
            self._start_from(base)

    def _start_from(self, base: State) -> None:
        """Take the base's queued messages as received, and its counters as counted."""
        if base.queues is None:
            raise ValueError("the base of a check must hold its messages")
        self.cut = base.last_seq
        rules = list(self.projection.rules.rules.values())  # in issue order
        for rule in rules:
            for queue, count in rule.bounced.items():
                self.tally[rule.id, queue] = count
        rules = [rule for rule in rules if not rule.ended_on_arrival]  # they never swept
        queued = 0
        strings = self._strings
        for name, messages in base.queues.items():
            matching = [rule for rule in rules if rule.criteria.matches(name)]
            self._issued_matching[name] = [(rule.issued_seq, rule.id) for rule in matching]
            for message in messages:
                queued += 1
                retried = base.schedule.get(message.id)
                if retried is not None and retried.anchor_seq != message.seq:
                    # Failed before the cut: its attribution counts from that failure.
                    live = live_at_failure(retried, matching)
                    self._anchors[message.id] = (
                        retried.anchor_seq,
                        None if live is None else live.id,
                    )
                    if retried.expiry is not None:
                        self._expiring.add(message.id)
                self.received[message.id] = _Received(
                    message.seq,
                    message.received_at,
                    name,
                    _arrival_rule(matching, message.seq, message.received_at),
                    strings.setdefault(message.sender, message.sender),
                    message.recipient,
                    self._sizes.setdefault(message.size, message.size),
                    # Not in the base (its Reception record is before the cut, unchecked).
                    "",
                    None,
                )
        self.gone_before_cut = base.received_total - queued
        if self.gone_before_cut < 0:
            self._violate(
                "counters",
                self.cut,
                f"the base at the cut counts {base.received_total} messages received, "
                f"but holds {queued} queued",
            )

    @classmethod
    def over(cls, log: Iterable[Committed]) -> InvariantCheck:
        """The check of a whole log held in memory, finished."""
        check = cls()
        for committed in log:
            check.apply(committed)
        check.finish()
        return check

    def _violate(self, check: str, seq: int, problem: str) -> None:
        self.violations.append(Violation(check, at_seq(seq), problem, seq))

    def apply(self, committed: Committed) -> None:
        """Fold one committed event (log order, each once), noting what it breaks."""
        event = committed.event
        seq = committed.seq
        if isinstance(event, MessageReceived):
            self._receive(committed, event)
        elif isinstance(event, Bounced):
            self._bounce(committed, event)
        elif isinstance(event, Rejected):
            self.rejected.append(seq)
            self.rejections.append(committed)
        elif isinstance(event, Outcome):
            self._outcome(committed, event)
        elif isinstance(event, Rebound):
            self._rebound(committed, event)
        else:
            self._live_matching.clear()
            self.projection.apply(committed)
            if isinstance(event, BounceIssued) and not self._lost_on_arrival(event.rule_id):
                for queue, issued in self._issued_matching.items():
                    if event.criteria.matches(queue):
                        issued.append((seq, event.rule_id))
            return
        self.projection.apply(committed)

    def _lost_on_arrival(self, rule_id: str) -> bool:
        """A rule that lost to an equal rule of another node when it arrived, or that
        arrived ended: it never swept, so no message counts to it."""
        rule = self.projection.rules.rules.get(rule_id)
        return rule is not None and rule.ended_on_arrival

    def _receive(self, committed: Committed, event: MessageReceived) -> None:
        previous = self.received.get(event.message_id)
        if previous is not None:
            self._violate(
                "conservation",
                committed.seq,
                f"message {event.message_id} received again (first at seq {previous.seq})",
            )
            return
        queue = event.queue
        if queue not in self._issued_matching:
            self._issued_matching[queue] = []
        arrival_rule = self._live_rule(queue, committed.time)
        strings = self._strings
        self.received[event.message_id] = _Received(
            committed.seq,
            committed.time,
            queue,
            arrival_rule,
            strings.setdefault(event.sender, event.sender),
            event.recipient,
            self._sizes.setdefault(event.size, event.size),
            strings.setdefault(event.protocol, event.protocol),
            event.peer,
        )

    def _live_rule(self, queue: str, time: int) -> str | None:
        """The most recently issued rule live at ``time`` that matches ``queue``."""
        live = self._live_matching.get(queue)
        if live is None:
            parsed = QueueName.parse(queue)
            live = [r for r in self.projection.rules.live_rules() if r.criteria.matches(parsed)]
            live.reverse()
            self._live_matching[queue] = live
        return next((rule.id for rule in live if rule.live_at(time)), None)

    def _outcome(self, committed: Committed, event: Outcome) -> None:
        seq, mid = committed.seq, event.message.id
        self.outcomes.append(committed)
        queue = self._held_by(seq, event.message, event.queue, "attempted", "from")
        if queue is None:
            return
        if isinstance(event, Suspended):
            self._check_holder(seq, event)
        if isinstance(event, TransientlyFailed):
            self._anchors[mid] = (seq, self._live_rule(queue, committed.time))
            if event.expiry is not None:
                self._expiring.add(mid)
        elif isinstance(event, DEPARTURES):
            self.departed[mid] = (seq, type(event).__name__)

    def _held_by(
        self, seq: int, message: Message, queue: str, verb: str, preposition: str
    ) -> str | None:
        """Check that ``message``, which an event at ``seq`` ``verb`` (``preposition``
        ``queue``), was received, has not left, is held by ``queue`` and is the message
        received; return the queue that holds it, None if it is unknown or gone (each a
        violation)."""
        mid = message.id
        received = self.received.get(mid)
        if received is None:
            self._violate("conservation", seq, f"message {mid} {verb} but never received")
            return None
        gone = self.gone(mid)
        if gone is not None:
            self._violate("conservation", seq, f"message {mid} {verb} after it left ({gone})")
            return None
        held = self.queue_of(mid, received)
        if held != queue:
            self._violate(
                "conservation",
                seq,
                f"message {mid} {verb} {preposition} {queue} but {self._placed(mid, held)}",
            )
        if message.seq != received.seq or message.received_at != received.time:
            self._violate(
                "conservation",
                seq,
                f"message {mid} is {verb} as received at seq {message.seq}, "
                f"but was received at seq {received.seq}",
            )
        return held

    def _check_holder(self, seq: int, event: Suspended) -> None:
        """A held message names a suspension issued before it that may hold it: a
        scheduled-queue one matching its queue, or a ready-queue one of the ready queue
        it names. (Not that it was live: the queue decides on its clock, and the end
        may reach the log first; the message is then due at once, as the fold says.)"""
        projection = self.projection
        if event.ready_queue is None:
            rule = projection.suspends.rules.get(event.rule_id)
            if rule is None or not rule.criteria.matches(event.queue):
                self._violate(
                    "attribution",
                    seq,
                    f"message {event.message.id} held by suspension {event.rule_id}, which "
                    + ("was never issued" if rule is None else f"does not match {event.queue}"),
                )
            return
        ready = projection.ready_suspends.rules.get(event.rule_id)
        if ready is None or ready.name != event.ready_queue:
            self._violate(
                "attribution",
                seq,
                f"message {event.message.id} held by ready-queue suspension {event.rule_id}, "
                + (
                    "never issued"
                    if ready is None
                    else f"which suspends {ready.name}, not {event.ready_queue}"
                ),
            )

    def gone(self, mid: str) -> str | None:
        """How message ``mid`` left, if it did: ``bounced at seq N``, ``Delivered at seq N``."""
        bounced = self.bounced.get(mid)
        if bounced is not None:
            return f"bounced at seq {bounced[0]}"
        departed = self.departed.get(mid)
        if departed is not None:
            return f"{departed[1]} at seq {departed[0]}"
        return None

    def _bounce(self, committed: Committed, event: Bounced) -> None:
        seq = committed.seq
        self.bounced_events += 1
        self.bounce_times[seq] = committed.time
        rule = self.projection.rules.rules.get(event.rule_id)
        if rule is None:
            self._violate("conservation", seq, f"bounced by rule {event.rule_id}, never issued")
        elif not rule.criteria.matches(event.queue):
            self._violate(
                "attribution",
                seq,
                f"rule {rule.id} ({rule.criteria.describe()}) does not match queue {event.queue}",
            )
        self.tally[event.rule_id, event.queue] += len(event.messages)
        for message in event.messages:
            mid = message.id
            first = self.bounced.get(mid)
            if first is not None:
                self._violate(
                    "conservation", seq, f"message {mid} bounced again (first at seq {first[0]})"
                )
                continue
            departed = self.departed.get(mid)
            if departed is not None:
                self._violate(
                    "conservation",
                    seq,
                    f"message {mid} bounced after it left ({departed[1]} at seq {departed[0]})",
                )
                continue
            self.bounced[mid] = (seq, event.queue, event.rule_id)
            if message.protocol != HTTP:
                self.bounced_protocols[mid] = message.protocol
            received = self.received.get(mid)
            if received is None:
                self._violate("conservation", seq, f"message {mid} bounced but never received")
                continue
            queue = self.queue_of(mid, received)
            if queue != event.queue:
                self._violate(
                    "conservation",
                    seq,
                    f"message {mid} bounced out of {event.queue} but {self._placed(mid, queue)}",
                )
            if message.seq != received.seq or message.received_at != received.time:
                self._violate(
                    "conservation",
                    seq,
                    f"message {mid} is bounced as received at seq {message.seq}, "
                    f"but was received at seq {received.seq}",
                )
            elif (message.sender, message.recipient, message.size) != (
                received.sender,
                received.recipient,
                received.size,
            ):
                self._violate(
                    "conservation",
                    seq,
                    f"message {mid} is bounced as from {message.sender} to "
                    f"{message.recipient}, {message.size} bytes, but was received from "
                    f"{received.sender} to {received.recipient}, {received.size} bytes",
                )
            expected = self._attributed_rule(mid, received)
            if rule is not None and expected != event.rule_id:
                self._violate(
                    "attribution",
                    seq,
                    f"message {mid} bounced by rule {event.rule_id}, but "
                    + (
                        f"rule {expected} was due to take it"
                        if expected
                        else "no rule was live when it arrived or issued after"
                    ),
                )

    def queue_of(self, mid: str, received: _Received) -> str:
        """The queue message ``mid`` is in (as far as the log has gone): the one it was
        received into, or the one its last rebind moved it to."""
        return self._moved.get(mid, received.queue) if self._moved else received.queue

    def _placed(self, mid: str, queue: str) -> str:
        """Where message ``mid`` (in ``queue``) was put, in words."""
        how = "rebound" if mid in self._moved else "received"
        return f"was {how} into {queue}"

    def _rebound(self, committed: Committed, event: Rebound) -> None:
        """A rebind moved messages: each must be held by the queue it leaves; it arrives
        in the other at this commit (its attribution counts from here)."""
        seq = committed.seq
        self.rebounds.append(committed)
        to_queue = event.to_queue
        if to_queue not in self._issued_matching:
            self._issued_matching[to_queue] = []
        live = self._live_rule(to_queue, committed.time)
        for message in event.messages:
            mid = message.id
            if self._held_by(seq, message, event.queue, "rebound", "out of") is None:
                continue
            self._moved[mid] = to_queue
            self._anchors[mid] = (seq, live)
            self._expiring.discard(mid)

    def _attributed_rule(self, mid: str, received: _Received) -> str | None:
        """The rule the message counts to, as far as the log has gone (see the module
        docstring); after a failed attempt, counted from that attempt as from an arrival."""
        since, live = received.seq, received.arrival_rule
        anchor = self._anchors.get(mid)
        if anchor is not None:
            since, live = anchor
        if live is not None:
            return live
        issued = self._issued_matching.get(self.queue_of(mid, received), [])
        index = bisect.bisect_right(issued, (since, "\uffff"))
        return issued[index][1] if index < len(issued) else None

    def queued(self) -> dict[str, list[str]]:
        """Queue -> ids of the messages received and not gone, in arrival order."""
        queues: dict[str, list[str]] = {}
        bounced, departed = self.bounced, self.departed
        for mid, received in self.received.items():
            if mid not in bounced and mid not in departed:
                queues.setdefault(self.queue_of(mid, received), []).append(mid)
        return queues

    def owed(self) -> dict[str, int]:
        """Rule id -> queued messages that rule should have bounced already.

        Not a violation: a crash between a rule's decision and its ``Bounced`` commit
        leaves such messages, and the next start bounces them (``unfinished_bounces``).
        """
        owed: Counter[str] = Counter()
        bounced, departed = self.bounced, self.departed
        for mid, received in self.received.items():
            if mid not in bounced and mid not in departed and mid not in self._expiring:
                rule = self._attributed_rule(mid, received)
                if rule is not None:
                    owed[rule] += 1
        return dict(owed)

    def owed_rebinds(self) -> dict[str, int]:
        """Rebind id -> queued messages it still owes a move to another queue.

        Not a violation: a crash between a rebind's ``RebindIssued`` and a queue's
        ``Rebound`` leaves them, and the next start moves them
        (:func:`kumo.model.recovery.owed_rebinds`, whose rule this follows: each message
        placed in a matching queue before the rebind, and still there, moves by the first
        such rebind whose move out of that queue the log lacks). A message that owes a
        bounce (:meth:`owed`) or an expiry stays for that.
        """
        rebinds = PendingRebinds(self.projection.rebinds.values())
        if not rebinds:
            return {}
        owed: Counter[str] = Counter()
        received, anchors = self.received, self._anchors
        for queue, ids in self.queued().items():
            places: list[int] = []
            for mid in ids:
                if mid in self._expiring or self._attributed_rule(mid, received[mid]) is not None:
                    continue
                anchor = anchors.get(mid)
                places.append(received[mid].seq if anchor is None else anchor[0])
            if not places:
                continue
            owing = rebinds.owing(queue, min(places))
            if not owing:
                continue
            for place in places:
                found = owing.first_after(place)
                if found is not None:
                    owed[found[0].event.rebind_id] += 1
        return dict(owed)

    def finish(self) -> list[Violation]:
        """Check the rebuilt counters and gauges; return every violation found."""
        projection = self.projection
        last = projection.last_seq
        rules = projection.rules.rules
        counted = {(rule.id, queue) for rule in rules.values() for queue in rule.bounced}
        for rule_id, queue in sorted(counted | {key for key in self.tally if key[0] in rules}):
            counter = rules[rule_id].bounced.get(queue, 0)
            events = self.tally.get((rule_id, queue), 0)
            if counter != events:
                self.violations.append(
                    Violation(
                        "counters",
                        f"rule {rule_id}",
                        f"counter for {queue} is {counter}, its Bounced events hold {events}",
                    )
                )
        for rule in rules.values():
            if sum(rule.bounced.values()) != rule.total_bounced:
                self.violations.append(
                    Violation(
                        "counters",
                        f"rule {rule.id}",
                        f"total_bounced {rule.total_bounced} is not the sum of its queues",
                    )
                )
        self.queues = self.queued()
        queued = {queue: len(ids) for queue, ids in self.queues.items()}
        if projection.queue_counts != queued:
            differing = sorted(
                queue
                for queue in set(queued) | set(projection.queue_counts)
                if queued.get(queue, 0) != projection.queue_counts.get(queue, 0)
            )
            self.violations.append(
                Violation(
                    "counters",
                    at_seq(last),
                    f"queue gauges differ from received minus bounced in {len(differing)} "
                    f"queue(s), first {differing[0]}: gauge "
                    f"{projection.queue_counts.get(differing[0], 0)}, "
                    f"messages {queued.get(differing[0], 0)}",
                    last,
                )
            )
        if projection.received_total != len(self.received) + max(self.gone_before_cut, 0):
            before = (
                f" (and {self.gone_before_cut} gone before the cut)" if self.gone_before_cut else ""
            )
            self.violations.append(
                Violation(
                    "counters",
                    at_seq(last),
                    f"received_total {projection.received_total} but "
                    f"{len(self.received)} distinct messages received{before}",
                    last,
                )
            )
        return self.violations


def _arrival_rule(matching: list[Rule], seq: int, time: int) -> str | None:
    """The rule that was due to bounce a message arriving at ``seq`` and ``time`` into a
    queue that ``matching`` (rules in issue order) match, as :meth:`InvariantCheck.apply`
    would have found it then: the newest one issued before it, not ended by an event
    before it, and live at its time."""
    for rule in reversed(matching):
        if (
            rule.issued_seq < seq
            and not rule.issued_expired
            and (rule.ended_seq is None or rule.ended_seq > seq)
            and time < rule.expires_at
        ):
            return rule.id
    return None


MISSING_SAMPLE: Final = 3
"""How many message ids a violation about missing records names."""
DIFFERENCES_SHOWN: Final = 3
"""How many differing fields a violation about a record shows with their values."""


class ExpectedRecord(NamedTuple):
    """A delivery-log record that the log calls for (a tuple: there is one per message)."""

    seq: int
    queue: str
    content: str | None
    """The AdminBounce response content; ``None`` for a Reception."""


def record_differences(expected: Mapping[str, Any], found: Mapping[str, Any]) -> list[str]:
    """The fields in which ``found`` differs from ``expected``, in ``expected``'s order
    (then ``found``'s extra ones); a field holding an object is compared field by field
    (``response.code``)."""
    differences: list[str] = []
    for key in [*expected, *(key for key in found if key not in expected)]:
        want, got = expected.get(key, _ABSENT), found.get(key, _ABSENT)
        if want == got:
            continue
        if isinstance(want, dict) and isinstance(got, dict):
            differences.extend(f"{key}.{inner}" for inner in record_differences(want, got))
        else:
            differences.append(key)
    return differences


_OUTCOME_RECORDS: Final = frozenset(OUTCOME_KINDS.values())

_ABSENT: Final = object()
_TEMPLATES_KEPT: Final = 4_096
"""Record templates kept (records come in log order: a batch's are together)."""


def _field(record: Mapping[str, Any], path: str) -> object:
    """The value at ``path`` (``response.code``) in ``record``, or :data:`_ABSENT`."""
    value: object = record
    for key in path.split("."):
        if not isinstance(value, Mapping):
            return _ABSENT
        value = value.get(key, _ABSENT)
    return value


def _shown(value: object) -> str:
    return "(absent)" if value is _ABSENT else repr(value)


class DeliveryLogCheck:
    """Compares delivery-log records with what an :class:`InvariantCheck` fold expects.

    Feed every record of every segment, in file order, to :meth:`check` (every field)
    or :meth:`record` (which message, its queue and its bounce text only), then call
    :meth:`finish`. ``checkpoint_seq`` is the delivery log's checkpoint: every record
    for an event up to it must be present; records for later events may or may not be
    written yet. ``None`` means there is no checkpoint to trust (missing, unreadable):
    then the records themselves say how far the files go (the last event any record
    is for, :attr:`through`), and every record up to there must be present, since
    records are written in log order. ``checkpoint_where`` names the checkpoint in a
    violation (the store knows its file; the model does not).

    After a retention cut (``invariants.cut``), the files begin with the records of
    the deleted events. Records are written in log order, so those come first: until
    the first record that an event after the cut calls for, a record is taken as one
    of them (counted in :attr:`before_cut`, compared with nothing) unless it is one
    the kept log calls for: the Reception of a message received after the cut, the
    AdminBounce of a message bounced after it, or a Rejection equal, field for field,
    to the one the first kept ``Rejected`` event calls for. From that record on,
    every record is checked as without a cut.
    """

    def __init__(
        self,
        invariants: InvariantCheck,
        *,
        checkpoint_seq: int | None,
        last_seq: int,
        checkpoint_where: str = "the delivery-log checkpoint",
    ) -> None:
        self.checkpoint_seq = checkpoint_seq
        self.last_seq = last_seq
        self.violations: list[Violation] = []
        self._invariants = invariants
        cut = invariants.cut
        # The Receptions of the messages queued at the cut are before it.
        self.receptions: dict[str, ExpectedRecord] = {
            mid: ExpectedRecord(received.seq, received.queue, None)
            for mid, received in invariants.received.items()
            if received.seq > cut
        }
        rules = invariants.projection.rules.rules
        self._reasons: dict[str, str] = {}
        self.bounces: dict[str, ExpectedRecord] = {}
        self.suppressed: dict[str, str] = {}
        """Message id -> id of the suppressing rule that bounced it."""
        contents: dict[str, str] = {}
        for mid, (seq, queue, rule_id) in invariants.bounced.items():
            rule = rules.get(rule_id)
            if rule is None:
                continue
            if rule.suppress_logging:
                self.suppressed[mid] = rule_id
                continue
            content = contents.get(rule_id)
            if content is None:
                content = contents[rule_id] = bounce_content(rule.reason)
                self._reasons[rule_id] = rule.reason
            self.bounces[mid] = ExpectedRecord(seq, queue, content)
        self.rejected = invariants.rejected
        self.rebind_records: list[tuple[Committed, int]] = []
        """``(Rebound event, index of its message)`` of each AdminRebind record the log
        calls for, in the order they are written (a message may be rebound many
        times: the n-th record is the n-th of these)."""
        for committed in invariants.rebounds:
            rebound = committed.event
            assert isinstance(rebound, Rebound)
            if not rebound.suppress_logging:
                self.rebind_records.extend((committed, i) for i in range(len(rebound.messages)))
        self._rebind_seqs = [committed.seq for committed, _ in self.rebind_records]
        self._rebinds_seen = 0
        self._rebind_cache: tuple[int, list[dict[str, Any]]] | None = None
        self.outcomes = invariants.outcomes
        self._outcome_seqs = [committed.seq for committed in invariants.outcomes]
        self._outcomes_seen = 0
        self.seen: Counter[str] = Counter()
        """Record type -> records read."""
        self.through = 0
        """The last event that a record read so far is for (0: none)."""
        self._seen_receptions: set[str] = set()
        self._seen_bounces: set[str] = set()
        self._templates: dict[tuple[object, ...], dict[str, Any]] = {}
        self.before_cut = 0
        """Records taken as those of events before the retention cut (not compared)."""
        self._in_prefix = cut > 0
        if checkpoint_seq is not None and checkpoint_seq > last_seq:
            self.violations.append(
                Violation(
                    "checkpoint",
                    checkpoint_where,
                    f"the delivery log is checkpointed at seq {checkpoint_seq} but the event "
                    f"log ends at seq {last_seq}: events {last_seq + 1}..{checkpoint_seq} "
                    "are missing (the log was truncated)",
                    last_seq + 1,
                )
            )

    @property
    def due_through(self) -> int:
        """Every record for an event up to this seq must be present."""
        return self.checkpoint_seq if self.checkpoint_seq is not None else self.through

    def record(
        self, kind: str, message_id: str, queue: str, content: str | None, where: str
    ) -> None:
        """Check one delivery-log record by its message (``where`` names its file and
        line): that the log calls for it, once, in that queue, with that bounce text."""
        if self._before_cut(kind, message_id, None, content):
            return
        self._match(kind, message_id, queue, content, where)

    def check(self, record: Mapping[str, Any], where: str) -> None:
        """Check one decoded delivery-log record, every field of it: as :meth:`record`
        does, then that it is the record kumo writes for that event (sender,
        recipient, size, times, response, peer, protocol, the constant fields).

        ``nodeid`` is the one field the log does not hold (it is the node's id when
        the record was written, which a configuration may change): any non-empty
        string passes.
        """
        kind, message_id, queue = record.get("type"), record.get("id"), record.get("queue")
        response = record.get("response")
        content = response.get("content") if isinstance(response, dict) else None
        if not (isinstance(kind, str) and isinstance(message_id, str) and isinstance(queue, str)):
            self._bad(where, "not a delivery-log record")
            return
        if self._before_cut(kind, message_id, record, content):
            return
        matched = self._match(kind, message_id, queue, content, where)
        if matched is None:
            return
        node_id = record.get("nodeid")
        node = node_id if isinstance(node_id, str) else ""
        expected = self._expected(kind, message_id, matched, node)
        if expected is None or (expected == record and node):
            return
        differences = record_differences(expected, record)
        if not node:
            differences.append("nodeid")
        # Reported by _match already.
        reported = {"queue", "response.content"}
        differences = [name for name in differences if name not in reported]
        if differences:
            shown = "; ".join(
                f"{name} {_shown(_field(record, name))}, log says {_shown(_field(expected, name))}"
                for name in differences[:DIFFERENCES_SHOWN]
            )
            more = len(differences) - DIFFERENCES_SHOWN
            self._bad(
                where,
                f"{kind} for {message_id or 'a rejection'} differs from the log's event at "
                f"seq {matched}: {shown}" + (f" (and {more} more field(s))" if more > 0 else ""),
            )

    def _before_cut(
        self, kind: str, message_id: str, record: Mapping[str, Any] | None, content: object
    ) -> bool:
        """Whether a record is taken as one of an event before the retention cut (see
        the class docstring); counted if so. ``record``: the whole record, if known."""
        if not self._in_prefix:
            return False
        if kind == "Reception":
            kept = message_id in self.receptions
        elif kind == "AdminBounce":
            kept = message_id in self.bounces or message_id in self.suppressed
        elif kind == "Rejection":
            kept = self._is_first_rejection(record, content)
        elif kind == "AdminRebind":
            kept = bool(self.rebind_records) and self._rebound_id(0) == message_id
        else:
            # Not ours to judge, before the cut or after it.
            return False
        if kept:
            self._in_prefix = False
            return False
        self.before_cut += 1
        return True

    def _is_first_rejection(self, record: Mapping[str, Any] | None, content: object) -> bool:
        """Whether a Rejection is the record of the first kept ``Rejected`` event: every
        field its record holds (the node aside), or without the whole record, its
        response text."""
        rejections = self._invariants.rejections
        if not rejections:
            return False
        first = rejections[0]
        assert isinstance(first.event, Rejected)
        node = record.get("nodeid") if record is not None else None
        expected = rejection_record(
            first.event, rejected_at=first.time, node_id=node if isinstance(node, str) else ""
        )
        if record is None:
            return bool(content == expected["response"]["content"])
        return dict(record) == expected

    def _match(
        self, kind: str, message_id: str, queue: str, content: str | None, where: str
    ) -> int | None:
        """Count and identify one record; return the seq of the event it is for, or
        ``None`` if the log does not call for it (reported) or it is not ours to judge."""
        self.seen[kind] += 1
        if kind == "Reception":
            expected = self.receptions.get(message_id)
            seen = self._seen_receptions
            if expected is None:
                self._bad(where, f"Reception for {message_id}, which the log never received")
                return None
        elif kind == "AdminBounce":
            expected = self.bounces.get(message_id)
            seen = self._seen_bounces
            if expected is None:
                rule_id = self.suppressed.get(message_id)
                self._bad(
                    where,
                    f"AdminBounce for {message_id}, whose rule {rule_id} suppresses logging"
                    if rule_id
                    else f"AdminBounce for {message_id}, which the log never bounced",
                )
                return None
        elif kind == "Rejection":
            # Rejections name no message: the n-th record is the n-th Rejected event's
            # (records are written in log order); finish() compares their number.
            index = self.seen["Rejection"] - 1
            if index >= len(self.rejected):
                return None
            seq = self.rejected[index]
            self.through = max(self.through, seq)
            return seq
        elif kind == "AdminRebind":
            index = self._rebinds_seen
            self._rebinds_seen += 1
            if index >= len(self.rebind_records):
                self._bad(
                    where,
                    f"AdminRebind for {message_id}, but the log calls for only "
                    f"{len(self.rebind_records)} AdminRebind record(s)",
                )
                return None
            committed, _ = self.rebind_records[index]
            rebound = committed.event
            assert isinstance(rebound, Rebound)
            wanted = self._rebound_id(index)
            if wanted != message_id:
                self._bad(
                    where,
                    f"AdminRebind for {message_id}, but the log's next rebound message (seq "
                    f"{committed.seq}) is {wanted}",
                )
                return None
            self.through = max(self.through, committed.seq)
            if queue != rebound.to_queue:
                self._bad(
                    where,
                    f"AdminRebind for {message_id} names queue {queue}, log says "
                    f"{rebound.to_queue}",
                )
            return committed.seq
        elif kind in _OUTCOME_RECORDS:
            # A message may fail many times: the n-th record of the mail path is the
            # n-th mail-path event's (records are written in log order).
            index = self._outcomes_seen
            self._outcomes_seen += 1
            if index >= len(self.outcomes):
                self._bad(
                    where,
                    f"{kind} for {message_id}, but the log holds only {len(self.outcomes)} "
                    "mail-path event(s)",
                )
                return None
            committed = self.outcomes[index]
            event = committed.event
            assert isinstance(event, Outcome)
            want = OUTCOME_KINDS[type(event)]
            if want != kind or event.message.id != message_id:
                self._bad(
                    where,
                    f"{kind} for {message_id}, but the log's next mail-path event (seq "
                    f"{committed.seq}) calls for {want} for {event.message.id}",
                )
                return None
            self.through = max(self.through, committed.seq)
            if queue != event.queue:
                self._bad(
                    where, f"{kind} for {message_id} names queue {queue}, log says {event.queue}"
                )
            return committed.seq
        else:
            return None
        if message_id in seen:
            self._bad(where, f"duplicate {kind} record for {message_id}")
            return None
        seen.add(message_id)
        self.through = max(self.through, expected.seq)
        if queue != expected.queue:
            self._bad(
                where, f"{kind} for {message_id} names queue {queue}, log says {expected.queue}"
            )
        if expected.content is not None and content != expected.content:
            self._bad(where, f"AdminBounce for {message_id} has content {content!r}")
        return expected.seq

    def _expected(self, kind: str, message_id: str, seq: int, node: str) -> dict[str, Any] | None:
        """The record kumo writes for ``kind`` of ``message_id`` (event ``seq``) on node
        ``node``: the model's own record, built once per batch that shares everything
        but the message's own fields, then those fields set (building each of a
        million records whole adds some 10 s to a verification)."""
        invariants = self._invariants
        if kind == "AdminRebind":
            committed, position = self.rebind_records[self._rebinds_seen - 1]
            cached = self._rebind_cache
            if cached is None or cached[0] != committed.seq:
                rebound = committed.event
                assert isinstance(rebound, Rebound)
                cached = committed.seq, admin_rebind_records(rebound, at=committed.time, node_id="")
                self._rebind_cache = cached
            return cached[1][position] | {"nodeid": node}
        if kind in _OUTCOME_RECORDS:
            committed = self.outcomes[self._outcomes_seen - 1]
            event = committed.event
            assert isinstance(event, Outcome)
            return outcome_record(event, at=committed.time, node_id=node)
        if kind == "Rejection":
            rejection = invariants.rejections[self.seen["Rejection"] - 1]
            assert isinstance(rejection.event, Rejected)
            return rejection_record(rejection.event, rejected_at=rejection.time, node_id=node)
        received = invariants.received.get(message_id)
        if received is None:
            # Bounced but never received: a conservation violation already, and there is
            # no reception to say what the record must hold.
            return None
        queue = rule_id = ""
        protocol = HTTP
        if kind == "Reception":
            key: tuple[object, ...] = (kind, received.time, received.protocol, received.peer, node)
        else:
            _, queue, rule_id = invariants.bounced[message_id]
            protocol = invariants.bounced_protocols.get(message_id, HTTP)
            key = (kind, seq, queue, rule_id, received.time, protocol, node)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) > _TEMPLATES_KEPT:
                self._templates.clear()
            if kind == "Reception":
                template = self._reception(received, message_id, node)
            else:
                template = self._admin_bounce(
                    received, message_id, seq, queue, rule_id, protocol, node
                )
            self._templates[key] = template
        expected = template.copy()
        expected["id"] = message_id
        expected["sender"] = received.sender
        expected["recipient"] = received.recipient
        expected["size"] = received.size
        if kind == "Reception":
            # A batch of arrivals spreads over many queues: not part of the key.
            expected["queue"] = received.queue
        return expected

    @staticmethod
    def _reception(received: _Received, message_id: str, node: str) -> dict[str, Any]:
        """The whole Reception record, as :mod:`kumo.model.log_record` builds it."""
        event = MessageReceived(
            message_id,
            received.queue,
            received.sender,
            received.recipient,
            received.size,
            received.protocol,
            received.peer,
        )
        return reception_record(event, received_at=received.time, node_id=node)

    def _admin_bounce(
        self,
        received: _Received,
        message_id: str,
        seq: int,
        queue: str,
        rule_id: str,
        protocol: str,
        node: str,
    ) -> dict[str, Any]:
        """The whole AdminBounce record, as :mod:`kumo.model.log_record` builds it."""
        message = Message(
            message_id,
            received.sender,
            received.recipient,
            received.size,
            received.time,
            received.seq,
            protocol,
        )
        return admin_bounce_record(
            message,
            queue=queue,
            reason=self._reasons[rule_id],
            bounced_at=self._invariants.bounce_times[seq],
            node_id=node,
        )

    def _rebound_id(self, index: int) -> str:
        committed, position = self.rebind_records[index]
        rebound = committed.event
        assert isinstance(rebound, Rebound)
        return rebound.messages.ids()[position]

    def _bad(self, where: str, problem: str) -> None:
        self.violations.append(Violation("delivery-log", where, problem))

    def finish(self) -> list[Violation]:
        """Report records missing for events up to :attr:`due_through`; return all
        violations."""
        self._count_rejections()
        self._count_outcomes()
        self._count_rebinds()
        due = self.due_through
        for kind, expected, seen in (
            ("Reception", self.receptions, self._seen_receptions),
            ("AdminBounce", self.bounces, self._seen_bounces),
        ):
            missing: dict[int, list[str]] = {}
            for mid, record in expected.items():
                if record.seq <= due and mid not in seen:
                    missing.setdefault(record.seq, []).append(mid)
            for seq in sorted(missing):
                ids = missing[seq]
                sample = ", ".join(ids[:MISSING_SAMPLE]) + (
                    " ..." if len(ids) > MISSING_SAMPLE else ""
                )
                self.violations.append(
                    Violation(
                        "delivery-log",
                        at_seq(seq),
                        f"no {kind} record for {len(ids)} message(s) of this event: {sample}",
                        seq,
                    )
                )
        return self.violations

    def _count_outcomes(self) -> None:
        written = self._outcomes_seen
        due = bisect.bisect_right(self._outcome_seqs, self.due_through)
        if written < due:
            missing = self.outcomes[written]
            self.violations.append(
                Violation(
                    "delivery-log",
                    at_seq(missing.seq),
                    f"{due - written} mail-path record(s) missing: the log holds {due} "
                    f"mail-path event(s) up to the checkpoint, the files {written} records",
                    missing.seq,
                )
            )

    def _count_rebinds(self) -> None:
        written = self._rebinds_seen
        due = bisect.bisect_right(self._rebind_seqs, self.due_through)
        if written < due:
            missing = self.rebind_records[written][0]
            self.violations.append(
                Violation(
                    "delivery-log",
                    at_seq(missing.seq),
                    f"{due - written} AdminRebind record(s) missing: the log calls for {due} "
                    f"up to the checkpoint, the files hold {written}",
                    missing.seq,
                )
            )

    def _count_rejections(self) -> None:
        # Up to the checkpoint every Rejected event has its record; after it, some may.
        written = self.seen["Rejection"]
        due = self._due_rejections()
        if written < due:
            seq = self.rejected[written]
            self.violations.append(
                Violation(
                    "delivery-log",
                    at_seq(seq),
                    f"{due - written} Rejection record(s) missing: the log holds {due} "
                    f"Rejected event(s) up to the checkpoint, the files {written} records",
                    seq,
                )
            )
        elif written > len(self.rejected):
            self._bad(
                "the delivery log",
                f"{written} Rejection records, but the log holds only "
                f"{len(self.rejected)} Rejected event(s)",
            )

    def pending(self) -> int:
        """Records the log calls for after :attr:`due_through` that are not written yet."""
        due = self.due_through
        rejections = max(
            0, len(self.rejected) - max(self.seen["Rejection"], self._due_rejections())
        )
        outcomes = max(
            0,
            len(self.outcomes)
            - max(self._outcomes_seen, bisect.bisect_right(self._outcome_seqs, due)),
        )
        rebinds = max(
            0,
            len(self.rebind_records)
            - max(self._rebinds_seen, bisect.bisect_right(self._rebind_seqs, due)),
        )
        return (
            rejections
            + rebinds
            + outcomes
            + sum(
                1
                for expected, seen in (
                    (self.receptions, self._seen_receptions),
                    (self.bounces, self._seen_bounces),
                )
                for mid, record in expected.items()
                if record.seq > due and mid not in seen
            )
        )

    def _due_rejections(self) -> int:
        return bisect.bisect_right(self.rejected, self.due_through)

"""What a crash left owed, decided from the folded log alone (no trio, no I/O).

An actor decides a bounce, then submits its ``Bounced`` event; a crash (or a power
failure undoing commits that were not yet fsynced) between the two leaves messages
queued that a rule has already taken. The decisions are pure functions of the log, so
a restart finds them again: a message belongs to the most recently issued rule that
matches its queue and was live at its arrival, else to the first matching rule issued
after it arrived (that rule's sweep). :func:`recover` splits a fold into what the
queues hold from now on and the ``Bounced`` events the engine appends first.

A rebind is the same: each queue it matches decides its move when it applies the
``RebindIssued`` and submits a ``Rebound``; a crash between the two leaves the move
undone. :func:`owed_rebinds` finds it again: the messages the queue held when the
rebind was issued, that are still there and that no bounce or expiry owed takes first,
move in one ``Rebound`` per queue and rebind, which the engine appends with the
bounces. The fold records which queues each rebind moved out of
(:attr:`~kumo.model.state.SeenRebind.moved_from`), so a move is redone until its
``Rebound`` is in the log, and never after.

A message's content stays in the spool after the message left, owed a purge, until the
store deletes it (:mod:`kumo.store.sqlite_log`); a crash forgets what was owed, and
:func:`left_behind` finds it again.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Collection, Iterable, Sequence

import attrs

from kumo.model.events import Bounced, Expired, Message, Rebound
from kumo.model.message_queue import MessageQueue
from kumo.model.queue_name import QueueName, rebound_queue_name
from kumo.model.state import Retry, Rule, SeenRebind, State


@attrs.frozen
class Recovery:
    """A restart's starting point."""

    queues: dict[str, MessageQueue]
    """Each non-empty queue's messages once the owed bounces and moves are taken out."""
    owed: list[Bounced | Expired | Rebound]
    """The expiries, the bounces (each of at most the chunk size) and the moves of
    rebinds (one per queue and rebind) to append before anything else."""
    schedule: dict[str, Retry] = attrs.field(factory=dict)
    """Message id -> the retries of each queued message that has failed before."""


def recover(state: State, *, chunk: int) -> Recovery:
    """Take ``state``'s queued messages (the fold keeps only counts afterwards) and
    split them into what stays queued and what the log's rules owe.

    ``state`` must be a fold that keeps messages.
    """
    owed = owed_bounces(state)
    expiries = owed_expiries(state)
    taken = {message_id for bounce in owed for message_id in bounce.messages.ids()}
    taken.update(expiry.message.id for expiry in expiries)
    moves = owed_rebinds(state, taken=taken)
    queues = state.detach_queues()
    schedule, state.schedule = state.schedule, {}
    leaving_queues: list[Bounced | Rebound] = [*owed, *moves]
    for leaving in leaving_queues:
        ids = set(leaving.messages.ids())
        queues[leaving.queue].remove(ids)
        for message_id in ids:
            schedule.pop(message_id, None)
    for expiry in expiries:
        queues[expiry.queue].remove({expiry.message.id})
        schedule.pop(expiry.message.id, None)
    chunks: list[Bounced | Expired | Rebound] = list(expiries)
    for bounce in owed:
        messages = list(bounce.messages)
        chunks.extend(
            Bounced(bounce.rule_id, bounce.queue, messages[start : start + chunk])
            for start in range(0, len(messages), chunk)
        )
    # One Rebound per queue and rebind, whatever its size: the fold marks the queue
    # moved by it, so a second one could never be told from a double move.
    chunks.extend(moves)
    return Recovery(
        queues={name: messages for name, messages in queues.items() if messages},
        owed=chunks,
        schedule=schedule,
    )


def owed_expiries(state: State) -> list[Expired]:
    """The expiries the log owes: messages whose last ``TransientlyFailed`` expired them
    and whose ``Expired`` (decided when that event came back to their queue) a crash
    lost."""
    if state.queues is None:
        raise RuntimeError("owed_expiries needs a fold that keeps messages")
    owed: list[Expired] = []
    for queue, messages in state.queues.items():
        for message in messages:
            retried = state.schedule.get(message.id)
            if retried is not None and retried.expiry is not None:
                owed.append(Expired(queue, message, retried.attempts, retried.expiry))
    return owed


def owed_rebinds(state: State, *, taken: Collection[str] = ()) -> list[Rebound]:
    """The moves the log's rebinds owe that no ``Rebound`` event records, in the order
    of the rebinds' issue: one per queue and rebind.

    A rebind owes a queue its move when it matches the queue, names another queue for
    its messages, and no ``Rebound`` of it out of that queue is in the log (a crash came
    between its ``RebindIssued`` and that ``Rebound``). It moves the messages the queue
    held when it was issued: those whose place in the queue (their arrival, by
    reception or by an earlier rebind, or their last failed attempt) is before the
    ``RebindIssued``, and that are still there. Mail that arrived afterwards stays, as
    it would have: a rebind is a one-shot action. Of two rebinds owed by one queue, the
    earlier moves first (the later one then moves only what came between them).
    ``taken``: ids of messages that owe a bounce or an expiry (:func:`owed_bounces`,
    :func:`owed_expiries`); they stay for those.

    Each moved message keeps its attempts (from the fold's retries) and, as for any
    ``Rebound``, is an arrival in its new queue when the event is committed.

    Cost: a queue is looked at only for the rebinds issued after its oldest message
    (:class:`PendingRebinds`), so the rebinds of the past, however many, cost a start
    next to nothing.
    """
    if state.queues is None:
        raise RuntimeError("owed_rebinds needs a fold that keeps messages")
    rebinds = PendingRebinds(state.rebinds.values())
    if not rebinds:
        return []
    owed: list[tuple[int, Rebound]] = []
    for queue, messages in state.queues.items():
        seqs = messages.seqs()
        # A message's place is never before its reception: the oldest reception bounds
        # every place from below.
        owing = rebinds.owing(queue, min(seqs)) if seqs else None
        if not owing:
            continue
        moving: dict[str, tuple[SeenRebind, str, list[tuple[Message, int]]]] = {}
        for message in messages:
            if message.id in taken:
                continue
            retried = state.schedule.get(message.id)
            found = owing.first_after(message.seq if retried is None else retried.anchor_seq)
            if found is not None:
                seen, to_queue = found
                entry = moving.get(seen.event.rebind_id)
                if entry is None:
                    entry = moving[seen.event.rebind_id] = (seen, to_queue, [])
                entry[2].append((message, 0 if retried is None else retried.attempts))
        for seen, to_queue, moved in moving.values():
            event = seen.event
            owed.append(
                (
                    seen.seq,
                    Rebound(
                        event.rebind_id,
                        queue,
                        to_queue,
                        [message for message, _ in moved],
                        [attempts for _, attempts in moved],
                        event.reason,
                        event.suppress_logging,
                    ),
                )
            )
    owed.sort(key=lambda item: item[0])
    return [rebound for _, rebound in owed]


class PendingRebinds:
    """Which of the log's rebinds may still owe a queue its move (see
    :func:`owed_rebinds`), for a restart and for ``kumo replay --verify``.

    Only rebinds that may move anything count: not those of a snapshot written before
    kumo kept their moves (which owe nothing), nor those with no ``data`` (a flush:
    every queue keeps its name). A rebind moves only what a queue held when it was
    issued, so one issued before a queue's oldest message owes that queue nothing:
    :meth:`owing` looks only at the rebinds issued after it (found by bisection), and
    matches criteria for those alone.
    """

    __slots__ = ("_rebinds", "_seqs")

    def __init__(self, rebinds: Iterable[SeenRebind]) -> None:
        self._rebinds = sorted(
            (seen for seen in rebinds if seen.moved_from is not None and seen.event.data),
            key=lambda seen: seen.seq,
        )
        self._seqs = [seen.seq for seen in self._rebinds]

    def __bool__(self) -> bool:
        return bool(self._rebinds)

    def owing(self, queue: str, oldest: int) -> QueueRebinds:
        """The rebinds that may owe ``queue`` (whose messages were all placed there at
        seq ``oldest`` or later) its move: issued after ``oldest``, matching ``queue``,
        and with no ``Rebound`` out of ``queue`` in the log."""
        start = bisect.bisect_right(self._seqs, oldest)
        if start == len(self._rebinds):
            return QueueRebinds(queue, [])
        parsed = QueueName.parse(queue)
        return QueueRebinds(
            queue,
            [
                seen
                for seen in self._rebinds[start:]
                if seen.moved_from is not None
                and queue not in seen.moved_from
                and seen.event.criteria.matches(parsed)
            ],
        )


class QueueRebinds:
    """The rebinds that may owe one queue its move (:meth:`PendingRebinds.owing`), in
    issue order. The queue each names for the messages is computed when a message
    needs it, once per rebind: of many rebinds owed, each message moves by the first."""

    __slots__ = ("_names", "_queue", "_rebinds")

    def __init__(self, queue: str, rebinds: list[SeenRebind]) -> None:
        self._queue = queue
        self._rebinds = rebinds
        self._names: dict[int, str] = {}

    def __bool__(self) -> bool:
        return bool(self._rebinds)

    def first_after(self, anchor: int) -> tuple[SeenRebind, str] | None:
        """The rebind that owes the move of a message placed in the queue at seq
        ``anchor``, and the queue it moves it to: the first issued after ``anchor`` that
        names another queue (one that names this very queue moves nothing); None if
        none does."""
        for seen in self._rebinds:
            if seen.seq <= anchor:
                continue
            to_queue = self._names.get(seen.seq)
            if to_queue is None:
                to_queue = rebound_queue_name(self._queue, seen.event.data_map)
                self._names[seen.seq] = to_queue
            if to_queue != self._queue:
                return seen, to_queue
        return None


def owed_bounces(state: State) -> list[Bounced]:
    """The bounces the log's rules owe that no ``Bounced`` event records.

    These are the messages still queued that a rule should have taken: the most recent
    rule live at the message's arrival, else the first matching rule issued after it
    (the sweep that a crash cut short). Applying them changes nothing else.
    """
    if state.queues is None:
        raise RuntimeError("owed_bounces needs a fold that keeps messages")
    decisions: list[Bounced] = []
    # A rule that lost to an equal rule of another node on arrival, or arrived
    # ended, never swept.
    all_rules = sorted(
        (rule for rule in state.rules.rules.values() if not rule.ended_on_arrival),
        key=lambda rule: rule.issued_seq,
    )
    for queue, messages in state.queues.items():
        parsed = QueueName.parse(queue)
        rules = [rule for rule in all_rules if rule.criteria.matches(parsed)]
        if not rules:
            continue
        owed: dict[str, list[Message]] = {}
        for message in messages:
            retried = state.schedule.get(message.id)
            if retried is not None and retried.expiry is not None:
                continue  # it expires: owed_expiries
            rule = _fate(message, rules) if retried is None else _fate_after_failure(retried, rules)
            if rule is not None:
                owed.setdefault(rule.id, []).append(message)
        decisions.extend(
            Bounced(rule_id=rule_id, queue=queue, messages=taken) for rule_id, taken in owed.items()
        )
    return decisions


def _sweep_after(rules: list[Rule], seq: int) -> Rule | None:
    """The first of ``rules`` issued after ``seq``: the sweep that owes a message whose
    last attempt failed at ``seq`` (a rule live then would have bounced it at once, in
    the same commit, and rules issued before it swept while it was in flight)."""
    return next((rule for rule in rules if rule.issued_seq > seq), None)


def _fate_after_failure(retried: Retry, rules: list[Rule]) -> Rule | None:
    """Which of ``rules`` takes a message whose last attempt failed transiently, as
    an arrival at that failure would be taken: by the most recent rule live then (its
    queue bounces it at once, or sweeps it when it learns of the rule), else by the
    sweep of the first rule issued after."""
    live = live_at_failure(retried, rules)
    return live if live is not None else _sweep_after(rules, retried.anchor_seq)


def live_at_failure(retried: Retry, rules: list[Rule]) -> Rule | None:
    """The most recently issued of ``rules`` live at a message's last failure (its
    ``TransientlyFailed``'s place and time in the log), if any."""
    for rule in reversed(rules):
        if (
            rule.issued_seq < retried.anchor_seq
            and not rule.issued_expired
            and (rule.ended_seq is None or rule.ended_seq > retried.anchor_seq)
            and retried.anchor_time < rule.expires_at
        ):
            return rule
    return None


def _fate(message: Message, rules: list[Rule]) -> Rule | None:
    """Which of ``rules`` (matching the queue, in issue order) takes ``message``."""
    for rule in reversed(rules):
        if rule.issued_seq > message.seq:
            continue
        if (
            not rule.issued_expired
            and (rule.ended_seq is None or rule.ended_seq > message.seq)
            and message.received_at < rule.expires_at
        ):
            return rule
    return _sweep_after(rules, message.seq)


def left_behind(spooled: Iterable[Sequence[int]], queued: Iterable[Sequence[int]]) -> array[int]:
    """The seqs of the spooled contents that no queue holds a message of: ``spooled``,
    the spool's seqs in order, in chunks; ``queued``, each queue's messages' seqs."""
    held = array("q")
    for seqs in queued:
        held.extend(seqs)
    held = array("q", sorted(held))
    found = array("q")
    index, end = 0, len(held)
    for chunk in spooled:
        for seq in chunk:
            while index < end and held[index] < seq:
                index += 1
            if index == end or held[index] != seq:
                found.append(seq)
    return found

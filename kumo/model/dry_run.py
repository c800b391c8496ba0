"""What an admin request would match right now, without doing it (a kumo extension).

``"dry_run": true`` on POST bounce or suspend (docs/operations.md, "Dry runs") answers
with a :class:`DryRun`: the scheduled queues the request's criteria match, how many
messages each holds, and the live rule it would replace. On POST rebind it answers with
a :class:`RebindDryRun`: the same queues, each with the queue its messages would move to
(:func:`rebind_dry_run`). The same count, for a live
bounce rule, is what its sweep still owes (:func:`messages_matching`, GET's ``pending``;
the projection keeps each live rule's matched queues between two GETs and gives the
same sum, :meth:`kumo.runtime.projection.Projection.pending`).

The queues are found through a :class:`~kumo.model.queue_index.QueueIndex` of every
queue the fold has seen and counted from the fold's gauges, so a dry run costs what it
matches (queues, never messages), and the match is :meth:`Criteria.matches`, the one
matcher the rules themselves use. Pure: no trio, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from kumo.model.criteria import Criteria
from kumo.model.queue_index import QueueIndex
from kumo.model.queue_name import rebound_queue_name
from kumo.model.state import RuleBook


@attrs.frozen(slots=True)
class QueueMatch:
    """A scheduled queue a request matches, and the messages it holds now (due, waiting
    for a retry or a suspension, or in the hands of a connection)."""

    queue: str
    messages: int


@attrs.frozen(slots=True)
class DryRun:
    """The answer to a dry run: what the request would match now; nothing was done."""

    queues: tuple[QueueMatch, ...]
    """The matching queues that hold messages, by name."""
    replaces: str | None = None
    """The id of the live rule of the same kind whose criteria are equal, which the
    request would replace; None when there is none (or the request would be born
    expired, which never replaces)."""

    @property
    def total_messages(self) -> int:
        """Messages held in all the matching queues."""
        return sum(match.messages for match in self.queues)


def matching_queues(
    criteria: Criteria, index: QueueIndex[str], counts: Mapping[str, int]
) -> tuple[QueueMatch, ...]:
    """The queues of ``index`` that ``criteria`` match and that hold messages
    (``counts``: queue name -> messages held, non-empty queues only), by name."""
    found = (
        QueueMatch(name, count)
        for name in index.matching(criteria)
        if (count := counts.get(name, 0)) > 0
    )
    return tuple(sorted(found, key=lambda match: match.queue))


def messages_matching(criteria: Criteria, index: QueueIndex[str], counts: Mapping[str, int]) -> int:
    """Messages held in the queues ``criteria`` match: for a live bounce rule, what its
    sweep (and the attempts under way that it waits for) still owes; 0 when done."""
    return sum(counts.get(name, 0) for name in index.matching(criteria))


def dry_run(
    criteria: Criteria,
    *,
    index: QueueIndex[str],
    counts: Mapping[str, int],
    book: RuleBook | None = None,
    now: int = 0,
    expires_at: int | None = None,
) -> DryRun:
    """What a request with ``criteria`` would match at ``now``.

    ``book``: the live rules of the request's kind, for :attr:`DryRun.replaces` (None
    for a verb that replaces nothing, such as rebind); ``expires_at``: when the request's
    rule would end (one at or before ``now`` is born expired and replaces nothing).
    """
    replaces = None
    if book is not None and (expires_at is None or expires_at > now):
        previous = book.live_equal(criteria)
        if previous is not None and previous.live_at(now):
            replaces = previous.id
    return DryRun(matching_queues(criteria, index, counts), replaces)


@attrs.frozen(slots=True)
class QueueMove:
    """A scheduled queue a rebind matches, the messages it holds now, and where they
    would go."""

    queue: str
    messages: int
    to_queue: str | None
    """The queue the merged metadata names; None when the name does not change (the
    messages stay)."""
    flushed: bool = False
    """The name does not change and ``always_flush`` is set: the waiting messages that
    no suspension holds would be due at once. Always False for a queue that moves (its
    messages are due at once in their new queue anyway, as arrivals)."""


@attrs.frozen(slots=True)
class RebindDryRun:
    """The answer to a rebind's dry run: what it would move now; nothing was done."""

    queues: tuple[QueueMove, ...]
    """The matching queues that hold messages, by name."""

    @property
    def total_messages(self) -> int:
        """Messages held in all the matching queues, moving or not."""
        return sum(move.messages for move in self.queues)

    @property
    def total_moving(self) -> int:
        """Messages held in the matching queues whose name would change."""
        return sum(move.messages for move in self.queues if move.to_queue is not None)


def rebind_dry_run(
    criteria: Criteria,
    data: Mapping[str, str],
    *,
    always_flush: bool,
    index: QueueIndex[str],
    counts: Mapping[str, int],
) -> RebindDryRun:
    """What a rebind with ``criteria`` and ``data`` would do now: the queues
    :func:`matching_queues` finds (the matcher the bounce and suspend dry runs use), each
    with the queue :func:`~kumo.model.queue_name.rebound_queue_name` names for it (the
    function the queues themselves apply to a ``RebindIssued``)."""
    moves: list[QueueMove] = []
    for match in matching_queues(criteria, index, counts):
        to_queue = rebound_queue_name(match.queue, data)
        if to_queue == match.queue:
            moves.append(QueueMove(match.queue, match.messages, None, always_flush))
        else:
            moves.append(QueueMove(match.queue, match.messages, to_queue))
    return RebindDryRun(tuple(moves))

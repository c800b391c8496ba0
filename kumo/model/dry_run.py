"""What an admin request would match right now, without doing it (a kumo extension).

``"dry_run": true`` on POST bounce or suspend (docs/operations.md, "Dry runs") answers
with a :class:`DryRun`: the scheduled queues the request's criteria match, how many
messages each holds, and the live rule it would replace. The same count, for a live
bounce rule, is what its sweep still owes (:func:`messages_matching`, GET's ``pending``).

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

"""Ready-queue suspensions (``/api/admin/suspend-ready-q/v1``), folded in log order.

A ready-queue suspension names one ready queue exactly, as KumoMTA names it
(``unspecified->mx.example.com@smtp_client``; :func:`kumo.model.ready_queue.ready_queue_name`),
and lasts until its expiry, its cancel, or a later suspension of the same name, which
replaces it (KumoMTA keeps them in a map keyed by name). Its book is not a
:class:`~kumo.model.state.RuleBook`: it has no criteria to match and no counters,
and is keyed by the name.

Which scheduled queue feeds which ready queue depends on DNS, which only the runtime
asks, so the fold cannot say which messages a suspension holds: every queue knows
every live ready-queue suspension (:class:`ReadyHold`), and the queue whose due
messages resolve to a suspended ready queue holds them, logging one ``Suspended``
each (:meth:`kumo.model.state.QueueState.hold_ready`). The fold then only follows
those events. Plain values, no trio, no I/O.

In fleet mode two nodes may suspend the same name at once and read each other's
suspension in either order: which one stays is the fleet's order
(:func:`kumo.model.fleet_order.outranks`), as for equal bounce rules, so every node
keeps the same one. One that arrives already outranked is
:attr:`~ReadySuspension.lost_on_arrival`: it never holds anything here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import attrs

from kumo.model.events import (
    Committed,
    ReadySuspendCancelled,
    ReadySuspendExpired,
    ReadySuspendIssued,
    issue_time,
)
from kumo.model.fleet_order import FleetRanking
from kumo.model.rule_lifetime import Lifetime, NotEnded, RuleEnd

__all__ = ["ReadyHold", "ReadySuspension", "ReadySuspensionBook", "ReadySuspensionView"]


@attrs.define(slots=True, eq=False)
class ReadySuspension(Lifetime):
    """A ready-queue suspension as the log tells it, from issue to end."""

    id: str
    name: str
    """The ready queue it suspends, exactly."""
    reason: str
    issued_seq: int
    issued_at: int
    expires_at: int
    issued_by: str
    ended_seq: int | None = None
    ended_at: int | None = None
    end: RuleEnd | None = None
    ended_by: str | None = None
    """Who cancelled it, or the id of the suspension that replaced it."""
    origin: str = ""
    """The node it was issued on when fleet mode brought it here; ``""``: this node."""
    ended_origin: str = ""
    """The node its cancel was asked on when fleet mode brought it here; ``""``: this
    node (and for any other end)."""


@attrs.frozen(slots=True)
class ReadySuspensionView:
    """A live ready-queue suspension as GET /api/admin/suspend-ready-q/v1 shows it."""

    id: str
    name: str
    reason: str
    remaining: int
    expires_at: int
    issued_at: int
    issued_by: str


@attrs.frozen(slots=True)
class ReadyHold:
    """What a scheduled queue needs to know of a ready-queue suspension to hold its
    messages: nothing that changes later."""

    id: str
    name: str
    reason: str
    expires_at: int
    issued_expired: bool = False

    @classmethod
    def of(cls, suspension: ReadySuspension) -> ReadyHold:
        return cls(
            suspension.id,
            suspension.name,
            suspension.reason,
            suspension.expires_at,
            suspension.issued_expired,
        )

    @classmethod
    def issued(cls, committed: Committed) -> ReadyHold:
        """The hold a committed ``ReadySuspendIssued`` issues."""
        event = committed.event
        assert isinstance(event, ReadySuspendIssued)
        return cls(
            event.rule_id,
            event.name,
            event.reason,
            event.expires_at,
            event.expires_at <= issue_time(committed),
        )

    def live_at(self, time: int) -> bool:
        return not self.issued_expired and time < self.expires_at


class ReadySuspensionBook:
    """Every ready-queue suspension ever issued, folded in log order; at most one not
    yet ended per name."""

    __slots__ = ("_by_name", "_live", "_ranked", "rules")

    def __init__(self) -> None:
        self.rules: dict[str, ReadySuspension] = {}
        """Id -> every suspension issued, in issue order."""
        self._live: NotEnded[ReadySuspension] = NotEnded()
        """Id -> those not yet ended by an event (some may be past expiry), in issue order."""
        self._by_name: dict[str, ReadySuspension] = {}
        self._ranked: FleetRanking[str, ReadySuspension] = FleetRanking()
        """By name: what decides whether one of another node that arrives now lost."""

    @classmethod
    def restore(cls, suspensions: Iterable[ReadySuspension]) -> ReadySuspensionBook:
        """The book that folded ``suspensions`` (every one, in issue order, as it stands)."""
        book = cls()
        for suspension in suspensions:
            book.rules[suspension.id] = suspension
            if not suspension.issued_expired:
                book._ranked.rank(suspension.name, suspension)
            if suspension.end is None and not suspension.issued_expired:
                book._live.add(suspension)
                book._by_name[suspension.name] = suspension
        return book

    def copy(self) -> ReadySuspensionBook:
        """An independent copy that can be folded on its own."""
        return ReadySuspensionBook.restore(attrs.evolve(s) for s in self.rules.values())

    def live_rules(self) -> Iterator[ReadySuspension]:
        """Suspensions not yet ended by an event, oldest first (some may be past expiry)."""
        return iter(self._live)

    def holds(self) -> tuple[ReadyHold, ...]:
        """What every queue must know of the suspensions not yet ended, oldest first."""
        return tuple(ReadyHold.of(suspension) for suspension in self._live)

    def is_live(self, rule_id: str, now: int) -> bool:
        suspension = self._live.get(rule_id)
        return suspension is not None and suspension.live_at(now)

    def suspended(self, name: str, now: int) -> ReadySuspension | None:
        """The suspension that holds ready queue ``name`` at ``now``, if any."""
        suspension = self._by_name.get(name)
        return suspension if suspension is not None and suspension.live_at(now) else None

    def apply(self, committed: Committed) -> ReadySuspension | None:
        """Fold one event: the suspension it issues, or the one it ends (None for an
        end of a suspension that is not live, and for events of other kinds)."""
        event = committed.event
        if type(event) is ReadySuspendIssued:
            return self._issue(event, committed)
        if type(event) is ReadySuspendCancelled:
            return self._end(
                event.rule_id, "cancelled", committed, event.cancelled_by, event.origin
            )
        if type(event) is ReadySuspendExpired:
            return self._end(event.rule_id, "expired", committed, None)
        return None

    def _issue(self, event: ReadySuspendIssued, committed: Committed) -> ReadySuspension:
        seq, time = committed.seq, committed.time
        suspension = ReadySuspension(
            id=event.rule_id,
            name=event.name,
            reason=event.reason,
            issued_seq=seq,
            issued_at=issue_time(committed),
            expires_at=event.expires_at,
            issued_by=event.issued_by,
            origin=event.origin,
        )
        self.rules[suspension.id] = suspension
        if suspension.issued_expired:
            return suspension
        winner = self._ranked.outranked_by(suspension.name, suspension)
        self._ranked.rank(suspension.name, suspension)
        if winner is not None:
            # One of another node with this name that comes after it in the fleet's
            # order is known here (live or not): this one lost wherever it is read.
            self._close(suspension, "replaced", seq, time, winner.id, live=False)
            return suspension
        previous = self._by_name.get(suspension.name)
        if previous is not None:
            # Keyed by name: the new one replaces a live one; one already past its
            # expiry simply expired, whether or not its end made it into the log yet.
            if previous.live_at(time):
                self._close(previous, "replaced", seq, time, suspension.id)
            else:
                self._close(previous, "expired", seq, time, None)
        if event.arrived_ended is not None:
            # It ended on its node before this one heard of it: it holds nothing here,
            # but the one of its name it comes after in the fleet's order is over.
            self._close(
                suspension,
                event.arrived_ended,
                seq,
                time,
                None,
                origin=suspension.origin,
                live=False,
            )
            return suspension
        self._live.add(suspension)
        self._by_name[suspension.name] = suspension
        return suspension

    def _end(
        self,
        rule_id: str,
        end: RuleEnd,
        committed: Committed,
        by: str | None,
        origin: str = "",
    ) -> ReadySuspension | None:
        suspension = self._live.get(rule_id)
        if suspension is not None:
            self._close(suspension, end, committed.seq, committed.time, by, origin=origin)
        return suspension

    def _close(
        self,
        suspension: ReadySuspension,
        end: RuleEnd,
        seq: int,
        time: int,
        by: str | None,
        *,
        origin: str = "",
        live: bool = True,
    ) -> None:
        suspension.end, suspension.ended_seq = end, seq
        suspension.ended_at, suspension.ended_by = time, by
        suspension.ended_origin = origin
        if not live:
            return
        self._live.remove(suspension)
        if self._by_name.get(suspension.name) is suspension:
            del self._by_name[suspension.name]

    def views(self, now: int) -> list[ReadySuspensionView]:
        """The suspensions GET lists at ``now``: live ones, oldest first."""
        return [
            ReadySuspensionView(
                id=s.id,
                name=s.name,
                reason=s.reason,
                remaining=s.expires_at - now,
                expires_at=s.expires_at,
                issued_at=s.issued_at,
                issued_by=s.issued_by,
            )
            # Only suspensions neither ended nor issued expired are in ``_live``.
            for s in self._live.live_at(now)
        ]

    def next_expiry(self) -> int | None:
        """The earliest ``expires_at`` of the suspensions not yet ended, if any."""
        return self._live.next_expiry()

    def due_to_expire(self, now: int) -> list[ReadySuspension]:
        """Suspensions not yet ended whose expiry is at or before ``now``."""
        return self._live.due(now)

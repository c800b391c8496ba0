"""Admin requests first: while one is answered, the background work waits its turn.

While kumo delivers at full speed, each batch of the event loop runs a step of every busy
SMTP session (15 ms at p99 with 32 connections), and an admin request needs several
batches between its bytes arriving and its answer leaving: GETs took 65-105 ms and
POSTs 135-195 ms at the median (docs/benchmarks.md, "Admin requests first"). So while
an admin request is in flight the gate is *closed*: a mail session that has read its
peer's bytes waits before it acts on them until the gate opens, and the request's
batches hold little else.

Two bounds keep mail moving whatever admin traffic comes:

- the gate stays closed at most ``hold`` seconds at a time, however long the requests in
  flight take (a slow upload does not stop delivery);
- once it opens, it stays open at least ``rest`` times as long as it was closed, so
  that under a continuous stream of requests the work that waits still gets
  ``rest / (1 + rest)`` of the time or more.

What waits is the work that would otherwise share the event loop and the interpreter
with the request: the mail path's sessions, a bounce rule's sweep, the log's background
commits and the delivery-log writer (:mod:`kumo.runtime.admin_gate` lists where). The
engine's gate keeps two such policies, which every request enters: the mail path's SMTP
sessions wait at one that rests as long as it was closed (half of the time for mail),
the rest of the work at one that rests a quarter as long (``EngineSettings.admin_rest``):
with half for a sweep too, a probe's POSTs came during a rest about half of the time,
and waited there for the sweep's transactions (docs/benchmarks.md, "A shorter rest for
the sweep").

A pure policy over times passed in (trio seconds); :class:`kumo.runtime.admin_gate.AdminGate`
is its Trio side.
"""

from __future__ import annotations

import math

import attrs


@attrs.define
class AdminFirst:
    """The gate's state; ``hold`` is the longest it stays closed, in seconds; ``rest``
    how long it then stays open at least, as a multiple of how long it was closed."""

    hold: float = attrs.field(validator=attrs.validators.ge(0.0))
    rest: float = attrs.field(default=1.0, validator=attrs.validators.gt(0.0))
    _in_flight: int = 0
    _closed_at: float | None = None
    """When the gate closed; None while it is open."""
    _rest_until: float = -math.inf
    """The gate does not close again before this: it rests ``rest`` times as long as it
    was closed."""

    @property
    def closed(self) -> bool:
        return self._closed_at is not None

    @property
    def closed_since(self) -> float | None:
        """When the gate closed, as of the last call; None while it is open."""
        return self._closed_at

    def begin(self, now: float) -> None:
        """An admin request came in at ``now``."""
        self._in_flight += 1
        self._settle(now)

    def end(self, now: float) -> bool:
        """An admin request was answered at ``now``; whether that opened the gate."""
        if self._in_flight <= 0:
            raise ValueError("no admin request is in flight")
        self._in_flight -= 1
        was_closed = self.closed
        self._settle(now)
        return was_closed and not self.closed

    def opens_at(self, now: float) -> float | None:
        """None if the mail path may go on at ``now``; else when the gate opens at the
        latest (sooner if the requests in flight are answered)."""
        self._settle(now)
        return None if self._closed_at is None else self._closed_at + self.hold

    def _settle(self, now: float) -> None:
        if self._closed_at is not None:
            deadline = self._closed_at + self.hold
            if not self._in_flight or now >= deadline:
                opened = min(now, deadline)
                self._rest_until = opened + self.rest * (opened - self._closed_at)
                self._closed_at = None
        if self._closed_at is None and self._in_flight and self.hold and now >= self._rest_until:
            self._closed_at = now


@attrs.define
class WritesFirst:
    """Among admin requests, writes first: a long read (GET's listing of thousands of
    rules, made a slice at a time) gives way, between two slices, to the writes in
    flight (a POST or DELETE waits for its commit, and each step of its way through the
    event loop waits for whatever step the loop runs: a slice of a listing, for one).

    A read waits only for the writes in flight when it gives way (:meth:`barrier`), not
    for those that begin while it waits, so a stream of writes cannot keep a read
    waiting forever; its shell also bounds the whole wait of one read by ``hold``.
    A pure record of which writes are in flight; :class:`kumo.runtime.admin_gate.AdminGate`
    is its Trio side.
    """

    _next_ticket: int = 0
    _in_flight: set[int] = attrs.Factory(set)

    @property
    def writes_in_flight(self) -> int:
        return len(self._in_flight)

    def begin(self) -> int:
        """A write came in: its ticket, for :meth:`end`."""
        self._next_ticket += 1
        self._in_flight.add(self._next_ticket)
        return self._next_ticket

    def end(self, ticket: int) -> None:
        """The write ``ticket`` was answered."""
        try:
            self._in_flight.remove(ticket)
        except KeyError:
            raise ValueError(f"no write {ticket} is in flight") from None

    def barrier(self) -> int | None:
        """The newest write in flight now, for :meth:`passed`; None when there is none."""
        return max(self._in_flight) if self._in_flight else None

    def passed(self, barrier: int) -> bool:
        """Whether every write up to ``barrier`` was answered."""
        return all(ticket > barrier for ticket in self._in_flight)

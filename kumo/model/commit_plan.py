"""What goes into each transaction of the event log, and which ones are fsynced.

The log writer (:mod:`kumo.runtime.log_writer`) has two lanes: clients' appends, which
wait until their events are durable, and the actors' background events (``Bounced``),
which do not. Before each transaction it asks :meth:`CommitPlanner.plan` what to take,
from the time and what waits, and carries the answer out. The policy:

- every client's append waiting goes in first (whole; beyond the first, only while the
  transaction holds fewer than ``max_batch_events``);
- then background events, up to a number of bounced messages that depends on whether
  clients are active: ``urgent_batch_messages`` in a transaction that carries clients'
  events (they wait for it; 0 commits them alone), ``client_batch_messages``
  within ``client_window`` of a client's append (the next client waits for the
  transaction under way), else ``max_batch_messages`` (a sweep alone: big transactions,
  few fsyncs). A transaction without clients' events takes at least one event, and so
  does one with them when the transaction before it also carried clients' events and
  left background events waiting: a stream of requests never starves a sweep;
- a transaction is durable (fsynced) when it carries clients' events, when it leaves
  nothing waiting (the last before idle), and at least one in ``durable_every`` (in
  ``client_durable_every`` within ``client_window`` of a client's append: a client's
  fsync then has little of the sweep's to write out); the others commit without an
  fsync and become durable with the next durable one;
- while admin requests are answered (``admin_first``: the engine's admin gate is
  closed, :mod:`kumo.model.admin_first`), the background lane waits: a transaction
  takes clients' events alone, and without them there is no transaction (the writer
  waits for a client or for the gate to open). A POST then waits for no sweep's
  transaction but the one already under way; the gate's own bounds (closed ``hold`` at
  most at a time, then open as long) keep the sweep going.

The contents of messages that left are deleted from the spool later than the event
that removed them, in purge transactions of their own (:meth:`CommitPlanner.purge`):
``spool_purge_batch`` of them at a time, the oldest first, when no client waits, the
admin gate is open, no background event waits and no client appended within
``client_window`` (or when someone waits for the purges, :meth:`LogWriter.wait_purged`);
past ``spool_purge_owed_max`` owed, whatever the background lane and the window.

No transaction copies the WAL back into the database: a checkpointer does that beside
the writer (:mod:`kumo.runtime.wal_checkpointer`), so that no client waits for it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import attrs

from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.settings import EngineSettings


@attrs.frozen
class CommitPlan:
    """One transaction: how much of each lane to take, and how to commit it."""

    requests: int
    """Clients' appends to take, from the front of their lane."""
    background: int
    """Background events to take, from the front of their lane."""
    durable: bool
    """Fsync this transaction (and so every one before it)."""

    @property
    def empty(self) -> bool:
        """Nothing to commit now: the background lane waits for admin requests."""
        return not self.requests and not self.background


class CommitPlanner:
    """The policy of the module docstring, with the little it remembers between plans."""

    __slots__ = ("_last_client", "_passed_over", "_settings", "_since_durable")

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._last_client = -math.inf
        self._since_durable = 0
        self._passed_over = False
        """The last plan carried clients' events and left background events waiting."""

    def plan(
        self,
        now: int,
        requests: Sequence[int],
        background: Iterable[int],
        background_waiting: int,
        *,
        admin_first: bool = False,
    ) -> CommitPlan:
        """The next transaction at ``now`` (ns), given what waits in each lane.

        ``requests``: the number of events of each waiting append, in order.
        ``background``: the weight (bounced messages, or 1) of each waiting background
        event, in order; read only as far as the plan takes. ``background_waiting``:
        how many background events wait. ``admin_first``: admin requests are being
        answered (see the module docstring); the plan may then be :attr:`CommitPlan.empty`.
        Call :meth:`committed` once the plan's transaction is committed.
        """
        settings = self._settings
        events = taken_requests = 0
        for size in requests:
            if events and events >= settings.max_batch_events:
                break
            events += size
            taken_requests += 1
        every = settings.client_durable_every
        if requests:
            self._last_client = now
            limit = settings.urgent_batch_messages
        elif now - self._last_client < settings.client_window * NANOS_PER_SECOND:
            limit = settings.client_batch_messages
        else:
            limit = settings.max_batch_messages
            every = settings.durable_every
        if admin_first:
            return CommitPlan(taken_requests, 0, durable=taken_requests > 0)
        messages = taken = 0
        at_least = 1 if self._passed_over else 0
        for weight in background:
            if (
                taken >= at_least
                and events
                and (events >= settings.max_batch_events or messages >= limit)
            ):
                break
            events += 1
            messages += weight
            taken += 1
        left = background_waiting - taken
        self._passed_over = taken_requests > 0 and left > 0 and taken == 0
        durable = taken_requests > 0 or left == 0 or self._since_durable + 1 >= every
        return CommitPlan(taken_requests, taken, durable)

    def purge(
        self,
        now: int,
        owed: int,
        *,
        clients: bool,
        background: bool,
        admin_first: bool,
        asked: bool = False,
    ) -> tuple[int, int | None]:
        """How many owed contents to purge at ``now`` (ns), given ``owed`` and what
        waits: ``clients``' appends, ``background`` events; ``asked``: someone waits
        for the purges. Also, when that is 0 only because a client appended within
        ``client_window``, when the window ends (else None)."""
        settings = self._settings
        if not owed or clients or admin_first:
            return 0, None
        take = min(owed, settings.spool_purge_batch)
        if owed >= settings.spool_purge_owed_max:
            return take, None
        if background:
            return 0, None
        window_ends = self._last_client + settings.client_window * NANOS_PER_SECOND
        if now < window_ends and not asked:
            return 0, math.ceil(window_ends)
        return take, None

    def committed(self, plan: CommitPlan) -> None:
        """``plan``'s transaction is committed."""
        self._since_durable = 0 if plan.durable else self._since_durable + 1

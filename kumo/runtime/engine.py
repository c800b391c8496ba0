"""The engine: opens a data directory, replays it, runs every task, answers the API.

Task tree (one root nursery, owned here)::

    open_engine
    ├── LogWriter.run          the single writer of the event log
    ├── DeliveryLogWriter.run  Reception / AdminBounce JSON lines, checkpointed
    ├── Broadcaster.run        routes committed events to the queue actors
    │   └── QueueActor.run ×N  (started in the same root nursery)
    └── Engine._expire_rules   appends BounceExpired when a rule's time is up

The projections (rules, counters, queue gauges) are folded synchronously by the
writer's ``on_commit``, so whatever an API call returns after an append already shows
that append's effect.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import attrs
import trio

from kumo.model.events import (
    BounceCancelled,
    Bounced,
    BounceExpired,
    BounceIssued,
    Committed,
    Event,
    MessageReceived,
)
from kumo.model.requests import BounceRequest, NewMessage
from kumo.model.state import QueueState, RuleView, State, SweepRule
from kumo.model.statistics import counter, gauge, record
from kumo.runtime.blocking import in_thread, inline
from kumo.runtime.broadcaster import Broadcaster, BroadcasterStatistics
from kumo.runtime.clock import EngineClock
from kumo.runtime.delivery_log import DeliveryLogStatistics, DeliveryLogWriter
from kumo.runtime.log_writer import LogStatistics, LogWriter
from kumo.runtime.queue_actor import ActorStatistics
from kumo.runtime.refusal import RefusedError
from kumo.store.ids import random_ids
from kumo.store.layout import DATABASE, LOGS
from kumo.store.lock import DataDirectoryLock
from kumo.store.lock import DataDirectoryLockedError as DataDirectoryLockedError
from kumo.store.replay import fold_log
from kumo.store.sqlite_log import SqliteEventStore

SHUTDOWN_DEADLINE: Final = 30.0
"""Seconds a shutdown waits for actors and followers to finish their work."""


class EngineClosedError(RefusedError):
    """The engine is shutting down and takes no more requests."""


@attrs.frozen
class EngineStatistics:
    """What the engine has done and holds now; ``/metrics`` exports every field."""

    received_total: int = counter("Messages received since the log began.")
    bounced_total: int = counter("Messages bounced by an administrator.")
    queued_total: int = gauge("Messages waiting, all scheduled queues.")
    queues: int = gauge("Non-empty scheduled queues.")
    live_rules: int = gauge("Bounce rules that GET would list.")
    log: LogStatistics = record("The event log writer.")
    broadcaster: BroadcasterStatistics = record("The broadcaster and its queue actors.")
    delivery_log: DeliveryLogStatistics = record("The delivery-log writer.")


class Engine:
    """The API the HTTP layer, the CLI and the tests call. Build it with :func:`open_engine`."""

    def __init__(self, clock: EngineClock, node_id: str, projection: State) -> None:
        self.clock = clock
        self.node_id = node_id
        self._projection = projection
        self._cancelling: set[str] = set()
        self._closed = False
        self._rules_changed = trio.Event()
        # Set by open_engine once the tasks exist.
        self._log: LogWriter
        self._broadcaster: Broadcaster
        self._delivery: DeliveryLogWriter

    # -- the API ---------------------------------------------------------------------

    async def inject(self, messages: Sequence[NewMessage]) -> list[str]:
        """Receive ``messages``; return their spool ids once they are durable."""
        self._check_open()
        ids = random_ids(len(messages))
        events: list[Event] = [
            MessageReceived(
                message_id=message_id,
                queue=message.queue,
                sender=message.sender,
                recipient=message.recipient,
                size=len(message.body),
            )
            for message_id, message in zip(ids, messages, strict=True)
        ]
        bodies = {index: message.body for index, message in enumerate(messages)}
        await self._log.append(events, bodies=bodies)
        return ids

    async def issue_bounce(self, request: BounceRequest, *, issued_by: str) -> str:
        """Issue a rule; return its id once its ``BounceIssued`` is durable.

        The sweep and the counting happen afterwards; read progress with
        :meth:`list_bounces`.
        """
        self._check_open()
        rule_id = str(uuid.uuid4())
        event = BounceIssued(
            rule_id=rule_id,
            criteria=request.criteria,
            reason=request.reason,
            expires_at=request.expiry(self.clock.now()),
            suppress_logging=request.suppress_logging,
            issued_by=issued_by,
        )
        await self._log.append([event])
        return rule_id

    async def cancel_bounce(self, rule_id: str, *, cancelled_by: str) -> bool:
        """Cancel a live rule. False if it is unknown, replaced, cancelled or expired."""
        self._check_open()
        if rule_id in self._cancelling or not self._projection.rules.is_live(
            rule_id, self.clock.now()
        ):
            return False
        self._cancelling.add(rule_id)
        try:
            await self._log.append([BounceCancelled(rule_id=rule_id, cancelled_by=cancelled_by)])
        finally:
            self._cancelling.discard(rule_id)
        return True

    def list_bounces(self) -> list[RuleView]:
        """Live rules, oldest first, with their counters and remaining lifetime."""
        return self._projection.rules.views(self.clock.now())

    def queue_counts(self) -> Mapping[str, int]:
        """Scheduled queue name -> messages waiting there (non-empty queues only)."""
        return self._projection.queue_counts

    def projection(self) -> State:
        """The running fold (rules, counters, gauges; no messages). Read-only."""
        return self._projection

    def queued_messages(self) -> dict[str, list[str]]:
        """Message ids held by each actor (tests and audits; a copy)."""
        return {
            name: [message.id for message in actor.state.messages]
            for name, actor in self._broadcaster.actors.items()
            if actor.state.messages
        }

    def statistics(self) -> EngineStatistics:
        projection = self._projection
        return EngineStatistics(
            received_total=projection.received_total,
            bounced_total=projection.bounced_total,
            queued_total=sum(projection.queue_counts.values()),
            queues=len(projection.queue_counts),
            live_rules=len(self.list_bounces()),
            log=self._log.statistics(),
            broadcaster=self._broadcaster.statistics(),
            delivery_log=self._delivery.statistics(),
        )

    def actor_statistics(self) -> list[ActorStatistics]:
        return [actor.statistics() for actor in self._broadcaster.actors.values()]

    async def wait_idle(self) -> None:
        """Return once every committed event has been fully processed.

        That is: routed by the broadcaster, applied by every actor, their bounces
        committed, and the delivery log written — with nothing left to do.
        """
        while True:
            target = self._log.last_seq
            await self._broadcaster.position.wait_for(target)
            for actor in list(self._broadcaster.actors.values()):
                await actor.processed.wait_for(actor.assigned)
            while self._log.background_pending():
                await self._log.wait_beyond(self._log.last_seq)
            await self._delivery.position.wait_for(target)
            if self._log.last_seq == target and not self._log.background_pending():
                return

    # -- internals ---------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosedError("kumo is shutting down")

    def _on_commit(self, committed: list[Committed]) -> None:
        apply = self._projection.apply
        for item in committed:
            apply(item)
            if isinstance(item.event, BounceIssued):
                self._rules_changed.set()

    async def _expire_rules(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Append ``BounceExpired`` for each live rule once the clock passes its expiry."""
        task_status.started()
        rules = self._projection.rules
        while True:
            self._rules_changed = trio.Event()
            due = rules.due_to_expire(self.clock.now())
            if due:
                await self._log.append([BounceExpired(rule_id=rule.id) for rule in due])
                continue
            next_expiry = rules.next_expiry()
            with trio.move_on_at(
                self.clock.deadline(next_expiry) if next_expiry is not None else math.inf
            ):
                await self._rules_changed.wait()


@asynccontextmanager
async def open_engine(
    data_dir: Path,
    *,
    clock: EngineClock | None = None,
    node_id: str | None = None,
    shutdown_deadline: float = SHUTDOWN_DEADLINE,
    threads: bool = True,
) -> AsyncIterator[Engine]:
    """Open (or create) ``data_dir``, replay its log, and run the engine inside.

    Replay rebuilds the queues, the rules and their counters, finishes the bounces a
    crash cut short, and lets the delivery log catch up from its checkpoint. Leaving
    the block shuts down: new requests are refused, the actors and followers get up to
    ``shutdown_deadline`` seconds to finish, the log commits what is queued, and the
    database is closed. Work cut off by the deadline is redone by the next start.

    ``threads=False`` runs SQLite and file I/O in the Trio thread: slower, but
    deterministic under ``MockClock(autojump_threshold=0)``, where a wait on a worker
    thread would let virtual time jump (see :mod:`kumo.runtime.blocking`).
    """
    clock = clock or EngineClock()
    run_blocking = in_thread if threads else inline
    path = data_dir / DATABASE

    def lock() -> DataDirectoryLock:
        data_dir.mkdir(parents=True, exist_ok=True)
        return DataDirectoryLock(data_dir)

    def open_and_replay() -> tuple[SqliteEventStore, SqliteEventStore, State, str]:
        store = SqliteEventStore(path)
        stored_id = store.get_meta("node_id")
        chosen = node_id or stored_id or str(uuid.uuid4())
        if chosen != stored_id:
            store.set_meta("node_id", chosen)
        reader = SqliteEventStore(path, readonly=True)
        return store, reader, _fold_without_collecting(store), chosen

    async with contextlib.AsyncExitStack() as cleanup:
        cleanup.callback((await run_blocking(lock)).release)
        store, reader, state, chosen_id = await run_blocking(open_and_replay)
        # The reader first: the last connection to close checkpoints the WAL into the
        # database file and removes it, which a read-only connection cannot do.
        cleanup.push_async_callback(run_blocking, functools.partial(_close_all, reader, store))
        owed = state.unfinished_bounces()
        queues = state.detach_queues()
        for bounce in owed:
            taken = {message.id for message in bounce.messages}
            queues[bounce.queue].remove(taken)
        broadcaster_rules = state.rules.copy()

        engine = Engine(clock, chosen_id, state)
        log = LogWriter(
            store, reader, clock, on_commit=engine._on_commit, run_blocking=run_blocking
        )
        delivery = DeliveryLogWriter(
            log, data_dir / LOGS, state.rules, chosen_id, run_blocking=run_blocking
        )
        await run_blocking(delivery.recover)
        engine._log, engine._delivery = log, delivery

        async with trio.open_nursery() as nursery:
            await nursery.start(log.run)
            broadcaster = Broadcaster(log, broadcaster_rules, nursery, position=state.last_seq)
            engine._broadcaster = broadcaster
            for name, messages in queues.items():
                if messages:
                    rules = [SweepRule.of(r) for r in broadcaster_rules.matching_live(name)]
                    await broadcaster.start_actor(QueueState(name, messages, rules))
            followers = trio.CancelScope()

            async def run_followers(
                *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
            ) -> None:
                with followers:
                    async with trio.open_nursery() as inner:
                        await inner.start(delivery.run)
                        await inner.start(engine._expire_rules)
                        task_status.started()

            await nursery.start(run_followers)
            await nursery.start(broadcaster.run)
            if owed:
                await log.submit(_split(owed))
            try:
                yield engine
            finally:
                engine._closed = True
                with trio.move_on_after(shutdown_deadline) as waited:
                    waited.shield = True
                    await engine.wait_idle()
                broadcaster.close()
                followers.cancel()
                log.close()


def _fold_without_collecting(store: SqliteEventStore) -> State:
    """Fold the log with the cyclic collector paused.

    A replay allocates a million long-lived messages and nothing cyclic; collecting
    while it runs only rescans them (a third of a start's time at full size).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        state = fold_log(store)
    finally:
        if was_enabled:
            gc.enable()
    return state


def _split(bounces: list[Bounced], size: int = 4_096) -> list[Bounced]:
    """Cut large resumed sweeps into events of at most ``size`` messages."""
    out: list[Bounced] = []
    for bounce in bounces:
        for start in range(0, len(bounce.messages), size):
            out.append(Bounced(bounce.rule_id, bounce.queue, bounce.messages[start : start + size]))
    return out


def _close_all(*stores: SqliteEventStore) -> None:
    for store in stores:
        store.close()

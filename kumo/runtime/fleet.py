"""Fleet mode's tasks: the publisher and the follower of the fleet's Redis stream, and
the publisher of this node's rule counters (``GET ?scope=fleet``).

They carry out what :mod:`kumo.model.fleet` decides, and nothing else:

- :meth:`FleetLink.run_publisher` publishes (``XADD``) the actions this node owes the
  stream (:func:`~kumo.model.fleet.owed_entries`) once the log holds them durably, then
  stores how far it has published (``fleet.published_seq`` in the log's meta table).
  At least once: a crash between the ``XADD`` and the store publishes those actions
  again, which the other nodes take once.
- :meth:`FleetLink.run_follower` reads the stream (``XREAD BLOCK``) from the position it
  stored (``fleet.position``), appends what the model says this node takes
  (:func:`~kumo.model.fleet.plan_follow`) and waits until it is durable, then stores
  the position. A crash between the two reads those entries again; the model takes
  none of them twice.
- :meth:`FleetLink.run_counters` publishes this node's counters of its live rules to a
  key of its own with a time to live (:func:`~kumo.model.fleet.counters_key`), at most
  once a second and only when they changed; :meth:`FleetLink.read_counters` reads the
  other nodes' for a ``?scope=fleet`` GET, waiting a bounded time.

Both look at the stream's epoch (:func:`~kumo.model.fleet.epoch_key`) each round. A new
epoch means that Redis lost the stream: the follower reads the new one from its start,
and the publisher first republishes every action that still matters
(:func:`~kumo.model.fleet.standing_entries`).

While Redis cannot be reached both tasks retry, backing off from ``retry_initial`` to
``retry_max`` seconds; the node keeps working on its own meanwhile, says so once in
its log (``kumo.fleet``, a warning), and in ``/metrics`` (:class:`FleetStatistics`).
Neither task ever stops the engine: a stream entry it cannot read is skipped and
counted, a failure of Redis is retried. All run as followers in the engine's task
tree and are cancelled with them at shutdown (a blocked ``XREAD`` included).
"""

from __future__ import annotations

import functools
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import attrs
import coredis
import coredis.exceptions
import trio

from kumo.model.fleet import (
    FleetEntryError,
    FleetSettings,
    RuleCounters,
    StreamEntry,
    counter_nodes_key,
    counters_key,
    decode_counters,
    decode_entry,
    encode_counters,
    encode_entry,
    epoch_key,
    owed_entries,
    plan_follow,
    retry_delay,
    rule_counters,
    standing_entries,
)
from kumo.model.statistics import counter, gauge, info
from kumo.runtime.blocking import RunBlocking
from kumo.runtime.clock import EngineClock
from kumo.runtime.log_writer import LogWriter
from kumo.runtime.projection import Projection
from kumo.runtime.refusal import RefusedError
from kumo.runtime.watermark import Watermark
from kumo.store.event_log import EventStore

logger = logging.getLogger("kumo.fleet")

PUBLISHED_SEQ: Final = "fleet.published_seq"
"""Meta key: the log position up to which this node's actions are published."""
PUBLISHED_EPOCH: Final = "fleet.published_epoch"
"""Meta key: the stream epoch those actions were published to."""
POSITION: Final = "fleet.position"
"""Meta key: the last stream id the follower applied."""
FOLLOWED_EPOCH: Final = "fleet.epoch"
"""Meta key: the stream epoch that position belongs to."""

START: Final = "0-0"
"""The stream position before its first entry."""

REDIS_FAILURES: Final = (coredis.exceptions.RedisError, OSError, trio.TooSlowError)
"""What a lost or failing Redis raises; the tasks retry after any of them."""

_CAUGHT: Final = (*REDIS_FAILURES, RefusedError, BaseExceptionGroup)
"""What the tasks look at before they decide to retry (:func:`_failure`)."""

Connect = Callable[[FleetSettings], AbstractAsyncContextManager[Any]]
"""Opens a client of the fleet's Redis (a coredis client, or a test's stand-in)."""


@asynccontextmanager
async def connect_coredis(settings: FleetSettings) -> AsyncIterator[Any]:
    """A coredis client of ``settings.redis`` (bytes in, bytes out), closed on exit."""
    client: Any = coredis.Redis.from_url(
        settings.redis,
        decode_responses=False,
        connect_timeout=settings.block + 5,
        # coredis retries a failed command twice on its own; the tasks here retry with
        # a backoff, and count each failure.
        retry_policy=coredis.retry.NoRetryPolicy(),
    )
    async with client:
        yield client


@attrs.frozen
class FleetStatistics:
    """Fleet mode's progress and health (all zero while it is off)."""

    enabled: int = gauge("1 when [fleet] is configured, else 0.")
    stream: str = info("The fleet's stream this node publishes to and follows.")
    publisher_up: int = gauge("1 while the publisher's last round with Redis succeeded.")
    follower_up: int = gauge("1 while the follower's last round with Redis succeeded.")
    published: int = counter("Actions this node published to the stream (republished included).")
    republished: int = counter(
        "Actions republished because Redis lost the stream (a new epoch was found)."
    )
    owed: int = gauge("Actions taken on this node that the stream may not hold yet.")
    published_seq: int = gauge("Log position up to which this node's actions are published.")
    read: int = counter("Stream entries the follower read.")
    applied: int = counter("Actions of other nodes appended to this node's log.")
    skipped_own: int = counter("Stream entries skipped because this node published them.")
    skipped_applied: int = counter(
        "Stream entries skipped because this node's log already holds their action."
    )
    skipped_unknown: int = counter("Stream cancels skipped: the rule is unknown to this node.")
    skipped_ended: int = counter(
        "Stream entries of rules that ended before this node read them: the issue"
        " recorded ended on arrival (it bounces nothing), the cancel not applied."
    )
    malformed: int = counter("Stream entries skipped because they are not a fleet action.")
    resets: int = counter("Times the stream's epoch changed and it was read again from its start.")
    redis_failures: int = counter("Rounds with Redis that failed (each retried after a backoff).")
    position_ms: int = gauge(
        "Milliseconds part of the last stream id applied (Redis's clock when it was added)."
    )
    counters_published: int = counter(
        "Times this node published its rule counters for ?scope=fleet (when they changed)."
    )

    @classmethod
    def off(cls) -> FleetStatistics:
        """The statistics of a node that is not in a fleet."""
        values: dict[str, Any] = {field.name: 0 for field in attrs.fields(cls)}
        values["stream"] = ""
        return cls(**values)


class FleetMeta:
    """The fleet positions in the log's meta table, through a connection of their own.

    Reads and writes run through ``run_blocking`` (worker threads in production), one
    at a time. A write returns once it is durable (the store's ``synchronous=FULL``).
    """

    def __init__(self, store: EventStore, *, run_blocking: RunBlocking) -> None:
        self._store = store
        self._run_blocking = run_blocking
        self._lock = trio.Lock()

    async def get(self, key: str) -> str | None:
        async with self._lock:
            return await self._run_blocking(functools.partial(self._store.get_meta, key))

    async def set(self, values: dict[str, str]) -> None:
        def write() -> None:
            for key, value in values.items():
                self._store.set_meta(key, value)

        async with self._lock:
            await self._run_blocking(write)


class FleetLink:
    """This node's link to the fleet: the stream's publisher and follower, and the
    counters' publisher."""

    def __init__(
        self,
        settings: FleetSettings,
        *,
        node_id: str,
        log: LogWriter,
        projection: Projection,
        clock: EngineClock,
        meta: FleetMeta,
        connect: Connect = connect_coredis,
    ) -> None:
        self.settings = settings
        self._node_id = node_id
        self._log = log
        self._projection = projection
        self._clock = clock
        self._meta = meta
        self._connect = connect
        self._stream = settings.stream.encode()
        self._epoch_key = epoch_key(settings.stream).encode()
        self._published_seq = 0
        self._publisher_up = False
        self._follower_up = False
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "published",
                "republished",
                "read",
                "applied",
                "skipped_own",
                "skipped_applied",
                "skipped_unknown",
                "skipped_ended",
                "malformed",
                "resets",
                "redis_failures",
                "counters_published",
            ),
            0,
        )
        self._position_ms = 0
        self._counters_published: bytes | None = None
        self.counter_rounds = Watermark()
        """Rounds of :meth:`run_counters` that reached Redis."""
        self._down_since: dict[str, bool] = {
            "publisher": False,
            "follower": False,
            "counters": False,
        }

    # -- the publisher ------------------------------------------------------------------

    async def run_publisher(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Publish what this node owes the stream, for ever (see the module docstring)."""
        self._published_seq = int(await self._meta.get(PUBLISHED_SEQ) or 0)
        published_epoch = await self._meta.get(PUBLISHED_EPOCH)
        task_status.started()
        failures = 0
        while True:
            try:
                async with self._connect(self.settings) as redis:
                    while True:
                        epoch = await self._epoch(redis)
                        if epoch != published_epoch:
                            await self._republish(redis, epoch, first=published_epoch is None)
                            published_epoch = epoch
                        seen = self._projection.admin_events.value
                        await self._publish_owed(redis)
                        self._up("publisher")
                        failures = 0
                        with trio.move_on_after(self.settings.block):
                            await self._projection.admin_events.wait_for(seen + 1)
            except _CAUGHT as caught:
                failure = redis_failure(caught, REDIS_FAILURES)
                if failure is None:
                    raise
                failures += 1
                await self._down("publisher", failure, failures)

    async def _republish(self, redis: Any, epoch: str, *, first: bool) -> None:
        """Publish every action that still matters to a stream that holds nothing of
        this node yet: one this node joins (``first``), or one Redis lost. What this
        node owes up to the log's durable end is then published, so the position moves
        there; an action taken after it is owed as usual."""
        through = self._log.durable.value
        # A node that joins does not publish its old rebinds (they were done here, long
        # ago perhaps); after a loss, those not yet published are owed still.
        entries = standing_entries(
            self._projection.state,
            self._node_id,
            self._clock.now(),
            rebinds_after=None if first else self._published_seq,
        )
        if first:
            logger.info(
                "joining the fleet stream %s (epoch %s): publishing %d actions that still matter",
                self.settings.stream,
                epoch,
                len(entries),
            )
        else:
            logger.warning(
                "the fleet stream %s is new (epoch %s): Redis lost what it held; "
                "republishing %d actions that still matter",
                self.settings.stream,
                epoch,
                len(entries),
            )
        for entry in entries:
            await self._xadd(redis, entry)
            if not first:
                self._counts["republished"] += 1
        self._published_seq = max(self._published_seq, through)
        await self._meta.set({PUBLISHED_EPOCH: epoch, PUBLISHED_SEQ: str(self._published_seq)})

    async def _publish_owed(self, redis: Any) -> None:
        through = self._log.durable.value
        if through <= self._published_seq:
            return
        owed = owed_entries(
            self._projection.state,
            self._node_id,
            after_seq=self._published_seq,
            through_seq=through,
        )
        for item in owed:
            await self._xadd(redis, item.entry)
        self._published_seq = through
        await self._meta.set({PUBLISHED_SEQ: str(through)})

    async def _xadd(self, redis: Any, entry: StreamEntry) -> None:
        with trio.fail_after(self._command_timeout()):
            await redis.xadd(self._stream, encode_entry(entry))
        self._counts["published"] += 1

    # -- the follower -------------------------------------------------------------------

    async def run_follower(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Apply the other nodes' actions from the stream, for ever (see the module
        docstring)."""
        position = await self._meta.get(POSITION) or START
        followed_epoch = await self._meta.get(FOLLOWED_EPOCH)
        self._position_ms = _milliseconds(position)
        task_status.started()
        failures = 0
        block_ms = max(1, math.ceil(self.settings.block * 1000))
        while True:
            try:
                async with self._connect(self.settings) as redis:
                    while True:
                        epoch = await self._epoch(redis)
                        if epoch != followed_epoch:
                            if followed_epoch is not None:
                                self._counts["resets"] += 1
                                logger.warning(
                                    "the fleet stream %s is new (epoch %s): reading it "
                                    "again from its start",
                                    self.settings.stream,
                                    epoch,
                                )
                            position, followed_epoch = START, epoch
                            await self._meta.set({POSITION: position, FOLLOWED_EPOCH: epoch})
                        with trio.fail_after(self._command_timeout()):
                            answer = await redis.xread(
                                {self._stream: position},
                                count=self.settings.read_count,
                                block=block_ms,
                            )
                        self._up("follower")
                        failures = 0
                        if answer:
                            position = await self._apply(_entries_of(answer), position)
            except _CAUGHT as caught:
                # RefusedError: the log refused the append (its disk is full): nothing
                # was applied and the position did not move; the entries are read again.
                failure = redis_failure(caught, (*REDIS_FAILURES, RefusedError))
                if failure is None:
                    raise
                failures += 1
                await self._down("follower", failure, failures)

    async def _apply(self, raw: list[tuple[bytes, Any]], position: str) -> str:
        """Append what the entries ``raw`` call for; store and return the new position."""
        entries: list[StreamEntry] = []
        for entry_id, fields in raw:
            try:
                entries.append(decode_entry(fields))
            except FleetEntryError as exc:
                self._counts["malformed"] += 1
                logger.warning("skipping fleet stream entry %s: %s", entry_id.decode(), exc)
        self._counts["read"] += len(raw)
        plan = plan_follow(entries, self._projection.state, self._node_id, self._clock.now())
        if plan.events:
            await self._log.append(list(plan.events))
        self._counts["applied"] += len(plan.events)
        self._counts["skipped_own"] += plan.own
        self._counts["skipped_applied"] += plan.applied_before
        self._counts["skipped_unknown"] += plan.unknown
        self._counts["skipped_ended"] += plan.ended
        position = raw[-1][0].decode()
        await self._meta.set({POSITION: position})
        self._position_ms = _milliseconds(position)
        return position

    # -- the fleet's figures (GET ?scope=fleet) ----------------------------------------

    async def run_counters(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Publish this node's counters of its live bounce rules, for ever: at most once
        every ``counters_interval`` seconds, only when they changed (or a third of
        ``counters_ttl`` passed, so that they do not age out), to a key of this node
        with that time to live (:func:`~kumo.model.fleet.counters_key`)."""
        task_status.started()
        key = counters_key(self.settings.stream, self._node_id).encode()
        nodes = counter_nodes_key(self.settings.stream).encode()
        refresh = self.settings.counters_ttl / 3
        ttl_ms = max(1, math.ceil(self.settings.counters_ttl * 1000))
        failures = 0
        while True:
            try:
                async with self._connect(self.settings) as redis:
                    published: bytes | None = None
                    published_at = -math.inf
                    while True:
                        body = encode_counters(
                            rule_counters(self._projection.state.rules, self._clock.now())
                        )
                        if body != published or trio.current_time() - published_at >= refresh:
                            with trio.fail_after(self._command_timeout()):
                                await redis.set(key, body, px=ttl_ms)
                                await redis.sadd(nodes, [self._node_id.encode()])
                            published, published_at = body, trio.current_time()
                            self._counts["counters_published"] += 1
                            self._counters_published = body
                        self.counter_rounds.advance(self.counter_rounds.value + 1)
                        failures = 0
                        await trio.sleep(self.settings.counters_interval)
            except _CAUGHT as caught:
                failure = redis_failure(caught, REDIS_FAILURES)
                if failure is None:
                    raise
                failures += 1
                await self._down("counters", failure, failures)

    async def wait_counters_published(self) -> None:
        """Return once the counters this node holds now are in Redis (published by a
        round of :meth:`run_counters` that began after the call, or before with the
        same figures). Waits for as long as Redis is away."""
        while True:
            rounds = self.counter_rounds.value
            current = encode_counters(
                rule_counters(self._projection.state.rules, self._clock.now())
            )
            if current == self._counters_published:
                await trio.lowlevel.checkpoint()
                return
            await self.counter_rounds.wait_for(rounds + 1)

    async def read_counters(self) -> list[dict[str, RuleCounters]] | None:
        """The counters the other nodes of the fleet published and that have not aged
        out, one mapping per node; None if Redis did not answer within
        ``counters_wait`` seconds (or failed). Never raises for a failing Redis."""
        nodes_key = counter_nodes_key(self.settings.stream).encode()
        try:
            with trio.move_on_after(self.settings.counters_wait):
                async with self._connect(self.settings) as redis:
                    members = sorted(
                        bytes(node).decode() for node in await redis.smembers(nodes_key)
                    )
                    others = [node for node in members if node != self._node_id]
                    if not others:
                        return []
                    keys = [counters_key(self.settings.stream, node).encode() for node in others]
                    bodies = await redis.mget(keys)
                    figures: list[dict[str, RuleCounters]] = []
                    for node, body in zip(others, bodies, strict=True):
                        if body is None:
                            continue  # aged out: that node stopped publishing
                        try:
                            figures.append(decode_counters(bytes(body)))
                        except FleetEntryError as exc:
                            logger.warning("fleet counters of node %s left out: %s", node, exc)
                    return figures
        except _CAUGHT as caught:
            if redis_failure(caught, REDIS_FAILURES) is None:
                raise
            self._counts["redis_failures"] += 1
        return None

    # -- both ---------------------------------------------------------------------------

    async def _epoch(self, redis: Any) -> str:
        """The stream's epoch, set to a fresh id first if Redis has none (``SET NX``:
        of several nodes that find none at once, one sets it and all read it)."""
        with trio.fail_after(self._command_timeout()):
            current = await redis.get(self._epoch_key)
            if current is None:
                await redis.set(
                    self._epoch_key, uuid.uuid4().hex.encode(), condition=coredis.PureToken.NX
                )
                current = await redis.get(self._epoch_key)
        if current is None:
            raise coredis.exceptions.RedisError("the stream's epoch vanished as it was set")
        return bytes(current).decode()

    def _command_timeout(self) -> float:
        # A Redis that accepts connections and never answers (stopped, not killed) must
        # not hold a task for ever; a blocked XREAD answers within `block`.
        return self.settings.block + 5.0

    def _up(self, task: str) -> None:
        if task == "publisher":
            self._publisher_up = True
        else:
            self._follower_up = True
        if self._down_since[task]:
            self._down_since[task] = False
            logger.warning("fleet %s: Redis at %s is reachable again", task, self._where())

    async def _down(self, task: str, exc: BaseException, failures: int) -> None:
        if task == "publisher":
            self._publisher_up = False
        elif task == "follower":
            self._follower_up = False
        self._counts["redis_failures"] += 1
        delay = retry_delay(failures, self.settings)
        if not self._down_since[task]:
            self._down_since[task] = True
            logger.warning(
                "fleet %s: Redis at %s failed (%s); working locally, %d actions owed; "
                "retrying every %.1f s at most",
                task,
                self._where(),
                _describe(exc),
                self._owed(),
                self.settings.retry_max,
            )
        await trio.sleep(delay)

    def _where(self) -> str:
        return f"{self.settings.redis} (stream {self.settings.stream})"

    def _owed(self) -> int:
        return len(
            owed_entries(
                self._projection.state,
                self._node_id,
                after_seq=self._published_seq,
                through_seq=self._log.last_seq,
            )
        )

    def statistics(self) -> FleetStatistics:
        counts = self._counts
        return FleetStatistics(
            enabled=1,
            stream=self.settings.stream,
            publisher_up=int(self._publisher_up),
            follower_up=int(self._follower_up),
            published=counts["published"],
            republished=counts["republished"],
            owed=self._owed(),
            published_seq=self._published_seq,
            read=counts["read"],
            applied=counts["applied"],
            skipped_own=counts["skipped_own"],
            skipped_applied=counts["skipped_applied"],
            skipped_unknown=counts["skipped_unknown"],
            skipped_ended=counts["skipped_ended"],
            malformed=counts["malformed"],
            resets=counts["resets"],
            redis_failures=counts["redis_failures"],
            position_ms=self._position_ms,
            counters_published=counts["counters_published"],
        )


def redis_failure(
    caught: BaseException, kinds: tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first failure in ``caught`` if everything it holds is one of ``kinds``, else
    None (re-raise it). coredis runs each client in a task group of its own, so a lost
    connection may come wrapped in an exception group, a cancellation beside it."""
    if isinstance(caught, BaseExceptionGroup):
        leaves = list(_leaves(caught))
        if leaves and all(isinstance(leaf, kinds) for leaf in leaves):
            return leaves[0]
        return None
    return caught if isinstance(caught, kinds) else None


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _entries_of(answer: Any) -> list[tuple[bytes, Any]]:
    """``(entry id, fields)`` of the one stream in an ``XREAD`` answer."""
    entries: list[tuple[bytes, Any]] = []
    for stream_entries in answer.values():
        for entry in stream_entries:
            identifier = entry.identifier
            entries.append(
                (
                    identifier if isinstance(identifier, bytes) else str(identifier).encode(),
                    entry.field_values,
                )
            )
    return entries


def _milliseconds(position: str) -> int:
    head = position.partition("-")[0]
    return int(head) if head.isdigit() else 0


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

"""Every tuning knob of the engine, in one frozen record passed down to its parts.

The defaults are the figures measured in docs/benchmarks.md at 1,000,000 queued messages
over 10,000 queues; each field says what it trades. The engine hands the record to every
component it builds (the log writer and its commit plan, the broadcaster, the queue
actors, the delivery-log writer, the store); a test that needs a small bound builds its
own with :func:`attrs.evolve` instead of patching a module.
"""

from __future__ import annotations

from typing import Any

import attrs


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def _int_field(default: int) -> int:
    return attrs.field(
        default=default, validator=[attrs.validators.instance_of(int), _positive], kw_only=True
    )


def _seconds_field(default: float) -> float:
    return attrs.field(
        default=default,
        converter=float,
        validator=[attrs.validators.instance_of(float), _positive],
        kw_only=True,
    )


@attrs.frozen
class EngineSettings:
    """How the engine batches, buffers and paces its work. Every field has a default."""

    # -- the event log writer (kumo.runtime.log_writer, kumo.model.commit_plan) ----------
    max_batch_events: int = _int_field(4_096)
    """Events per transaction at most, so that a client's append never waits long."""
    max_batch_messages: int = _int_field(8_192)
    """Bounced messages per transaction while no client has appended for
    :attr:`client_window` (a sweep's events are large: bigger transactions, fewer fsyncs)."""
    client_batch_messages: int = _int_field(512)
    """Bounced messages per transaction within :attr:`client_window` of a client's append:
    a client's append waits for the transaction under way, so keep those short then."""
    urgent_batch_messages: int = attrs.field(
        default=256,
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)],
        kw_only=True,
    )
    """Bounced messages in a transaction that carries clients' events: they wait for this
    one, so keep it short. 0 commits clients' events alone (but for one background
    event when the transaction before did the same, so that a stream of requests never
    starves a sweep): measured under a sweep probed 50 times a second on a disk whose
    fsync is slow, that made the sweep twice as long and the POSTs no faster, as every
    POST then costs the sweep a transaction of its own (docs/benchmarks.md)."""
    client_window: float = _seconds_field(1.0)
    """Seconds after a client's append during which transactions stay short."""
    background_capacity: int = _int_field(65_536)
    """Bounced messages waiting in the background lane before the actors that submit them
    wait for room (and before a sweep takes more messages out of its queue)."""
    durable_every: int = _int_field(8)
    """At least one transaction in this many is fsynced while a sweep runs; the others
    commit without an fsync and become durable with the next one that has it."""
    client_durable_every: int = _int_field(1)
    """The same within :attr:`client_window` of a client's append: a client's commit is
    fsynced, and its fsync writes out whatever the transactions before it left unsynced;
    fsyncing those as they go leaves a client's own fsync little to write. Measured at
    1,000,000 queued, a POST under a sweep: p50 10.0-10.7 -> 7.3-7.9 ms, p99 20.2-23.8
    -> 19.4-20.0 ms (docs/benchmarks.md)."""
    tail_events: int = _int_field(10_000)
    """Recent committed events kept in memory for followers; older ones are read back
    from the store."""
    read_limit: int = _int_field(10_000)
    """Events a follower (the broadcaster, a lagging actor) reads from the log at a time."""

    # -- the store (kumo.store.sqlite_log) ----------------------------------------------
    wal_checkpoint_interval: float = _seconds_field(0.1)
    """Seconds between two checkpoints (copies of the write-ahead log back into the
    database, beside the writer) while commits happen. The WAL holds about what is
    committed in that time, and commits never wait for a checkpoint. Short, so that a
    checkpoint's writes and fsync are short too: every 0.5 s, a checkpoint during a
    sweep wrote for 37-140 ms, and an admin request's fsync meanwhile queued behind it
    (docs/benchmarks.md, "Shorter writes beside a sweep")."""
    write_lock_timeout: float = _seconds_field(5.0)
    """Seconds the log's writer waits for the database's write lock, which a checkpoint's
    RESTART or a compaction's delete holds for a moment, before its commit fails. It
    asks for the lock again every :data:`kumo.store.sqlite_log.WRITE_LOCK_POLL`
    seconds: SQLite's own busy handler sleeps 1, 2, 5, 10, 15 ms in turn, and a lock
    held 9 ms cost a wait of 18 (docs/benchmarks.md, "The write lock, asked for again
    every half millisecond")."""
    wal_restart_pages: int = _int_field(4096)
    """Pages in the WAL from which a checkpoint that copied them all also restarts it
    (SQLite's RESTART checkpoint, tried without waiting: it gives up at once if a
    commit is under way), so that the next commits write the WAL from its start again.
    A PASSIVE checkpoint alone never restarts a WAL that commits keep appending to: a
    sweep of 1,000,000 queued grew it to 1.6 GB, and its transactions took 9.3 ms at the
    median against 6.6 ms with restarts (docs/benchmarks.md, "The WAL that never
    restarted, and the spool's purges")."""
    spool_purge_batch: int = _int_field(10_000)
    """Contents of messages that left that one purge transaction deletes (the oldest
    owed first, in seq order): the more at a time, the more of them share a page of the
    spool, and the fewer pages the log writes (:mod:`kumo.model.commit_plan`)."""
    spool_purge_owed_max: int = _int_field(4_000_000)
    """Owed contents from which purges go on even while the background lane is busy or
    clients were seen within ``client_window`` (8 bytes of memory each)."""
    disk_full_retry: float = _seconds_field(1.0)
    """Seconds the log writer waits before it tries again after a commit found the disk
    full (the clients of that commit got a 503 at once; the actors' events wait)."""
    cache_kib: int = _int_field(8 * 1024)
    """SQLite page cache per connection, in KiB: memory held for as long as the engine
    runs; appends and sequential reads need little of it."""

    # -- the broadcaster (kumo.runtime.broadcaster) --------------------------------------
    deliveries_per_yield: int = _int_field(64)
    """Actors the broadcaster hands events to between two yields to the event loop: a
    rule that matches 10,000 queues is handed to 10,000 actors (each at rest decides
    its sweep in the hand-out; a busy one is woken), and the loop serves requests
    between each slice of them rather than after all (64 rather than 256 halved the
    spikes of such a sweep's first second: docs/benchmarks.md). 8 shortened them again
    while each actor woke to take the rule, but under a stream of injections over
    10,000 queues the broadcaster then fell 65,000 events behind (docs/benchmarks.md,
    "Shorter writes beside a sweep")."""

    # -- the queue actors (kumo.runtime.queue_actor) -------------------------------------
    mailbox_capacity: int = _int_field(64)
    """Deliveries (one per committed batch that concerns the queue) an actor may lag
    before it is marked lagging and catches up from the log itself."""
    sweep_chunk: int = _int_field(512)
    """Messages a sweep takes out of a queue at a time. A sweep takes its next chunk only
    once the log's background lane has room for it, so that a rule matching every queue
    does not hold the event loop for the whole sweep at once (admin requests stay quick
    from the sweep's first second)."""
    resume_chunk: int = _int_field(4_096)
    """Messages per ``Bounced`` event when a restart resumes a sweep a crash cut short."""

    # -- the delivery-log writer (kumo.runtime.delivery_log) -----------------------------
    segment_bytes: int = _int_field(256 * 1024 * 1024)
    """A delivery-log segment that grows past this is closed; the next record starts a
    new one."""
    delivery_read_limit: int = _int_field(20_000)
    """Events the delivery-log writer reads from the log at a time."""
    round_records: int = _int_field(1_024)
    """Records written (and fsynced) per round at most. Small rounds keep the disk's
    queue short, so that the event log's own fsyncs (an admin request waits on one) do
    not queue behind the delivery log's during a sweep: rounds of up to 4,096 records
    (about 850 KB) took 25-59 ms to write and fsync, and a POST that came meanwhile
    waited for them (docs/benchmarks.md, "Shorter writes beside a sweep")."""
    slice_records: int = _int_field(512)
    """Records the delivery-log writer encodes between two looks at the admin gate: when
    it finds it closed, its worker thread hands back what it encoded and the writer
    waits its turn (:mod:`kumo.runtime.admin_gate`); the encoding holds the GIL, which
    the requests' own Python work needs."""
    gather_commits: int = _int_field(8)
    """Commits the delivery-log writer lets pass, once caught up, while clients' events
    are still being committed: under a stream of small injections it then writes (and
    fsyncs, and checkpoints) once for several commits rather than once for each. It
    waits on commits, not on a clock, so an idle log is written at once."""

    # -- snapshots (kumo.runtime.snapshotter) --------------------------------------------
    snapshot_every: int = attrs.field(
        default=100_000,
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)],
        kw_only=True,
    )
    """Durable events between two snapshots of the state taken while serving (0: none).
    A start loads the newest snapshot and folds only the events after it."""
    archive_retention: int | None = attrs.field(
        default=None,
        validator=attrs.validators.optional([attrs.validators.instance_of(int), _positive]),
        kw_only=True,
    )
    """How long the history is kept, in ns (``None``: forever). Each compaction deletes
    the archive segments whose newest event was committed longer ago than that
    (:func:`kumo.model.retention.past_retention`); audits and verification then start
    at the first event kept, from the state before it (:mod:`kumo.store.retention`)."""

    # -- admin requests first (kumo.model.admin_first, kumo.runtime.admin_gate) ---------
    admin_hold: float = attrs.field(
        default=0.1,
        converter=float,
        validator=[attrs.validators.instance_of(float), attrs.validators.ge(0.0)],
        kw_only=True,
    )
    """Seconds at most that the mail path's sessions, sweeps, the log's background lane and
    the delivery-log writer wait, at a time, while admin requests are in flight (then go
    on as long again, or :attr:`admin_rest` times as long but for the mail path's
    sessions, before they wait again); 0: they never wait. While kumo delivered at
    full speed, this cut admin latency 3-4x; under a sweep, a POST's p99 by 10-20%
    (docs/benchmarks.md)."""
    admin_rest: float = attrs.field(
        default=0.25,
        converter=float,
        validator=[attrs.validators.instance_of(float), attrs.validators.gt(0.0)],
        kw_only=True,
    )
    """How long, at least, a sweep, the log's background lane, the delivery-log writer
    and the WAL checkpointer go on after they waited, as a multiple of the wait, before
    they wait again; the mail path's sessions go on as long as they waited, whatever this
    is (:mod:`kumo.model.admin_first`). Under a sweep of 1,000,000 queued, probed with
    a POST every 20 ms and a GET every 10 ms, 0.25 instead of 1 took 12-40% off the
    POSTs' p99 in seven pairs of seven; 0.1 made the sweep longer and the POSTs slower
    (docs/benchmarks.md, "A shorter rest for the sweep")."""
    admin_read_yield: float = attrs.field(
        default=0.005,
        converter=float,
        validator=[attrs.validators.instance_of(float), attrs.validators.ge(0.0)],
        kw_only=True,
    )
    """Seconds at most, in all, that one GET's listing waits between two of its slices
    for the writes (POST, DELETE) in flight (:class:`kumo.model.admin_first.WritesFirst`);
    0: it never waits. Under a sweep of 200,000 or 1,000,000 queued, probed with a POST
    every 20 ms and a GET every 10 ms, 5 ms took 2-18% off a POST's p99
    (docs/benchmarks.md)."""

    # -- the engine (kumo.runtime.engine) ------------------------------------------------
    shutdown_deadline: float = _seconds_field(30.0)
    """Seconds a shutdown waits for actors and followers to finish their work; what it
    cuts off is redone by the next start."""
    background_niceness: int = _int_field(10)
    """How much lower the CPU priority of the delivery-log writer's and the WAL
    checkpointer's threads is than the process's (each runs its blocking calls in a
    thread of its own, :class:`kumo.runtime.blocking.BackgroundThread`; Linux only). On
    fewer cores than busy threads, the event loop that answers admin requests gets the
    CPU first: at 1,000,000 queued, a probed sweep's POST p99 was lower in twelve pairs
    of twelve, and the sweep shorter in eleven (docs/benchmarks.md, "The background
    writers at a lower CPU priority")."""

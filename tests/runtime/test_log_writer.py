"""Group commit, lanes, the in-memory tail and followers of the log writer."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing

from kumo.model.events import Bounced, BounceExpired, Committed, Event, Message, MessageReceived
from kumo.model.settings import EngineSettings
from kumo.runtime.admin_gate import AdminGate
from kumo.runtime.blocking import RunBlocking, in_thread, inline
from kumo.runtime.clock import EngineClock
from kumo.runtime.log_writer import DiskFullError, LogClosedError, LogWriter
from kumo.store.data_dir import open_event_log
from kumo.store.event_log import EventStore
from tests.runtime.harness import WALL_ORIGIN

T = TypeVar("T")


def open_writer(
    path: Path,
    on_commit: Callable[[list[Committed]], None],
    settings: EngineSettings | None = None,
    *,
    store: EventStore | None = None,
    run_blocking: RunBlocking = in_thread,
    admin_gate: AdminGate | None = None,
) -> LogWriter:
    """A writer on the log at ``path`` (through ``store`` if given) that hands each
    transaction it commits to ``on_commit``."""
    return LogWriter(
        store or open_event_log(path),
        open_event_log(path, readonly=True),
        EngineClock(WALL_ORIGIN),
        settings or EngineSettings(),
        on_commit=on_commit,
        run_blocking=run_blocking,
        admin_gate=admin_gate,
    )


def received(n: int) -> MessageReceived:
    return MessageReceived(f"{n:032x}", "q", "s@x", f"r{n}@y", 1)


async def test_concurrent_appends_share_transactions(tmp_path: Path) -> None:
    seen: list[Committed] = []
    writer = open_writer(tmp_path, seen.extend)
    results: dict[int, list[Committed]] = {}

    async def append(n: int) -> None:
        results[n] = await writer.append([received(n)], bodies={0: b"body"})

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        async with trio.open_nursery() as clients:
            for n in range(200):
                clients.start_soon(append, n)
        writer.close()
    stats = writer.statistics()
    assert stats.events_committed == 200
    assert stats.commits < 50  # many appenders, few fsyncs
    assert sorted(c.seq for r in results.values() for c in r) == list(range(1, 201))
    assert [c.seq for c in seen] == list(range(1, 201))
    for n, [committed] in results.items():
        assert committed.event == received(n)


async def test_commit_times_never_decrease(tmp_path: Path) -> None:
    seen: list[Committed] = []
    writer = open_writer(tmp_path, seen.extend)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for n in range(20):
            await writer.append([received(n)])
        writer.close()
    times = [c.time for c in seen]
    assert times == sorted(times)


async def test_background_lane_does_not_wait_for_durability_and_is_bounded(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[Committed] = []
    writer = open_writer(
        tmp_path, seen.extend, EngineSettings(background_capacity=3), run_blocking=inline
    )
    events: list[Event] = [BounceExpired(f"r{n}") for n in range(3)]
    await writer.submit(events)  # room for three: returns at once, nothing committed yet
    assert writer.background_pending()
    assert seen == []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.submit, [BounceExpired("r3")])  # waits for room
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(writer.run)
        await writer.committed.wait_for(4)
        writer.close()
    assert [c.event for c in seen] == [*events, BounceExpired("r3")]
    with pytest.raises(LogClosedError):
        await writer.append([received(1)])


async def test_followers_read_from_memory_then_from_disk(tmp_path: Path) -> None:
    seen: list[Committed] = []
    writer = open_writer(tmp_path, seen.extend, EngineSettings(tail_events=10))
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for batch in range(10):
            await writer.append([received(batch * 5 + n) for n in range(5)])
        recent = await writer.read_after(45)
        assert [c.seq for c in await writer.read_after(41, limit=3)] == [42, 43, 44]
        assert writer.statistics().disk_reads == 0
        old = await writer.read_after(0, limit=100)
        assert writer.statistics().disk_reads == 1
        assert await writer.read_after(50) == []
        writer.close()
    assert [c.seq for c in recent] == [46, 47, 48, 49, 50]
    assert [c.seq for c in old] == list(range(1, 51))
    assert old == seen


async def test_transactions_stay_short_while_clients_wait(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    settings = EngineSettings(
        max_batch_messages=40, client_batch_messages=20, urgent_batch_messages=10
    )
    transactions: list[list[Committed]] = []
    writer = open_writer(tmp_path, transactions.append, settings, run_blocking=inline)

    def bounces(count: int) -> list[Event]:
        # Sweeps: each event bounces five messages.
        messages = [Message(f"m{n}", "s", "r", 1, 1, n) for n in range(5)]
        return [Bounced("rule", "q", messages) for _ in range(count)]

    def weights() -> list[int]:
        return [
            sum(len(c.event.messages) for c in t if isinstance(c.event, Bounced))
            for t in transactions
        ]

    async with trio.open_nursery() as nursery:
        await writer.submit(bounces(20))  # a sweep's 100 messages wait...
        nursery.start_soon(writer.append, [received(1)])  # ...and so does a client
        await trio.testing.wait_all_tasks_blocked()
        await nursery.start(writer.run)
        await writer.committed.wait_for(21)
        # The client's transaction is short, and so are those of the next second.
        assert weights() == [10, 20, 20, 20, 20, 10]
        await trio.sleep(2 * settings.client_window)
        transactions.clear()
        await writer.submit(bounces(20))  # no client for a while: long transactions
        await writer.committed.wait_for(41)
        assert weights() == [40, 40, 20]
        writer.close()


async def test_the_background_lane_waits_while_admin_requests_are_answered(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    transactions: list[list[Committed]] = []
    gate = AdminGate(0.1)
    writer = open_writer(tmp_path, transactions.append, run_blocking=inline, admin_gate=gate)
    sweep: list[Event] = [
        Bounced("rule", "q", [Message(f"m{n}", "s", "r", 1, 1, n)]) for n in range(5)
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        with gate.request():
            await writer.submit(sweep)
            await trio.sleep(0.01)
            assert transactions == []  # the sweep waits...
            await writer.append([received(1)])  # ...not the request's own events
            assert [[c.event for c in t] for t in transactions] == [[received(1)]]
            await trio.sleep(0.01)
            assert len(transactions) == 1
        await writer.committed.wait_for(6)  # answered: the gate opens, the sweep goes on
        # Held as long as the gate may be closed, it goes on as well.
        await trio.sleep(0.05)  # past the gate's rest after the first request
        with gate.request():
            await writer.submit(sweep)
            start = trio.current_time()
            await writer.committed.wait_for(11)
            assert trio.current_time() - start == pytest.approx(0.1)
        writer.close()


async def test_only_some_background_transactions_are_fsynced(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Clients' transactions, the last before the writer idles and one in durable_every
    are durable; the watermark says how far."""
    settings = EngineSettings(max_batch_messages=1)  # one sweep event each
    durable_at_commit: list[tuple[int, int]] = []

    def on_commit(committed: list[Committed]) -> None:
        durable_at_commit.append((committed[-1].seq, writer.durable.value))

    writer = open_writer(tmp_path, on_commit, settings, run_blocking=inline)
    sweep: list[Event] = [
        Bounced("rule", "q", [Message(f"m{n}", "s", "r", 1, 1, n)]) for n in range(20)
    ]
    async with trio.open_nursery() as nursery:
        await writer.submit(sweep)
        await nursery.start(writer.run)
        await writer.committed.wait_for(20)
        # Each commit sees the durable watermark the commits before it left.
        assert [durable for _, durable in durable_at_commit] == [0] * 8 + [8] * 8 + [16] * 4
        assert writer.durable.value == 20  # the last one before idling is durable
        stats = writer.statistics()
        assert (stats.commits, stats.durable_commits, stats.durable_seq) == (20, 3, 20)
        await writer.append([received(1)])
        assert writer.statistics().durable_commits == 4
        writer.close()


async def test_every_commit_is_timed(tmp_path: Path) -> None:
    seen: list[Committed] = []
    writer = open_writer(tmp_path, seen.extend)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for n in range(5):
            await writer.append([received(n)])
        writer.close()
    stats = writer.statistics()
    assert stats.commit_seconds.count == stats.commits == 5
    assert stats.commit_seconds.total >= 0


async def test_a_full_disk_refuses_clients_keeps_background_events_and_recovers(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[Committed] = []
    store = open_event_log(tmp_path)
    writer = open_writer(tmp_path, seen.extend, store=store, run_blocking=inline)
    db = store._db  # type: ignore[attr-defined]  # the file size limit stands for the disk
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages + 20}")
    big = b"x" * 400_000
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.append([received(0)], bodies={0: b"small"})
        # An actor's event goes into the same transaction as a client's that does not
        # fit: the client is refused, the actor's event is kept and committed later.
        await writer.submit([BounceExpired("r1")])
        with pytest.raises(DiskFullError, match="disk is full: nothing of this request"):
            await writer.append([received(1)], bodies={0: big})
        assert [c.seq for c in seen] == [1]
        await writer.committed.wait_for(2)  # the writer tried again a second later
        assert writer.statistics().disk_full == 1
        assert [c.event for c in seen] == [received(0), BounceExpired("r1")]
        db.execute("PRAGMA max_page_count=1000000")  # space freed
        [committed] = await writer.append([received(2)], bodies={0: big})
        await writer.committed.wait_for(3)
        writer.close()
    assert [c.event for c in seen] == [received(0), BounceExpired("r1"), received(2)]
    assert committed.seq == 3
    store.close()


class HeldTrips:
    """A ``run_blocking`` that runs each call inline, the first only once released:
    meanwhile the writer's first transaction is, for the test, under way."""

    def __init__(self) -> None:
        self.trips = 0
        self.release = trio.Event()

    async def __call__(self, call: Callable[[], T]) -> T:
        self.trips += 1
        await self.release.wait()
        return call()


async def _commit_under_way_then_append(
    tmp_path: Path, *, gate_closed: bool, body: bytes = b""
) -> tuple[LogWriter, HeldTrips, list[list[Committed]], list[BaseException | int]]:
    """A background transaction held under way while a client appends (the admin gate
    closed or not); returns once everything settled."""
    transactions: list[list[Committed]] = []
    gate = AdminGate(10.0)
    trips = HeldTrips()
    store = open_event_log(tmp_path)
    writer = open_writer(
        tmp_path, transactions.append, store=store, run_blocking=trips, admin_gate=gate
    )
    if body:
        db = store._db  # type: ignore[attr-defined]  # the file size limit stands for the disk
        db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0] + 20}")
    outcome: list[BaseException | int] = []

    async def client() -> None:
        try:
            [committed] = await writer.append([received(1)], bodies={0: body} if body else None)
            outcome.append(committed.seq)
        except DiskFullError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.submit([BounceExpired("r1")])
        await trio.testing.wait_all_tasks_blocked()
        assert trips.trips == 1  # the sweep's transaction is under way
        with gate.request() if gate_closed else contextlib.nullcontext():
            nursery.start_soon(client)
            await trio.testing.wait_all_tasks_blocked()
            trips.release.set()
            await trio.testing.wait_all_tasks_blocked()
        writer.close()
    return writer, trips, transactions, outcome


async def test_a_client_that_arrives_during_a_commit_is_committed_in_the_same_trip(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """While admin requests are answered, the worker that committed the transaction
    under way commits the clients waiting next, in a transaction of their own, before
    it hands back: no trip to the event loop between the two."""
    writer, trips, transactions, outcome = await _commit_under_way_then_append(
        tmp_path, gate_closed=True
    )
    assert [[c.event for c in t] for t in transactions] == [[BounceExpired("r1")], [received(1)]]
    assert (trips.trips, outcome) == (1, [2])
    stats = writer.statistics()
    assert (stats.commits, stats.durable_commits, stats.durable_seq) == (2, 2, 2)
    assert stats.commit_seconds.count == 2


async def test_with_the_gate_open_the_next_transaction_is_planned_in_the_loop(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    _, trips, transactions, outcome = await _commit_under_way_then_append(
        tmp_path, gate_closed=False
    )
    assert [[c.event for c in t] for t in transactions] == [[BounceExpired("r1")], [received(1)]]
    assert (trips.trips, outcome) == (2, [2])


async def test_a_full_disk_refuses_the_client_of_a_transaction_committed_in_the_same_trip(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    writer, trips, transactions, outcome = await _commit_under_way_then_append(
        tmp_path, gate_closed=True, body=b"x" * 400_000
    )
    assert [[c.event for c in t] for t in transactions] == [[BounceExpired("r1")]]
    assert trips.trips == 1
    [error] = outcome
    assert isinstance(error, DiskFullError)
    assert writer.statistics().disk_full == 1


async def test_contents_of_messages_that_left_are_purged_once_clients_are_quiet(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The purges wait out ``client_window`` after a client's append, unless someone
    waits for them (``wait_purged``); closing purges what is still owed."""
    settings = EngineSettings(spool_purge_batch=2)
    store = open_event_log(tmp_path)
    writer = open_writer(tmp_path, lambda _: None, settings, store=store, run_blocking=inline)

    async def receive_and_bounce(numbers: list[int]) -> None:
        await writer.append([received(n) for n in numbers], bodies=dict.fromkeys(range(3), b"x"))
        gone = [Message(f"{n:032x}", "s@x", f"r{n}@y", 1, 1, n) for n in numbers]
        await writer.submit([Bounced("r", "q", gone)])
        await writer.committed.wait_for(numbers[-1] + 1)
        await trio.testing.wait_all_tasks_blocked()

    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await receive_and_bounce([1, 2, 3])
        assert store.owed == 3  # a client appended just now
        assert store.spool_body(1) == b"x"
        await trio.sleep(settings.client_window)
        await trio.testing.wait_all_tasks_blocked()
        assert store.owed == 0
        assert [store.spool_body(seq) for seq in (1, 2, 3)] == [None, None, None]
        stats = writer.statistics()
        assert (stats.spool_purges, stats.spool_purged, stats.spool_owed) == (2, 3, 0)

        await receive_and_bounce([5])
        asked = trio.current_time()
        await writer.wait_purged()
        assert trio.current_time() == asked  # not after the window
        assert store.spool_body(5) is None

        await receive_and_bounce([7])
        assert store.owed == 1
        writer.close()
    assert store.owed == 0
    assert store.spool_body(7) is None
    assert not store.owing

"""The benchmarks of issue 6: kumo against its targets and against this machine's floor.

    python scripts/bench.py            # full size (1,000,000 messages over 10,000 queues)
    python scripts/bench.py --quick    # CI smoke run: 20,000 messages over 200 queues
    python scripts/bench.py --only sweep --only targeted --runs 5 --json out.json

Every benchmark starts from a fresh data directory under a temporary directory. The
heavy ones run in a child process of their own (``--child NAME``), so that one run's
heap, garbage and threads do not weigh on the next, and so that memory is measured in
a clean process. The HTTP benchmarks run a real ``kumo serve`` and talk to it over
loopback. The table printed at the end is Markdown, ready for ``docs/benchmarks.md``.

The benchmarks:

- **sweep**: fill an engine with the messages through :meth:`Engine.inject` (not timed),
  issue a rule that matches everything, and time from ``issue_bounce`` until
  ``wait_idle`` returns: every ``Bounced`` durable, every AdminBounce record written.
- **floor**: in the same child, just before the sweep and again right after it, the
  unavoidable part of that work done as directly as this machine allows: encode the
  same AdminBounce records with orjson into a reused buffer, write them to one file
  with one ``fdatasync``, and insert the same message ids as SQLite rows (WAL) in
  transactions of :data:`FLOOR_SQLITE_BATCH`, fsyncing only the last (which makes
  the ones before it durable too). The lower of the two counts. Target: sweep / floor <= 2.
- **targeted**: with the messages queued (a copy of the template directory, replayed),
  one rule matching one queue; time from ``issue_bounce`` to ``wait_idle``.
- **memory**: in a child process, VmRSS after the messages are injected (and a
  ``gc.collect()``) minus VmRSS of the same process with the empty engine open. This
  child also builds the template directory the other benchmarks copy.
- **start**: spawn ``kumo serve`` on the template directory and time until it prints
  that it listens; its VmRSS then, minus an empty server's, is the memory after restart.
- **admin latency under sweep**: ``kumo serve`` on a copy of the template; one client
  paces POST and GET ``/api/admin/bounce/v1`` (one request every
  :data:`PROBE_PERIOD` s, alternating) while a match-everything sweep runs. Median of
  the runs' p50 and p99.
- **sweep-probe**: ``kumo serve`` on a directory filled with 200,000 messages over 2,000
  queues, then on one with the full size; two clients probe the admin API from just
  before a match-everything sweep is issued until it is done: one POSTs a new, distinct
  rule that matches nothing every :data:`SWEEP_POST_PERIOD`, the other GETs the rules
  every :data:`SWEEP_GET_PERIOD`. p99 over the whole sweep, over its first second, and
  the sweep's own POST.
- **inject**: ``kumo serve`` on an empty directory; 4 client threads POST
  ``/api/inject/v1`` with 100 recipients a request, as fast as replies come. Median of
  the runs' rates.

The mail path's benchmarks (``smtp-ingress``, ``smtp-delivery``, ``smtp-latency``,
``smtp-pileup``, ``smtp-admin``), side by side with a private Postfix, are in
``scripts/mail_bench.py``; its docstring says what each measures. Fleet mode's
(``fleet-propagation``, ``fleet-throughput``: one redis-server, three in-process nodes)
are in ``scripts/fleet_bench.py``.

``--profile DIR`` records the timed part of one sweep run and one server start with
py-spy (which must be installed; it is not a dependency) as collapsed stacks;
``scripts/bench_profile.py`` summarises them. Figures taken while profiling are skewed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import math
import multiprocessing
import os
import selectors
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Final

import attrs
import httpx
import orjson
import trio
from fleet_bench import FLEET_BENCHMARKS, FLEET_FULL, FLEET_QUICK, run_fleet_benchmarks
from mail_bench import MAIL_BENCHMARKS, MAIL_FULL, MAIL_QUICK, run_mail_benchmarks

from kumo.cli.serve import tune_for_serving
from kumo.http.metrics import ADMIN_LATENCY
from kumo.http.routes import BOUNCE_PATH, INJECT_PATH, METRICS_PATH
from kumo.model.criteria import Criteria
from kumo.model.events import Message
from kumo.model.log_record import admin_bounce_record
from kumo.model.prometheus_text import parse_samples
from kumo.model.queue_name import queue_name_for
from kumo.model.requests import BounceRequest, NewMessage
from kumo.model.rfc3339 import format_rfc3339
from kumo.runtime.engine import Engine, open_engine

SENDER: Final = "bench@sender.example"
CAMPAIGN: Final = "camp"
TENANT: Final = "t"
BODY: Final = b"Subject: bench\r\nX-Campaign: camp\r\nX-Tenant: t\r\n\r\n" + b"x" * 64 + b"\r\n"
"""Every message's content: about 120 bytes (the spool holds it; memory must not)."""
REASON: Final = "bench sweep"
FLOOR_SQLITE_BATCH: Final = 8_192
"""Ids per transaction in the floor. Larger transactions gain little here (65,536 ids a
transaction: 0.69 s per million, against 0.72 s at this size)."""
FLOOR_CHUNK: Final = 4 * 2**20
"""The floor writes its encoded records every this many bytes, reusing one buffer."""
FLOOR_NODE_ID: Final = "00000000-0000-4000-8000-00000000f100"
PROBE_PERIOD: Final = 0.02
"""Seconds between the starts of two latency probes (POST and GET alternate)."""
SWEEP_POST_PERIOD: Final = 0.02
"""Seconds between two probe POSTs of the whole-sweep benchmark (each a new rule)."""
SWEEP_GET_PERIOD: Final = 0.01
"""Seconds between two probe GETs of the whole-sweep benchmark."""
INJECT_CLIENTS: Final = 4
RECIPIENTS_PER_REQUEST: Final = 100
SERVER_START_TIMEOUT: Final = 300.0
RESULT_PREFIX: Final = "BENCH-RESULT "


@attrs.frozen
class Size:
    """How big each benchmark is."""

    name: str
    messages: int
    queues: int
    batch: int
    """Messages per :meth:`Engine.inject` call when filling."""
    sweep_runs: int
    targeted_runs: int
    start_runs: int
    latency_runs: int
    inject_runs: int
    inject_messages: int
    latency_baseline: int
    """Probes of each kind taken before the sweep, on the idle server."""
    probe_sizes: tuple[tuple[int, int], ...]
    """(messages, queues) of each whole-sweep probe run."""


FULL: Final = Size(
    "full",
    1_000_000,
    10_000,
    10_000,
    3,
    7,
    3,
    3,
    3,
    200_000,
    50,
    ((200_000, 2_000), (1_000_000, 10_000)),
)
QUICK: Final = Size("quick", 20_000, 200, 5_000, 3, 5, 3, 1, 1, 10_000, 20, ((20_000, 200),))


# -- what is measured ---------------------------------------------------------------------


def queue_of(index: int, queues: int) -> str:
    """The scheduled queue of message ``index``: ``camp:t@d<n>.example``."""
    return queue_name_for(
        domain=f"d{index % queues}.example", campaign=CAMPAIGN, tenant=TENANT, routing_domain=None
    )


def recipient_of(index: int, queues: int) -> str:
    return f"u{index}@d{index % queues}.example"


def new_messages(start: int, stop: int, queues: int) -> list[NewMessage]:
    """Messages ``start..stop``, spread round-robin over ``queues`` queues."""
    return [
        NewMessage(
            sender=SENDER,
            recipient=recipient_of(index, queues),
            queue=queue_of(index, queues),
            body=BODY,
        )
        for index in range(start, stop)
    ]


@attrs.frozen
class Filled:
    """What filling an engine returned: the spool ids, and when each batch was durable."""

    ids: list[str]
    batch_times: list[int]
    seconds: float


async def fill(engine: Engine, messages: int, queues: int, batch: int) -> Filled:
    """Inject ``messages`` through the engine API in batches of ``batch``; wait idle."""
    ids: list[str] = []
    times: list[int] = []
    started = time.perf_counter()
    for start in range(0, messages, batch):
        ids += await engine.inject(new_messages(start, min(messages, start + batch), queues))
        times.append(engine.clock.now())
    await engine.wait_idle()
    return Filled(ids, times, time.perf_counter() - started)


def rss_bytes(pid: int | str = "self") -> int:
    """VmRSS of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


@attrs.frozen
class Floor:
    encode_write: float
    """Seconds to encode every record and write it (page cache), in chunks."""
    fsync: float
    sqlite: float
    """Seconds to insert every id as a row, committing every FLOOR_SQLITE_BATCH rows."""
    bytes: int

    @property
    def total(self) -> float:
        return self.encode_write + self.fsync + self.sqlite


def measure_floor(filled: Filled, queues: int, batch: int, directory: Path) -> Floor:
    """The floor under a sweep of ``filled``: see the module docstring.

    Records are built in the order the sweep bounces them (queue by queue), each from a
    template dict of the same shape as :func:`admin_bounce_record` gives, and encoded
    with one ``orjson.dumps`` each into a buffer that is written out and reused every
    :data:`FLOOR_CHUNK` bytes (a buffer of fresh memory per record costs several
    microseconds in page faults here, which no encoder has to pay).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ids = filled.ids
    count = len(ids)
    now = time.time_ns()
    probe = Message(ids[0], SENDER, recipient_of(0, queues), len(BODY), now, 1)
    template = admin_bounce_record(
        probe, queue=queue_of(0, queues), reason=REASON, bounced_at=now, node_id=FLOOR_NODE_ID
    )
    created = [(t // 1_000_000_000, format_rfc3339(t)) for t in filled.batch_times]
    recipients = [recipient_of(index, queues) for index in range(count)]
    gc.collect()
    # The floor's own garbage holds no cycles: without the collector its figure does not
    # depend on how many objects the engine in this process happens to hold.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _encode_write_insert(ids, recipients, template, created, queues, batch, directory)
    finally:
        if collecting:
            gc.enable()


def _encode_write_insert(
    ids: list[str],
    recipients: list[str],
    template: dict[str, Any],
    created: list[tuple[int, str]],
    queues: int,
    batch: int,
    directory: Path,
) -> Floor:
    """The timed part of :func:`measure_floor`."""
    count = len(ids)
    dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    path = directory / "floor.jsonl"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    total = 0
    try:
        started = time.perf_counter()
        buffer = bytearray()
        for queue_index in range(min(queues, count)):
            queue = queue_of(queue_index, queues)
            for index in range(queue_index, count, queues):
                record = dict(template)
                record["id"] = ids[index]
                record["recipient"] = recipients[index]
                record["queue"] = queue
                record["created"], record["created_time"] = created[index // batch]
                buffer += dumps(record, option=newline)
            if len(buffer) >= FLOOR_CHUNK:
                total += _write_all(fd, buffer)
                del buffer[:]
        total += _write_all(fd, buffer)
        written = time.perf_counter()
        os.fdatasync(fd)
        synced = time.perf_counter()
    finally:
        os.close(fd)
    path.unlink()

    database = directory / "floor.sqlite3"
    db = sqlite3.connect(database, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE bounced (id TEXT NOT NULL)")
        rows = [(message_id,) for message_id in ids]
        inserting = time.perf_counter()
        for start in range(0, count, FLOOR_SQLITE_BATCH):
            # Like the engine: durable at the end, not at every transaction (the last
            # one's fsync makes the WAL before it durable too).
            last = start + FLOOR_SQLITE_BATCH >= count
            db.execute(f"PRAGMA synchronous={'FULL' if last else 'NORMAL'}")
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO bounced VALUES (?)", rows[start : start + FLOOR_SQLITE_BATCH]
            )
            db.execute("COMMIT")
        inserted = time.perf_counter()
    finally:
        db.close()
    for leftover in directory.glob("floor.sqlite3*"):
        leftover.unlink()
    return Floor(written - started, synced - written, inserted - inserting, total)


def _write_all(fd: int, data: bytearray) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)


@attrs.frozen
class SweepRun:
    messages: int
    queues: int
    fill_seconds: float
    ack: float
    """Seconds until ``issue_bounce`` returned (the rule durable)."""
    durable: float
    """Seconds until the projection counted every message bounced (all Bounced durable)."""
    seconds: float
    """Seconds until ``wait_idle`` returned: the AdminBounce records written as well."""
    commits: int
    record_bytes: int
    floors: list[Floor]
    """The floor measured before the sweep and after it."""

    @property
    def floor(self) -> Floor:
        return min(self.floors, key=lambda floor: floor.total)

    @property
    def ratio(self) -> float:
        return self.seconds / self.floor.total


async def sweep_run(
    directory: Path,
    messages: int,
    queues: int,
    batch: int,
    *,
    profile: Path | None = None,
) -> SweepRun:
    """One sweep run and its floor, on a fresh ``directory``; see the module docstring."""
    data_dir = directory / "data"
    async with open_engine(data_dir) as engine:
        filled = await fill(engine, messages, queues, batch)
        before = engine.statistics()
        # The floor is taken both before the sweep (the engine open and idle) and after
        # it (the engine closed), and the lower counts: fresh page cache and heap cost
        # differently at different moments of a run here.
        floors = [measure_floor(filled, queues, batch, directory / "floor")]
        gc.collect()
        durable: list[float] = []
        with _profiling(profile, "sweep"):
            started = time.perf_counter()
            await engine.issue_bounce(
                BounceRequest(criteria=Criteria(), reason=REASON), issued_by="bench"
            )
            acked = time.perf_counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch_bounced, engine, before.bounced_total + messages, durable)
                await engine.wait_idle()
                finished = time.perf_counter()
                nursery.cancel_scope.cancel()
        after = engine.statistics()
    if after.bounced_total - before.bounced_total != messages or after.queued_total != 0:
        raise RuntimeError(f"the sweep did not bounce every message: {after}")
    records = after.delivery_log.records_written - before.delivery_log.records_written
    if records != messages:
        raise RuntimeError(f"{records} AdminBounce records written for {messages} messages")
    floors.append(measure_floor(filled, queues, batch, directory / "floor"))
    return SweepRun(
        messages=messages,
        queues=queues,
        fill_seconds=filled.seconds,
        ack=acked - started,
        durable=(durable[0] if durable else finished) - started,
        seconds=finished - started,
        commits=after.log.commits - before.log.commits,
        record_bytes=after.delivery_log.bytes_written - before.delivery_log.bytes_written,
        floors=floors,
    )


async def _watch_bounced(engine: Engine, target: int, out: list[float]) -> None:
    # Polled: the engine offers no event for "counted so far", and a 5 ms poll costs
    # nothing next to a sweep.
    projection = engine.projection()
    while projection.bounced_total < target:  # noqa: ASYNC110
        await trio.sleep(0.005)
    out.append(time.perf_counter())


@attrs.frozen
class TargetedRuns:
    messages: int
    queues: int
    open_seconds: float
    seconds: list[float]
    acks: list[float]


async def targeted_runs(data_dir: Path, queues: int, runs: int) -> TargetedRuns:
    """On ``data_dir`` (messages queued), ``runs`` rules each matching one queue."""
    started = time.perf_counter()
    async with open_engine(data_dir) as engine:
        opened = time.perf_counter() - started
        await engine.wait_idle()
        queued = engine.statistics().queued_total
        per_queue = queued // queues
        gc.collect()
        seconds: list[float] = []
        acks: list[float] = []
        for run in range(runs):
            queue_index = run * max(1, queues // runs)
            bounced = engine.projection().bounced_total
            started = time.perf_counter()
            await engine.issue_bounce(
                BounceRequest(criteria=Criteria(domain=f"d{queue_index}.example"), reason=REASON),
                issued_by="bench",
            )
            acked = time.perf_counter()
            await engine.wait_idle()
            seconds.append(time.perf_counter() - started)
            acks.append(acked - started)
            if engine.projection().bounced_total - bounced != per_queue:
                raise RuntimeError("the targeted rule did not bounce exactly its queue")
    return TargetedRuns(queued, queues, opened, seconds, acks)


@attrs.frozen
class MemoryRun:
    messages: int
    empty_rss: int
    full_rss: int
    fill_seconds: float

    @property
    def per_message(self) -> float:
        return (self.full_rss - self.empty_rss) / self.messages


async def memory_run(data_dir: Path, messages: int, queues: int, batch: int) -> MemoryRun:
    """RSS of this process with ``messages`` queued minus with the empty engine.

    Meant for a fresh process; leaves ``data_dir`` holding the messages (the template).
    """
    async with open_engine(data_dir) as engine:
        await engine.wait_idle()
        gc.collect()
        empty = rss_bytes()
        filled = await fill(engine, messages, queues, batch)
        seconds = filled.seconds
        del filled
        gc.collect()
        full = rss_bytes()
    return MemoryRun(messages, empty, full, seconds)


# -- kumo serve ---------------------------------------------------------------------------


class Server:
    """A ``kumo serve`` subprocess on 127.0.0.1, port 0."""

    READY: Final = "kumo listening on "

    def __init__(
        self, data_dir: Path, *, wrap: Sequence[str] = (), extra: Sequence[str] = ()
    ) -> None:
        """``wrap``: a command to run ``kumo serve`` under; ``extra``: more of its options."""
        self.data_dir = data_dir
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115  # closed by stop()
        args = [sys.executable, "-m", "kumo.cli.serve", "--listen", "127.0.0.1:0"]
        # These benchmarks speak HTTP; no SMTP listener to fight over port 2025. And they
        # measure the admin engine: the messages they fill are held, not delivered (their
        # domains, dN.example, do not resolve: delivering would fail every one of them,
        # a transient failure each, while the benchmark measures something else).
        args += ["--data-dir", str(data_dir), "--smtp-listen", "off", "--no-deliver", *extra]
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [*wrap, *args],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.url = ""
        self.start_seconds = math.nan

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT) -> float:
        """Wait for the listening line; return seconds since the process was spawned."""
        stdout = self.process.stdout
        assert stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self.kill()
                    raise TimeoutError(f"kumo serve did not start in {timeout}s")
                line = stdout.readline()
                if not line:
                    raise RuntimeError(f"kumo serve exited:\n{self.stderr_text()}")
                if line.startswith(self.READY):
                    self.start_seconds = time.perf_counter() - self.started
                    self.url = line[len(self.READY) :].strip()
                    return self.start_seconds

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM, then wait; SIGKILL if it outlives ``timeout``."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                return self.process.wait()
        finally:
            self._close()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._close()

    def _close(self) -> None:
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


@contextmanager
def serving(data_dir: Path) -> Iterator[Server]:
    server = Server(data_dir)
    try:
        server.wait_ready()
        yield server
    finally:
        status = server.stop()
        if status != 0:
            print(f"warning: kumo serve exited {status}", file=sys.stderr)


@attrs.frozen
class StartRuns:
    messages: int
    seconds: list[float]
    rss: list[int]
    empty_seconds: list[float]
    empty_rss: list[int]

    @property
    def per_message(self) -> float:
        return (statistics.median(self.rss) - statistics.median(self.empty_rss)) / self.messages


def start_runs(template: Path, messages: int, runs: int, scratch: Path) -> StartRuns:
    """Start ``kumo serve`` ``runs`` times on ``template``, and on empty directories."""
    seconds, rss, empty_seconds, empty_rss = [], [], [], []
    for run in range(runs):
        with serving(template) as server:
            seconds.append(server.start_seconds)
            rss.append(rss_bytes(server.pid))
        with serving(scratch / f"empty-{run}") as server:
            empty_seconds.append(server.start_seconds)
            empty_rss.append(rss_bytes(server.pid))
    return StartRuns(messages, seconds, rss, empty_seconds, empty_rss)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.99 for p99)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@attrs.frozen
class LatencyRun:
    messages: int
    baseline_post: list[float]
    baseline_get: list[float]
    post: list[float]
    get: list[float]
    sweep_seconds: float
    """From the sweep's POST to the GET that shows every message bounced."""
    start_seconds: float


def latency_run(data_dir: Path, messages: int, baseline: int) -> LatencyRun:
    """Probe the admin API of a server on ``data_dir`` before and during a sweep."""
    probe = {"domain": "probe.invalid", "reason": "latency probe", "duration": "5m"}
    sweep = {"reason": REASON, "duration": "5m"}
    with serving(data_dir) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        base_post, base_get = _probe(client, probe, lambda _: len(_) < baseline, None)
        response = client.post(BOUNCE_PATH, json=sweep)
        response.raise_for_status()
        sweep_started = time.perf_counter()
        rule_id = response.json()["id"]
        done: list[float] = []

        def swept(body: Any) -> bool:
            for rule in body:
                if rule["id"] == rule_id and rule["total_bounced"] >= messages:
                    done.append(time.perf_counter())
                    return True
            return False

        post, get = _probe(client, probe, lambda _: not done, swept)
        return LatencyRun(
            messages=messages,
            baseline_post=base_post,
            baseline_get=base_get,
            post=post,
            get=get,
            sweep_seconds=done[0] - sweep_started,
            start_seconds=server.start_seconds,
        )


def _probe(
    client: httpx.Client,
    body: dict[str, str],
    more: Callable[[list[float]], bool],
    check: Callable[[Any], bool] | None,
) -> tuple[list[float], list[float]]:
    """Alternate POST and GET, one every PROBE_PERIOD, while ``more(gets)``."""
    posts: list[float] = []
    gets: list[float] = []
    deadline = time.perf_counter()
    while more(gets):
        for kind in ("POST", "GET"):
            pause = deadline - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            deadline = time.perf_counter() + PROBE_PERIOD
            started = time.perf_counter()
            if kind == "POST":
                response = client.post(BOUNCE_PATH, json=body)
                posts.append(time.perf_counter() - started)
                response.raise_for_status()
            else:
                response = client.get(BOUNCE_PATH)
                gets.append(time.perf_counter() - started)
                response.raise_for_status()
                if check is not None and check(orjson.loads(response.content)):
                    break
    return posts, gets


@attrs.frozen
class AppTime:
    """The app's own time for one method of the bounce route, as the server's
    ``kumo_admin_request_seconds`` histogram saw it: the rest of a client's latency is
    spent in hypercorn, in the event loop's turns around the handler, in the kernel and
    in the client."""

    count: int
    mean: float
    p99_bound: float
    """The upper bound of the histogram's bucket that holds the 99th percentile."""

    @classmethod
    def from_metrics(cls, metrics: str, method: str) -> AppTime:
        """Read from a /metrics page (zeros if the route was not asked with ``method``)."""
        buckets: list[tuple[float, float]] = []
        count = total = 0.0
        for sample in parse_samples(metrics):
            labels = sample.labels
            if labels.get("route") != BOUNCE_PATH or labels.get("method") != method:
                continue
            if sample.name == ADMIN_LATENCY + "_bucket":
                buckets.append((float(labels["le"]), sample.value))
            elif sample.name == ADMIN_LATENCY + "_count":
                count = sample.value
            elif sample.name == ADMIN_LATENCY + "_sum":
                total = sample.value
        if not count:
            return cls(0, 0.0, 0.0)
        bound = min(le for le, below in buckets if below >= 0.99 * count)
        return cls(int(count), total / count, bound)


@attrs.frozen
class SweepProbeRun:
    """Admin latency over the whole of one sweep, its first second and its own POST."""

    messages: int
    queues: int
    sweep_post: float
    """The POST that issues the match-everything rule."""
    posts: list[tuple[float, float]]
    """(start relative to the sweep's POST, latency) of each probe POST during the sweep."""
    gets: list[tuple[float, float]]
    sweep_seconds: float
    app: dict[str, AppTime]
    """By method, the app's own time for every bounce request the server answered (the
    probes from just before the sweep to its end, and the sweep's POST)."""

    def during(self, kind: str, first: float | None = None) -> list[float]:
        """Latencies of the probes of ``kind`` in flight at some moment of the sweep (of
        its first ``first`` seconds): a probe sent just before the sweep's POST and
        answered only seconds later was kept waiting by the sweep's start, and counts."""
        samples = self.posts if kind == "POST" else self.gets
        return [
            latency for at, latency in samples if at + latency > 0 and (first is None or at < first)
        ]


def _paced(period: float, stop: Callable[[], bool], request: Callable[[], None]) -> None:
    """Call ``request`` every ``period`` seconds (at once if it took longer) until ``stop``."""
    deadline = time.monotonic()
    while not stop():
        pause = deadline - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        deadline = time.monotonic() + period
        request()


def _post_probe(url: str, stop: Any, results: Any, lifetime: str = "5m") -> None:
    """The POST probe of :func:`sweep_probe_run`, in a process of its own: sends
    ``(time.monotonic() at the start, latency)`` of each POST to ``results`` once
    ``stop`` (a ``multiprocessing.Event``) is set. Each rule lives ``lifetime``."""
    posts: list[tuple[float, float]] = []
    with httpx.Client(base_url=url, timeout=60) as client:

        def post() -> None:
            body = {
                "domain": f"probe-{len(posts)}.invalid",
                "reason": "probe",
                "duration": lifetime,
            }
            started = time.monotonic()
            client.post("/api/admin/bounce/v1", json=body).raise_for_status()
            posts.append((started, time.monotonic() - started))

        _paced(SWEEP_POST_PERIOD, stop.is_set, post)
    results.send(posts)


def _total_bounced(listing: bytes, rule_id: str) -> int:
    """``total_bounced`` of rule ``rule_id`` in GET's ``listing`` (-1 if it is not there),
    found without parsing the whole answer: at 1,000,000 queued it is about a megabyte,
    and parsing it every 10 ms took a third of a CPU of the two the server shares."""
    start = listing.find(b'"id":"%s"' % rule_id.encode())
    if start < 0:
        return -1
    key = b'},"total_bounced":'  # after the ``bounced`` map, whose values are numbers
    at = listing.index(key, start) + len(key)
    end = at
    while listing[end : end + 1].isdigit():
        end += 1
    return int(listing[at:end])


def sweep_probe_run(data_dir: Path, messages: int, queues: int) -> SweepProbeRun:
    """A match-everything sweep on a server on ``data_dir``, probed by two clients: one
    POSTs a new, distinct rule that matches nothing every :data:`SWEEP_POST_PERIOD`, the
    other GETs the rules every :data:`SWEEP_GET_PERIOD`, from just before the sweep's POST
    until the GET shows every message bounced.

    The POST probe runs in a process of its own: in one process, each probe waited for
    the interpreter while the other parsed its answer (the GET's, a megabyte at
    1,000,000 queued), and that wait counted as the server's latency."""
    forked = multiprocessing.get_context("fork")
    with serving(data_dir) as server:
        stop = forked.Event()
        origin: list[float] = []
        done: list[float] = []
        gets: list[tuple[float, float]] = []
        sweep_id: list[str] = []
        received, sent = forked.Pipe(duplex=False)
        poster = forked.Process(target=_post_probe, args=(server.url, stop, sent), daemon=True)
        poster.start()
        sent.close()  # the child's end: if it dies, recv() raises rather than waits

        def get(client: httpx.Client) -> None:
            started = time.monotonic()
            response = client.get("/api/admin/bounce/v1")
            gets.append((started, time.monotonic() - started))
            response.raise_for_status()
            if sweep_id and not done and _total_bounced(response.content, sweep_id[0]) >= messages:
                done.append(time.monotonic())
                stop.set()

        def get_probe() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                _paced(SWEEP_GET_PERIOD, stop.is_set, lambda: get(client))

        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                getter = pool.submit(get_probe)
                time.sleep(0.5)  # probes before the sweep too: the first second starts warm
                with httpx.Client(base_url=server.url, timeout=60) as client:
                    started = time.monotonic()
                    origin.append(started)
                    response = client.post(
                        "/api/admin/bounce/v1", json={"reason": REASON, "duration": "5m"}
                    )
                    sweep_post = time.monotonic() - started
                    response.raise_for_status()
                    sweep_id.append(response.json()["id"])
                if not stop.wait(600):
                    raise RuntimeError("the sweep did not finish in 10 minutes")
                getter.result()
            posts: list[tuple[float, float]] = received.recv()
            metrics = httpx.get(server.url + METRICS_PATH, timeout=60).text
        finally:
            stop.set()
            poster.join(60)
    return SweepProbeRun(
        messages,
        queues,
        sweep_post,
        [(started - origin[0], latency) for started, latency in posts],
        [(started - origin[0], latency) for started, latency in gets],
        done[0] - origin[0],
        {method: AppTime.from_metrics(metrics, method) for method in ("POST", "GET")},
    )


@attrs.frozen
class InjectRun:
    messages: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def inject_run(data_dir: Path, messages: int, queues: int) -> InjectRun:
    """POST ``messages`` to /api/inject/v1, 100 recipients a request, 4 clients at once."""
    content = BODY.decode()
    bodies = [
        orjson.dumps(
            {
                "envelope_sender": SENDER,
                "content": content,
                "recipients": [
                    {"email": recipient_of(index, queues)}
                    for index in range(start, min(messages, start + RECIPIENTS_PER_REQUEST))
                ],
            }
        )
        for start in range(0, messages, RECIPIENTS_PER_REQUEST)
    ]
    shares = [bodies[client::INJECT_CLIENTS] for client in range(INJECT_CLIENTS)]
    warmup = orjson.dumps(
        {"envelope_sender": SENDER, "content": content, "recipients": [{"email": "w@w.example"}]}
    )
    with serving(data_dir) as server:
        barrier = threading.Barrier(INJECT_CLIENTS + 1)

        def client_loop(share: list[bytes]) -> list[float]:
            latencies: list[float] = []
            headers = {"content-type": "application/json"}
            with httpx.Client(base_url=server.url, timeout=120, headers=headers) as client:
                client.post(INJECT_PATH, content=warmup).raise_for_status()
                barrier.wait()
                for body in share:
                    started = time.perf_counter()
                    response = client.post(INJECT_PATH, content=body)
                    latencies.append(time.perf_counter() - started)
                    response.raise_for_status()
                    reply = orjson.loads(response.content)
                    if reply["fail_count"]:
                        raise RuntimeError(f"inject failed: {reply}")
            return latencies

        with concurrent.futures.ThreadPoolExecutor(INJECT_CLIENTS) as pool:
            futures = [pool.submit(client_loop, share) for share in shares]
            barrier.wait()
            started = time.perf_counter()
            results = [future.result() for future in futures]
            seconds = time.perf_counter() - started
    return InjectRun(messages, seconds, [value for result in results for value in result])


# -- profiling ----------------------------------------------------------------------------


PROFILE_MODE: Final = "KUMO_BENCH_PROFILE_MODE"
"""Environment variable (inherited by the children): ``wall`` or ``gil``."""


def py_spy_options() -> list[str]:
    """``wall``: every thread, waiting or not (where the time goes); ``gil``: only the
    thread holding the GIL (where the Python CPU goes)."""
    mode = "--gil" if os.environ.get(PROFILE_MODE) == "gil" else "--idle"
    return ["--threads", mode, "--rate", "200", "--format", "raw", "--output"]


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("--profile needs py-spy: pip install py-spy")
    return found


@contextmanager
def _profiling(directory: Path | None, name: str) -> Iterator[None]:
    """Record this process with py-spy for the duration of the block (if asked)."""
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    output = directory / f"{name}.txt"
    recorder = subprocess.Popen(
        [py_spy(), "record", "--pid", str(os.getpid()), *py_spy_options(), str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # let it attach
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)


def profile_start(template: Path, directory: Path) -> Path:
    """One ``kumo serve`` start on ``template`` under py-spy; returns the stacks file."""
    directory.mkdir(parents=True, exist_ok=True)
    output = directory / "start.txt"
    wrap = [py_spy(), "record", *py_spy_options(), str(output), "--"]
    server = Server(template, wrap=wrap)
    server.wait_ready()
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    for child in children:
        os.kill(int(child), signal.SIGTERM)
    server.process.wait(120)
    server._close()
    return output


# -- running and reporting ----------------------------------------------------------------


def compacted(data_dir: Path) -> Path:
    """``data_dir`` after ``kumo compact``: snapshotted, its history archived.

    A directory filled in one go (by inject, in seconds) holds more events past its last
    snapshot than a server lets pass (``snapshot_every``): a server started on it
    compacts first, in a process of its own, and that compaction would run beside the
    benchmark. A node that received the same mail over hours would have snapshotted as
    it went. What a compaction while serving costs is measured by
    ``scripts/compaction_latency.py``, not here.
    """
    subprocess.run(
        [Path(sys.executable).with_name("kumo"), "compact", "--data-dir", str(data_dir)],
        stdout=subprocess.DEVNULL,
        check=True,
    )
    os.sync()
    return data_dir


def run_child(kind: str, **arguments: Any) -> dict[str, Any]:
    """Run ``bench.py --child kind`` and return the result it prints."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind]
    command += ["--arguments", json.dumps(arguments, default=str)]
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    raise RuntimeError(f"child {kind} printed no result:\n{completed.stdout}")


def child_main(kind: str, arguments: dict[str, Any]) -> None:
    """The body of a ``--child`` process: run one measurement, print it as JSON."""
    tune_for_serving()  # measure the engine as kumo serve runs it
    result: Any
    if kind == "sweep":
        profile = Path(arguments["profile"]) if arguments.get("profile") else None
        result = trio.run(
            lambda: sweep_run(
                Path(arguments["directory"]),
                arguments["messages"],
                arguments["queues"],
                arguments["batch"],
                profile=profile,
            )
        )
    elif kind == "memory":
        result = trio.run(
            memory_run,
            Path(arguments["data_dir"]),
            arguments["messages"],
            arguments["queues"],
            arguments["batch"],
        )
    elif kind == "targeted":
        result = trio.run(
            targeted_runs, Path(arguments["data_dir"]), arguments["queues"], arguments["runs"]
        )
    else:
        raise SystemExit(f"unknown child {kind}")
    print(RESULT_PREFIX + json.dumps(attrs.asdict(result)), flush=True)


@attrs.frozen
class Row:
    benchmark: str
    figure: str
    target: str
    verdict: str
    detail: str


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def _s(seconds: float) -> str:
    return f"{seconds:,.2f} s"


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


BENCHMARKS: Final = (
    "memory",
    "start",
    "targeted",
    "latency",
    "sweep-probe",
    "inject",
    "sweep",
    *MAIL_BENCHMARKS,
    *FLEET_BENCHMARKS,
)


def run_benchmarks(
    size: Size, only: Sequence[str], scratch: Path, profile: Path | None, runs: int | None
) -> tuple[list[Row], dict[str, Any]]:
    """Run the chosen benchmarks in order; return the table and the raw figures."""
    rows: list[Row] = []
    raw: dict[str, Any] = {"size": attrs.asdict(size)}
    n, q = size.messages, size.queues
    template = scratch / "template"

    def note(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def copy_template(name: str) -> Path:
        target = scratch / name
        shutil.copytree(template, target)
        # Flush the copy now: otherwise the kernel writes its hundreds of megabytes back
        # in the middle of the benchmark that follows, and that one measures the copy.
        os.sync()
        return target

    if any(name in only for name in ("memory", "start", "targeted", "latency")):
        note(f"memory: injecting {n:,} messages over {q:,} queues in a child (the template)")
        memory = MemoryRun(
            **run_child("memory", data_dir=template, messages=n, queues=q, batch=size.batch)
        )
        raw["memory"] = attrs.asdict(memory) | {"per_message": memory.per_message}
        if "memory" in only:
            rows.append(
                Row(
                    "memory (live)",
                    f"{memory.per_message:,.0f} B/msg",
                    "<= 400 B/msg",
                    _verdict(memory.per_message <= 400),
                    f"VmRSS {memory.empty_rss / 2**20:,.0f} MiB empty engine, "
                    f"{memory.full_rss / 2**20:,.0f} MiB with {n:,} queued (injected in-process)",
                )
            )

    if "start" in only:
        note(f"start: kumo serve on {n:,} queued, {size.start_runs} runs")
        start = start_runs(template, n, size.start_runs, scratch)
        raw["start"] = attrs.asdict(start) | {"per_message": start.per_message}
        median = statistics.median(start.seconds)
        rows.append(
            Row(
                "start",
                _s(median),
                "<= 5 s",
                _verdict(median <= 5),
                f"`kumo serve` spawn to listening, {n:,} queued, median of {len(start.seconds)} "
                f"({', '.join(f'{s:.2f}' for s in start.seconds)}); empty dir "
                f"{statistics.median(start.empty_seconds):.2f} s",
            )
        )
        rows.append(
            Row(
                "memory (after restart)",
                f"{start.per_message:,.0f} B/msg",
                "<= 400 B/msg",
                _verdict(start.per_message <= 400),
                f"server VmRSS {statistics.median(start.rss) / 2**20:,.0f} MiB with {n:,} "
                f"queued minus {statistics.median(start.empty_rss) / 2**20:,.0f} MiB empty",
            )
        )
        if profile is not None:
            note("start: one more run under py-spy")
            profile_start(template, profile)

    if "targeted" in only:
        count = runs or size.targeted_runs
        note(f"targeted: {count} one-queue rules with {n:,} queued")
        targeted = TargetedRuns(
            **run_child("targeted", data_dir=copy_template("targeted"), queues=q, runs=count)
        )
        raw["targeted"] = attrs.asdict(targeted)
        median = statistics.median(targeted.seconds)
        rows.append(
            Row(
                "targeted bounce",
                _ms(median),
                "<= 50 ms",
                _verdict(median <= 0.05),
                f"1 queue of {q:,} ({n // q} msgs), {n:,} queued; median of {count}, max "
                f"{_ms(max(targeted.seconds))}; ack (durable rule) median "
                f"{_ms(statistics.median(targeted.acks))}",
            )
        )
        shutil.rmtree(scratch / "targeted")

    if "latency" in only:
        count = runs or size.latency_runs
        latencies: list[LatencyRun] = []
        for run in range(count):
            note(
                f"latency: admin POST/GET over HTTP during a sweep of {n:,}, "
                f"run {run + 1} of {count}"
            )
            latency_dir = compacted(copy_template("latency"))
            latencies.append(latency_run(latency_dir, n, size.latency_baseline))
            shutil.rmtree(scratch / "latency")
        raw["latency"] = [attrs.asdict(latency) for latency in latencies]
        for kind, during, idle in (
            ("POST", [r.post for r in latencies], [r.baseline_post for r in latencies]),
            ("GET", [r.get for r in latencies], [r.baseline_get for r in latencies]),
        ):
            p50s = [statistics.median(samples) for samples in during]
            p99s = [percentile(samples, 0.99) for samples in during]
            p99 = statistics.median(p99s)
            rows.append(
                Row(
                    f"admin {kind} under sweep",
                    f"p50 {_ms(statistics.median(p50s))}, p99 {_ms(p99)}",
                    "p99 <= 20 ms",
                    _verdict(p99 <= 0.02),
                    f"median of {count} run(s) (p99 {', '.join(_ms(v) for v in p99s)}); "
                    f"{sum(map(len, during))} probes during sweeps of "
                    f"{', '.join(f'{r.sweep_seconds:.1f}' for r in latencies)} s over HTTP; "
                    f"idle p50 {_ms(statistics.median([statistics.median(i) for i in idle]))}, "
                    f"p99 {_ms(statistics.median([percentile(i, 0.99) for i in idle]))}",
                )
            )

    if "sweep-probe" in only:
        for messages, queues in size.probe_sizes:
            note(f"sweep-probe: {messages:,} queued over {queues:,} queues, whole sweep probed")
            directory = scratch / "sweep-probe"
            run_child(
                "memory", data_dir=directory, messages=messages, queues=queues, batch=size.batch
            )
            probe = sweep_probe_run(compacted(directory), messages, queues)
            shutil.rmtree(directory)
            raw.setdefault("sweep_probe", []).append(
                attrs.asdict(probe, filter=lambda a, _: a.name not in ("posts", "gets"))
                | {
                    kind: {
                        "p50": statistics.median(probe.during(kind)),
                        "p99": percentile(probe.during(kind), 0.99),
                        "max": max(probe.during(kind)),
                        "first_second_p99": percentile(probe.during(kind, 1.0), 0.99),
                        "first_second_max": max(probe.during(kind, 1.0)),
                        "count": len(probe.during(kind)),
                    }
                    for kind in ("POST", "GET")
                }
            )
            for kind in ("POST", "GET"):
                whole, first = probe.during(kind), probe.during(kind, 1.0)
                p99 = max(percentile(whole, 0.99), percentile(first, 0.99))
                rows.append(
                    Row(
                        f"admin {kind}, whole sweep of {messages:,}",
                        f"p99 {_ms(percentile(whole, 0.99))}, first second p99 "
                        f"{_ms(percentile(first, 0.99))}",
                        "p99 <= 20 ms",
                        _verdict(p99 <= 0.02),
                        f"{len(whole)} probes (max {_ms(max(whole))}, first second max "
                        f"{_ms(max(first))}) over a {probe.sweep_seconds:.1f} s sweep of "
                        f"{queues:,} queues; each POST a new non-matching rule; "
                        f"the app's own time mean {_ms(probe.app[kind].mean)}, "
                        f"p99 <= {_ms(probe.app[kind].p99_bound)}"
                        + (
                            f"; the sweep's own POST {_ms(probe.sweep_post)}"
                            if kind == "POST"
                            else ""
                        ),
                    )
                )

    if "inject" in only:
        count = runs or size.inject_runs
        injects: list[InjectRun] = []
        for run in range(count):
            note(
                f"inject: {size.inject_messages:,} messages over HTTP, {INJECT_CLIENTS} clients, "
                f"run {run + 1} of {count}"
            )
            injects.append(inject_run(scratch / "inject", size.inject_messages, q))
            shutil.rmtree(scratch / "inject")
        raw["inject"] = [attrs.asdict(inject) | {"rate": inject.rate} for inject in injects]
        rate = statistics.median(inject.rate for inject in injects)
        latencies_all = [value for inject in injects for value in inject.latencies]
        rows.append(
            Row(
                "inject",
                f"{rate:,.0f} msg/s",
                ">= 20,000 msg/s",
                _verdict(rate >= 20_000),
                f"median of {count} run(s) ({', '.join(f'{i.rate:,.0f}' for i in injects)}); "
                f"{size.inject_messages:,} msgs a run, {RECIPIENTS_PER_REQUEST} rcpt/request, "
                f"{INJECT_CLIENTS} clients; request p50 "
                f"{_ms(statistics.median(latencies_all))}, "
                f"p99 {_ms(percentile(latencies_all, 0.99))}",
            )
        )

    if "sweep" in only:
        count = runs or size.sweep_runs
        sweeps: list[SweepRun] = []
        for run in range(count):
            note(f"sweep: run {run + 1} of {count}, {n:,} messages over {q:,} queues")
            result = run_child(
                "sweep",
                directory=scratch / f"sweep-{run}",
                messages=n,
                queues=q,
                batch=size.batch,
                profile=profile if run == 0 else None,
            )
            result["floors"] = [Floor(**floor) for floor in result["floors"]]
            sweeps.append(SweepRun(**result))
            shutil.rmtree(scratch / f"sweep-{run}")
        raw["sweep"] = [
            attrs.asdict(s) | {"floor": s.floor.total, "ratio": s.ratio} for s in sweeps
        ]
        median = statistics.median(s.seconds for s in sweeps)
        ratio = statistics.median(s.ratio for s in sweeps)
        floors = [s.floor for s in sweeps]
        rows.append(
            Row(
                "sweep",
                f"{_s(median)} = {ratio:.1f}x floor",
                "<= 2x floor",
                _verdict(ratio <= 2),
                f"{n:,} msgs / {q:,} queues, issue to wait_idle; median of {count} "
                f"({', '.join(f'{s.seconds:.2f}' for s in sweeps)}); all Bounced durable at "
                f"{_s(statistics.median(s.durable for s in sweeps))}; "
                f"{statistics.median(s.commits for s in sweeps):,.0f} commits",
            )
        )
        rows.append(
            Row(
                "floor",
                _s(statistics.median(f.total for f in floors)),
                "reported",
                "",
                f"encode+write {_s(statistics.median(f.encode_write for f in floors))}, fsync "
                f"{_s(statistics.median(f.fsync for f in floors))}, SQLite ids "
                f"{_s(statistics.median(f.sqlite for f in floors))}; "
                f"{floors[0].bytes / 2**20:,.0f} MiB (engine wrote "
                f"{sweeps[0].record_bytes / 2**20:,.0f} MiB); lower of before/after the sweep "
                f"(before {_s(statistics.median(s.floors[0].total for s in sweeps))}, after "
                f"{_s(statistics.median(s.floors[-1].total for s in sweeps))})",
            )
        )
        rows.append(
            Row(
                "engine inject (in-process)",
                f"{n / statistics.median(s.fill_seconds for s in sweeps):,.0f} msg/s",
                "",
                "",
                f"sweep setup: Engine.inject in batches of {size.batch:,}, then wait_idle",
            )
        )

    mail_rows, mail_raw = run_mail_benchmarks(
        MAIL_QUICK if size is QUICK else MAIL_FULL, only, scratch, note, runs
    )
    rows += [Row(r.benchmark, r.figure, r.target, r.verdict, r.detail) for r in mail_rows]
    raw |= mail_raw
    if any(name in only for name in FLEET_BENCHMARKS):
        note("fleet: one redis-server, 3 in-process nodes")
        fleet_rows, fleet_raw = run_fleet_benchmarks(
            FLEET_QUICK if size is QUICK else FLEET_FULL, only, scratch
        )
        rows += [Row(*row) for row in fleet_rows]
        raw |= fleet_raw
    return rows, raw


def format_table(rows: Sequence[Row]) -> str:
    lines = ["| benchmark | figure | target | verdict | detail |", "|---|---|---|---|---|"]
    lines += [
        f"| {r.benchmark} | {r.figure} | {r.target} | {r.verdict} | {r.detail} |" for r in rows
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, help="repeatable")
    parser.add_argument(
        "--runs", type=int, help="runs of sweep, targeted, latency and inject (default: size's)"
    )
    parser.add_argument("--profile", type=Path, help="py-spy stacks of a sweep and a start here")
    parser.add_argument(
        "--profile-mode", choices=("wall", "gil"), default="wall", help="py-spy sampling"
    )
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--arguments", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, json.loads(args.arguments))
        return 0
    size = QUICK if args.quick else FULL
    os.environ[PROFILE_MODE] = args.profile_mode
    scratch = Path(tempfile.mkdtemp(prefix="kumo-bench-"))
    started = time.perf_counter()
    try:
        rows, raw = run_benchmarks(size, args.only or BENCHMARKS, scratch, args.profile, args.runs)
    finally:
        if args.keep:
            print(f"scratch kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.perf_counter() - started
    raw["elapsed"] = elapsed
    print(f"\nkumo benchmarks, {size.name} size ({elapsed:,.0f} s)\n")
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(raw, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

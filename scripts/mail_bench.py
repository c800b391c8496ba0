"""The mail path's benchmarks (issue 13): kumo side by side with a private Postfix.

Both peers run on loopback on this machine (``scripts/mail_peers.py`` starts and stops
them), in the same run, one after the other and in alternating order (kumo first in
the first run, Postfix first in the second, ...), so that the ratio kumo/Postfix is
the figure and the machine's noise shows in the spread of the runs. Besides the rates,
each peer's CPU time a message (all its processes and threads, from /proc) is
reported: on a machine shared with other work it moves less than wall-clock rates do.

The benchmarks (``--only`` names of ``scripts/bench.py``):

- **smtp-ingress**: Postfix's ``smtp-source`` (``-s`` sessions, ``-m`` messages, ``-l``
  bytes, ``-d``: sessions kept open) into ``kumo serve --no-deliver`` and into Postfix
  holding every message (``smtpd_end_of_data_restrictions = check_client_access
  static:HOLD``): the pure ingress, durable before ``250`` in both (kumo commits and
  fsyncs the message before it answers; Postfix's cleanup fsyncs its queue file).
- **smtp-delivery**: the N messages just held are released to Postfix's ``smtp-sink``:
  kumo is restarted with delivery on (its log replayed), Postfix gets ``postsuper -H
  ALL`` and ``postqueue -f``; timed from the release until the sink has counted all N,
  and from the sink's first message to its N-th (kumo's release includes its start).
- **smtp-latency**: a paced client (``mail_peers.paced_client``, a message every 1/rate
  s over a few persistent sessions) offers a fixed load; a sink of our own
  (``mail_peers.serve_sink``, in a child process) timestamps the end of each DATA.
  Latency = that time minus the time the message was due to be sent (so that a slow
  server cannot hide its backlog in the client).
- **smtp-pileup**: N messages into each peer relaying to ``smtp-sink -r rcpt`` (every
  RCPT answered 4xx): timed until every message waits for a retry (kumo: N
  ``TransientFailure`` records in its delivery log; Postfix: N files in its deferred
  queue), then the bounce by domain, timed until every message is gone: kumo's admin
  bounce (POST, then GET until the rule counts N); Postfix's ``postqueue -j`` of the
  domain's ids into ``postsuper -d -`` (what an operator does to drop them: kumo's bounce
  logs a record per message and sends no DSN either) and, on a second pile-up in the
  same instance, ``postsuper -e -`` and ``postqueue -f`` (expire: a DSN to each sender)
  until its log says N were returned to sender. kumo's VmRSS with all N deferred minus
  before is reported too.
- **smtp-admin**: kumo delivering N held messages to smtp-sink while one client POSTs and
  GETs ``/api/admin/bounce/v1`` alternately, one request every 20 ms (issue 6's probe),
  then the same on the idle server.
- **smtp-memory**: ``kumo serve --no-deliver`` takes messages over SMTP in two steps;
  VmRSS growth over the second step, per message (what one more queued message costs,
  past the caches that fill with the first thousands), and over both.

``python scripts/mail_bench.py profile-delivery N OUT`` runs the engine in-process
under cProfile (CPU time of the Trio thread) delivering N held messages to smtp-sink,
and writes the stats to OUT; ``profile-ingress N OUT`` does the same for ``kumo
serve``'s SMTP listener taking N messages from smtp-source.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import math
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import trio
from mail_peers import (
    BOUNCE_PATH,
    DISCARD_PORT,
    DOMAIN,
    RECIPIENT,
    SENDER,
    RecordCounter,
    TimestampingSink,
    cpu_seconds,
    kumo,
    kumo_config,
    latency_message,
    missing_tools,
    paced_client,
    poll,
    postfix,
    rule_bounced,
    smtp_sink,
    smtp_source,
)

PROBE_PERIOD: Final = 0.02
"""Seconds between two admin probes while kumo delivers (POST and GET alternate)."""
IDLE_PROBES: Final = 25
"""Probes of each kind once the delivery is over, on the idle server."""


@attrs.frozen
class MailSize:
    """How big each mail benchmark is."""

    name: str
    messages: int
    """Messages of each ingress (and so of each delivery) run."""
    sessions: int
    """smtp-source's parallel sessions (``-s``)."""
    message_bytes: int
    """smtp-source's payload (``-l``); headers add about 300 bytes."""
    runs: int
    """Ingress and delivery runs of each peer, alternating."""
    latency_rate: float
    """Messages a second the paced client offers."""
    latency_seconds: float
    latency_sessions: int
    latency_runs: int
    pileup_messages: int
    pileup_runs: int
    memory_messages: tuple[int, int]
    """The two steps of the memory benchmark's ingress."""


MAIL_FULL: Final = MailSize(
    "full", 10_000, 20, 1024, 3, 50.0, 20.0, 4, 2, 10_000, 1, (20_000, 20_000)
)
MAIL_QUICK: Final = MailSize("quick", 300, 5, 1024, 1, 20.0, 1.0, 2, 1, 200, 1, (200, 200))
MAIL_BENCHMARKS: Final = (
    "smtp-ingress",
    "smtp-delivery",
    "smtp-latency",
    "smtp-pileup",
    "smtp-admin",
    "smtp-memory",
)


@attrs.frozen
class Figure:
    """One row of the table ``scripts/bench.py`` prints."""

    benchmark: str
    figure: str
    target: str
    verdict: str
    detail: str


# -- figures ----------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.99 for p99)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def _rate(rate: float) -> str:
    return f"{rate:,.0f} msg/s"


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


# -- 1 and 2: ingress, then delivery of what was held -------------------------------------


@attrs.frozen
class IngressRun:
    """One peer's ingress of N held messages, then their delivery."""

    peer: str
    messages: int
    delivered: int
    """The messages held (``messages`` and the warm-up one), all delivered."""
    ingress_seconds: float
    delivery_seconds: float
    """From the release (kumo: its restart with delivery; Postfix: ``postsuper -H``)
    until the sink counted N."""
    delivery_steady_seconds: float
    """From the sink's first message to its N-th."""
    release_to_first: float
    """From the release to the sink's first message (kumo: replay and start)."""
    ingress_cpu: float
    """CPU seconds the peer spent on the ingress (every process and thread of it)."""
    delivery_cpu: float
    """CPU seconds the peer spent delivering (kumo: from the restarted server's
    ``listening`` line, its start and replay excluded)."""
    load: float
    """The machine's load average (1 minute) when the run started."""

    @property
    def ingress_rate(self) -> float:
        return self.messages / self.ingress_seconds

    @property
    def delivery_rate(self) -> float:
        return self.delivered / self.delivery_seconds

    @property
    def steady_rate(self) -> float:
        return (self.delivered - 1) / self.delivery_steady_seconds

    @property
    def ingress_cpu_per_message(self) -> float:
        return self.ingress_cpu / self.messages

    @property
    def delivery_cpu_per_message(self) -> float:
        return self.delivery_cpu / self.delivered


@attrs.frozen
class Held:
    """What :func:`kumo_hold` measured."""

    seconds: float
    """The ingress of the N messages (the warm-up one excluded)."""
    cpu: float
    """CPU seconds kumo spent on them (until its Reception records were written)."""


def kumo_hold(data_dir: Path, size: MailSize) -> Held:
    """smtp-source into ``kumo serve --no-deliver`` on ``data_dir``: N + 1 messages held.

    One message goes first, not timed: the listener, the log and its threads warm, as
    Postfix's processes are once started."""
    with kumo(data_dir, DISCARD_PORT, deliver=False) as server:
        smtp_source(server.smtp_port, 1, 1, size.message_bytes)
        cpu = cpu_seconds(server.process.pid)
        seconds = smtp_source(server.smtp_port, size.messages, size.sessions, size.message_bytes)
        records = RecordCounter(data_dir, "Reception")
        poll(lambda: records() > size.messages, "kumo: the Reception records written")
        cpu = cpu_seconds(server.process.pid) - cpu
    return Held(seconds, cpu)


def kumo_ingress_run(directory: Path, size: MailSize, keep: Path | None = None) -> IngressRun:
    """:func:`kumo_hold`, then a restart that delivers them to smtp-sink. With ``keep``,
    a copy of the held data directory is left there (as ``keep``/kumo) first."""
    data_dir = directory / "kumo"
    load = os.getloadavg()[0]
    held = kumo_hold(data_dir, size)
    if keep is not None:
        shutil.copytree(data_dir, keep / "kumo")
    os.sync()  # what the ingress left in the page cache, out of the delivery's way
    with smtp_sink() as sink, kumo(data_dir, sink.port, deliver=True) as server:
        cpu = cpu_seconds(server.process.pid)
        done = sink.wait_for(size.messages + 1)
        cpu = cpu_seconds(server.process.pid) - cpu
        first = sink.first_at
        released = server.spawned
    return IngressRun(
        "kumo",
        size.messages,
        size.messages + 1,
        held.seconds,
        done - released,
        done - first,
        first - released,
        held.cpu,
        cpu,
        load,
    )


def postfix_ingress_run(size: MailSize) -> IngressRun:
    """smtp-source into Postfix holding everything; then ``postsuper -H ALL`` and
    ``postqueue -f``, delivering to smtp-sink."""
    load = os.getloadavg()[0]
    with smtp_sink() as sink, postfix(sink.port, hold=True) as instance:
        smtp_source(instance.port, 1, 1, size.message_bytes)  # warm, as kumo's
        instance.wait_until(lambda: instance.count("hold") == 1, "the warm-up message held")
        cpu = cpu_seconds(instance.master)
        seconds = smtp_source(instance.port, size.messages, size.sessions, size.message_bytes)
        total = size.messages + 1
        instance.wait_until(lambda: instance.count("hold") == total, f"{total} held")
        ingress_cpu = cpu_seconds(instance.master) - cpu
        os.sync()
        released = time.monotonic()
        cpu = cpu_seconds(instance.master)
        instance.release_held()
        done = sink.wait_for(total)
        delivery_cpu = cpu_seconds(instance.master) - cpu
        first = sink.first_at
    return IngressRun(
        "postfix",
        size.messages,
        total,
        seconds,
        done - released,
        done - first,
        first - released,
        ingress_cpu,
        delivery_cpu,
        load,
    )


@attrs.frozen
class MemoryRun:
    """kumo's VmRSS as messages arrive over SMTP and stay held."""

    messages: tuple[int, int]
    """The two steps of the ingress."""
    rss: tuple[int, int, int]
    """VmRSS before the first step (one message held), after it, after the second."""

    @property
    def per_message(self) -> float:
        """All the growth over every message: fixed costs that grow with the first
        thousands (SQLite's page cache, buffers) included."""
        return (self.rss[2] - self.rss[0]) / sum(self.messages)

    @property
    def marginal(self) -> float:
        """The growth over the second step only: what one more message costs."""
        return (self.rss[2] - self.rss[1]) / self.messages[1]


def kumo_memory_run(data_dir: Path, size: MailSize) -> MemoryRun:
    """smtp-source into ``kumo serve --no-deliver`` in two steps, VmRSS after each (once
    the Reception records are written)."""
    first, second = size.memory_messages
    with kumo(data_dir, DISCARD_PORT, deliver=False) as server:
        smtp_source(server.smtp_port, 1, 1, size.message_bytes)
        records = RecordCounter(data_dir, "Reception")
        rss = [server.rss()]
        held = 1
        for count in (first, second):
            smtp_source(server.smtp_port, count, size.sessions, size.message_bytes)
            held += count
            poll(functools.partial(_at_least, records, held), "kumo: Reception records written")
            time.sleep(0.5)  # the queue actor has them too
            rss.append(server.rss())
    return MemoryRun((first, second), (rss[0], rss[1], rss[2]))


def _at_least(count: Callable[[], int], target: int) -> bool:
    return count() >= target


# -- 3: end-to-end latency at a fixed offered load ----------------------------------------


@attrs.frozen
class LatencyRun:
    peer: str
    rate: float
    messages: int
    end_to_end: list[float]
    """Seconds from each message's due time to the sink having it, in send order."""
    ingress: list[float]
    """Seconds from each message's due time to its 250."""


def latency_run(peer: str, directory: Path, size: MailSize) -> LatencyRun:
    """The paced client into ``peer`` (delivering to a timestamping sink)."""
    messages = round(size.latency_rate * size.latency_seconds)
    sink = TimestampingSink()
    try:
        with _relaying(peer, directory / "latency-kumo", sink.port) as port:
            sent = trio.run(
                paced_client,
                port,
                size.latency_rate,
                messages,
                size.latency_sessions,
                size.message_bytes,
            )
            sink.wait_for(messages)
    finally:
        sink.stop()
    sent.sort(key=lambda s: s.seq)
    return LatencyRun(
        peer,
        size.latency_rate,
        messages,
        [sink.received[s.seq] - s.due for s in sent],
        [s.acked - s.due for s in sent],
    )


@contextmanager
def _relaying(peer: str, data_dir: Path, relay_port: int) -> Iterator[int]:
    """``peer`` (``kumo`` or ``postfix``) relaying to ``relay_port``; yields its SMTP port."""
    if peer == "kumo":
        with kumo(data_dir, relay_port, deliver=True) as server:
            yield server.smtp_port
    else:
        with postfix(relay_port) as instance:
            yield instance.port


# -- 4: the pile-up and its bounce --------------------------------------------------------


@attrs.frozen
class PileupRun:
    peer: str
    """``kumo``, ``postfix (postsuper -d)`` or ``postfix (postsuper -e)``."""
    messages: int
    ingress_seconds: float
    deferred_seconds: float
    """From the start of the ingress until every message waited for a retry."""
    ack_seconds: float
    """kumo: the bounce POST's reply; Postfix: the ids selected and the postsuper done."""
    bounce_seconds: float
    """From the bounce's start until every message is gone (bounced, deleted, expired)."""
    rss_per_message: float = math.nan
    """kumo only: VmRSS with every message deferred minus before the ingress, per message."""


def kumo_pileup_run(directory: Path, messages: int, size: MailSize) -> PileupRun:
    with (
        smtp_sink("-r", "rcpt") as sink,
        kumo(directory / "pileup-kumo", sink.port, deliver=True) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        time.sleep(0.5)
        empty = server.rss()
        started = time.monotonic()
        ingress = smtp_source(server.smtp_port, messages, size.sessions, size.message_bytes)
        failures = RecordCounter(directory / "pileup-kumo", "TransientFailure")
        deferred = poll(lambda: failures() >= messages, "kumo: all deferred", 0.1)
        full = server.rss()
        bounce_started = time.monotonic()
        response = client.post(
            BOUNCE_PATH, json={"domain": DOMAIN, "reason": "pile-up", "duration": "1h"}
        )
        acked = time.monotonic()
        response.raise_for_status()
        rule_id = response.json()["id"]
        done = poll(lambda: rule_bounced(client, rule_id) >= messages, "kumo: all bounced")
    return PileupRun(
        "kumo",
        messages,
        ingress,
        deferred - started,
        acked - bounce_started,
        done - bounce_started,
        (full - empty) / messages,
    )


def postfix_pileup_runs(messages: int, size: MailSize) -> list[PileupRun]:
    """Two pile-ups in one Postfix instance: the first dropped with ``postsuper -d``, the
    second expired with ``postsuper -e`` (its DSNs, to the same refusing relay, stay
    deferred and are not counted)."""
    runs = []
    with smtp_sink("-r", "rcpt") as sink, postfix(sink.port) as instance:
        for expire in (False, True):
            started = time.monotonic()
            ingress = smtp_source(instance.port, messages, size.sessions, size.message_bytes)
            deferred = instance.wait_until(
                lambda: (
                    instance.count("incoming", "active") == 0
                    and instance.count("deferred") >= messages
                ),
                "all deferred",
            )
            bounce_started = time.monotonic()
            ids = instance.ids_to(DOMAIN)
            if len(ids) != messages:
                raise RuntimeError(f"Postfix lists {len(ids)} of {messages} deferred")
            if expire:
                instance.expire(ids)
                acked = time.monotonic()
                # Each is returned to its sender: the log says when the last one was.
                done = instance.wait_until(
                    lambda: instance.logged("returned to sender") >= messages,
                    "all returned to sender",
                )
            else:
                instance.delete(ids)
                acked = done = time.monotonic()
                if instance.ids_to(DOMAIN):
                    raise RuntimeError("Postfix: messages left after postsuper -d")
            runs.append(
                PileupRun(
                    f"postfix (postsuper -{'e' if expire else 'd'})",
                    messages,
                    ingress,
                    deferred - started,
                    acked - bounce_started,
                    done - bounce_started,
                )
            )
    return runs


# -- 5: admin latency while kumo delivers -------------------------------------------------


@attrs.frozen
class AdminRun:
    messages: int
    post: list[float]
    get: list[float]
    idle_post: list[float]
    idle_get: list[float]
    delivery_seconds: float


def admin_run(held: Path, messages: int) -> AdminRun:
    """kumo on a copy of a held directory (``held``/kumo and its config), delivering to
    smtp-sink, probed by one client until the sink has every message, then idle."""
    probe = {"domain": "probe.invalid", "reason": "latency probe", "duration": "5m"}
    with smtp_sink() as sink, kumo(held / "kumo", sink.port, deliver=True) as server:
        started = server.spawned
        with httpx.Client(base_url=server.url, timeout=60) as client:
            post, get = _probe(client, probe, lambda: sink.count < messages)
            delivered = sink.wait_for(messages)
            idle = iter(range(IDLE_PROBES))
            idle_post, idle_get = _probe(client, probe, lambda: next(idle, None) is not None)
    return AdminRun(messages, post, get, idle_post, idle_get, delivered - started)


def _probe(
    client: httpx.Client, body: dict[str, str], more: Callable[[], bool]
) -> tuple[list[float], list[float]]:
    """Alternate POST and GET, one every :data:`PROBE_PERIOD`, once and then while
    ``more()``."""
    posts: list[float] = []
    gets: list[float] = []
    deadline = time.monotonic()
    while not posts or more():
        for kind in ("POST", "GET"):
            pause = deadline - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            deadline = time.monotonic() + PROBE_PERIOD
            started = time.monotonic()
            if kind == "POST":
                response = client.post(BOUNCE_PATH, json=body)
                posts.append(time.monotonic() - started)
            else:
                response = client.get(BOUNCE_PATH)
                gets.append(time.monotonic() - started)
            response.raise_for_status()
    return posts, gets


# -- the runner ---------------------------------------------------------------------------


def run_mail_benchmarks(
    size: MailSize,
    only: Sequence[str],
    scratch: Path,
    note: Callable[[str], None],
    runs: int | None = None,
) -> tuple[list[Figure], dict[str, Any]]:
    """Run the chosen mail benchmarks; return the table rows and the raw figures.

    Without Postfix (or without root) they cannot run side by side: outside CI the rows
    say so; under CI (``CI=true``) that is an error, as a missing peer is for the tests.
    """
    chosen = [name for name in MAIL_BENCHMARKS if name in only]
    if not chosen:
        return [], {}
    why = missing_tools()
    if why is not None:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"the mail benchmarks cannot run: {why}")
        return [Figure(name, "not run", "", "", why) for name in chosen], {}
    rows: list[Figure] = []
    raw: dict[str, Any] = {"mail_size": attrs.asdict(size)}
    held = scratch / "held"

    def say(text: str) -> None:
        note(f"{text} (load {os.getloadavg()[0]:.1f})")

    if "smtp-ingress" in only or "smtp-delivery" in only:
        count = runs or size.runs
        results: dict[str, list[IngressRun]] = {"kumo": [], "postfix": []}
        for run in range(count):
            for peer in _alternate(run):
                say(
                    f"smtp ingress and delivery: {peer}, {size.messages:,} messages, "
                    f"run {run + 1} of {count}"
                )
                directory = scratch / f"ingress-{run}"
                if peer == "kumo":
                    keep = held if run == 0 and "smtp-admin" in only else None
                    results["kumo"].append(kumo_ingress_run(directory, size, keep))
                else:
                    results["postfix"].append(postfix_ingress_run(size))
                shutil.rmtree(directory, ignore_errors=True)
        raw["smtp_ingress"] = {
            peer: [attrs.asdict(r) | {"ingress_rate": r.ingress_rate} for r in rs]
            for peer, rs in results.items()
        }
        rows += _ingress_rows(results, size, only)

    if "smtp-latency" in only:
        count = runs or size.latency_runs
        latencies: dict[str, list[LatencyRun]] = {"kumo": [], "postfix": []}
        for run in range(count):
            for peer in _alternate(run):
                say(
                    f"smtp latency: {peer}, {size.latency_rate:g} msg/s for "
                    f"{size.latency_seconds:g} s, run {run + 1} of {count}"
                )
                latencies[peer].append(latency_run(peer, scratch / f"latency-{run}", size))
                shutil.rmtree(scratch / f"latency-{run}", ignore_errors=True)
        raw["smtp_latency"] = {
            peer: [attrs.asdict(r) for r in rs] for peer, rs in latencies.items()
        }
        rows += _latency_rows(latencies)

    if "smtp-pileup" in only:
        count = runs or size.pileup_runs
        pileups: list[PileupRun] = []
        for run in range(count):
            for peer in _alternate(run):
                say(f"smtp pile-up: {peer}, {size.pileup_messages:,} messages, run {run + 1}")
                if peer == "kumo":
                    pileups.append(
                        kumo_pileup_run(scratch / f"pileup-{run}", size.pileup_messages, size)
                    )
                    shutil.rmtree(scratch / f"pileup-{run}", ignore_errors=True)
                else:
                    pileups += postfix_pileup_runs(size.pileup_messages, size)
        raw["smtp_pileup"] = [attrs.asdict(p) for p in pileups]
        rows += _pileup_rows(pileups)

    if "smtp-admin" in only:
        if not (held / "kumo").exists():
            say(f"smtp admin latency: {size.messages:,} messages held in kumo")
            kumo_hold(held / "kumo", size)
            os.sync()
        say(f"smtp admin latency: kumo delivering {size.messages:,} messages, probed")
        admin = admin_run(held, size.messages + 1)
        raw["smtp_admin"] = attrs.asdict(admin)
        rows += _admin_rows(admin)
    shutil.rmtree(held, ignore_errors=True)

    if "smtp-memory" in only:
        first, second = size.memory_messages
        say(f"smtp memory: kumo holding {first:,} then {first + second:,} messages")
        memory = kumo_memory_run(scratch / "memory", size)
        shutil.rmtree(scratch / "memory", ignore_errors=True)
        raw["smtp_memory"] = attrs.asdict(memory) | {
            "per_message": memory.per_message,
            "marginal": memory.marginal,
        }
        rows.append(
            Figure(
                "memory per queued message (SMTP)",
                f"{memory.marginal:,.0f} B/msg",
                "<= 400 B/msg",
                _verdict(memory.marginal <= 400),
                f"kumo serve --no-deliver: VmRSS growth from {first:,} to {first + second:,} "
                f"held ({memory.rss[1] / 2**20:,.1f} -> {memory.rss[2] / 2**20:,.1f} MiB); from "
                f"1 to {first + second:,}: {memory.per_message:,.0f} B/msg "
                f"({memory.rss[0] / 2**20:,.1f} MiB with 1)",
            )
        )
    return rows, raw


def _alternate(run: int) -> tuple[str, str]:
    return ("kumo", "postfix") if run % 2 == 0 else ("postfix", "kumo")


def _spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    return ", ".join(fmt(v) for v in values)


def _ingress_rows(
    results: dict[str, list[IngressRun]], size: MailSize, only: Sequence[str]
) -> list[Figure]:
    kumo_runs, postfix_runs = results["kumo"], results["postfix"]
    how = (
        f"{size.messages:,} msgs of {size.message_bytes:,} B, smtp-source -s {size.sessions} -d, "
        f"median of {len(kumo_runs)} alternating run(s)"
    )

    def compared(
        label: str,
        rate: Callable[[IngressRun], float],
        cpu: Callable[[IngressRun], float],
        note: str,
    ) -> Figure:
        k = statistics.median(rate(r) for r in kumo_runs)
        p = statistics.median(rate(r) for r in postfix_runs)
        k_cpu = statistics.median(cpu(r) for r in kumo_runs)
        p_cpu = statistics.median(cpu(r) for r in postfix_runs)
        return Figure(
            label,
            f"kumo {_rate(k)}, Postfix {_rate(p)}: {k / p:.2f}x",
            "kumo >= 3x Postfix",
            _verdict(k / p >= 3),
            f"{how}{note}; kumo {_spread([rate(r) for r in kumo_runs], _rate)}, Postfix "
            f"{_spread([rate(r) for r in postfix_runs], _rate)}; CPU a message: kumo "
            f"{k_cpu * 1e6:,.0f} us, Postfix {p_cpu * 1e6:,.0f} us (all its processes)",
        )

    rows: list[Figure] = []
    if "smtp-ingress" in only:
        rows.append(
            compared(
                "SMTP ingress",
                lambda r: r.ingress_rate,
                lambda r: r.ingress_cpu_per_message,
                "; held (kumo --no-deliver, Postfix HOLD)",
            )
        )
    if "smtp-delivery" in only:
        rows.append(
            compared(
                "delivery to smtp-sink, from the release",
                lambda r: r.delivery_rate,
                lambda r: r.delivery_cpu_per_message,
                "; kumo: restarted with delivery (start and replay included: release to first "
                f"{_spread([r.release_to_first for r in kumo_runs], _ms)}); Postfix: "
                "postsuper -H ALL, postqueue -f (release to first "
                f"{_spread([r.release_to_first for r in postfix_runs], _ms)})",
            )
        )
        rows.append(
            compared(
                "delivery to smtp-sink, first to last",
                lambda r: r.steady_rate,
                lambda r: r.delivery_cpu_per_message,
                "; from the sink's first message to its last",
            )
        )
    return rows


def _latency_rows(latencies: dict[str, list[LatencyRun]]) -> list[Figure]:
    rows = []
    for peer, runs in latencies.items():
        e2e = [value for run in runs for value in run.end_to_end]
        ingress = [value for run in runs for value in run.ingress]
        rows.append(
            Figure(
                f"end-to-end latency ({'Postfix' if peer == 'postfix' else 'kumo'})",
                f"p50 {_ms(statistics.median(e2e))}, p99 {_ms(percentile(e2e, 0.99))}",
                "reported",
                "",
                f"{runs[0].rate:g} msg/s offered, {len(e2e):,} msgs over {len(runs)} run(s); "
                f"per run p50 {_spread([statistics.median(r.end_to_end) for r in runs], _ms)}, "
                f"p99 {_spread([percentile(r.end_to_end, 0.99) for r in runs], _ms)}; max "
                f"{_ms(max(e2e))}; 250 after p50 {_ms(statistics.median(ingress))}, p99 "
                f"{_ms(percentile(ingress, 0.99))}",
            )
        )
    return rows


def _pileup_rows(pileups: Sequence[PileupRun]) -> list[Figure]:
    rows = []
    for peer in dict.fromkeys(p.peer for p in pileups):
        runs = [p for p in pileups if p.peer == peer]
        bounce = statistics.median(p.bounce_seconds for p in runs)
        detail = (
            f"{runs[0].messages:,} msgs into a 4xx sink: ingress "
            f"{_spread([p.ingress_seconds for p in runs], lambda v: f'{v:.1f} s')}, all deferred "
            f"after {_spread([p.deferred_seconds for p in runs], lambda v: f'{v:.1f} s')}; "
            f"ack {_spread([p.ack_seconds for p in runs], _ms)}"
        )
        if peer == "kumo":
            detail += (
                "; VmRSS with all deferred minus before: "
                f"{_spread([p.rss_per_message for p in runs], lambda v: f'{v:,.0f} B/msg')}"
            )
        rows.append(
            Figure(
                f"pile-up, bounce by domain ({peer})", f"{bounce:,.2f} s", "reported", "", detail
            )
        )
    return rows


def _admin_rows(admin: AdminRun) -> list[Figure]:
    rows = []
    for kind, during, idle in (
        ("POST", admin.post, admin.idle_post),
        ("GET", admin.get, admin.idle_get),
    ):
        p99 = percentile(during, 0.99)
        rows.append(
            Figure(
                f"admin {kind} while delivering",
                f"p50 {_ms(statistics.median(during))}, p99 {_ms(p99)}",
                "p99 <= 20 ms",
                _verdict(p99 <= 0.02),
                f"{len(during)} probes while kumo delivered {admin.messages:,} msgs to smtp-sink "
                f"({admin.delivery_seconds:.1f} s from its start); idle after: p50 "
                f"{_ms(statistics.median(idle))}, p99 {_ms(percentile(idle, 0.99))}",
            )
        )
    return rows


# -- profiles (``python scripts/mail_bench.py profile-delivery N OUT``) -------------------


def profile_delivery(messages: int, output: Path, size: int = 1024) -> None:
    """cProfile of an engine in this process delivering ``messages`` held ones (of
    ``size`` bytes) to smtp-sink, from its open to the last ``Delivered``."""
    from kumo.cli.serve import mail_settings, tune_for_serving
    from kumo.config import parse_config
    from kumo.model.requests import NewMessage
    from kumo.runtime.engine import open_engine

    tune_for_serving()
    body = latency_message(0, size)[:-3]
    with tempfile.TemporaryDirectory(prefix="kumo-profile-") as scratch, smtp_sink() as sink:
        data_dir = Path(scratch) / "data"
        config = parse_config(kumo_config(sink.port), base_dir=Path(scratch))

        async def hold() -> None:
            async with open_engine(data_dir) as engine:
                for start in range(0, messages, 1_000):
                    count = min(1_000, messages - start)
                    await engine.inject(
                        [NewMessage(sender=SENDER, recipient=RECIPIENT, queue=DOMAIN, body=body)]
                        * count
                    )

        async def deliver() -> float:
            started = time.monotonic()
            async with open_engine(data_dir, mail=mail_settings(config)) as engine:
                await engine.wait_until(lambda: engine.statistics().delivered_total >= messages)
            return time.monotonic() - started

        trio.run(hold)
        profiler = cProfile.Profile(time.thread_time)  # CPU of the Trio thread, not waits
        seconds = profiler.runcall(trio.run, deliver)
        profiler.dump_stats(output)
        print(f"{messages:,} delivered in {seconds:.2f} s ({messages / seconds:,.0f} msg/s)")
        pstats.Stats(str(output)).sort_stats("tottime").print_stats(25)


def profile_ingress(messages: int, output: Path, sessions: int = 20, size: int = 1024) -> None:
    """cProfile of ``kumo serve``'s engine and SMTP listener in this process taking
    ``messages`` from smtp-source (its ``sessions``), deliveries held."""
    from kumo.cli.serve import run_server, tune_for_serving
    from kumo.config import parse_config

    tune_for_serving()
    with tempfile.TemporaryDirectory(prefix="kumo-profile-") as scratch:
        top = f'data_dir = "{scratch}/data"\nlisten = "127.0.0.1:0"\ndeliver = false\n'
        text = kumo_config(9, top=top, listener='listen = "127.0.0.1:0"\n')
        config = parse_config(text, base_dir=Path(scratch))

        async def main() -> float:
            stop = trio.Event()
            smtp: list[str] = []
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(run_server, config, stop=stop, on_smtp_listening=smtp.append)
                )
                port = int(smtp[0].rpartition(":")[2])
                seconds = await trio.to_thread.run_sync(smtp_source, port, messages, sessions, size)
                stop.set()
            return seconds

        profiler = cProfile.Profile(time.thread_time)  # CPU of the Trio thread, not waits
        seconds = profiler.runcall(trio.run, main)
        profiler.dump_stats(output)
        print(f"{messages:,} received in {seconds:.2f} s ({messages / seconds:,.0f} msg/s)")
        pstats.Stats(str(output)).sort_stats("tottime").print_stats(25)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["profile-delivery", "profile-ingress"])
    parser.add_argument("messages", type=int)
    parser.add_argument("output", type=Path)
    args = parser.parse_args(argv)
    if args.command == "profile-delivery":
        profile_delivery(args.messages, args.output)
    else:
        profile_ingress(args.messages, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

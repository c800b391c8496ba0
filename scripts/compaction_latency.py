"""Admin latency while a serving node compacts its log (issue 11's "admin p99 during a
snapshot and an archive pass at 1,000,000 queued").

``kumo serve`` on a copy of a filled data directory (``sweep_latency.py build DIR
1000000 10000``: 1,000,000 queued over 10,000 queues), probed by two client threads, as
``bench.py``'s sweep-probe does: one POSTs a new, distinct rule that matches nothing every
20 ms (each live 2 s), the other GETs the rules every 10 ms. After ``--idle`` seconds it
runs the compaction a server starts every ``[log] snapshot_every`` events (``python -m
kumo.store.compaction DIR --until SEQ``: a snapshot of the state, then the archive pass,
at ``nice 10``), and probes until ``--after`` seconds past its end. A request's latency
counts from its sending; a slow answer delays the next request. Beside it all, a
process of its own commits one row with an fsync every 20 ms in the same file system:
what the disk allows a POST (a POST is answered once its event is fsynced).

Usage::

    python scripts/sweep_latency.py build /tmp/t1m 1000000 10000
    python scripts/compaction_latency.py /tmp/t1m [--idle 5] [--after 3] [--json OUT]

Prints, for each phase (idle, during the compaction, after), p50 / p99 / max of POST,
GET and the bare fsynced commit, with their counts.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import Server, percentile

POST_PERIOD = 0.02
GET_PERIOD = 0.01
BARE_PERIOD = 0.02
PROBE_RULE_LIFETIME = "2s"
"""Each probe rule expires soon: at 50 new rules a second, rules that lived 5 minutes
would pile up to thousands, and every GET lists them all (the loop then answers GETs
more than anything else, compaction or not)."""
PHASES = ("idle", "compaction", "after")


class Samples:
    """(sending time, latency) of one kind of request, from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[float, float]] = []

    def add(self, sent: float, latency: float) -> None:
        with self._lock:
            self.items.append((sent, latency))

    def between(self, start: float, end: float) -> list[float]:
        """Latencies of the requests in flight at some moment of [start, end)."""
        return [lat for sent, lat in self.items if sent < end and sent + lat >= start]


def paced(period: float, stop: threading.Event, request: Callable[[float], None]) -> None:
    """Call ``request(sent)`` until ``stop``, each call ``period`` s after the previous
    one began, or at once when that one took longer (as ``bench.py``'s probes pace: a
    slow answer delays the next request rather than piling requests up)."""
    while not stop.is_set():
        sent = time.perf_counter()
        request(sent)
        pause = sent + period - time.perf_counter()
        if pause > 0:
            time.sleep(pause)


def bare_commits(path: Path, samples: Samples, stop: threading.Event) -> None:
    """One 200-byte row committed with an fsync every :data:`BARE_PERIOD` (SQLite WAL,
    ``synchronous=FULL``), as kumo's writer commits: what the disk allows."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS t (x)")

    def commit(_: float) -> None:
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?)", (b"x" * 200,))
        db.execute("COMMIT")
        samples.add(started, time.perf_counter() - started)

    try:
        paced(BARE_PERIOD, stop, commit)
    finally:
        db.close()


def last_seq(data_dir: Path) -> int:
    uri = (data_dir / "events.sqlite3").resolve().as_uri() + "?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        (seq,) = db.execute("SELECT max(seq) FROM events").fetchone()
    return int(seq or 0)


def stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50_ms": round(percentile(values, 0.5) * 1000, 1),
        "p99_ms": round(percentile(values, 0.99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def run(template: Path, idle: float, after: float, get_period: float) -> dict[str, Any]:
    copy = template.with_name(template.name + ".compaction")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(template / "data", copy)
    os.sync()
    # The filled directory holds more than snapshot_every events past its last snapshot:
    # left to itself the server would compact as it opens, beside the one timed here (and
    # the second would be refused: one compaction at a time).
    config = copy.with_name(copy.name + ".toml")
    config.write_text("[log]\nsnapshot_every = 0\n")
    server = Server(copy, extra=["--config", str(config)])
    try:
        server.wait_ready()
        posts, gets, bare = Samples(), Samples(), Samples()
        stop = threading.Event()
        counter = iter(range(10**9))

        def post(client: httpx.Client, sent: float) -> None:
            body = {
                "domain": f"probe-{next(counter)}.invalid",
                "reason": "probe",
                "duration": PROBE_RULE_LIFETIME,
            }
            client.post("/api/admin/bounce/v1", json=body).raise_for_status()
            posts.add(sent, time.perf_counter() - sent)

        def get(client: httpx.Client, sent: float) -> None:
            client.get("/api/admin/bounce/v1").raise_for_status()
            gets.add(sent, time.perf_counter() - sent)

        def prober(period: float, request: Callable[[httpx.Client, float], None]) -> None:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                paced(period, stop, lambda sent: request(client, sent))

        bare_path = template.with_name(template.name + ".bare.sqlite3")
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            futures = [
                pool.submit(prober, POST_PERIOD, post),
                pool.submit(prober, get_period, get),
                pool.submit(bare_commits, bare_path, bare, stop),
            ]
            try:
                started = time.perf_counter()
                time.sleep(idle)
                until = last_seq(copy)
                begun = time.perf_counter()
                command = [sys.executable, "-m", "kumo.store.compaction", str(copy)]
                result = subprocess.run(
                    [*command, "--until", str(until)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if result.returncode != 0:
                    raise RuntimeError(f"the compaction failed: {result.stderr.strip()[-2000:]}")
                ended = time.perf_counter()
                time.sleep(after)
            finally:
                stop.set()
                for future in futures:
                    future.result()
                for suffix in ("", "-wal", "-shm"):
                    Path(str(bare_path) + suffix).unlink(missing_ok=True)
        finished = time.perf_counter()
    finally:
        server.stop()
        shutil.rmtree(copy, ignore_errors=True)
    spans = {
        "idle": (started, begun),
        "compaction": (begun, ended),
        "after": (ended, finished),
    }
    return {
        "compaction": result.stdout.strip(),
        "compaction_seconds": round(ended - begun, 1),
        "load_average": os.getloadavg(),
        "phases": {
            phase: {
                "seconds": round(end - start, 1),
                "POST": stats(posts.between(start, end)),
                "GET": stats(gets.between(start, end)),
                "bare fsynced commit": stats(bare.between(start, end)),
            }
            for phase, (start, end) in spans.items()
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="built by `sweep_latency.py build`")
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--after", type=float, default=3.0)
    parser.add_argument(
        "--get-period", type=float, default=GET_PERIOD, help="seconds between GETs (0.01)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run(args.dir, args.idle, args.after, args.get_period)
    print(result["compaction"])
    print(f"compaction {result['compaction_seconds']} s, load {result['load_average']}")
    for phase, figures in result["phases"].items():
        print(f"{phase} ({figures['seconds']} s):")
        for kind in ("POST", "GET", "bare fsynced commit"):
            print(f"  {kind}: {figures[kind]}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Admin latency while a serving node compacts its log (issue 11's "admin p99 during a
snapshot and an archive pass at 1,000,000 queued").

``kumo serve`` on a copy of a filled data directory (``sweep_latency.py build DIR
1000000 10000``: 1,000,000 queued over 10,000 queues), probed by two clients, as
``bench.py``'s sweep-probe does: one POSTs a new, distinct rule that matches nothing every
20 ms (each live 2 s), from a process of its own, the other GETs the rules every 10 ms.
After ``--idle`` seconds it
runs the compaction a server starts every ``[log] snapshot_every`` events (``python -m
kumo.store.compaction DIR --until SEQ``: a snapshot of the state, then the archive pass,
at ``nice 10``), and probes until ``--after`` seconds past its end. A request's latency
counts from its sending; a slow answer delays the next request. Beside it all, a
third process commits one row with an fsync every 20 ms in the same file system:
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
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import Server, _paced, _post_probe, percentile

GET_PERIOD = 0.01
BARE_PERIOD = 0.02
PROBE_RULE_LIFETIME = "2s"
"""Each probe rule expires soon: at 50 new rules a second, rules that lived 5 minutes
would pile up to thousands, and every GET lists them all (the loop then answers GETs
more than anything else, compaction or not)."""
PHASES = ("idle", "compaction", "after")


def between(samples: list[tuple[float, float]], start: float, end: float) -> list[float]:
    """Latencies of the requests in flight at some moment of [start, end)."""
    return [lat for sent, lat in samples if sent < end and sent + lat >= start]


def bare_commits(path: Path, stop: Any, results: Any) -> None:
    """In a process of its own: one 200-byte row committed with an fsync every
    :data:`BARE_PERIOD` (SQLite WAL, ``synchronous=FULL``), as kumo's writer commits:
    what the disk allows. Sends ``(time.monotonic() at the start, latency)`` of each to
    ``results`` once ``stop`` is set."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS t (x)")
    samples: list[tuple[float, float]] = []

    def commit() -> None:
        started = time.monotonic()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?)", (b"x" * 200,))
        db.execute("COMMIT")
        samples.append((started, time.monotonic() - started))

    try:
        _paced(BARE_PERIOD, stop.is_set, commit)
    finally:
        db.close()
    results.send(samples)


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
        forked = multiprocessing.get_context("fork")
        stop = forked.Event()
        bare_path = template.with_name(template.name + ".bare.sqlite3")
        pipes = [forked.Pipe(duplex=False) for _ in range(2)]
        children = [
            forked.Process(
                target=_post_probe,
                args=(server.url, stop, pipes[0][1], PROBE_RULE_LIFETIME),
                daemon=True,
            ),
            forked.Process(target=bare_commits, args=(bare_path, stop, pipes[1][1]), daemon=True),
        ]
        for child, (_, sent) in zip(children, pipes, strict=True):
            child.start()
            sent.close()  # the child's end: if it dies, recv() raises rather than waits
        gets: list[tuple[float, float]] = []

        def get(client: httpx.Client) -> None:
            sent = time.monotonic()
            client.get("/api/admin/bounce/v1").raise_for_status()
            gets.append((sent, time.monotonic() - sent))

        def get_probe() -> None:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                _paced(get_period, stop.is_set, lambda: get(client))

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            getter = pool.submit(get_probe)
            try:
                started = time.monotonic()
                time.sleep(idle)
                until = last_seq(copy)
                begun = time.monotonic()
                command = [sys.executable, "-m", "kumo.store.compaction", str(copy)]
                result = subprocess.run(
                    [*command, "--until", str(until)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if result.returncode != 0:
                    raise RuntimeError(f"the compaction failed: {result.stderr.strip()[-2000:]}")
                ended = time.monotonic()
                time.sleep(after)
            finally:
                stop.set()
                getter.result()
                posts: list[tuple[float, float]] = pipes[0][0].recv()
                bare: list[tuple[float, float]] = pipes[1][0].recv()
                for child in children:
                    child.join(60)
                for suffix in ("", "-wal", "-shm"):
                    Path(str(bare_path) + suffix).unlink(missing_ok=True)
        finished = time.monotonic()
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
                "POST": stats(between(posts, start, end)),
                "GET": stats(between(gets, start, end)),
                "bare fsynced commit": stats(between(bare, start, end)),
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

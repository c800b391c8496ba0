"""Where an admin request's time goes while a match-everything sweep runs, in-process.

    python scripts/sweep_latency.py build DIR MESSAGES QUEUES      # a template, once
    python scripts/sweep_latency.py probe DIR [--set FIELD=VALUE ...] [--json OUT]

``build`` fills a data directory through :meth:`Engine.inject` (as ``bench.py`` does).
``probe`` copies it, opens an engine on the copy with ``kumo serve``'s process settings
(``tune_for_serving()``, then ``serving_started()`` after the replay), and drives the admin API's
handlers (:mod:`kumo.http.bounce_api`, what the routes call, without HTTP) the way
``bench.py --only sweep-probe`` does: a POST of a new, distinct rule that matches nothing
every 20 ms, a GET every 10 ms, from half a second before a match-everything rule is
issued until it has bounced everything. A request's latency is counted from the moment
it was due, not from when its task woke, so that a stalled event loop shows in it (as a
request waiting on its socket would).

What it records, all in this process (diagnosis only: the hooks are wrappers installed
by this script, nothing in the engine):

- each POST split into: due -> its events queued for the writer (``LogWriter.append``
  entered), -> taken into a transaction (waiting for the writer), -> that transaction
  committed (its size, durability and duration), -> the append returned (wake-up);
- every commit of the store: events, bounced messages, durable or not, duration;
- the event loop: each scheduler batch (the time between two waits for I/O, during which
  nothing new is noticed) and each task step longer than 2 ms, with its task's name;
- garbage collections (generation, duration);
- each GET split into the engine's listing and the reply's encoding.

``--set FIELD=VALUE`` overrides an :class:`EngineSettings` field (ints, floats).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench

from kumo.cli.serve import collect_young, serving_started, tune_for_serving
from kumo.http import bounce_api
from kumo.http.rule_listing import RuleListing
from kumo.model.criteria import Criteria
from kumo.model.requests import BounceRequest
from kumo.model.settings import EngineSettings
from kumo.runtime import log_writer
from kumo.runtime.engine import open_engine
from kumo.store.sqlite_log import SqliteEventStore

POST_PERIOD = 0.02
GET_PERIOD = 0.01
LEAD = 0.5
STEP_REPORTED = 0.002


def now() -> float:
    return time.perf_counter()


@attrs.define
class Trace:
    """Everything the hooks saw, times from ``time.perf_counter()``."""

    commits: list[dict[str, Any]] = attrs.Factory(list)
    appends: dict[int, dict[str, float]] = attrs.Factory(dict)
    batches: list[tuple[float, float]] = attrs.Factory(list)
    steps: list[tuple[float, float, str]] = attrs.Factory(list)
    collections: list[tuple[float, float, int]] = attrs.Factory(list)


TRACE = Trace()


class LoopInstrument(trio.abc.Instrument):
    """Scheduler batches (I/O wait to I/O wait) and long task steps."""

    def __init__(self) -> None:
        self._batch_started = now()
        self._step_started = 0.0

    def after_io_wait(self, timeout: float) -> None:
        self._batch_started = now()

    def before_io_wait(self, timeout: float) -> None:
        TRACE.batches.append((self._batch_started, now() - self._batch_started))

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_started = now()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = now() - self._step_started
        if took > STEP_REPORTED:
            TRACE.steps.append((self._step_started, took, task.name))


def install_hooks() -> None:
    """Wrap the log writer's append and take and the store's commit (class level)."""
    original_commit = SqliteEventStore.commit
    original_append = log_writer.LogWriter.append
    original_take = log_writer.LogWriter._take

    def commit(self: SqliteEventStore, events: Any, **kwargs: Any) -> Any:
        started = now()
        result = original_commit(self, events, **kwargs)
        bounced = sum(len(e.messages) for e in events if type(e).__name__ == "Bounced")
        TRACE.commits.append(
            {
                "start": started,
                "seconds": now() - started,
                "events": len(events),
                "bounced": bounced,
                "durable": kwargs.get("durable", True),
            }
        )
        return result

    async def append(self: log_writer.LogWriter, events: Any, **kwargs: Any) -> Any:
        entered = now()
        result = await original_append(self, events, **kwargs)
        record = TRACE.appends.setdefault(id(events), {})
        record["entered"] = entered
        record["returned"] = now()
        return result

    def take(self: log_writer.LogWriter, request_count: int, background_count: int) -> Any:
        taken = now()
        for request in list(self._urgent)[:request_count]:
            TRACE.appends.setdefault(id(request.events), {})["taken"] = taken
        return original_take(self, request_count, background_count)

    SqliteEventStore.commit = commit  # type: ignore[method-assign]
    log_writer.LogWriter.append = append  # type: ignore[method-assign]
    log_writer.LogWriter._take = take  # type: ignore[method-assign]

    gc_started: list[float] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[:] = [now()]
        elif gc_started:
            TRACE.collections.append((gc_started[0], now() - gc_started[0], info["generation"]))

    gc.callbacks.append(on_gc)


_BARE_COMMITS = """
import select, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS t (x)")
seconds = []
due = time.perf_counter()
while not select.select([sys.stdin], [], [], 0)[0]:
    due += 0.02
    started = time.perf_counter()
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO t VALUES (?)", (b"x" * 200,))
    db.execute("COMMIT")
    seconds.append(time.perf_counter() - started)
    time.sleep(max(0.0, due - time.perf_counter()))
print(" ".join(map(str, seconds)))
"""


class BareCommits:
    """What the disk and the CPUs allow: a process of its own commits one 200-byte row
    with an fsync (SQLite WAL, ``synchronous=FULL``) every 20 ms beside the sweep, in
    the same file system. A POST cannot be faster than its durable commit."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _BARE_COMMITS, str(self._path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> dict[str, str]:
        process = self._process
        if process is None:
            return {}
        out, _ = process.communicate("stop\n")
        seconds = [float(line) for line in out.split()]
        self._path.unlink(missing_ok=True)
        return {
            "count": str(len(seconds)),
            "p50_ms": ms(statistics.median(seconds)),
            "p99_ms": ms(percentile(seconds, 0.99)),
            "max_ms": ms(max(seconds)),
        }


def percentile(values: Sequence[float], fraction: float) -> float:
    return bench.percentile(values, fraction) if values else float("nan")


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


async def probe(data_dir: Path, settings: EngineSettings) -> dict[str, Any]:
    """One probed sweep on ``data_dir``; see the module docstring."""
    floor = BareCommits(data_dir.parent / "bare.sqlite3")
    started = now()
    async with open_engine(data_dir, settings=settings) as engine:
        await engine.wait_idle()
        opened = now() - started
        serving_started()
        queued = engine.statistics().queued_total
        trio.lowlevel.add_instrument(LoopInstrument())
        floor.start()
        posts: list[dict[str, float]] = []
        gets: list[dict[str, float]] = []
        done = trio.Event()
        origin: list[float] = []
        sweep: dict[str, Any] = {}

        async def post_loop() -> None:
            due = trio.current_time()
            count = 0
            while not done.is_set():
                await trio.sleep_until(due)
                lateness = trio.current_time() - due
                body = json.dumps(
                    {"domain": f"probe-{count}.invalid", "reason": "probe", "duration": "5m"}
                ).encode()
                count += 1
                began = now() - lateness
                ids_before = set(TRACE.appends)
                await bounce_api.issue_bounce(
                    engine, principal="probe", content_type="application/json", body=body
                )
                ended = now()
                new = [TRACE.appends[k] for k in TRACE.appends.keys() - ids_before]
                posts.append({"due": began, "end": ended} | (new[0] if len(new) == 1 else {}))
                # As bench.py's clients: a late request does not make the next ones late.
                due = max(due + POST_PERIOD, trio.current_time())

        listing = RuleListing()

        async def get_loop() -> None:
            due = trio.current_time()
            while not done.is_set():
                await trio.sleep_until(due)
                lateness = trio.current_time() - due
                began = now() - lateness
                woke = now()
                views = engine.live_bounces()
                listed = now()
                body = await listing.encode_in_slices(views)
                ended = now()
                gets.append(
                    {
                        "due": began,
                        "woke": woke,
                        "listed": listed,
                        "end": ended,
                        "rules": len(views.rules),
                        "bytes": len(body),
                    }
                )
                due = max(due + GET_PERIOD, trio.current_time())

        bounced_before = engine.projection().bounced_total

        async def watch() -> None:
            # Polled cheaply (a GET's listing costs several ms at this size).
            while engine.projection().bounced_total < bounced_before + queued:  # noqa: ASYNC110
                await trio.sleep(0.01)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect_young)
            nursery.start_soon(post_loop)
            nursery.start_soon(get_loop)
            await trio.sleep(LEAD)
            origin.append(now())
            await engine.issue_bounce(
                BounceRequest(criteria=Criteria(), reason="sweep"),
                issued_by="probe",
            )
            sweep["post"] = now() - origin[0]
            await watch()
            sweep["seconds"] = now() - origin[0]
            nursery.cancel_scope.cancel()
    result = summarise(origin[0], sweep, posts, gets, queued, opened)
    result["bare_commit"] = floor.stop()
    return result


def summarise(
    origin: float,
    sweep: dict[str, Any],
    posts: list[dict[str, float]],
    gets: list[dict[str, float]],
    queued: int,
    opened: float,
) -> dict[str, Any]:
    end = origin + sweep["seconds"]
    during_posts = [p for p in posts if origin <= p["due"] <= end]
    during_gets = [g for g in gets if origin <= g["due"] <= end]
    first_posts = [p for p in during_posts if p["due"] < origin + 1]
    first_gets = [g for g in during_gets if g["due"] < origin + 1]

    def lat(samples: list[dict[str, float]]) -> list[float]:
        return [s["end"] - s["due"] for s in samples]

    out: dict[str, Any] = {
        "queued": queued,
        "open_seconds": opened,
        "sweep_seconds": sweep["seconds"],
        "sweep_post": sweep["post"],
        "post_p50": statistics.median(lat(during_posts)),
        "post_p99": percentile(lat(during_posts), 0.99),
        "post_max": max(lat(during_posts)),
        "post_first_p99": percentile(lat(first_posts), 0.99),
        "get_p50": statistics.median(lat(during_gets)),
        "get_p99": percentile(lat(during_gets), 0.99),
        "get_max": max(lat(during_gets)),
        "get_first_p99": percentile(lat(first_gets), 0.99),
        "posts": len(during_posts),
        "gets": len(during_gets),
    }
    # POST breakdown, over the slowest tenth.
    parts = []
    for p in during_posts:
        if {"entered", "taken", "returned"} <= p.keys():
            parts.append(
                {
                    "total": p["end"] - p["due"],
                    "to_append": p["entered"] - p["due"],
                    "wait_writer": p["taken"] - p["entered"],
                    "commit_and_wake": p["returned"] - p["taken"],
                    "after": p["end"] - p["returned"],
                }
            )
    parts.sort(key=lambda part: part["total"])
    slow = parts[-max(1, len(parts) // 10) :]
    out["post_slowest_tenth_mean"] = (
        {k: statistics.mean(part[k] for part in slow) for k in slow[0]} if slow else {}
    )
    out["post_median_parts"] = (
        {k: statistics.median(part[k] for part in parts) for k in parts[0]} if parts else {}
    )
    commits = [c for c in TRACE.commits if origin <= c["start"] <= end]
    for durable in (True, False):
        chosen = [c for c in commits if c["durable"] is durable]
        key = "durable" if durable else "not_durable"
        if chosen:
            out[f"commits_{key}"] = {
                "count": len(chosen),
                "p50_ms": ms(statistics.median(c["seconds"] for c in chosen)),
                "p99_ms": ms(percentile([c["seconds"] for c in chosen], 0.99)),
                "mean_bounced": statistics.mean(c["bounced"] for c in chosen),
                "mean_events": statistics.mean(c["events"] for c in chosen),
            }
    batches = [d for t, d in TRACE.batches if origin <= t <= end]
    out["loop_batches"] = {
        "count": len(batches),
        "p50_ms": ms(statistics.median(batches)),
        "p99_ms": ms(percentile(batches, 0.99)),
        "max_ms": ms(max(batches)),
        "over_10ms": sum(1 for b in batches if b > 0.01),
        "busy_fraction": sum(batches) / sweep["seconds"],
    }
    steps = [(t, d, name) for t, d, name in TRACE.steps if origin <= t <= end]
    by_task: dict[str, list[float]] = {}
    for _, took, name in steps:
        by_task.setdefault(name.rsplit(".", 1)[-1], []).append(took)
    out["long_steps"] = {
        name: {"count": len(v), "max_ms": ms(max(v)), "sum_ms": ms(sum(v))}
        for name, v in sorted(by_task.items(), key=lambda kv: -sum(kv[1]))[:8]
    }
    gcs = [(d, g) for t, d, g in TRACE.collections if origin <= t <= end]
    out["gc"] = {
        f"gen{g}": {
            "count": sum(1 for _, gg in gcs if gg == g),
            "max_ms": ms(max((d for d, gg in gcs if gg == g), default=0.0)),
            "sum_ms": ms(sum(d for d, gg in gcs if gg == g)),
        }
        for g in (0, 1, 2)
    }
    out["get_parts_median_ms"] = {
        "wake": ms(statistics.median(g["woke"] - g["due"] for g in during_gets)),
        "list": ms(statistics.median(g["listed"] - g["woke"] for g in during_gets)),
        "encode": ms(statistics.median(g["end"] - g["listed"] for g in during_gets)),
        "rules_at_end": during_gets[-1]["rules"] if during_gets else 0,
        "bytes_at_end": during_gets[-1]["bytes"] if during_gets else 0,
    }
    slow_gets = sorted(during_gets, key=lambda g: g["end"] - g["due"])[
        -max(1, len(during_gets) // 100) :
    ]
    out["get_slowest_percent_mean_ms"] = {
        "wake": ms(statistics.mean(g["woke"] - g["due"] for g in slow_gets)),
        "list": ms(statistics.mean(g["listed"] - g["woke"] for g in slow_gets)),
        "encode": ms(statistics.mean(g["end"] - g["listed"] for g in slow_gets)),
    }
    return out


def parse_settings(pairs: Sequence[str]) -> EngineSettings:
    fields = attrs.fields_dict(EngineSettings)
    values: dict[str, Any] = {}
    for pair in pairs:
        name, _, raw = pair.partition("=")
        kind = fields[name].type
        values[name] = float(raw) if kind in (float, "float") else int(raw)
    return EngineSettings(**values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build")
    build.add_argument("dir", type=Path)
    build.add_argument("messages", type=int)
    build.add_argument("queues", type=int)
    run = commands.add_parser("probe")
    run.add_argument("dir", type=Path)
    run.add_argument("--set", action="append", default=[], dest="settings")
    run.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    tune_for_serving()
    if args.command == "build":

        async def fill() -> None:
            async with open_engine(args.dir / "data") as engine:
                await bench.fill(engine, args.messages, args.queues, 10_000)

        trio.run(fill)
        return 0
    copy = args.dir.with_name(args.dir.name + ".probe")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(args.dir, copy)
    os.sync()
    install_hooks()
    try:
        result = trio.run(functools.partial(probe, copy / "data", parse_settings(args.settings)))
    finally:
        shutil.rmtree(copy, ignore_errors=True)
    result["settings"] = args.settings
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Measure the two candidate Redis clients of fleet mode side by side (docs/fleet.md).

``python scripts/fleet_client_bench.py [--quick]``

It starts a ``redis-server`` of its own (Debian's package) on 127.0.0.1 at a free port,
in a temporary directory, without persistence, and stops it by its pid at the end. Then,
for each client, under Trio:

- **coredis**: the asyncio/Trio client, run under Trio through anyio;
- **redis-py**: redis-py's synchronous client, each call in a worker thread
  (``trio.to_thread.run_sync``), one client (its own connection pool) per task;

it measures

- **XADD latency**: one admin-event-sized entry at a time, awaited, p50 and p99;
- **follow latency**: a publisher appends on one connection, a follower blocked in
  ``XREAD BLOCK`` on another; the time from the call to XADD until the follower holds
  the entry, p50 and p99 (one entry in flight at a time);
- **throughput**: XADDs per second, from one task and from 8 concurrent tasks.

Both clients are installed for this script only when it runs (``pip install coredis
redis``); kumo itself depends on the one docs/fleet.md chose.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio

ENTRY = {
    "id": "3f1c0d1e-6a0b-4c7e-9d4e-2b1f5e8a9c70:issued",
    "origin": "8d2b6c4e-1f3a-4b5c-9e7d-0a1b2c3d4e5f",
    "event": b'{"v":1,"type":"BounceIssued","rule_id":"3f1c0d1e-6a0b-4c7e-9d4e-2b1f5e8a9c70",'
    b'"criteria":{"campaign":"spring","tenant":null,"domain":"example.com",'
    b'"routing_domain":null,"queue_names":[]},"reason":"bench","expires_at":1,'
    b'"suppress_logging":false,"issued_by":"127.0.0.1","issued_at":0}',
}
"""What fleet mode puts in the stream for one admin event, about 350 bytes."""


class Client(Protocol):
    """The three calls the benchmark makes, whichever client is behind them."""

    async def xadd(self, stream: str, fields: dict[str, Any]) -> str: ...

    async def xread_one(self, stream: str, after: str, block_ms: int) -> str | None:
        """The id of the first entry after ``after``, or None at the end of ``block_ms``."""
        ...

    async def delete(self, stream: str) -> None: ...


OpenClient = Callable[[str], Any]
"""URL -> an async context manager yielding a :class:`Client`."""


@asynccontextmanager
async def coredis_client(url: str) -> AsyncIterator[Client]:
    import coredis

    class CoredisClient:
        def __init__(self, redis: Any) -> None:
            self._redis = redis

        async def xadd(self, stream: str, fields: dict[str, Any]) -> str:
            entry_id = await self._redis.xadd(stream, fields)
            return str(entry_id)

        async def xread_one(self, stream: str, after: str, block_ms: int) -> str | None:
            answer = await self._redis.xread({stream: after}, count=1, block=block_ms)
            if not answer:
                return None
            entries = next(iter(answer.values()))
            return str(entries[0].identifier) if entries else None

        async def delete(self, stream: str) -> None:
            await self._redis.delete([stream])

    async with coredis.Redis.from_url(url, decode_responses=True) as redis:
        yield CoredisClient(redis)


@asynccontextmanager
async def redis_py_client(url: str) -> AsyncIterator[Client]:
    import redis

    class ThreadedClient:
        def __init__(self, sync: Any) -> None:
            self._sync = sync

        async def xadd(self, stream: str, fields: dict[str, Any]) -> str:
            entry_id = await trio.to_thread.run_sync(self._sync.xadd, stream, fields)
            return str(entry_id)

        async def xread_one(self, stream: str, after: str, block_ms: int) -> str | None:
            answer = await trio.to_thread.run_sync(
                lambda: self._sync.xread({stream: after}, count=1, block=block_ms)
            )
            if not answer:
                return None
            return str(answer[0][1][0][0])

        async def delete(self, stream: str) -> None:
            await trio.to_thread.run_sync(self._sync.delete, stream)

    sync = redis.Redis.from_url(url, decode_responses=True)
    try:
        yield ThreadedClient(sync)
    finally:
        await trio.to_thread.run_sync(sync.close)


CLIENTS: dict[str, OpenClient] = {"coredis": coredis_client, "redis-py": redis_py_client}


@attrs.frozen
class Figures:
    client: str
    xadd_p50_ms: float
    xadd_p99_ms: float
    follow_p50_ms: float
    follow_p99_ms: float
    xadd_per_second_1: float
    xadd_per_second_8: float


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def xadd_latencies(client: Client, stream: str, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        await client.xadd(stream, ENTRY)
        latencies.append(time.perf_counter() - start)
    return latencies


async def follow_latencies(
    open_client: OpenClient, url: str, stream: str, count: int
) -> list[float]:
    latencies: list[float] = []
    async with open_client(url) as publisher, open_client(url) as follower:
        last = await publisher.xadd(stream, ENTRY)
        for _ in range(count):
            seen = trio.Event()
            arrived: list[float] = []

            async def follow(
                after: str = last, arrived: list[float] = arrived, seen: trio.Event = seen
            ) -> None:
                while True:
                    got = await follower.xread_one(stream, after, 1000)
                    if got is not None:
                        arrived.append(time.perf_counter())
                        seen.set()
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow)
                # Let the follower reach its XREAD BLOCK before the entry is added.
                await trio.sleep(0.002)
                start = time.perf_counter()
                last = await publisher.xadd(stream, ENTRY)
                await seen.wait()
            latencies.append(arrived[0] - start)
    return latencies


async def throughput(
    open_client: OpenClient, url: str, stream: str, tasks: int, count: int
) -> float:
    async def worker(share: int) -> None:
        async with open_client(url) as client:
            for _ in range(share):
                await client.xadd(stream, ENTRY)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker, count // tasks)
    return (count // tasks) * tasks / (time.perf_counter() - start)


async def measure(name: str, url: str, quick: bool) -> Figures:
    open_client = CLIENTS[name]
    rounds = 200 if quick else 5_000
    follows = 50 if quick else 1_000
    stream = f"bench:{name}"
    async with open_client(url) as client:
        await client.delete(stream)
        await xadd_latencies(client, stream, rounds // 10)  # warm up
        latencies = await xadd_latencies(client, stream, rounds)
    follow = await follow_latencies(open_client, url, stream, follows)
    one = await throughput(open_client, url, stream, 1, rounds)
    eight = await throughput(open_client, url, stream, 8, rounds * 2)
    async with open_client(url) as client:
        await client.delete(stream)
    return Figures(
        client=name,
        xadd_p50_ms=1000 * statistics.median(latencies),
        xadd_p99_ms=1000 * percentile(latencies, 0.99),
        follow_p50_ms=1000 * statistics.median(follow),
        follow_p99_ms=1000 * percentile(follow, 0.99),
        xadd_per_second_1=one,
        xadd_per_second_8=eight,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def redis_binary() -> str:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(binary):
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    return binary


@asynccontextmanager
async def redis_server(binary: str) -> AsyncIterator[str]:
    """A redis-server on a free loopback port, in a temporary directory, persisting
    nothing; stopped by its pid on exit. Yields its URL once it accepts connections."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kumo-bench-redis-") as directory:
        options = ["--port", str(port), "--bind", "127.0.0.1", "--dir", directory]
        options += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        process = await trio.lowlevel.open_process(
            [binary, *options, "--loglevel", "warning"], stdout=subprocess.DEVNULL
        )
        try:
            with trio.fail_after(10):
                while True:
                    try:
                        stream = await trio.open_tcp_stream("127.0.0.1", port)
                    except OSError:
                        await trio.sleep(0.01)
                        continue
                    await stream.aclose()
                    break
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            await process.wait()


async def main_async(binary: str, quick: bool, clients: list[str]) -> list[Figures]:
    results = []
    async with redis_server(binary) as url:
        for name in clients:
            results.append(await measure(name, url, quick))
    return results


def report(results: list[Figures]) -> str:
    lines = [
        "| client | XADD p50 | XADD p99 | follow p50 | follow p99 "
        "| XADD/s, 1 task | XADD/s, 8 tasks |",
        "|---|---|---|---|---|---|---|",
    ]
    for figures in results:
        lines.append(
            f"| {figures.client} | {figures.xadd_p50_ms:.3f} ms | {figures.xadd_p99_ms:.3f} ms "
            f"| {figures.follow_p50_ms:.3f} ms | {figures.follow_p99_ms:.3f} ms "
            f"| {figures.xadd_per_second_1:,.0f} | {figures.xadd_per_second_8:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    parser.add_argument("--client", action="append", choices=sorted(CLIENTS), default=None)
    args = parser.parse_args()
    results = trio.run(main_async, redis_binary(), args.quick, args.client or list(CLIENTS))
    print(report(results))


if __name__ == "__main__":
    main()

"""Fleet mode's figures: how fast an admin action reaches every node, and how many the
fleet absorbs (issue 15; docs/fleet.md, docs/benchmarks.md).

Run by ``scripts/bench.py`` (``--only fleet-propagation``, ``--only fleet-throughput``,
both in ``--quick`` with small counts); ``scripts/fleet_sim.py`` uses the same pieces
for fleets of 2 to 20 nodes. Each run starts one ``redis-server`` of its own on
loopback (a free port, a temporary directory, no persistence) and N kumo engines in
this process, each with its own data directory and ``node_id``, as the fleet tests do.

- **fleet-propagation**: rules issued one at a time, each from the next node in turn
  (``Engine.issue_bounce``, the call ``POST /api/admin/bounce/v1`` makes, which returns
  once the rule is durable on that node), each with criteria of its own. The delay of
  one rule is from the call until the rule is live on every other node (its
  ``BounceIssued`` durable in that node's log and folded: ``Engine.wait_rule``
  returns). p50 and p99 over the rules, and the mean over nodes of each node's delay.
- **fleet-throughput**: issue+cancel pairs issued at once by every node (each node
  issues its share, cancelling each rule as soon as it is issued); the rate is the
  admin events (2 per pair) divided by the time from the first issue until every node's
  follower has read (and applied, or skipped as its own or as ended) every one of them.

The engines share one Python process and one event loop (one CPU at a time, with the
SQLite work in worker threads): a node's follower waits its turn behind the other
nodes' work, so the delays grow with N faster than on N machines. That makes them an
upper bound, and the growth with N a measure of what each node adds.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import attrs
import trio
from fleet_client_bench import redis_binary, redis_server

from kumo.model.criteria import Criteria
from kumo.model.fleet import FleetSettings
from kumo.model.requests import BounceRequest
from kumo.runtime.engine import Engine, open_engine

FLEET_BENCHMARKS = ("fleet-propagation", "fleet-throughput")
NODES = 3
HOUR = 3600 * 10**9
POLL = 0.001
"""Seconds between two looks at the followers' progress in the throughput run."""


@attrs.frozen
class FleetSize:
    """How much each fleet benchmark does."""

    name: str
    rules: int
    """Rules issued one at a time for the propagation delay."""
    pairs: int
    """Issue+cancel pairs for the throughput."""


FLEET_FULL = FleetSize("full", 300, 600)
FLEET_QUICK = FleetSize("quick", 30, 60)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.99 for p99)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@asynccontextmanager
async def open_fleet(url: str, root: Path, nodes: int) -> AsyncIterator[list[Engine]]:
    """``nodes`` engines in this process, each in ``root/node-<i>``, joined to the fleet
    of the Redis at ``url``; closed on exit."""
    settings = FleetSettings(url)
    async with AsyncExitStack() as stack:
        engines = [
            await stack.enter_async_context(
                open_engine(root / f"node-{index}", node_id=f"node-{index}", fleet=settings)
            )
            for index in range(nodes)
        ]
        yield engines


def rule_request(name: str) -> BounceRequest:
    return BounceRequest(criteria=Criteria(campaign=name), reason="bench", duration=HOUR)


@attrs.frozen
class Propagation:
    nodes: int
    delays: list[float]
    """Seconds from each issue until the rule was live on every other node."""
    per_node: list[float]
    """Seconds from each issue until it was live on one other node, every node."""

    @property
    def p50(self) -> float:
        return percentile(self.delays, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.delays, 0.99)

    @property
    def per_node_mean(self) -> float:
        return statistics.fmean(self.per_node)


async def measure_propagation(engines: list[Engine], rules: int, tag: str) -> Propagation:
    """Issue ``rules`` rules one at a time from each node in turn (see the module)."""
    delays: list[float] = []
    per_node: list[float] = []
    for number, source in zip(range(rules), itertools.cycle(engines), strict=False):
        others = [engine for engine in engines if engine is not source]
        arrived: list[float] = []
        started = time.perf_counter()
        rule = await source.issue_bounce(rule_request(f"{tag}-{number}"), issued_by="bench")

        async with trio.open_nursery() as nursery:
            for engine in others:
                nursery.start_soon(_arrival, engine, rule, started, arrived)
        delays.append(max(arrived))
        per_node += arrived
    return Propagation(len(engines), delays, per_node)


async def _arrival(engine: Engine, rule: str, started: float, arrived: list[float]) -> None:
    await engine.wait_rule(rule)
    arrived.append(time.perf_counter() - started)


@attrs.frozen
class Throughput:
    nodes: int
    pairs: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return 2 * self.pairs / self.seconds


async def measure_throughput(engines: list[Engine], pairs: int, tag: str) -> Throughput:
    """Every node issues and cancels its share of ``pairs`` at once (see the module)."""
    ids: list[str] = []

    async def issue_and_cancel(engine: Engine, index: int) -> None:
        for number in range(index, pairs, len(engines)):
            rule = await engine.issue_bounce(rule_request(f"{tag}-{number}"), issued_by="bench")
            ids.append(rule)
            await engine.cancel_bounce(rule, cancelled_by="bench")

    # Every node reads every entry of the stream, its own included (and skipped). A
    # rule whose issue and cancel a node reads in one batch is not applied there (it
    # ended before that node heard of it), so what is waited for is the reading.
    targets = [engine.statistics().fleet.read + 2 * pairs for engine in engines]
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index, engine in enumerate(engines):
            nursery.start_soon(issue_and_cancel, engine, index)
    for engine, target in zip(engines, targets, strict=True):
        # A skipped entry changes nothing a wait could park on: look every POLL.
        while engine.statistics().fleet.read < target:  # noqa: ASYNC110
            await trio.sleep(POLL)
    return Throughput(len(engines), pairs, time.perf_counter() - started)


async def fleet_run(
    root: Path, nodes: int, rules: int, pairs: int
) -> tuple[Propagation, Throughput | None]:
    """One redis-server, ``nodes`` engines: the propagation delay of ``rules`` rules,
    then the throughput of ``pairs`` issue+cancel pairs (none if 0)."""
    async with redis_server(redis_binary()) as url, open_fleet(url, root, nodes) as engines:
        # The nodes join the stream (each publishes what still matters: nothing yet).
        await measure_propagation(engines, min(len(engines), rules), "warm")
        propagation = await measure_propagation(engines, rules, "p")
        throughput = await measure_throughput(engines, pairs, "t") if pairs else None
    return propagation, throughput


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f} ms"


def run_fleet_benchmarks(
    size: FleetSize, only: Sequence[str], scratch: Path
) -> tuple[list[tuple[str, str, str, str, str]], dict[str, object]]:
    """The rows of ``scripts/bench.py``'s table (benchmark, figure, target, verdict,
    detail) for the chosen fleet benchmarks, and their raw figures."""
    chosen = [name for name in FLEET_BENCHMARKS if name in only]
    if not chosen:
        return [], {}
    rules = size.rules if "fleet-propagation" in chosen else 1
    pairs = size.pairs if "fleet-throughput" in chosen else 0
    propagation, throughput = trio.run(fleet_run, scratch / "fleet", NODES, rules, pairs)
    rows: list[tuple[str, str, str, str, str]] = []
    raw: dict[str, object] = {"fleet_size": attrs.asdict(size)}
    if "fleet-propagation" in chosen:
        met = propagation.p99 < 1.0
        rows.append(
            (
                "fleet propagation (3 nodes)",
                f"p50 {_ms(propagation.p50)}, p99 {_ms(propagation.p99)}",
                "within 1 s (SPEC 10)",
                "met" if met else "**missed**",
                f"{rules} rules, each from the next node, until live on both others; "
                f"per node mean {_ms(propagation.per_node_mean)}",
            )
        )
        raw["fleet_propagation"] = attrs.asdict(propagation)
    if throughput is not None:
        rows.append(
            (
                "fleet admin events (3 nodes)",
                f"{throughput.events_per_second:,.0f} events/s",
                "",
                "",
                f"{pairs} issue+cancel pairs from all nodes at once, until every node "
                f"has read them all ({throughput.seconds:.2f} s)",
            )
        )
        raw["fleet_throughput"] = attrs.asdict(throughput)
    return rows, raw

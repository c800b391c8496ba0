"""A larger fleet, simulated: how the propagation delay of an admin action grows with the
number of nodes (issue 15; docs/benchmarks.md, "Fleet mode").

    python scripts/fleet_sim.py                  # 2, 5, 10 and 20 nodes, 60 rules each
    python scripts/fleet_sim.py --nodes 2 --nodes 20 --rules 100

For each node count N: one ``redis-server`` of its own on loopback, N kumo engines in
this process (each with its own data directory and ``node_id``, joined to the fleet
as ``[fleet]`` joins a served node), then rules issued one at a time, each from the
next node in turn; the delay of a rule is from its issue (``Engine.issue_bounce``, what
``POST /api/admin/bounce/v1`` calls, answered once the rule is durable on that node)
until it is live on every other node (``scripts/fleet_bench.py`` measures it).

Why in-process engines rather than N ``kumo serve`` processes: on a machine of 2 CPUs,
20 processes would measure how the kernel shares two cores among 20 Python
interpreters (and their start), not fleet mode. In one process the nodes run on one
event loop, one at a time, so the growth with N is the work each added node costs the
others (its follower's XREAD answer, its durable append); each node still has its own
SQLite log, its own Redis connections and its own fsyncs. On N machines the delay would
grow less: the nodes would follow the stream in parallel.

It prints a Markdown table: N, p50 and p99 of the delay until every other node holds
the rule, and the mean delay until one given node does.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import trio
from fleet_bench import Propagation, fleet_run

DEFAULT_NODES = (2, 5, 10, 20)
DEFAULT_RULES = 60


def table(results: Sequence[Propagation]) -> str:
    lines = [
        "| nodes | rules | p50 (all others) | p99 (all others) | mean (one other) |",
        "|---|---|---|---|---|",
    ]
    for result in results:
        lines.append(
            f"| {result.nodes} | {len(result.delays)} | {result.p50 * 1000:,.1f} ms "
            f"| {result.p99 * 1000:,.1f} ms | {result.per_node_mean * 1000:,.1f} ms |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, action="append", help="node counts (repeatable)")
    parser.add_argument("--rules", type=int, default=DEFAULT_RULES, help="rules per node count")
    args = parser.parse_args(argv)
    results: list[Propagation] = []
    for nodes in args.nodes or DEFAULT_NODES:
        scratch = Path(tempfile.mkdtemp(prefix="kumo-fleet-sim-"))
        try:
            propagation, _ = trio.run(fleet_run, scratch, nodes, args.rules, 0)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        results.append(propagation)
        print(f"{nodes} nodes: p50 {propagation.p50 * 1000:.1f} ms", flush=True)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What fleet-wide connection limits cost (docs/fleet.md, docs/benchmarks.md).

    python scripts/fleet_limits_bench.py [--messages 3000] [--leases 2000] [--rounds 2]
                                         [--per-connection N ...] [--rate 500/s]
                                         [--rate-messages 2000]

One ``redis-server`` of the run's own on loopback, one Postfix ``smtp-sink``:

- **lease round trips**: :class:`~kumo.runtime.connection_leases.ConnectionLeases`
  takes a lease and gives it back, ``--leases`` times one after the other (the acquire
  script, then the release script, each one round trip); p50 and p99 of the acquire, of
  the release, and of the pair.
- **delivery**: one kumo engine (in this process, joined to the fleet) delivers
  ``--messages`` messages injected at once to the sink, ``[egress] fleet_limits`` off
  and on, alternately (``--rounds`` of each), with ``connection_limit`` 32 and
  ``max_deliveries_per_connection`` 1024 (KumoMTA's defaults: few connections, so few
  leases) and again with ``max_deliveries_per_connection`` 10 (a lease per 10
  messages); msg/s from the injection's end until the engine has logged every
  delivery, the best round of each.
- **message rates** (``--rate``, default ``"500/s"``): the GCRA script's round trip,
  ``--leases`` requests one after the other (a rate so high that each is granted); then
  one engine delivers ``--rate-messages`` messages under a fleet-wide
  ``max_message_rate`` of ``--rate`` (``fleet_limits`` on, 1,024 messages per
  connection): msg/s achieved against the rate configured, and the expected time
  (``(messages - burst) / rate``).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import trio
from fleet_client_bench import redis_binary, redis_server
from mail_peers import smtp_sink

from kumo.model.cidr_set import CidrSet
from kumo.model.fleet import FleetSettings
from kumo.model.queue_name import queue_name_for
from kumo.model.requests import NewMessage
from kumo.model.retry import RetryPolicy
from kumo.model.smtp_client import ClientSettings, TlsMode
from kumo.model.throttle import ThrottleSpec
from kumo.runtime.connection_leases import ConnectionLeases, HeldLease
from kumo.runtime.delivery import DestinationSettings, MailSettings
from kumo.runtime.engine import open_engine
from kumo.runtime.message_rates import MessageRates
from kumo.runtime.mx import MxResolver
from kumo.runtime.smtp_connection import ConnectionSettings, client_tls_context


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` 0.99 for p99)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


async def lease_round_trips(url: str, count: int) -> dict[str, list[float]]:
    leases = ConnectionLeases(FleetSettings(url), node_id="bench")
    times: dict[str, list[float]] = {"acquire": [], "release": [], "pair": []}
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        await leases.wait_until(lambda s: s.up == 1)
        for _ in range(count):
            started = time.perf_counter()
            held = await leases.acquire("unspecified->bench@smtp_client", 32, lambda: None)
            acquired = time.perf_counter()
            assert isinstance(held, HeldLease), held
            await leases.release(held)
            released = time.perf_counter()
            times["acquire"].append(acquired - started)
            times["release"].append(released - acquired)
            times["pair"].append(released - started)
        nursery.cancel_scope.cancel()
    return times


async def throttle_round_trips(url: str, count: int) -> list[float]:
    leases = ConnectionLeases(FleetSettings(url), node_id="bench")
    rates = MessageRates(leases)
    spec = ThrottleSpec.parse("1000000/s")
    times: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(leases.run)
        await leases.wait_until(lambda s: s.up == 1)
        for _ in range(count):
            started = time.perf_counter()
            grant = await rates.request_fleet("unspecified->bench@smtp_client", spec)
            times.append(time.perf_counter() - started)
            assert grant is not None
        nursery.cancel_scope.cancel()
    return times


def destination(
    port: int,
    *,
    fleet_limits: bool,
    per_connection: int,
    rate: ThrottleSpec | None = None,
) -> DestinationSettings:
    return DestinationSettings(
        retry=RetryPolicy(),
        mx_list=(f"127.0.0.1:{port}",),
        connection=ConnectionSettings(
            ClientSettings(
                "bench.invalid",
                enable_tls=TlsMode.DISABLED,
                max_deliveries_per_connection=per_connection,
            ),
            verifying_tls=client_tls_context(verify=False),
            insecure_tls=client_tls_context(verify=False),
        ),
        connection_limit=32,
        max_ready=1024,
        prohibited_hosts=CidrSet.parse([]),
        fleet_limits=fleet_limits,
        max_message_rate=rate,
    )


@attrs.frozen
class Delivery:
    seconds: float
    connections: int
    """Leases taken (fleet_limits on), one per connection; 0 when off."""
    refused: int
    """Lease requests refused (a replacement asked before a lease was back)."""

    def rate(self, messages: int) -> float:
        return messages / self.seconds


async def deliver(
    url: str,
    port: int,
    messages: int,
    *,
    fleet_limits: bool,
    per_connection: int,
    rate: ThrottleSpec | None = None,
) -> Delivery:
    made = destination(port, fleet_limits=fleet_limits, per_connection=per_connection, rate=rate)
    mail = MailSettings(lambda _: made, MxResolver())
    body = b"Subject: bench\r\n\r\n" + b"x" * 1000 + b"\r\n"
    queue = queue_name_for(domain="example.com")
    batch = [
        NewMessage(
            sender="bench@source.example", recipient=f"r{n}@example.com", queue=queue, body=body
        )
        for n in range(messages)
    ]
    with tempfile.TemporaryDirectory(prefix="kumo-fleet-limits-") as directory:
        async with open_engine(
            Path(directory) / "node", fleet=FleetSettings(url), mail=mail
        ) as engine:
            leases = engine.connection_leases
            assert leases is not None
            # Not waited for: the lease client starts with the first fleet-limited ready
            # queue (none before the first message), and never with fleet_limits off.
            started = time.perf_counter()
            for start in range(0, messages, 500):
                await engine.inject(batch[start : start + 500])
            await engine.wait_until(lambda: engine.statistics().delivered_total >= messages)
            seconds = time.perf_counter() - started
            figures = leases.statistics()
            return Delivery(seconds, figures.acquired, figures.refused)


async def main_async(args: argparse.Namespace) -> None:
    async with redis_server(redis_binary()) as url:
        times = await lease_round_trips(url, args.leases)
        print(f"lease round trips ({args.leases}, one after the other):")
        for name in ("acquire", "release", "pair"):
            values = times[name]
            print(
                f"  {name:8} p50 {_ms(percentile(values, 0.5))}  p99 "
                f"{_ms(percentile(values, 0.99))}"
            )
        with smtp_sink() as sink:
            for per_connection in args.per_connection or (1024, 10):
                best: dict[bool, Delivery] = {}
                for _ in range(args.rounds):
                    for fleet_limits in (False, True):
                        run = await deliver(
                            url,
                            sink.port,
                            args.messages,
                            fleet_limits=fleet_limits,
                            per_connection=per_connection,
                        )
                        kept = best.get(fleet_limits)
                        if kept is None or run.seconds < kept.seconds:
                            best[fleet_limits] = run
                print(
                    f"delivery of {args.messages} messages, max_deliveries_per_connection "
                    f"{per_connection}, best of {args.rounds}:"
                )
                for fleet_limits, run in sorted(best.items()):
                    print(
                        f"  fleet_limits {'on ' if fleet_limits else 'off'}  "
                        f"{run.rate(args.messages):,.0f} msg/s  ({run.seconds:.2f} s, "
                        f"{run.connections} leases, {run.refused} refused)"
                    )
            if args.rate == "none":
                return
            spec = ThrottleSpec.parse(args.rate)
            rounds = await throttle_round_trips(url, args.leases)
            print(
                f"message-rate script round trips ({args.leases}, one after the other): "
                f"p50 {_ms(percentile(rounds, 0.5))}  p99 {_ms(percentile(rounds, 0.99))}"
            )
            configured = spec.limit / spec.period
            expected = (args.rate_messages - spec.burst) / configured
            run = await deliver(
                url,
                sink.port,
                args.rate_messages,
                fleet_limits=True,
                per_connection=1024,
                rate=spec,
            )
            print(
                f"delivery of {args.rate_messages} messages at a fleet-wide {spec}: "
                f"{run.rate(args.rate_messages):,.1f} msg/s against {configured:,.1f} "
                f"configured ({run.seconds:.2f} s, {expected:.2f} s expected)"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--leases", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", default="500/s", help='a max_message_rate, or "none"')
    parser.add_argument("--rate-messages", type=int, default=2000)
    parser.add_argument(
        "--per-connection",
        type=int,
        action="append",
        help="max_deliveries_per_connection to measure (repeatable; default 1024 and 10)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    trio.run(main_async, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A child process for the crash test: injects, bounces and cancels until killed.

Usage: python -m tests.runtime.crash_child DATA_DIR ACK_FILE SEED

After each inject call returns (the messages are durable), their ids are appended to
ACK_FILE, one per line: the parent may rely on every id there being in the log.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import trio

from kumo.model.criteria import Criteria
from kumo.model.requests import BounceRequest
from kumo.runtime.engine import open_engine
from tests.runtime.harness import message

DOMAINS = ["a.com", "b.com", "c.org"]
TENANTS = [None, "acme", "beta"]


async def churn(data_dir: Path, ack_file: Path, seed: int) -> None:
    rng = random.Random(seed)
    async with open_engine(data_dir) as engine:
        with ack_file.open("a") as acks:
            rule_ids: list[str] = []
            while True:
                roll = rng.random()
                if roll < 0.75:
                    batch = [
                        message(
                            f"u{rng.randrange(10**6)}@{rng.choice(DOMAINS)}",
                            tenant=rng.choice(TENANTS),
                        )
                        for _ in range(rng.randrange(1, 200))
                    ]
                    ids = await engine.inject(batch)
                    acks.write("".join(f"{i}\n" for i in ids))
                    acks.flush()
                elif roll < 0.92:
                    criteria = rng.choice(
                        [
                            Criteria(domain=rng.choice(DOMAINS)),
                            Criteria(tenant=rng.choice(TENANTS[1:])),
                            Criteria(),
                            Criteria(queue_names=["a.com", "acme@b.com"]),
                        ]
                    )
                    request = BounceRequest(
                        criteria,
                        reason=f"crash test {seed}",
                        duration=rng.choice([0, 50_000_000, 300_000_000, 60_000_000_000]),
                        suppress_logging=rng.random() < 0.2,
                    )
                    rule_ids.append(await engine.issue_bounce(request, issued_by="crash"))
                elif rule_ids:
                    await engine.cancel_bounce(rng.choice(rule_ids), cancelled_by="crash")
                await trio.sleep(rng.random() * 0.005)


if __name__ == "__main__":
    trio.run(churn, Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))

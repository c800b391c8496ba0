"""A child process for the delivery crash test: injects into a destination that an
smtp-sink serves, and bounces some of it, until killed.

Usage: python -m tests.runtime.delivery_crash_child DATA_DIR ACK_FILE SINK_PORT SEED

After each inject call returns (the messages are durable), their recipients are appended
to ACK_FILE, one per line.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import trio

from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import open_engine
from tests.runtime.harness import bounce, message
from tests.runtime.test_delivery import to_sink


async def churn(data_dir: Path, ack_file: Path, port: int, seed: int) -> None:
    rng = random.Random(seed)
    async with open_engine(data_dir, mail=to_sink(port), clock=EngineClock()) as engine:
        with ack_file.open("a") as acks:
            sent = 0
            while True:
                if rng.random() < 0.9:
                    domain = rng.choice(["a.com", "b.com"])
                    batch = [f"s{seed}-{sent + n}@{domain}" for n in range(rng.randrange(1, 50))]
                    sent += len(batch)
                    await engine.inject([message(recipient) for recipient in batch])
                    acks.write("".join(f"{r}\n" for r in batch))
                    acks.flush()
                else:
                    await engine.issue_bounce(
                        bounce(domain="b.com", duration=rng.choice([0, 50_000_000])),
                        issued_by="crash",
                    )
                await trio.sleep(rng.random() * 0.01)


if __name__ == "__main__":
    trio.run(churn, Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))

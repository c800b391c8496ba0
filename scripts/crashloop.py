"""SIGKILL a delivering ``kumo serve`` at random moments; nothing acknowledged is lost.

    python scripts/crashloop.py [--kills 5] [--seed 1] [--data-dir DIR]

Each round starts ``kumo serve`` on one data directory (HTTP and SMTP on free ports of
127.0.0.1, delivering to two Postfix ``smtp-sink``: see ``scripts/load_mix.py``), puts
the mixed load on it (inject, SMTP, bounce and suspend rules, cancels, listings), and
kills it with SIGKILL a random 0.3-2.5 s after its first acknowledgement. One round in
four kills it instead while it starts (recovering from the previous kill). After every
kill ``kumo replay --verify`` must pass on the data directory. At the end a last start
and a clean stop (SIGTERM, exit 0) finish what was owed, ``replay --verify`` passes once
more, and the delivery log is checked against the client's ledger:

- every recipient the server acknowledged has its ``Reception`` record, and only one;
- no message ends (``Delivery``, ``Bounce``, ``AdminBounce``, ``Expiration``) more than
  once per kill: a delivery is repeated only when the server died between the
  destination's 250 and the ``Delivered`` event (SPEC 8.4).

Exit status 0 when all of it holds, 1 otherwise. CI runs 5 kills; docs/reliability.md
quotes a run of 50.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from load_mix import ROOT, Ledger, Load, check_records, mix_config, run_main, verify
from mail_peers import Kumo, kumo, smtp_sink


def _kill_while_starting(data_dir: Path, config: Path, delay: float) -> None:
    """Start ``kumo serve`` and SIGKILL it ``delay`` s later, ready or not."""
    command = [sys.executable, "-m", "kumo.cli.serve", "--listen", "127.0.0.1:0"]
    command += ["--smtp-listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
    command += ["--config", str(config), "--deliver"]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        process.wait(delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()


def _wait_for_acknowledgement(ledger: Ledger, before: int, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while len(ledger.acknowledged) == before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no acknowledgement within {limit}s: {ledger.errors[-3:]}")
        time.sleep(0.02)


def crashloop(data_dir: Path, kills: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    ledger = Ledger(prefix=f"c{seed}-")
    rounds: list[dict[str, object]] = []
    started = time.monotonic()
    with smtp_sink() as accepting, smtp_sink("-r", "rcpt") as refusing:
        config = mix_config(accepting.port, refusing.port)
        config_path = data_dir.with_name(data_dir.name + ".toml")
        for number in range(kills):
            if number % 4 == 3:
                delay = rng.uniform(0.0, 1.5)
                config_path.write_text(config)
                _kill_while_starting(data_dir, config_path, delay)
                rounds.append({"round": number, "killed": "starting", "after_s": round(delay, 2)})
            else:
                server = Kumo(data_dir, accepting.port, deliver=True, config=config)
                load = Load(server.url, server.smtp_port, ledger, seed=seed * 1000 + number)
                before = len(ledger.acknowledged)
                load.start()
                try:
                    _wait_for_acknowledgement(ledger, before)
                    delay = rng.uniform(0.3, 2.5)
                    time.sleep(delay)
                finally:
                    load.halt()  # what is in flight stays in flight
                    server.kill()
                    load.stop()
                rounds.append(
                    {
                        "round": number,
                        "killed": "under load",
                        "after_s": round(delay, 2),
                        "acknowledged": len(ledger.acknowledged) - before,
                    }
                )
            failure = verify(data_dir)
            print(f"round {number}: {rounds[-1]} verify: {'ok' if failure is None else 'FAILED'}")
            if failure is not None:
                return {"rounds": rounds, "problems": [f"round {number}: {failure}"]}
        # A last start finishes what the kills left owed; a clean stop writes it all.
        with kumo(data_dir, accepting.port, deliver=True, config=config):
            pass
        failure = verify(data_dir)
    check = check_records(data_dir, ledger.acknowledged)
    problems = check.problems(kills)
    if ledger.errors:
        problems.append(f"{len(ledger.errors)} answers no client should get: {ledger.errors[:5]}")
    if failure is not None:
        problems.append(f"final verify: {failure}")
    return {
        "kills": kills,
        "seed": seed,
        "seconds": round(time.monotonic() - started, 1),
        "acknowledged": check.acknowledged,
        "received": check.received,
        "records": check.types,
        "ended_twice": len(check.ended_twice),
        "client_errors": ledger.errors[:20],
        "problems": problems,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, help="keep the data directory here")
    parser.add_argument("--json", type=Path, help="write the summary here too")
    args = parser.parse_args()
    run_main("crashloop", args.data_dir, args.json, lambda d: crashloop(d, args.kills, args.seed))


if __name__ == "__main__":
    main()

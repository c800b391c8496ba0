"""Run a delivering ``kumo serve`` under the mixed load for a while and watch it.

    python scripts/soak.py [--minutes 1] [--sample 5] [--pause 0.02] [--json FILE]

The load is ``scripts/load_mix.py``'s (inject and SMTP to an accepting and a refusing
``smtp-sink``, bounce and suspend rules, cancels, listings), each sending thread
waiting ``--pause`` s between requests so that the offered load stays bounded. Every
``--sample`` seconds it prints one row: the messages acknowledged in the window, the
server's RSS and open descriptors, the size of the log's WAL, and the admin GET and
POST latencies (p50/p99) in the window. At the end the server is stopped cleanly
(SIGTERM, exit 0), ``kumo replay --verify`` must pass, and every acknowledged recipient
must have its ``Reception`` record.

It fails (exit 1) when a client got an answer it should not (a 5xx, a refusal of a valid
request), verify fails, an acknowledged message is missing, or the descriptors grow by
more than 100 from the first sample to the last (a leak). RSS and the WAL are reported,
not judged here: docs/reliability.md says what they did over 10 minutes. CI runs one
minute.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Final

from load_mix import Ledger, Load, check_records, mix_config, run_main, verify
from mail_peers import kumo, rss_bytes, smtp_sink

FD_GROWTH_LIMIT: Final = 100
WAL: Final = "events.sqlite3-wal"


def _wal_bytes(data_dir: Path) -> int:
    try:
        return (data_dir / WAL).stat().st_size
    except FileNotFoundError:
        return 0


def soak(data_dir: Path, seconds: float, sample: float, pause: float) -> dict[str, object]:
    ledger = Ledger(prefix="s-")
    rows: list[dict[str, float]] = []
    with smtp_sink() as accepting, smtp_sink("-r", "rcpt") as refusing:
        config = mix_config(accepting.port, refusing.port)
        with kumo(data_dir, accepting.port, deliver=True, config=config) as server:
            pid = server.process.pid
            load = Load(server.url, server.smtp_port, ledger, seed=1, pause=pause)
            started = time.monotonic()
            load.start()
            try:
                window_start, acknowledged = started, 0
                print(
                    f"{'t (s)':>6} {'msg/s':>7} {'RSS MiB':>8} {'fds':>5} {'WAL MiB':>8} "
                    f"{'GET p50/p99 ms':>15} {'POST p50/p99 ms':>16}"
                )
                while time.monotonic() - started < seconds:
                    time.sleep(sample)
                    now = time.monotonic()
                    total = len(ledger.acknowledged)
                    get50, get99, _ = ledger.percentiles("GET", window_start)
                    post50, post99, _ = ledger.percentiles("POST", window_start)
                    row = {
                        "t_s": round(now - started, 1),
                        "msg_per_s": round((total - acknowledged) / (now - window_start), 1),
                        "rss_mib": round(rss_bytes(pid) / 2**20, 1),
                        "fds": len(os.listdir(f"/proc/{pid}/fd")),
                        "wal_mib": round(_wal_bytes(data_dir) / 2**20, 2),
                        "get_p50_ms": round(get50, 1),
                        "get_p99_ms": round(get99, 1),
                        "post_p50_ms": round(post50, 1),
                        "post_p99_ms": round(post99, 1),
                    }
                    rows.append(row)
                    print(
                        f"{row['t_s']:>6} {row['msg_per_s']:>7} {row['rss_mib']:>8} "
                        f"{row['fds']:>5} {row['wal_mib']:>8} "
                        f"{get50:>7.1f}/{get99:<7.1f} {post50:>8.1f}/{post99:<7.1f}",
                        flush=True,
                    )
                    window_start, acknowledged = now, total
            finally:
                load.stop()
        # The clean stop (exit 0, checked by ``kumo``) has written everything owed.
    failure = verify(data_dir)
    check = check_records(data_dir, ledger.acknowledged)
    problems = check.problems(kills=0)
    if failure is not None:
        problems.append(f"verify: {failure}")
    if ledger.errors:
        problems.append(f"{len(ledger.errors)} answers no client should get: {ledger.errors[:5]}")
    if rows and rows[-1]["fds"] - rows[0]["fds"] > FD_GROWTH_LIMIT:
        problems.append(f"descriptors grew from {rows[0]['fds']} to {rows[-1]['fds']}")
    get50, get99, gets = ledger.percentiles("GET")
    post50, post99, posts = ledger.percentiles("POST")
    return {
        "seconds": seconds,
        "acknowledged": check.acknowledged,
        "records": check.types,
        "rss_mib_first_last_max": [
            rows[0]["rss_mib"] if rows else None,
            rows[-1]["rss_mib"] if rows else None,
            max((r["rss_mib"] for r in rows), default=None),
        ],
        "wal_mib_max": max((r["wal_mib"] for r in rows), default=None),
        "get_ms_p50_p99_n": [round(get50, 1), round(get99, 1), gets],
        "post_ms_p50_p99_n": [round(post50, 1), round(post99, 1), posts],
        "problems": problems,
        "samples": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between rows")
    parser.add_argument("--pause", type=float, default=0.02, help="s between requests")
    parser.add_argument("--data-dir", type=Path, help="keep the data directory here")
    parser.add_argument("--json", type=Path, help="write the summary here too")
    args = parser.parse_args()
    run_main(
        "soak",
        args.data_dir,
        args.json,
        lambda d: soak(d, args.minutes * 60, args.sample, args.pause),
        unprinted=("samples",),
    )


if __name__ == "__main__":
    main()

"""Start time, disk and audits against the length of the history (issue 11's figures).

For each size, a data directory holding that many events of history and nothing
queued: pairs of ``MessageReceived`` and ``Bounced`` (one message each, by a rule that
suppresses its delivery-log records), written straight into the store, then one engine
start to write the delivery log. Then, side by side with a fresh directory:

- start time and RSS of ``open_engine`` with a full replay (no snapshot);
- the same from a snapshot (``take_snapshot``);
- ``kumo compact``: the live store's size before and after, the archive's size;
- ``kumo audit --message`` of the first message (in the oldest archive chunk).

Usage: ``python scripts/history_bench.py ROOT 1000000 5000000 10000000`` (ROOT is
scratch space: about 0.8 GB per million events while it runs).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import trio

from kumo.model.criteria import Criteria
from kumo.model.events import Bounced, BounceIssued, Event, Message, MessageReceived
from kumo.model.settings import EngineSettings
from kumo.runtime.engine import open_engine
from kumo.store.data_dir import open_event_log
from kumo.store.snapshots import take_snapshot

START = r"""
import sys, time, trio
from pathlib import Path
from kumo.model.settings import EngineSettings
from kumo.runtime.engine import open_engine
from kumo.cli.serve import tune_for_serving
async def main():
    tune_for_serving()
    started = time.perf_counter()
    async with open_engine(Path(sys.argv[1]), settings=EngineSettings(snapshot_every=0)):
        opened = time.perf_counter() - started
        status = open("/proc/self/status").read().split("VmRSS:")[1].split()[0]
    print(f"{opened:.2f} s, RSS {int(status) // 1024} MiB")
trio.run(main)
"""
KUMO = "from kumo.cli.kumo import main; main()"
BATCH = 20_000
RULE = "00000000-0000-4000-8000-000000000001"


def generate(data_dir: Path, events: int) -> str:
    """Write ``events`` events of history; return the first message's id."""
    data_dir.mkdir(parents=True)
    store = open_event_log(data_dir)
    issue = BounceIssued(
        RULE, Criteria(domain="h.example"), "history", expires_at=2**62, suppress_logging=True
    )
    store.commit([issue], time=1, bodies={})
    seq = 1
    pairs = (events - 1) // 2
    for start in range(0, pairs, BATCH // 2):
        batch: list[Event] = []
        for n in range(start, min(pairs, start + BATCH // 2)):
            message_id = f"{n:032x}"
            batch.append(
                MessageReceived(message_id, "h.example", "s@x.example", f"u{n}@h.example", 100)
            )
            gone = Message(message_id, "s@x.example", f"u{n}@h.example", 100, 2, seq + len(batch))
            batch.append(Bounced(RULE, "h.example", [gone]))
        store.commit(batch, time=2, bodies={}, durable=False)
        seq += len(batch)
    store.close()

    async def write_delivery_log() -> None:
        async with open_engine(data_dir, settings=EngineSettings(snapshot_every=0)) as engine:
            await engine.wait_idle()

    trio.run(write_delivery_log)
    return f"{0:032x}"


def run(*args: str) -> tuple[str, float]:
    started = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    return (result.stdout.strip().splitlines() or [""])[-1], time.perf_counter() - started


def start(data_dir: Path) -> str:
    run(sys.executable, "-c", START, str(data_dir))  # warm the page cache
    return run(sys.executable, "-c", START, str(data_dir))[0]


def size(path: Path) -> int:
    """Bytes of a directory's files, or of a file and its -wal and -shm companions."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*") if p.is_file())


def main() -> None:
    root = Path(sys.argv[1])
    shutil.rmtree(root, ignore_errors=True)
    fresh = root / "fresh"
    fresh.mkdir(parents=True)
    open_event_log(fresh).close()
    print(f"fresh: start {start(fresh)}", flush=True)
    for events in map(int, sys.argv[2:]):
        data_dir = root / f"h{events}"
        started = time.perf_counter()
        first = generate(data_dir, events)
        print(f"{events:,} events: made in {time.perf_counter() - started:.0f} s", flush=True)
        print(f"  full replay: start {start(data_dir)}", flush=True)
        started = time.perf_counter()
        taken = take_snapshot(data_dir)
        assert taken is not None
        print(
            f"  snapshot: {taken.bytes:,} bytes in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        print(f"  from the snapshot: start {start(data_dir)}", flush=True)
        live = size(data_dir / "events.sqlite3")
        line, seconds = run(sys.executable, "-c", KUMO, "compact", "--data-dir", str(data_dir))
        print(f"  compact ({seconds:.0f} s): {line}", flush=True)
        print(
            f"  live store {live:,} -> {size(data_dir / 'events.sqlite3'):,} bytes; "
            f"archive {size(data_dir / 'archive'):,} bytes",
            flush=True,
        )
        print(f"  after compaction: start {start(data_dir)}", flush=True)
        _, seconds = run(
            sys.executable,
            "-m",
            "kumo.cli.kumo",
            "audit",
            "--data-dir",
            str(data_dir),
            "--message",
            first,
        )
        print(f"  audit --message of the first message: {seconds:.2f} s", flush=True)
        shutil.rmtree(data_dir)  # the disk the next size needs


if __name__ == "__main__":
    main()

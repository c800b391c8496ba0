"""Summarise the py-spy stacks that ``scripts/bench.py --profile DIR`` records.

    python scripts/bench_profile.py DIR/sweep.txt [--top 25] [--thread MainThread]

The input is py-spy's ``raw`` format (collapsed stacks, one ``frame;frame;... count``
line per distinct stack, recorded with ``--threads --idle``). It prints, per thread, the
share of samples, then the functions with the most samples on top of the stack (self)
and anywhere in it (inclusive), line numbers folded together.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

_LINE = re.compile(r":\d+\)$")
_IDLE_LEAVES = ("select", "poll", "epoll", "wait", "acquire", "get_events", "sleep")


def fold(frame: str) -> str:
    """``name (path:line)`` as ``name (file)``: samples of one function together."""
    frame = _LINE.sub(")", frame.strip())
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rstrip(')')).name})" if where else name


def parse(path: Path) -> list[tuple[str, list[str], int]]:
    """``(thread, frames root first, samples)`` per line of a raw py-spy file."""
    stacks: list[tuple[str, list[str], int]] = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        # With --threads py-spy puts "process ..." and "thread (0x...)" frames first.
        while frames and frames[0].startswith("process "):
            frames = frames[1:]
        thread = frames[0] if frames and frames[0].startswith("thread ") else "thread ?"
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        stacks.append((thread, [fold(frame) for frame in frames], int(count)))
    return stacks


def summarise(path: Path, *, top: int = 25, thread: str | None = None) -> str:
    stacks = parse(path)
    total = sum(count for _, _, count in stacks) or 1
    out = [f"{path}: {total} samples"]
    threads: Counter[str] = Counter()
    for name, _, count in stacks:
        threads[name] += count
    out.append("threads:")
    out += [f"  {count / total:6.1%}  {name}" for name, count in threads.most_common(8)]
    chosen = [s for s in stacks if thread is None or thread in s[0]]
    busy = [s for s in chosen if s[1] and not s[1][-1].split(" ")[0].endswith(_IDLE_LEAVES)]
    busy_total = sum(count for _, _, count in busy) or 1
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for _, frames, count in busy:
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    scope = f"thread {thread!r}" if thread else "all threads"
    out.append(f"busy samples ({scope}, idle waits left out): {busy_total}")
    out.append("self:")
    out += [f"  {c / busy_total:6.1%}  {f}" for f, c in own.most_common(top)]
    out.append("inclusive:")
    out += [f"  {c / busy_total:6.1%}  {f}" for f, c in inclusive.most_common(top)]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stacks", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--thread", help="only threads whose name contains this")
    args = parser.parse_args(argv)
    for path in args.stacks:
        print(summarise(path, top=args.top, thread=args.thread))
    return 0


if __name__ == "__main__":
    sys.exit(main())

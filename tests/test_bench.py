"""scripts/bench.py keeps working: its smallest measurements run, in-process and as children.

The full smoke run (``scripts/bench.py --quick``, every benchmark, about 10 s) is in
``.ci/run``; these tests keep the pieces honest in the ordinary test run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import orjson
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def _load() -> ModuleType:
    # As when run as a script: its directory first on the path (for scripts/mail_bench.py).
    if str(SCRIPT.parent) not in sys.path:
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("kumo_bench", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # attrs resolves the annotations through it
    spec.loader.exec_module(module)
    return module


bench = _load()


async def test_sweep_run_bounces_everything_and_measures_its_floor(tmp_path: Path) -> None:
    run = await bench.sweep_run(tmp_path, 2_000, 20, 500)
    assert run.messages == 2_000
    assert 0 < run.ack <= run.durable <= run.seconds
    assert len(run.floors) == 2
    floor = run.floor
    assert floor.encode_write > 0
    assert floor.sqlite > 0
    # The floor encodes the same records the engine wrote: the same number of bytes,
    # give or take the digits of the timestamps.
    assert floor.bytes == pytest.approx(run.record_bytes, rel=0.01)
    assert run.ratio == run.seconds / floor.total


async def test_targeted_and_memory_runs(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    # Enough messages that RSS must grow even in a process that freed memory before.
    memory = await bench.memory_run(data_dir, 20_000, 10, 5_000)
    assert memory.full_rss > memory.empty_rss > 0
    targeted = await bench.targeted_runs(data_dir, 10, 3)
    assert targeted.messages == 20_000
    assert len(targeted.seconds) == 3
    assert all(ack <= total for ack, total in zip(targeted.acks, targeted.seconds, strict=True))


def test_main_runs_a_benchmark_in_children_and_prints_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    assert bench.main(["--quick", "--only", "targeted", "--runs", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| targeted bounce |" in printed
    assert '"targeted"' in out.read_text()


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench.percentile(values, 0.5) == 50.0
    assert bench.percentile(values, 0.99) == 99.0
    assert bench.percentile([3.0], 0.99) == 3.0


def test_total_bounced_is_found_without_parsing_the_listing() -> None:
    """The sweep-probe's check of its rule's ``total_bounced``, even past a queue named
    like the key in the rule's ``bounced`` map."""
    listing = orjson.dumps(
        [
            {"id": "a", "bounced": {"q": 1}, "total_bounced": 5, "pending": 0},
            {"id": "b", "bounced": {"total_bounced": 3}, "total_bounced": 1234, "pending": 0},
        ]
    )
    assert bench._total_bounced(listing, "b") == 1234
    assert bench._total_bounced(listing, "a") == 5
    assert bench._total_bounced(listing, "c") == -1


def test_app_time_is_read_from_the_servers_histogram() -> None:
    """The sweep-probe's figure of the server's own time: the mean, and the bucket that
    holds the 99th percentile; other routes and methods do not count."""
    route = 'route="/api/admin/bounce/v1"'
    page = "\n".join(
        [
            "# TYPE kumo_admin_request_seconds histogram",
            f'kumo_admin_request_seconds_bucket{{{route},method="POST",le="0.002"}} 90',
            f'kumo_admin_request_seconds_bucket{{{route},method="POST",le="0.005"}} 98',
            f'kumo_admin_request_seconds_bucket{{{route},method="POST",le="0.01"}} 100',
            f'kumo_admin_request_seconds_bucket{{{route},method="POST",le="+Inf"}} 100',
            f'kumo_admin_request_seconds_count{{{route},method="POST"}} 100',
            f'kumo_admin_request_seconds_sum{{{route},method="POST"}} 0.25',
            'kumo_admin_request_seconds_count{route="/metrics",method="GET"} 7',
            "",
        ]
    )
    post = bench.AppTime.from_metrics(page, "POST")
    assert (post.count, post.mean, post.p99_bound) == (100, 0.0025, 0.01)
    assert bench.AppTime.from_metrics(page, "GET") == bench.AppTime(0, 0.0, 0.0)

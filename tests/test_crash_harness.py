"""scripts/crashloop.py and scripts/soak.py keep working: one kill, a few seconds of soak,
and the judgement of their checks.

The bounded runs of record (5 kills, one minute of soak) are in ``.ci/run``; the figures
of 50 kills and 10 minutes are in docs/reliability.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.postfix import require_smtp_sink

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import crashloop  # noqa: E402  # scripts beside the package, found through the path above
import load_mix  # noqa: E402
import soak  # noqa: E402


def _check(**fields: object) -> load_mix.RecordCheck:
    defaults: dict[str, object] = {
        "acknowledged": 3,
        "received": 3,
        "types": {},
        "missing": [],
        "received_twice": [],
        "ended_twice": [],
        "most_endings": 1,
    }
    return load_mix.RecordCheck(**{**defaults, **fields})  # type: ignore[arg-type]


def test_the_record_check_names_what_is_lost_doubled_or_repeated_too_often() -> None:
    assert _check().problems(kills=0) == []
    assert _check(most_endings=2, ended_twice=["a@x"]).problems(kills=1) == []
    [lost] = _check(missing=["a@x"]).problems(kills=0)
    assert "1 acknowledged but never received" in lost
    [doubled] = _check(received_twice=["a@x"]).problems(kills=0)
    assert "1 received twice" in doubled
    [repeated] = _check(most_endings=3).problems(kills=1)
    assert "ended 3 times with 1 kills" in repeated


def test_the_ledger_gives_percentiles_of_a_window() -> None:
    ledger = load_mix.Ledger(prefix="t-")
    assert ledger.recipients("a.test", 2) == ["t-0@a.test", "t-1@a.test"]
    for seconds in (0.001, 0.002, 0.003, 0.004):
        ledger.took("GET", seconds)
    p50, p99, count = ledger.percentiles("GET")
    assert count == 4
    assert p50 == pytest.approx(2.5)
    assert 3.9 < p99 <= 4.0
    assert ledger.percentiles("POST")[2] == 0


def test_one_kill_under_load_loses_nothing(tmp_path: Path) -> None:
    require_smtp_sink()
    summary = crashloop.crashloop(tmp_path / "data", kills=1, seed=11)
    assert summary["problems"] == []
    acknowledged, received = summary["acknowledged"], summary["received"]
    assert isinstance(acknowledged, int)
    assert isinstance(received, int)
    assert 0 < acknowledged <= received


def test_a_short_soak_reports_its_samples(tmp_path: Path) -> None:
    require_smtp_sink()
    summary = soak.soak(tmp_path / "data", seconds=3, sample=1, pause=0.02)
    assert summary["problems"] == []
    samples = summary["samples"]
    assert isinstance(samples, list)
    assert len(samples) >= 3
    assert all(row["rss_mib"] > 0 and row["fds"] > 0 for row in samples)

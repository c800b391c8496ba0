"""The scenario library: shipped as package data, found by name, every scenario passing.

Building a wheel in a test would take too long, so what a non-editable install ships is
checked here in two halves: the library is read through :mod:`importlib.resources` (as
an installed package reads it), and pyproject.toml declares its files as package data.
"""

from __future__ import annotations

import fnmatch
import re
import time
import tomllib
from collections import Counter
from importlib.resources import files
from pathlib import Path

import pytest

from kumo.scenario.expect import Verdict
from kumo.scenario.format import parse_scenario
from kumo.scenario.library import UnknownScenarioError, library_file, library_names
from kumo.scenario.report import format_result
from kumo.scenario.runner import ScenarioResult, run_in_process
from kumo.store.delivery_files import read_records
from kumo.store.layout import LOGS
from kumo.store.verify import verify_data_dir

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "kumo" / "scenario" / "library"
SCENARIOS = sorted(LIBRARY.glob("*.toml"))
OWN_TEST = {"pile_up"}
"""Scenarios run by a test of their own, which checks more (and runs them once)."""


def run_file(path: Path, data_dir: Path | None = None) -> ScenarioResult:
    return run_in_process(parse_scenario(path.read_text(encoding="utf-8"), str(path)), data_dir)


def test_the_library_is_found_through_importlib_resources() -> None:
    assert library_names() == tuple(path.stem for path in SCENARIOS)
    package = files("kumo.scenario.library")
    for path in SCENARIOS:
        text = path.read_text(encoding="utf-8")
        assert package.joinpath(path.name).read_text(encoding="utf-8") == text
        assert library_file(path.stem).read_text(encoding="utf-8") == text
        assert library_file(path.name).read_text(encoding="utf-8") == text


@pytest.mark.parametrize("name", ["nope", "", "__init__", "__init__.py", "../../pyproject"])
def test_only_library_names_are_found(name: str) -> None:
    with pytest.raises(UnknownScenarioError):
        library_file(name)


def test_pyproject_ships_the_library_as_package_data() -> None:
    with (ROOT / "pyproject.toml").open("rb") as file:
        setuptools = tomllib.load(file)["tool"]["setuptools"]
    # The library is a package that the package search finds...
    assert (LIBRARY / "__init__.py").is_file()
    assert any(
        fnmatch.fnmatch("kumo.scenario.library", pattern)
        for pattern in setuptools["packages"]["find"]["include"]
    )
    # ...and every scenario file in it is declared package data, so a wheel carries it.
    patterns = setuptools["package-data"]["kumo.scenario.library"]
    for path in SCENARIOS:
        assert any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns), path.name


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.stem for path in SCENARIOS])
def test_scenario_has_a_one_line_summary_for_the_listing(path: Path) -> None:
    summary = parse_scenario(path.read_text(encoding="utf-8"), str(path)).summary
    assert summary
    assert len(summary) <= 80, summary


def test_the_library_covers_every_case_of_the_rules() -> None:
    names = {path.stem for path in SCENARIOS}
    assert {
        "sweep",
        "arrivals",
        "expiry",
        "already_expired",
        "cancel",
        "replacement",
        "case_sensitivity",
        "queue_names",
        "tenant_only",
        "suppress_logging",
        "counts_per_rule_and_queue",
        "attribution",
        "bad_input",
        "incident_spam_traps",
    } <= names


def assert_passed(result: ScenarioResult) -> None:
    report = format_result(result, verbose=True)
    assert result.passed, report
    assert result.error is None
    assert all(step.verdict is Verdict.PASSED for step in result.steps), report
    assert len(result.steps) == len(result.scenario.steps if result.scenario else ())


GENERIC = [path for path in SCENARIOS if path.stem not in OWN_TEST]


@pytest.mark.parametrize("path", GENERIC, ids=[path.stem for path in GENERIC])
def test_scenario_passes_in_process(path: Path) -> None:
    assert_passed(run_file(path))


def test_the_library_shows_the_mail_path() -> None:
    names = {path.stem for path in SCENARIOS}
    assert {"pile_up", "retry_schedule", "suspend", "smtp_in"} <= names
    assert names >= OWN_TEST


def test_suspend_leaves_a_log_that_verifies_and_holds_without_attempts(tmp_path: Path) -> None:
    """Each held message has one TransientFailure record without an attempt counted,
    and is delivered on its first attempt; ``kumo replay --verify`` finds nothing wrong."""
    data_dir = tmp_path / "data"
    assert_passed(run_file(LIBRARY / "suspend.toml", data_dir))
    records = read_records(data_dir / LOGS)
    held = [r for r in records if r["type"] == "TransientFailure"]
    assert len(held) == 23
    assert {(r["site"], r["num_attempts"]) for r in held} == {("example.com", 0)}
    delivered = [r for r in records if r["type"] == "Delivery"]
    assert len(delivered) == 28
    assert {r["num_attempts"] for r in delivered} == {0}
    report = verify_data_dir(data_dir)
    assert report.violations == [], report.violations


def test_the_library_rehearses_every_admin_verb() -> None:
    names = {path.stem for path in SCENARIOS}
    assert {"suspend", "rebind", "incident_rehearsal"} <= names
    text = (LIBRARY / "incident_rehearsal.toml").read_text(encoding="utf-8")
    kinds = {step.kind for step in parse_scenario(text, "incident_rehearsal.toml").steps}
    assert {"destination", "suspend", "bounce", "rebind", "cancel", "expect"} <= kinds


def test_the_incident_rehearsal_conserves_every_message_and_verifies(tmp_path: Path) -> None:
    """Every message received is delivered or bounced, and each rebound one is
    delivered through the routing domain; ``kumo replay --verify`` finds nothing wrong."""
    data_dir = tmp_path / "data"
    assert_passed(run_file(LIBRARY / "incident_rehearsal.toml", data_dir))
    records = read_records(data_dir / LOGS)
    types = Counter(str(r["type"]) for r in records)
    assert types["Reception"] == types["Delivery"] + types["AdminBounce"] == 37
    rebound = {r["id"] for r in records if r["type"] == "AdminRebind"}
    delivered = {r["id"]: r["queue"] for r in records if r["type"] == "Delivery"}
    assert len(rebound) == 12
    assert {delivered[i] for i in rebound} == {"summer:acme@example.com!relay.example"}
    report = verify_data_dir(data_dir)
    assert report.violations == [], report.violations


def test_pile_up_in_process(tmp_path: Path) -> None:
    """10,000 messages refused, swept while more arrive over SMTP, then delivery: every
    record where it belongs, and the data directory passes kumo replay --verify."""
    data_dir = tmp_path / "data"
    result = run_file(LIBRARY / "pile_up.toml", data_dir)
    assert_passed(result)
    assert result.virtual_seconds == 6
    types = Counter(str(record["type"]) for record in read_records(data_dir / LOGS))
    assert types == Counter(
        {"Reception": 10_110, "TransientFailure": 10_000, "AdminBounce": 10_010, "Delivery": 100}
    )
    report = verify_data_dir(data_dir)
    assert report.violations == [], report.violations


def test_retry_schedule_repeats_exactly() -> None:
    path = LIBRARY / "retry_schedule.toml"
    first, second = run_file(path), run_file(path)
    assert_passed(first)
    assert first.virtual_seconds == second.virtual_seconds == 10 * 60
    assert trace(first) == trace(second)


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def trace(result: ScenarioResult) -> list[str]:
    """Every check's values; rule ids are random (uuid4), everything else must repeat."""
    return [
        UUID.sub("<uuid>", f"{check.what}: {check.expected} / {check.actual}")
        for step in result.steps
        for check in step.checks
    ]


def test_runs_repeat_exactly() -> None:
    """Virtual time and the checks' actual values are the same on every run."""
    path = LIBRARY / "incident_spam_traps.toml"
    first, second = run_file(path), run_file(path)
    assert first.virtual_seconds == second.virtual_seconds == 12 * 60
    assert trace(first) == trace(second)


def test_an_hour_of_virtual_time_takes_well_under_a_second() -> None:
    text = """
        [[step]]
        name = "rule"
        bounce = { domain = "example.com", reason = "an hour", duration = "1h" }

        [[step]]
        inject = { count = 100, domain = "example.com" }

        [[step]]
        wait = "59m 59s"

        [[step]]
        expect = { rules = [{ rule = "rule", remaining = "1s", total_bounced = 100 }] }

        [[step]]
        wait = "1s"

        [[step]]
        expect = { rule_count = 0 }
    """
    scenario = parse_scenario(text.replace("\n        ", "\n"), "hour.toml")
    started = time.monotonic()
    result = run_in_process(scenario)
    elapsed = time.monotonic() - started
    assert result.passed, format_result(result)
    assert result.virtual_seconds == 3600
    assert elapsed < 1.0

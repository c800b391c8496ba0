"""`kumo scenario run`: reports, exit status, JUnit XML, errors, and a live server."""

from __future__ import annotations

import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kumo.cli.kumo import main
from kumo.scenario.library import library_names
from kumo.store.delivery_files import segment_sizes
from tests.live_server import running_server

LIBRARY = Path(__file__).resolve().parents[2] / "kumo" / "scenario" / "library"

PASSING = """
    [scenario]
    name = "passing"

    [[step]]
    inject = { count = 2, domain = "example.com" }

    [[step]]
    name = "rule"
    bounce = { domain = "example.com", reason = "r", duration = "1h" }

    [[step]]
    wait = "30m"

    [[step]]
    name = "check"
    expect.admin_bounces = 2
    expect.rules = [{ rule = "rule", remaining = "30m", total_bounced = 2 }]
"""

FAILING = """
    [scenario]
    name = "failing"

    [[step]]
    inject = { count = 2, domain = "example.com" }

    [[step]]
    name = "wrong count"
    expect = { queues = { "example.com" = 3 } }

    [[step]]
    restart = true
"""

MALFORMED = """
    [[step]]
    inject = { count = 2, domain = "example.com" }

    [[step]]
    name = "typo"
    wiat = "5m"
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, ["scenario", "run", *args], catch_exceptions=False)


def test_passing_scenario_exits_0(tmp_path: Path) -> None:
    result = invoke(str(write(tmp_path, "passing.toml", PASSING)))
    assert result.exit_code == 0, result.output
    assert 'scenario "passing"' in result.output
    assert 'PASS  step 4 "check" (expect)' in result.output
    assert "PASSED: 4 steps (4 passed) in" in result.output
    assert "30m of virtual time" in result.output
    assert result.output.rstrip().endswith("1 scenario: 1 passed, 0 failed")


def test_failing_scenario_exits_1_with_expected_and_actual(tmp_path: Path) -> None:
    result = invoke(str(write(tmp_path, "failing.toml", FAILING)), "--verbose")
    assert result.exit_code == 1
    assert 'FAIL  step 2 "wrong count" (expect): queues (line 7)' in result.output
    assert "queues[example.com]: expected 3, actual 2" in result.output
    assert "ok  success_count: expected 2, actual 2" in result.output  # --verbose
    assert "1 scenario: 0 passed, 1 failed (failing)" in result.output


def test_malformed_file_names_file_line_and_step(tmp_path: Path) -> None:
    path = write(tmp_path, "malformed.toml", MALFORMED)
    good = write(tmp_path, "passing.toml", PASSING)
    junit = tmp_path / "junit.xml"
    result = invoke(str(path), str(good), "--junit", str(junit))
    assert result.exit_code == 1
    assert (
        f"ERROR  {path}:6: step 2 \"typo\": unknown key 'wiat': a step needs one action key, "
        "one of inject, traffic, destination, bounce, suspend, rebind, suspend-ready-q, cancel, "
        "wait, restart, expect, request"
    ) in result.output
    assert "2 scenarios: 1 passed, 1 failed (malformed)" in result.output
    root = ET.parse(junit).getroot()
    assert root.get("errors") == "1"
    [error] = root.iter("error")
    assert f"{path}:6: step 2" in (error.get("message") or "")


def test_syntax_error_names_file_line_and_step(tmp_path: Path) -> None:
    path = write(tmp_path, "syntax.toml", MALFORMED.replace('wiat = "5m"', 'wait = "5m'))
    result = invoke(str(path))
    assert result.exit_code == 1
    assert f'ERROR  {path}:6: step 2 "typo": TOML syntax error: ' in result.output


def test_junit_report(tmp_path: Path) -> None:
    junit = tmp_path / "out" / "junit.xml"
    junit.parent.mkdir()
    files = [write(tmp_path, "passing.toml", PASSING), write(tmp_path, "failing.toml", FAILING)]
    result = invoke(*map(str, files), "--junit", str(junit))
    assert result.exit_code == 1
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("7", "1", "0")
    passing, failing = root.findall("testsuite")
    assert passing.get("name") == "passing"
    assert [case.get("name") for case in failing.findall("testcase")] == [
        "step 1 (inject)",
        'step 2 "wrong count" (expect)',
        "step 3 (restart)",
    ]
    [failure] = failing.iter("failure")
    assert failure.get("message") == "queues[example.com]: expected 3, actual 2"
    assert failing.findall("testcase")[1].get("line") == "7"


def test_options_need_endpoint(tmp_path: Path) -> None:
    path = str(write(tmp_path, "passing.toml", PASSING))
    result = CliRunner().invoke(main, ["scenario", "run", path, "--log-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--log-dir needs --endpoint" in result.output
    result = CliRunner().invoke(
        main, ["scenario", "run", path, "--endpoint", "http://x", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "--data-dir is for in-process runs" in result.output
    result = CliRunner().invoke(main, ["scenario", "run", path, "--endpoint", "127.0.0.1:8000"])
    assert result.exit_code == 2
    assert "'127.0.0.1:8000' is not an http:// or https:// URL" in result.output


def test_list_names_every_library_scenario_with_its_summary() -> None:
    result = CliRunner().invoke(main, ["scenario", "list"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == list(library_names())
    width = len("counts_per_rule_and_queue")  # the longest name sets the column
    assert f"{'sweep':<{width}}  A new rule sweeps the queues it matches" in result.output
    assert "incident_spam_traps" in result.output


def test_run_by_library_name_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("sweep", "cancel.toml")
    assert result.exit_code == 0, result.output
    assert f'scenario "sweep" ({LIBRARY / "sweep.toml"}) on in-process' in result.output
    assert 'scenario "cancel"' in result.output
    assert result.output.rstrip().endswith("2 scenarios: 2 passed, 0 failed")


def test_an_existing_file_wins_over_a_library_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "sweep", PASSING)
    result = invoke("sweep")
    assert result.exit_code == 0, result.output
    assert 'scenario "passing" (sweep) on in-process' in result.output


def test_library_scenario_keeps_its_data_under_its_name(tmp_path: Path) -> None:
    result = invoke("expiry", "--data-dir", str(tmp_path / "kept"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "kept" / "expiry" / "events.sqlite3").exists()


def test_unknown_name_is_a_one_line_error_and_runs_nothing(tmp_path: Path) -> None:
    good = str(write(tmp_path, "passing.toml", PASSING))
    for argument in ["no_such_scenario", str(tmp_path / "missing.toml"), str(tmp_path)]:
        result = CliRunner().invoke(main, ["scenario", "run", good, argument])
        assert result.exit_code == 2, result.output
        assert result.output == (
            f"Error: {argument!r} is neither a scenario file nor a library scenario; "
            "`kumo scenario list` lists the library\n"
        )


def test_data_dir_keeps_the_engine_data(tmp_path: Path) -> None:
    path = write(tmp_path, "passing.toml", PASSING)
    result = invoke(str(path), "--data-dir", str(tmp_path / "kept"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "kept" / "passing" / "events.sqlite3").exists()
    assert segment_sizes(tmp_path / "kept" / "passing" / "logs")


def test_library_file_against_kumo_serve_with_endpoint(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    data = tmp_path / "data"
    with running_server(data) as url:
        result = invoke(
            str(LIBRARY / "counts_per_rule_and_queue.toml"),
            "--endpoint",
            url,
            "--log-dir",
            str(data / "logs"),
            "--settle-timeout",
            "5",
            "--junit",
            str(junit),
        )
    assert result.exit_code == 0, result.output
    assert f"on {url}" in result.output
    assert "virtual time" not in result.output
    assert "note: cleaned up: cancelled 2 rule(s) the scenario left live" in result.output
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "0"
    [target] = root.iter("property")
    assert target.get("value") == url


def test_restart_is_skipped_against_a_live_server_without_a_command(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "restart.toml",
        """
        [[step]]
        inject = { count = 1, domain = "example.com" }

        [[step]]
        restart = true

        [[step]]
        expect = { queues = { "example.com" = 1 }, admin_bounces = 0 }
        """,
    )
    with running_server(tmp_path / "data") as url:
        result = invoke(str(path), "--endpoint", url)
    assert result.exit_code == 0, result.output
    assert "SKIP  step 2 (restart): the server" in result.output
    assert "note: record checks skipped: no delivery-log directory given (--log-dir)" in (
        result.output
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--smtp", "localhost:2025"], "'localhost:2025' is not IP:PORT"),
        (["--smtp", "127.0.0.1"], "'127.0.0.1' is not IP:PORT"),
        (["--smtp", "127.0.0.1:0"], "'127.0.0.1:0' is not IP:PORT"),
        (["--sink", "127.0.0.1:2600"], "'127.0.0.1:2600' is not DOMAIN=IP:PORT"),
        (["--sink", "=127.0.0.1:2600"], "'=127.0.0.1:2600' is not DOMAIN=IP:PORT"),
        (
            ["--sink", "Example.com=127.0.0.1:2600", "--sink", "example.com=[::1]:2600"],
            "example.com is given twice",
        ),
    ],
)
def test_smtp_and_sink_addresses_are_checked(option: list[str], message: str) -> None:
    result = CliRunner().invoke(
        main, ["scenario", "run", "pile_up", "--endpoint", "http://127.0.0.1:1", *option]
    )
    assert result.exit_code == 2
    assert message in result.output


def test_smtp_and_sink_need_endpoint() -> None:
    for option in (["--smtp", "127.0.0.1:2025"], ["--sink", "example.com=127.0.0.1:2600"]):
        result = CliRunner().invoke(main, ["scenario", "run", "pile_up", *option])
        assert result.exit_code == 2
        assert f"{option[0]} needs --endpoint" in result.output

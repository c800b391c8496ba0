"""The runner: failures reported with expected and actual values, both targets."""

from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from kumo.http.routes import BOUNCE_PATH
from kumo.scenario.expect import Verdict
from kumo.scenario.format import parse_scenario
from kumo.scenario.report import format_result
from kumo.scenario.runner import (
    InProcessTarget,
    ScenarioResult,
    fill_ready_queues,
    run_in_process,
    run_live,
    run_scenario,
)
from kumo.store.delivery_files import read_records
from tests.live_server import running_server, start_server
from tests.postfix import free_port, require_smtp_sink

LIBRARY = Path(__file__).resolve().parents[2] / "kumo" / "scenario" / "library"


def run_text(text: str) -> ScenarioResult:
    return run_in_process(parse_scenario(textwrap.dedent(text), "test.toml"))


WRONG = """
    [[step]]
    inject = { count = 3, domain = "example.com" }

    [[step]]
    name = "rule"
    bounce = { domain = "example.com", reason = "r", duration = "10m" }

    [[step]]
    name = "wrong"
    [step.expect]
    queues = { "example.com" = 3 }
    rules = [{ rule = "rule", bounced = { "example.com" = 2 }, remaining = "9m" }]
    admin_bounces = 4

    [[step]]
    name = "right"
    expect = { queued_total = 0 }

    [[step]]
    name = "wrong status"
    cancel = "rule"
    expect_status = 404
"""


def test_failures_show_expected_and_actual() -> None:
    result = run_text(WRONG)
    assert not result.passed
    verdicts = [step.verdict for step in result.steps]
    assert verdicts == [
        Verdict.PASSED,
        Verdict.PASSED,
        Verdict.FAILED,
        Verdict.PASSED,
        Verdict.FAILED,
    ]
    failures = {check.what: (check.expected, check.actual) for check in result.steps[2].failures}
    assert failures == {
        "queues[example.com]": ("3", "0"),
        "rules[rule].bounced": ('{"example.com": 2}', '{"example.com": 3}'),
        "rules[rule].remaining": ("9m", "10m"),
        'admin_bounces where type = "AdminBounce"': ("4", "3"),
    }
    [status] = result.steps[4].failures
    assert (status.what, status.expected, status.actual) == ("status", "404", "200")
    report = format_result(result)
    assert 'FAIL  step 3 "wrong" (expect) (line 9)' in report
    assert 'rules[rule].bounced: expected {"example.com": 2}, actual {"example.com": 3}' in report
    assert "FAILED: 5 steps (3 passed, 2 failed)" in report


def test_a_failed_bounce_fails_the_steps_that_use_its_id() -> None:
    result = run_text(
        """
        [[step]]
        name = "rule"
        bounce = { domain = "example.com" }

        [[step]]
        cancel = "rule"

        [[step]]
        expect = { rules = [{ rule = "rule", present = false }] }
        """
    )
    assert [step.verdict for step in result.steps] == [Verdict.FAILED] * 3
    assert result.steps[0].failures[0].actual == "422"
    assert "that bounce failed" in result.steps[1].failures[0].actual


def test_in_process_restart_keeps_the_data_dir_and_the_clock(tmp_path: Path) -> None:
    scenario = parse_scenario(
        textwrap.dedent(
            """
            [[step]]
            name = "rule"
            bounce = { domain = "example.com", reason = "r", duration = "1h" }

            [[step]]
            inject = { count = 2, domain = "example.com" }

            [[step]]
            wait = "20m"

            [[step]]
            restart = true

            [[step]]
            expect = { rules = [{ rule = "rule", remaining = "40m", total_bounced = 2 }] }
            """
        ),
        "restart.toml",
    )
    result = run_in_process(scenario, tmp_path / "data")
    assert result.passed, format_result(result)
    records = read_records(tmp_path / "data" / "logs")
    assert [record["type"] for record in records].count("AdminBounce") == 2


async def test_in_process_target_under_pytest_trio(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    scenario = parse_scenario((LIBRARY / "expiry.toml").read_text(), "expiry.toml")
    async with InProcessTarget.open(tmp_path, wall_origin=scenario.wall_origin) as target:
        result = await run_scenario(scenario, target)
        assert target.engine.statistics().received_total == 5
    assert result.passed, format_result(result)
    assert result.virtual_seconds == 300


def run_library_file_live(name: str, tmp_path: Path) -> ScenarioResult:
    path = LIBRARY / f"{name}.toml"
    scenario = parse_scenario(path.read_text(), str(path))
    data = tmp_path / name
    with running_server(data) as url:
        result = run_live(scenario, url, log_dir=data / "logs", settle_timeout=5, request_timeout=5)
    assert result.target == url
    assert result.virtual_seconds is None
    return result


@pytest.mark.parametrize("name", ["sweep", "cancel", "attribution", "bad_input"])
def test_library_scenario_passes_against_kumo_serve(name: str, tmp_path: Path) -> None:
    """bad_input over the wire also shows that a refused request (a 413 sent before the
    body was read) leaves the kept-alive connection usable for the next one."""
    result = run_library_file_live(name, tmp_path)
    assert result.passed, format_result(result, verbose=True)


def test_live_without_log_dir_or_restart_command_skips_those_checks(tmp_path: Path) -> None:
    scenario = parse_scenario(
        textwrap.dedent(
            """
            [[step]]
            inject = { count = 2, domain = "example.com" }

            [[step]]
            name = "rule"
            bounce = { domain = "example.com", reason = "r", duration = "1h" }

            [[step]]
            restart = true

            [[step]]
            name = "records"
            expect = { admin_bounces = 2 }

            [[step]]
            name = "mixed"
            expect = { admin_bounces = 2, queued_total = 0 }
            """
        ),
        "live.toml",
    )
    with running_server(tmp_path / "data") as url:
        first = run_live(scenario, url, settle_timeout=5)
        second = run_live(scenario, url, settle_timeout=5)
        with httpx.Client(base_url=url) as client:
            assert client.get(BOUNCE_PATH).json() == []
    assert first.passed, format_result(first)
    restart, records, mixed = first.steps[2:]
    assert restart.verdict is Verdict.SKIPPED
    assert "--restart-command" in restart.notes[0]
    assert records.verdict is Verdict.SKIPPED
    assert mixed.verdict is Verdict.PASSED
    assert mixed.notes == ("record checks skipped: no delivery-log directory given (--log-dir)",)
    assert first.notes == ("cleaned up: cancelled 1 rule(s) the scenario left live",)
    # The second run found the first one's leftovers (none: cleaned up) and its own.
    assert second.passed, format_result(second)
    assert not any("live rule" in note for note in second.notes)


def test_live_restart_runs_the_restart_command(tmp_path: Path) -> None:
    scenario = parse_scenario(
        textwrap.dedent(
            """
            [[step]]
            restart = true

            [[step]]
            expect = { rule_count = 0 }
            """
        ),
        "restart.toml",
    )
    marker = tmp_path / "restarted"
    with running_server(tmp_path / "data") as url:
        done = run_live(scenario, url, restart_command=f"touch '{marker}'")
        broken = run_live(scenario, url, restart_command="echo cannot restart >&2; exit 3")
    assert done.passed, format_result(done)
    assert marker.exists()
    assert broken.steps[0].verdict is Verdict.FAILED
    [check] = broken.steps[0].failures
    assert check.actual == "OSError: restart command exited 3: cannot restart"


# -- the mail path ------------------------------------------------------------------------


def test_traffic_arrives_batch_by_batch_while_the_later_steps_run(tmp_path: Path) -> None:
    scenario = parse_scenario(
        textwrap.dedent(
            """
            [[step]]
            traffic = { count = 5, every = "1m", batch = 2, domain = "example.com" }

            [[step]]
            wait = "1m 30s"

            [[step]]
            expect = { queued_total = 2 }

            [[step]]
            wait = "2m"

            [[step]]
            expect = { queued_total = 5, records = [{ type = "Reception", count = 5 }] }
            """
        ),
        "traffic.toml",
    )
    result = run_in_process(scenario, tmp_path / "data")
    assert result.passed, format_result(result, verbose=True)
    assert result.notes == ()
    assert result.steps[0].checks[0].expected == "5 messages by 3m from now"
    records = read_records(tmp_path / "data" / "logs")
    origin = records[0]["created"] - 60
    assert [record["created"] - origin for record in records] == [60, 60, 120, 120, 180]


def test_traffic_still_under_way_at_the_end_is_stopped_with_a_note() -> None:
    result = run_text(
        """
        [[step]]
        traffic = { count = 3, every = "1h", domain = "example.com" }

        [[step]]
        wait = "1h 30m"
        """
    )
    assert result.passed, format_result(result)
    assert result.notes == (
        "the traffic of step 1 (traffic) was stopped at the end of the run, 1 of 3 messages sent",
    )


def test_a_failed_traffic_batch_fails_the_step_it_was_sent_during() -> None:
    result = run_text(
        """
        [[step]]
        traffic = { recipients = ["good@example.com", "bad@"], every = "1m" }

        [[step]]
        wait = "1m 30s"

        [[step]]
        wait = "1m"

        [[step]]
        expect = { queued_total = 1 }
        """
    )
    assert [step.verdict for step in result.steps] == [
        Verdict.PASSED,
        Verdict.PASSED,
        Verdict.FAILED,
        Verdict.PASSED,
    ]
    assert [(c.what, c.expected, c.actual) for c in result.steps[2].failures] == [
        ("traffic of step 1 (traffic): success_count", "1", "0"),
        ("traffic of step 1 (traffic): fail_count", "0", "1"),
    ]


def test_messages_sent_over_smtp_in_process_are_received_by_the_listener(
    tmp_path: Path,
) -> None:
    scenario = parse_scenario(
        textwrap.dedent(
            """
            [[step]]
            inject.count = 3
            inject.domain = "example.com"
            inject.campaign = "c"
            inject.tenant = "t"
            inject.via = "smtp"

            [[step]]
            [step.expect]
            queues = { "c:t@example.com" = 3 }
            [[step.expect.records]]
            type = "Reception"
            count = 3
            reception_protocol = "ESMTP"
            "peer_address.name" = "scenario.invalid"
            "peer_address.addr" = "127.0.0.1"
            """
        ),
        "smtp.toml",
    )
    result = run_in_process(scenario, tmp_path / "data")
    assert result.passed, format_result(result, verbose=True)
    [accepted] = result.steps[0].checks
    assert (accepted.what, accepted.actual) == ("accepted over SMTP", "3")


def test_a_restart_keeps_the_waiting_mail_and_its_schedule() -> None:
    result = run_text(
        """
        [config.queue]
        retry_interval = "30s"

        [[step]]
        destination = { domain = "example.com", answer = "451 4.3.0 Try again later" }

        [[step]]
        inject = { count = 2, domain = "example.com" }

        [[step]]
        wait = "10s"

        [[step]]
        restart = true

        [[step]]
        wait = "25s"

        [[step]]
        expect = { records = [{ type = "TransientFailure", ages = [0, 0, 30, 30] }] }

        [[step]]
        destination = { domain = "example.com", answer = "accept" }

        [[step]]
        wait = "2m"

        [[step]]
        [step.expect]
        queued_total = 0
        records = [{ type = "Delivery", count = 2, num_attempts = 2 }]
        """
    )
    assert result.passed, format_result(result, verbose=True)


def test_mail_to_a_domain_no_destination_step_names_does_not_resolve() -> None:
    result = run_text(
        """
        [[step]]
        destination = { domain = "example.com", answer = "accept" }

        [[step]]
        inject = { count = 1, domain = "example.net" }

        [[step]]
        [step.expect]
        transient_failures = 1
        records = [{ type = "TransientFailure", count = 1, "response.code" = 451, site = "" }]
        """
    )
    assert result.passed, format_result(result, verbose=True)


def test_live_mail_steps_need_their_addresses(tmp_path: Path) -> None:
    scenario = parse_scenario(
        textwrap.dedent(
            """
            [config.queue]
            retry_interval = "30s"

            [[step]]
            destination = { domain = "example.com", answer = "accept" }

            [[step]]
            inject = { count = 1, domain = "example.com", via = "smtp" }
            """
        ),
        "live.toml",
    )
    with running_server(tmp_path / "data") as url:
        result = run_live(scenario, url, settle_timeout=1)
    destination, inject = result.steps
    assert [check.actual for check in destination.failures] == [
        "no smtp-sink for example.com (--sink example.com=IP:PORT, the address the "
        "server delivers it to)"
    ]
    assert [check.actual for check in inject.failures] == [
        "no SMTP listener given (--smtp IP:PORT)"
    ]
    assert result.notes[-1] == (
        "[config] applies in-process only: the server delivers as its own configuration says"
    )


LIVE_PILE = 500
"""The live pile-up's size: smtp-sink takes a few hundred refusals a second from kumo on
a loaded 2-CPU machine, and the run must stay well under 30 s."""


@pytest.mark.timeout(30)
def test_pile_up_against_kumo_serve_and_smtp_sink(tmp_path: Path) -> None:
    """The library's pile-up, live: kumo serve delivering example.com to an smtp-sink
    that the runner restarts for each destination step, SMTP traffic to kumo's
    listener; 500 messages instead of 10,000 (everything else as written)."""
    require_smtp_sink()
    path = LIBRARY / "pile_up.toml"
    text = path.read_text().replace("10_000", f"{LIVE_PILE}").replace("10_010", f"{LIVE_PILE + 10}")
    scenario = parse_scenario(text, str(path))
    sink_port = free_port()
    data = tmp_path / "data"
    config = (
        '[egress]\nprohibited_hosts = []\n[domains."example.com"]\n'
        f'mx_list = ["127.0.0.1:{sink_port}"]\n'
    )
    server = start_server(data, config=config, deliver=True)
    try:
        result = run_live(
            scenario,
            server.url,
            log_dir=data / "logs",
            smtp=("127.0.0.1", server.smtp_port),
            sinks={"example.com": ("127.0.0.1", sink_port)},
            settle_timeout=15,
        )
    finally:
        status = server.stop()
    assert result.passed, format_result(result, verbose=True)
    assert status == 0, server.stderr_text()
    records = read_records(data / "logs")
    assert Counter(str(r["type"]) for r in records) == Counter(
        {
            "Reception": LIVE_PILE + 110,
            "TransientFailure": LIVE_PILE,
            "AdminBounce": LIVE_PILE + 10,
            "Delivery": 100,
        }
    )
    delivered = next(r for r in records if r["type"] == "Delivery")
    assert delivered["site"] == f"unspecified->mx_list:127.0.0.1:{sink_port}@smtp_client"


def test_ready_queue_placeholders_are_filled_with_the_targets_names() -> None:
    names = {"example.com": "unspecified->mx_list:127.0.0.1:2600@smtp_client"}
    body = {
        "name": "{ready_queue:example.com}",
        "reason": "for {ready_queue:example.com} and {not a placeholder}",
        "nested": [{"q": "{ready_queue:EXAMPLE.COM}"}],
        "duration": 60,
    }
    filled = fill_ready_queues(body, lambda domain: names.get(domain.lower()))
    assert filled == {
        "name": names["example.com"],
        "reason": f"for {names['example.com']} and {{not a placeholder}}",
        "nested": [{"q": names["example.com"]}],
        "duration": 60,
    }
    with pytest.raises(KeyError, match=r"example\.org"):
        fill_ready_queues({"name": "{ready_queue:example.org}"}, names.get)


def test_a_ready_queue_placeholder_the_target_cannot_fill_fails_the_step(tmp_path: Path) -> None:
    scenario = parse_scenario(
        '[[step]]\nsuspend-ready-q = { name = "{ready_queue:example.com}", reason = "r" }\n',
        "placeholder.toml",
    )
    result = run_in_process(scenario, tmp_path / "data")
    assert not result.passed
    [step] = result.steps
    [check] = step.checks
    assert check.failed
    assert "cannot tell" in check.actual

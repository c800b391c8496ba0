"""The library's suspension, SMTP, rebind and incident-rehearsal scenarios, live:
``kumo serve`` delivering to Postfix's smtp-sink (which the runner starts for each
destination step), messages submitted to kumo's SMTP listener, records read from its
delivery log."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from kumo.scenario.format import parse_scenario
from kumo.scenario.report import format_result
from kumo.scenario.runner import ScenarioResult, run_live
from kumo.store.delivery_files import read_records
from kumo.store.verify import verify_data_dir
from tests.live_server import start_server
from tests.postfix import free_port, require_smtp_sink

LIBRARY = Path(__file__).resolve().parents[2] / "kumo" / "scenario" / "library"
DOMAINS = ("example.com", "example.net")


def run_against_kumo_serve(
    text: str, source: str, data: Path, domains: tuple[str, ...] = DOMAINS
) -> ScenarioResult:
    require_smtp_sink()
    scenario = parse_scenario(text, source)
    sinks = {domain: ("127.0.0.1", free_port()) for domain in domains}
    config = "[egress]\nprohibited_hosts = []\n" + "".join(
        f'[domains."{domain}"]\nmx_list = ["127.0.0.1:{port}"]\n'
        for domain, (_, port) in sinks.items()
    )
    server = start_server(data, config=config, deliver=True)
    try:
        result = run_live(
            scenario,
            server.url,
            log_dir=data / "logs",
            smtp=("127.0.0.1", server.smtp_port),
            sinks=sinks,
            settle_timeout=15,
        )
    finally:
        status = server.stop()
    assert status == 0, server.stderr_text()
    return result


@pytest.mark.timeout(90)
def test_smtp_in_live(tmp_path: Path) -> None:
    path = LIBRARY / "smtp_in.toml"
    data = tmp_path / "data"
    result = run_against_kumo_serve(path.read_text(), str(path), data)
    assert result.passed, format_result(result, verbose=True)
    types = Counter(str(r["type"]) for r in read_records(data / "logs"))
    assert types == Counter(
        {"Reception": 19, "TransientFailure": 10, "Delivery": 5, "AdminBounce": 14}
    )


@pytest.mark.timeout(90)
def test_suspend_live_with_shorter_waits(tmp_path: Path) -> None:
    """The library's suspend scenario with its waits cut to seconds (everything else as
    written): held in real time, lifted, expired, drained."""
    path = LIBRARY / "suspend.toml"
    text = (
        path.read_text()
        .replace('wait = "2m"', 'wait = "3s"')
        .replace('duration = "1m"', 'duration = "5s"')
        .replace('wait = "1m 10s"', 'wait = "8s"')
    )
    data = tmp_path / "data"
    result = run_against_kumo_serve(text, str(path), data)
    assert result.passed, format_result(result, verbose=True)
    records = read_records(data / "logs")
    held = [r for r in records if r["type"] == "TransientFailure"]
    assert len(held) == 23
    assert {(r["site"], r["num_attempts"]) for r in held} == {("example.com", 0)}
    delivered = [r for r in records if r["type"] == "Delivery"]
    assert len(delivered) == 28
    assert {r["num_attempts"] for r in delivered} == {0}


@pytest.mark.timeout(90)
def test_rebind_live(tmp_path: Path) -> None:
    path = LIBRARY / "rebind.toml"
    data = tmp_path / "data"
    result = run_against_kumo_serve(
        path.read_text(), str(path), data, ("example.com", "relay.example")
    )
    assert result.passed, format_result(result, verbose=True)
    records = read_records(data / "logs")
    assert Counter(str(r["type"]) for r in records) == Counter(
        {"Reception": 12, "TransientFailure": 12, "AdminRebind": 10, "Delivery": 10}
    )
    assert {r["queue"] for r in records if r["type"] == "Delivery"} == {"example.com!relay.example"}
    assert verify_data_dir(data).violations == []


@pytest.mark.timeout(120)
def test_incident_rehearsal_live(tmp_path: Path) -> None:
    """The rehearsal as written, in real time: every step's expectation met, and the
    log accounts for every message (delivered or bounced, none queued)."""
    path = LIBRARY / "incident_rehearsal.toml"
    data = tmp_path / "data"
    result = run_against_kumo_serve(
        path.read_text(), str(path), data, ("example.com", "relay.example")
    )
    assert result.passed, format_result(result, verbose=True)
    records = read_records(data / "logs")
    types = Counter(str(r["type"]) for r in records)
    assert types == Counter(
        {
            "Reception": 37,
            "Delivery": 17,
            "AdminBounce": 20,
            "AdminRebind": 12,
            "TransientFailure": 44,
        }
    )
    assert types["Reception"] == types["Delivery"] + types["AdminBounce"]
    assert verify_data_dir(data).violations == []


@pytest.mark.timeout(90)
def test_suspend_ready_q_live_with_a_shorter_wait(tmp_path: Path) -> None:
    """The library's ready-queue scenario (its wait cut to seconds): the step names the
    ready queue by its destination, and the runner fills in the name ``kumo serve``
    gives it (after the sink's address, the domain's ``mx_list``)."""
    path = LIBRARY / "suspend_ready_q.toml"
    text = path.read_text().replace('wait = "2m"', 'wait = "3s"')
    data = tmp_path / "data"
    result = run_against_kumo_serve(text, str(path), data)
    assert result.passed, format_result(result, verbose=True)
    records = read_records(data / "logs")
    held = [r for r in records if r["type"] == "TransientFailure"]
    assert len(held) == 10
    assert {(r["site"], r["num_attempts"]) for r in held} == {("", 0)}
    deliveries = [r for r in records if r["type"] == "Delivery"]
    assert len(deliveries) == 13
    sites = {str(r["site"]) for r in deliveries}
    assert all(site.startswith("unspecified->mx_list:127.0.0.1:") for site in sites)
    assert verify_data_dir(data).violations == []

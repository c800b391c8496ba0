"""The Prometheus text of /metrics."""

from __future__ import annotations

import dataclasses

import attrs

from kumo.http.metrics import escape_label_value, render_metrics


@attrs.frozen
class LogStats:
    commits: int
    healthy: bool


@attrs.frozen
class Stats:
    received_total: int
    bounced_total: int
    queues: int
    log: LogStats
    name: str


def test_label_escaping() -> None:
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert escape_label_value("camp:tenant@example.com!mx") == "camp:tenant@example.com!mx"


def test_page() -> None:
    page = render_metrics(
        {"example.com": 3, 'we"ird\\q\n': 1, "c:t@a.org": 2},
        Stats(received_total=10, bounced_total=4, queues=3, log=LogStats(7, True), name="x"),
    )
    assert page.endswith("\n")
    lines = page.splitlines()
    samples = [line for line in lines if not line.startswith("#")]
    assert samples == [
        'scheduled_count{queue="c:t@a.org"} 2',
        'scheduled_count{queue="example.com"} 3',
        'scheduled_count{queue="we\\"ird\\\\q\\n"} 1',
        "total_messages_received 10",
        "total_messages_bounced 4",
        "kumo_engine_queues 3",
        "kumo_engine_log_commits 7",
    ]
    assert "# TYPE scheduled_count gauge" in lines
    assert "# TYPE total_messages_received counter" in lines
    assert "# TYPE total_messages_bounced counter" in lines
    assert "# TYPE kumo_engine_queues untyped" in lines
    # Every sample's family is declared before it.
    for index, line in enumerate(lines):
        if not line.startswith("#"):
            family = line.split("{")[0].split(" ")[0]
            assert f"# TYPE {family} " in "\n".join(lines[:index])


def test_empty_engine_and_other_record_kinds() -> None:
    @dataclasses.dataclass
    class Plain:
        received_total: int = 0
        bounced_total: int = 0
        depth: float = 1.5

    page = render_metrics({}, Plain())
    samples = [line for line in page.splitlines() if not line.startswith("#")]
    assert samples == [
        "total_messages_received 0",
        "total_messages_bounced 0",
        "kumo_engine_depth 1.5",
    ]
    assert "scheduled_count{" not in render_metrics({}, object())

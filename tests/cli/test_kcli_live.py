"""kcli as a subprocess against a real ``kumo serve``: what it prints and how it exits.

A test that changes the server starts its own (a fraction of a second) on a free
loopback port with a temporary data directory, so that what ``queue-summary`` and
``bounce-list`` print is exactly what the test put there; the tests of refusals share
one server, which they must leave as they found it. kcli runs as
``python -m kumo.cli.kcli --endpoint URL ...``, as an operator would run it.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import pytest

from kumo.cli.kcli import BOUNCE_ASYNC_NOTE
from kumo.http.routes import BOUNCE_PATH, METRICS_PATH
from kumo.model.duration import NANOS_PER_HOUR, NANOS_PER_MINUTE, parse_duration
from kumo.model.events import BounceIssued
from kumo.model.prometheus_text import parse_scheduled_counts
from tests.live_server import (
    delivery_records,
    last_seq,
    logged_events,
    running_server,
    wait_until,
)

KCLI_TIMEOUT: Final = 60.0
SENDER: Final = "news@example.org"

# The environment of the machine running the tests must not send kcli elsewhere.
_PROXY_VARIABLES: Final = frozenset(
    {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "kumo_kcli_endpoint"}
)


@attrs.frozen
class Run:
    """What one kcli invocation did."""

    status: int
    stdout: str
    stderr: str


def kcli(endpoint: str, *args: str) -> Run:
    """Run ``kcli --endpoint endpoint args...`` and wait for it."""
    env = {key: value for key, value in os.environ.items() if key.lower() not in _PROXY_VARIABLES}
    completed = subprocess.run(
        [sys.executable, "-m", "kumo.cli.kcli", "--endpoint", endpoint, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=KCLI_TIMEOUT,
        check=False,
    )
    return Run(completed.returncode, completed.stdout, completed.stderr)


def live_rules(url: str) -> list[dict[str, Any]]:
    reply = httpx.get(url + BOUNCE_PATH)
    assert reply.status_code == 200, reply.text
    rules: list[dict[str, Any]] = reply.json()
    return rules


def scheduled_counts(url: str) -> dict[str, int]:
    """The ``scheduled_count`` gauges of /metrics, read without kcli."""
    reply = httpx.get(url + METRICS_PATH)
    assert reply.status_code == 200, reply.text
    return parse_scheduled_counts(reply.text)


def records_when(data: Path, *, count: int) -> list[dict[str, Any]] | None:
    """The delivery log's records once there are ``count`` of them."""
    records = delivery_records(data)
    return records if len(records) == count else None


def columns(header: str, names: list[str]) -> list[tuple[int, int | None]]:
    """The (start, end) of each column, from where its name starts in the header.

    A column ends one space before the next one starts; the last one runs to the end.
    """
    starts = [header.index(name) for name in names]
    assert starts == sorted(starts), header
    assert starts[0] == 0
    spans: list[tuple[int, int | None]] = [
        (start, following - 1) for start, following in itertools.pairwise(starts)
    ]
    return [*spans, (starts[-1], None)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A fresh ``kumo serve``: its base URL and its data directory."""
    data = tmp_path / "data"
    with running_server(data) as url:
        yield url, data


@pytest.fixture(scope="module")
def untouched_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One ``kumo serve`` shared by the tests of requests that must change nothing."""
    data = tmp_path_factory.mktemp("untouched") / "data"
    with running_server(data) as url:
        yield url, data


def test_inject_then_queue_summary(server: tuple[str, Path]) -> None:
    url, data = server
    run = kcli(
        url,
        "inject",
        "--from",
        SENDER,
        "--to",
        "b@gmail.com",
        "--to",
        "c@yahoo.com",
        "--campaign",
        "spring",
        "--count",
        "3",
    )
    assert run == Run(0, "injected 6 message(s)\n", "")
    run = kcli(url, "inject", "--from", SENDER, "--to", "x@Hotmail.com", "--tenant", "acme")
    assert run == Run(0, "injected 1 message(s)\n", "")
    # Over the 1,000 recipients of one request: kcli sends two, and sums their counts.
    run = kcli(
        url,
        "inject",
        "--from",
        SENDER,
        "--to",
        "d@example.com",
        "--routing-domain",
        "relay.example.net",
        "--count",
        "1200",
    )
    assert run == Run(0, "injected 1200 message(s)\n", "")

    assert scheduled_counts(url) == {
        "spring:@gmail.com": 3,
        "spring:@yahoo.com": 3,
        "acme@hotmail.com": 1,
        "example.com!relay.example.net": 1200,
    }
    # No ready queue (the server holds its mail); the scheduled ones by name, counts
    # right-aligned with separators, every line padded to the empty status column.
    assert kcli(url, "queue-summary") == Run(
        0,
        "SITE SOURCE PROTO D T C Q \n"
        "\n"
        "SCHEDULED QUEUE               COUNT \n"
        "acme@hotmail.com                  1 \n"
        "example.com!relay.example.net 1,200 \n"
        "spring:@gmail.com                 3 \n"
        "spring:@yahoo.com                 3 \n",
        "",
    )
    # Biggest queue first, then by name.
    assert kcli(url, "queue-summary", "--by-volume", "--limit", "3") == Run(
        0,
        "SITE SOURCE PROTO D T C Q \n"
        "\n"
        "SCHEDULED QUEUE               COUNT \n"
        "example.com!relay.example.net 1,200 \n"
        "spring:@gmail.com                 3 \n"
        "spring:@yahoo.com                 3 \n",
        "",
    )

    # Every message was received once, with the sender and recipient kcli gave.
    records = wait_until(lambda: records_when(data, count=1207))
    assert {record["type"] for record in records} == {"Reception"}
    assert {record["sender"] for record in records} == {SENDER}
    assert sorted({record["recipient"] for record in records}) == [
        "b@gmail.com",
        "c@yahoo.com",
        "d@example.com",
        "x@Hotmail.com",
    ]


def test_inject_reports_failed_recipients(server: tuple[str, Path]) -> None:
    url, _ = server
    run = kcli(url, "inject", "--from", SENDER, "--to", "no-domain", "--to", "ok@example.com")
    assert run == Run(
        1,
        "injected 1 message(s)\n",
        "failed 1 message(s)\n"
        "  no-domain: recipient address 'no-domain' has no '@' before a domain\n",
    )
    assert scheduled_counts(url) == {"example.com": 1}


def test_bounce_then_bounce_list(server: tuple[str, Path]) -> None:
    url, data = server
    run = kcli(
        url,
        "inject",
        "--from",
        SENDER,
        "--to",
        "x@hotmail.com",
        "--campaign",
        "bulk",
        "--tenant",
        "acme",
        "--count",
        "1200",
    )
    assert run == Run(0, "injected 1200 message(s)\n", "")
    run = kcli(url, "inject", "--from", SENDER, "--to", "b@gmail.com", "--to", "c@yahoo.com")
    assert run == Run(0, "injected 2 message(s)\n", "")

    bounce = kcli(
        url,
        "bounce",
        "--campaign",
        "bulk",
        "--tenant",
        "acme",
        "--domain",
        "hotmail.com",
        "--reason",
        "complaints from acme",
    )
    # The id alone on stdout (scripts capture it), the note on stderr.
    assert bounce.status == 0
    assert bounce.stderr == BOUNCE_ASYNC_NOTE + "\n"
    assert bounce.stderr == (
        "NOTE: the bounce is running async. Use the bounce-list command to review ongoing status!\n"
    )
    acme_id = bounce.stdout.removesuffix("\n")
    assert bounce.stdout == acme_id + "\n"
    assert uuid.UUID(acme_id).version == 4
    assert str(uuid.UUID(acme_id)) == acme_id

    bounce = kcli(
        url,
        "bounce",
        "--queue",
        "yahoo.com",
        "--queue",
        "gmail.com",
        "--reason",
        "webmail pause",
        "--duration",
        "1h",
    )
    assert bounce.status == 0
    queues_id = bounce.stdout.removesuffix("\n")
    assert uuid.UUID(queues_id).version == 4

    def swept() -> list[dict[str, Any]] | None:
        rules = live_rules(url)
        return rules if [rule["total_bounced"] for rule in rules] == [1200, 2] else None

    acme, queues = wait_until(swept)
    assert (acme["id"], queues["id"]) == (acme_id, queues_id)
    assert acme["bounced"] == {"bulk:acme@hotmail.com": 1200}
    assert queues["bounced"] == {"gmail.com": 1, "yahoo.com": 1}
    assert scheduled_counts(url) == {}

    # -- the table ----------------------------------------------------------------------
    listing = kcli(url, "bounce-list")
    assert listing.status == 0
    assert listing.stderr == ""
    header, *rows = listing.stdout.removesuffix("\n").split("\n")
    names = ["ID", "REASON", "REMAIN", "BOUNCED", "CRITERIA"]
    assert header.split() == names
    spans = columns(header, names)
    bounced_start, bounced_end = spans[3]
    assert header[bounced_start:bounced_end] == "BOUNCED"  # the widest cell of its column
    cells = [[row[start:end] for start, end in spans] for row in rows]
    for row in rows:
        for start, _ in spans[1:]:
            assert row[start - 1] == " ", f"columns not aligned:\n{listing.stdout}"
    assert len(cells) == 2
    acme_cells, queues_cells = cells

    assert acme_cells[0].rstrip() == acme_id
    assert acme_cells[1].rstrip() == "complaints from acme"
    assert 4 * NANOS_PER_MINUTE < parse_duration(acme_cells[2].strip()) <= 5 * NANOS_PER_MINUTE
    assert acme_cells[3] == "  1,200"
    assert acme_cells[4].rstrip() == "campaign=bulk, tenant=acme, domain=hotmail.com"

    assert queues_cells[0].rstrip() == queues_id
    assert queues_cells[1].rstrip() == "webmail pause"
    assert 59 * NANOS_PER_MINUTE < parse_duration(queues_cells[2].strip()) <= NANOS_PER_HOUR
    assert queues_cells[3] == "      2"
    # The server lists queue names sorted; kcli shows them as given.
    assert queues_cells[4].rstrip() == "queue=gmail.com, queue=yahoo.com"

    # -- --json: the GET array, pretty-printed with a two-space indent --------------------
    as_json = kcli(url, "bounce-list", "--json")
    assert as_json.status == 0
    assert as_json.stderr == ""
    printed = json.loads(as_json.stdout)
    assert as_json.stdout == json.dumps(printed, indent=2) + "\n"
    assert as_json.stdout.startswith('[\n  {\n    "id": ')
    served = live_rules(url)
    # `duration` is the remaining lifetime: it shrinks between the two reads.
    for entry in [*printed, *served]:
        assert parse_duration(entry.pop("duration")) > 4 * NANOS_PER_MINUTE
    assert printed == served
    assert [list(entry) for entry in printed] == [list(entry) for entry in served]

    # Both rules were issued by the loopback client kcli connected from.
    issued_by = {
        committed.event.rule_id: committed.event.issued_by
        for committed in logged_events(data)
        if isinstance(committed.event, BounceIssued)
    }
    assert issued_by == {acme_id: "127.0.0.1", queues_id: "127.0.0.1"}


@pytest.mark.parametrize(
    ("args", "error"),
    [
        pytest.param(
            ["--everything", "--domain", "example.com"],
            "Error: --everything cannot be combined with --domain: it matches every queue",
            id="everything-with-domain",
        ),
        pytest.param(
            [],
            "Error: No domain, routing_domain, campaign, tenant or queue was specified. "
            "Use --everything if you intend to purge all queues",
            id="no-selector",
        ),
    ],
)
def test_bounce_refusals_change_nothing(
    untouched_server: tuple[str, Path], args: list[str], error: str
) -> None:
    url, data = untouched_server
    before = last_seq(data)
    run = kcli(url, "bounce", *args, "--reason", "oops")
    assert run.status != 0
    assert run.stdout == ""
    assert run.stderr.endswith("\n" + error + "\n")
    assert "Traceback" not in run.stderr
    assert live_rules(url) == []
    assert last_seq(data) == before


def test_server_refusal_is_reported_with_its_status(
    untouched_server: tuple[str, Path],
) -> None:
    url, data = untouched_server
    before = last_seq(data)
    run = kcli(url, "bounce", "--domain", "example.com", "--reason", "r", "--duration", "5")
    assert run == Run(
        1,
        "",
        "request status 422: Unprocessable Entity. Response body: Failed to deserialize the"
        " JSON body into the target type: duration: time unit needed, for example 5sec or 5ms\n",
    )
    assert live_rules(url) == []
    assert last_seq(data) == before


def test_bounce_cancel_then_cancel_again(server: tuple[str, Path]) -> None:
    url, _ = server
    posted = httpx.post(url + BOUNCE_PATH, json={"domain": "example.com", "reason": "r"})
    assert posted.status_code == 200, posted.text
    rule_id = posted.json()["id"]

    assert kcli(url, "bounce-cancel", "--id", rule_id) == Run(0, f"removed {rule_id}\n", "")
    assert live_rules(url) == []
    assert kcli(url, "bounce-cancel", "--id", rule_id) == Run(
        1,
        "",
        f"request status 404: Not Found. Response body: bounce entry {rule_id} not found\n",
    )


def test_unreachable_server_is_one_clean_line() -> None:
    # A socket bound but not listening: connections to its port are refused, and no
    # other process can take the port while the test runs.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        run = kcli(endpoint, "bounce-list")
    assert run.status == 1
    assert run.stdout == ""
    assert run.stderr.startswith(f"cannot connect to {endpoint}: ")
    assert run.stderr.endswith("\n")
    assert run.stderr.count("\n") == 1


def test_inspect_sched_q_then_inspect_message(server: tuple[str, Path]) -> None:
    url, data = server
    run = kcli(
        url,
        "inject",
        "--from",
        SENDER,
        "--to",
        "a@example.com",
        "--campaign",
        "spring",
        "--count",
        "7",
    )
    assert run == Run(0, "injected 7 message(s)\n", "")
    records = wait_until(lambda: records_when(data, count=7))

    # Five messages by default, the oldest first; printed as pretty JSON.
    run = kcli(url, "inspect-sched-q", "spring:@example.com")
    assert (run.status, run.stderr) == (0, "")
    queue = json.loads(run.stdout)
    assert run.stdout == json.dumps(queue, indent=2, ensure_ascii=False) + "\n"
    assert [m["id"] for m in queue["messages"]] == [r["id"] for r in records[:5]]
    assert queue["num_scheduled"] == 7
    assert queue["messages"][0]["message"]["meta"] == {"campaign": "spring"}
    assert queue["messages"][0]["message"]["data"] is None
    everything = json.loads(
        kcli(url, "inspect-sched-q", "--no-limit", "spring:@example.com").stdout
    )
    assert len(everything["messages"]) == 7

    # One message, with its content, by its id in a UUID spelling.
    message_id = records[6]["id"]
    hyphenated = str(uuid.UUID(message_id))
    run = kcli(url, "inspect-message", "--want-body", hyphenated)
    assert run.status == 0, run.stderr
    message = json.loads(run.stdout)
    assert message["id"] == message_id
    assert message["message"]["recipient"] == "a@example.com"
    assert "This is a test message injected by kcli." in message["message"]["data"]

    # What the server does not hold: its 404, as KumoMTA's kcli prints a refusal.
    run = kcli(url, "inspect-message", "0" * 32)
    assert run == Run(
        1, "", f"request status 404: Not Found. Response body: Error: no such message {'0' * 32}\n"
    )
    run = kcli(url, "inspect-sched-q", "nowhere.example")
    assert run == Run(
        1,
        "",
        "request status 404: Not Found. Response body: Error: no such queue nowhere.example\n",
    )


def test_suspend_list_and_cancel(server: tuple[str, Path]) -> None:
    url, _ = server
    run = kcli(url, "suspend", "--domain", "example.com", "--reason", "maintenance")
    assert run.status == 0, run.stderr
    suspension = json.loads(run.stdout)["id"]
    assert run.stdout == f'{{\n  "id": "{suspension}"\n}}\n'
    listed = kcli(url, "suspend-list")
    [entry] = json.loads(listed.stdout)
    assert (entry["id"], entry["domain"], entry["reason"]) == (
        suspension,
        "example.com",
        "maintenance",
    )
    assert kcli(url, "suspend-cancel", "--id", suspension) == Run(0, f"removed {suspension}\n", "")
    assert json.loads(kcli(url, "suspend-list").stdout) == []
    assert kcli(url, "suspend-cancel", "--id", suspension) == Run(
        1,
        "",
        f"request status 404: Not Found. Response body: suspend entry {suspension} not found\n",
    )


def test_suspend_ready_q_list_and_cancel(server: tuple[str, Path]) -> None:
    url, _ = server
    name = "unspecified->mx.example.com@smtp_client"
    run = kcli(url, "suspend-ready-q", "--name", name, "--reason", "maintenance")
    assert run.status == 0, run.stderr
    suspension = json.loads(run.stdout)["id"]
    assert run.stdout == f'{{\n  "id": "{suspension}"\n}}\n'
    [entry] = json.loads(kcli(url, "suspend-ready-q-list").stdout)
    assert (entry["id"], entry["name"], entry["reason"]) == (suspension, name, "maintenance")
    assert entry["duration"].startswith("4m ")  # of the default 5m, some spent
    assert kcli(url, "suspend-ready-q-cancel", "--id", suspension) == Run(
        0, f"removed {suspension}\n", ""
    )
    assert json.loads(kcli(url, "suspend-ready-q-list").stdout) == []
    assert kcli(url, "suspend-ready-q-cancel", "--id", suspension) == Run(
        1,
        "",
        "request status 404: Not Found. Response body: "
        f"suspend-ready-q entry {suspension} not found\n",
    )


def test_suspend_needs_a_selection() -> None:
    run = kcli("http://127.0.0.1:1", "suspend", "--reason", "r")
    assert run.status == 2
    assert (
        "No domain, campaign or tenant was specified. Use --everything if you intend to "
        "suspend all queues" in run.stderr
    )

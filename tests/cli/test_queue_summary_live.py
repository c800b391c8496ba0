"""The mail path's metrics and ``kcli queue-summary`` against a real ``kumo serve`` that
delivers to Postfix's smtp-sink: messages in over HTTP and SMTP, out to the sink (or
refused by it), and what /metrics, /metrics.json and queue-summary then show."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import httpx
import orjson

from kumo.http.routes import METRICS_JSON_PATH, METRICS_PATH
from kumo.model.prometheus_text import parse_samples
from kumo.model.rfc3339 import parse_rfc3339
from tests.cli.test_kcli_live import SENDER, Run, kcli
from tests.live_server import ServerProcess, start_server, wait_until
from tests.postfix import require_smtp_sink, running_smtp_sink

MESSAGES: Final = 4
SERVICES: Final = (
    "ready_count",
    "connection_count",
    "total_messages_delivered",
    "total_messages_transfail",
    "total_messages_fail",
)


def config(sink_port: int) -> str:
    return f"""
[domains."example.com"]
mx_list = ["127.0.0.1:{sink_port}"]

[egress]
prohibited_hosts = []
enable_tls = "Disabled"
idle_timeout = "1s"
"""


@contextmanager
def delivering(tmp_path: Path, *sink_options: str) -> Iterator[tuple[ServerProcess, int]]:
    """A ``kumo serve`` that delivers example.com's mail to an smtp-sink started with
    ``sink_options``: the server and the sink's port. The server must stop cleanly."""
    require_smtp_sink()
    with running_smtp_sink(*sink_options) as (port, _):
        server = start_server(tmp_path / "data", config=config(port), deliver=True)
        try:
            yield server, port
        finally:
            status = server.stop()
        assert status == 0, server.stderr_text()


def metrics(server: ServerProcess) -> dict[tuple[str, str | None], int]:
    """(name, the sample's one label value or None) -> value, of the KumoMTA families."""
    reply = httpx.get(server.url + METRICS_PATH)
    assert reply.status_code == 200, reply.text
    return {
        (sample.name, next(iter(sample.labels.values()), None)): int(sample.value)
        for sample in parse_samples(reply.text)
        if not sample.name.startswith("kumo_")
    }


def settled(server: ServerProcess, family: str, count: int) -> dict[tuple[str, str | None], int]:
    """The metrics once ``family``'s global smtp_client row is ``count`` and every
    connection has closed (``idle_timeout`` after its last message)."""

    def probe() -> dict[tuple[str, str | None], int] | None:
        seen = metrics(server)
        done = seen.get((family, "smtp_client")) == count
        return seen if done and seen.get(("connection_count", "smtp_client")) == 0 else None

    return wait_until(probe, timeout=30)


def inject(server: ServerProcess, count: int) -> None:
    run = kcli(
        server.url, "inject", "--from", SENDER, "--to", "r@example.com", "--count", str(count)
    )
    assert run == Run(0, f"injected {count} message(s)\n", "")


def ready_table(site: str, figures: str) -> str:
    """The ready table of one ``unspecified-><site>@smtp_client`` queue whose D T C Q
    are one digit each."""
    padding = " " * (len(site) - len("SITE"))
    return (
        f"SITE{padding} SOURCE      PROTO       D T C Q \n"
        f"{site} unspecified smtp_client {figures} \n"
    )


def test_delivered_mail_in_the_metrics_and_the_summary(tmp_path: Path) -> None:
    with delivering(tmp_path) as (server, port):
        check_delivered(server, port)


def check_delivered(server: ServerProcess, port: int) -> None:
    inject(server, MESSAGES)
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as client:
        client.sendmail(SENDER, ["smtp@example.com"], b"Subject: by smtp\r\n\r\nhello\r\n")

    seen = settled(server, "total_messages_delivered", MESSAGES + 1)
    ready_queue = f"smtp_client:unspecified->mx_list:127.0.0.1:{port}@smtp_client"
    assert {key: value for key, value in seen.items() if key[0] in SERVICES} == {
        ("ready_count", "smtp_client"): 0,
        ("ready_count", ready_queue): 0,
        ("connection_count", "smtp_client"): 0,
        ("connection_count", "esmtp_listener"): 0,
        ("connection_count", ready_queue): 0,
        ("total_messages_delivered", "smtp_client"): MESSAGES + 1,
        ("total_messages_delivered", ready_queue): MESSAGES + 1,
        ("total_messages_transfail", "smtp_client"): 0,
        ("total_messages_transfail", ready_queue): 0,
        ("total_messages_fail", "smtp_client"): 0,
        ("total_messages_fail", ready_queue): 0,
    }
    received = {key: value for key, value in seen.items() if key[0] == "total_messages_received"}
    assert received == {
        ("total_messages_received", None): MESSAGES + 1,
        ("total_messages_received", "esmtp_listener"): 1,
        ("total_messages_received", f"esmtp_listener:{server.smtp}"): 1,
        ("total_messages_received", "http_listener"): MESSAGES,
    }
    # Nothing waits: the scheduled queue emptied.
    assert not any(name == "scheduled_count" for name, _ in seen)

    assert kcli(server.url, "queue-summary") == Run(
        0,
        ready_table(f"mx_list:127.0.0.1:{port}", "5 0 0 0") + "\n" + "SCHEDULED QUEUE COUNT \n",
        "",
    )

    document = orjson.loads(httpx.get(server.url + METRICS_JSON_PATH).content)
    assert document["total_messages_delivered"] == {
        "help": "total number of messages ever delivered",
        "type": "counter",
        "value": {"service": {"smtp_client": MESSAGES + 1, ready_queue: MESSAGES + 1}},
    }
    assert document["total_messages_received"]["value"]["service"]["http_listener"] == MESSAGES


def test_deferred_mail_waits_in_its_scheduled_queue(tmp_path: Path) -> None:
    with delivering(tmp_path, "-r", "rcpt") as (server, port):
        check_deferred(server, port)


def check_deferred(server: ServerProcess, port: int) -> None:
    inject(server, MESSAGES)

    seen = settled(server, "total_messages_transfail", MESSAGES)
    ready_queue = f"smtp_client:unspecified->mx_list:127.0.0.1:{port}@smtp_client"
    # Each was refused once (4xx at RCPT) and waits 20 minutes in its scheduled queue.
    assert seen[("scheduled_count", "example.com")] == MESSAGES
    assert seen[("total_messages_transfail", ready_queue)] == MESSAGES
    assert seen[("total_messages_delivered", ready_queue)] == 0
    assert seen[("total_messages_fail", ready_queue)] == 0
    assert seen[("ready_count", ready_queue)] == 0

    site = f"mx_list:127.0.0.1:{port}"
    assert kcli(server.url, "queue-summary") == Run(
        0,
        ready_table(site, "0 4 0 0") + "\n" + "SCHEDULED QUEUE COUNT \nexample.com         4 \n",
        "",
    )

    # Inspection shows each refused message waiting for its retry, one attempt made,
    # due after the refusal; inspect-message finds it by id, with its content.
    inspected = kcli(server.url, "inspect-sched-q", "--no-limit", "example.com")
    assert (inspected.status, inspected.stderr) == (0, "")
    queue = orjson.loads(inspected.stdout)
    assert queue["num_scheduled"] == MESSAGES
    assert [m["message"]["num_attempts"] for m in queue["messages"]] == [1] * MESSAGES
    changed = parse_rfc3339(queue["last_changed"])
    assert all(parse_rfc3339(m["message"]["due"]) > changed for m in queue["messages"])
    first = queue["messages"][0]["id"]
    found = kcli(server.url, "inspect-message", "--want-body", first)
    assert found.status == 0, found.stderr
    message = orjson.loads(found.stdout)
    assert (message["id"], message["message"]["recipient"]) == (first, "r@example.com")
    assert "num_attempts" not in message["message"]

    # A rule for a routing domain sweeps nothing here, but KumoMTA's kcli matches on
    # campaign, tenant and domain only: it marks the queue.
    bounce = kcli(
        server.url, "bounce", "--routing-domain", "relay.example", "--reason", "relay down"
    )
    assert bounce.status == 0, bounce
    marked = kcli(server.url, "queue-summary", "--by-volume")
    assert marked == Run(
        0,
        ready_table(site, "0 4 0 0")
        + "\n"
        # The status column is as wide as the marker: 2 cells for 🗑️, 19 for the rest.
        + ("SCHEDULED QUEUE COUNT " + " " * 21 + "\n")
        + "example.com         4 🗑\ufe0f bounce: relay down\n",
        "",
    )
    assert metrics(server)[("scheduled_count", "example.com")] == MESSAGES

"""Issue 13, wire compatibility: every record of a message says how it came in, as
KumoMTA's do (it keeps ``reception_protocol`` in the message's meta). A real ``kumo
serve`` takes mail over SMTP (smtplib) and over HTTP (``kcli inject``), delivers it to
Postfix's smtp-sink, or has it deferred by ``smtp-sink -r rcpt``, restarts (the queues
come back from the log), and bounces the deferred mail by a rule."""

from __future__ import annotations

import smtplib
from collections import defaultdict
from pathlib import Path

from kumo.store.verify import verify_data_dir
from tests.cli.test_kcli_live import SENDER, Run, kcli
from tests.cli.test_queue_summary_live import metrics
from tests.live_server import ServerProcess, delivery_records, start_server, wait_until
from tests.postfix import require_smtp_sink, running_smtp_sink

MESSAGE = b"From: news@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


def config(accepting: int, refusing: int) -> str:
    return f"""
[domains."accept.example"]
mx_list = ["127.0.0.1:{accepting}"]

[domains."defer.example"]
mx_list = ["127.0.0.1:{refusing}"]

[egress]
prohibited_hosts = []
enable_tls = "Disabled"
idle_timeout = "1s"
"""


def counted(server: ServerProcess, family: str) -> int:
    return metrics(server).get((family, "smtp_client"), 0)


def send_over_smtp(server: ServerProcess, *recipients: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.smtp_port, local_hostname="client.example") as smtp:
        assert smtp.sendmail(SENDER, list(recipients), MESSAGE) == {}


def test_every_record_of_a_message_says_how_it_came_in(tmp_path: Path) -> None:
    require_smtp_sink()
    data_dir = tmp_path / "data"
    with (
        running_smtp_sink() as (accepting, dumps),
        running_smtp_sink("-r", "rcpt") as (refusing, _),
    ):
        settings = config(accepting, refusing)
        server = start_server(data_dir, config=settings, deliver=True)
        try:
            send_over_smtp(server, "smtp@accept.example", "smtp@defer.example")
            for recipient in ("http@accept.example", "http@defer.example"):
                run = kcli(server.url, "inject", "--from", SENDER, "--to", recipient)
                assert run == Run(0, "injected 1 message(s)\n", "")
            wait_until(
                lambda: (
                    (
                        counted(server, "total_messages_delivered") == 2
                        and counted(server, "total_messages_transfail") == 2
                    )
                    or None
                ),
                timeout=30,
            )
        finally:
            status = server.stop()
        assert status == 0, server.stderr_text()
        # The deferred ones come back from the log (the replay, or a snapshot of it).
        server = start_server(data_dir, config=settings, deliver=True)
        try:
            bounce = kcli(
                server.url, "bounce", "--domain", "defer.example", "--reason", "refuses us"
            )
            assert bounce.status == 0, bounce.stderr
            wait_until(
                lambda: (
                    sum(r["type"] == "AdminBounce" for r in delivery_records(data_dir)) == 2 or None
                ),
                timeout=30,
            )
        finally:
            status = server.stop()
        assert status == 0, server.stderr_text()
        assert len(list(dumps.iterdir())) == 2

    records = delivery_records(data_dir)
    told: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for record in records:
        told[record["recipient"]].append((record["type"], record["reception_protocol"]))
    assert dict(told) == {
        "smtp@accept.example": [("Reception", "ESMTP"), ("Delivery", "ESMTP")],
        "smtp@defer.example": [
            ("Reception", "ESMTP"),
            ("TransientFailure", "ESMTP"),
            ("AdminBounce", "ESMTP"),
        ],
        "http@accept.example": [("Reception", "HTTP"), ("Delivery", "HTTP")],
        "http@defer.example": [
            ("Reception", "HTTP"),
            ("TransientFailure", "HTTP"),
            ("AdminBounce", "HTTP"),
        ],
    }
    report = verify_data_dir(data_dir)
    assert report.ok, report.violations

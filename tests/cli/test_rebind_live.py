"""``kcli rebind`` against a real ``kumo serve`` delivering to Postfix's smtp-sink: mail
piles up for a destination that answers 4xx, a rebind moves it to a routing domain
whose destination (a second, accepting smtp-sink) takes it, and the delivery log, the
counters and ``kumo replay --verify`` agree."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from kumo.cli.kcli import REBIND_ASYNC_NOTE, REBIND_DRY_RUN_NOTE
from kumo.store.verify import verify_data_dir
from tests.cli.test_kcli_live import SENDER, Run, kcli
from tests.cli.test_queue_summary_live import metrics
from tests.live_server import ServerProcess, delivery_records, start_server, wait_until
from tests.postfix import require_smtp_sink, running_smtp_sink

MESSAGES = 5


def config(refusing: int, accepting: int) -> str:
    return f"""
[domains."example.com"]
mx_list = ["127.0.0.1:{refusing}"]

[domains."relay.example"]
mx_list = ["127.0.0.1:{accepting}"]

[egress]
prohibited_hosts = []
enable_tls = "Disabled"
idle_timeout = "1s"
"""


def counted(server: ServerProcess, family: str) -> int:
    return metrics(server).get((family, "smtp_client"), 0)


def test_kcli_rebind_moves_deferred_mail_to_a_destination_that_accepts_it(
    tmp_path: Path,
) -> None:
    require_smtp_sink()
    data_dir = tmp_path / "data"
    with (
        running_smtp_sink("-r", "rcpt") as (refusing, _),
        running_smtp_sink() as (accepting, dumps),
    ):
        server = start_server(data_dir, config=config(refusing, accepting), deliver=True)
        try:
            run = kcli(
                server.url,
                "inject",
                "--from",
                SENDER,
                "--to",
                "r@example.com",
                "--count",
                str(MESSAGES),
            )
            assert run == Run(0, f"injected {MESSAGES} message(s)\n", "")
            wait_until(
                lambda: counted(server, "total_messages_transfail") == MESSAGES or None,
                timeout=30,
            )
            # A dry run first: it says where the mail would go, and moves nothing.
            dry = kcli(
                server.url,
                "rebind",
                "--domain",
                "example.com",
                "--set",
                "routing_domain=relay.example",
                "--reason",
                "destination refuses",
                "--dry-run",
            )
            assert dry == Run(
                0,
                "QUEUE       MESSAGES MOVES TO                 \n"
                f"example.com        {MESSAGES} example.com!relay.example\n"
                f"total: {MESSAGES} message(s) in 1 queue(s), {MESSAGES} moving\n",
                REBIND_DRY_RUN_NOTE + "\n",
            )
            assert metrics(server).get(("scheduled_count", "example.com")) == MESSAGES
            run = kcli(
                server.url,
                "rebind",
                "--domain",
                "example.com",
                "--set",
                "routing_domain=relay.example",
                "--reason",
                "destination refuses",
            )
            assert run == Run(0, "{}\n", REBIND_ASYNC_NOTE + "\n")
            wait_until(
                lambda: counted(server, "total_messages_delivered") == MESSAGES or None,
                timeout=30,
            )
            refused = kcli(
                server.url, "rebind", "--everything", "--set", "colour=red", "--reason", "r"
            )
            assert refused.status == 1
            assert "kumo cannot rebind `colour`" in refused.stderr
        finally:
            status = server.stop()
        assert status == 0, server.stderr_text()
        assert len(list(dumps.iterdir())) == MESSAGES
    records = delivery_records(data_dir)
    assert Counter(r["type"] for r in records) == Counter(
        {"Reception": 5, "TransientFailure": 5, "AdminRebind": 5, "Delivery": 5}
    )
    rebound = [r for r in records if r["type"] == "AdminRebind"]
    assert {r["queue"] for r in rebound} == {"example.com!relay.example"}
    assert {json.dumps(r["response"], sort_keys=True) for r in rebound} == {
        json.dumps(
            {
                "code": 250,
                "command": None,
                "content": "Rebound from example.com to example.com!relay.example: "
                "destination refuses",
                "enhanced_code": None,
            },
            sort_keys=True,
        )
    }
    assert verify_data_dir(data_dir).violations == []


def test_rebind_needs_a_selection() -> None:
    run = kcli("http://127.0.0.1:1", "rebind", "--reason", "r")
    assert run.status == 2
    assert (
        "No domain, routing_domain, campaign or tenant was specified. Use --everything if "
        "you intend to rebind all queues" in run.stderr
    )
    run = kcli("http://127.0.0.1:1", "rebind", "--everything", "--reason", "r", "--set", "x")
    assert run.status == 2
    assert "'x' is not KEY=VALUE" in run.stderr

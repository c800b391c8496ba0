"""Inspection against a real ``kumo serve``: messages received over HTTP and SMTP, found
by id and by queue, with the settings of the config file, gone once bounced, found again
after a restart."""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

import httpx

from kumo.http.errors import QUERY_PREFIX
from kumo.http.routes import BOUNCE_PATH, INSPECT_MESSAGE_PATH, INSPECT_QUEUE_PATH
from kumo.model.rfc3339 import parse_rfc3339
from tests.http.test_live import inject
from tests.live_server import delivery_records, start_server, wait_until

CONFIG = """
[queue]
retry_interval = "5m"
max_age = "2days"

[domains."example.com"]
mx_list = ["mx.example.net"]
"""
SPRING = "spring:acme@example.com"
CONTENT = "Subject: live\r\n\r\nhello from the test\r\n"


def inspect_message(url: str, message_id: str, **params: str) -> httpx.Response:
    return httpx.get(url + INSPECT_MESSAGE_PATH, params={"id": message_id, **params})


def inspect_queue(url: str, queue: str, **params: str) -> httpx.Response:
    return httpx.get(url + INSPECT_QUEUE_PATH, params={"queue_name": queue, **params})


def receptions(data: Path, count: int) -> list[dict[str, Any]] | None:
    records = [r for r in delivery_records(data) if r["type"] == "Reception"]
    return records if len(records) == count else None


def test_inspect_what_a_live_server_holds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, config=CONFIG)
    try:
        url = server.url
        metadata = {"campaign": "spring", "tenant": "acme"}
        inject(url, *[{"email": f"u{n}@example.com", "metadata": metadata} for n in range(3)])
        inject(url, {"email": "v@other.example"}, content=CONTENT)
        with smtplib.SMTP("127.0.0.1", server.smtp_port, local_hostname="client.example") as smtp:
            smtp.sendmail("smtp@example.org", ["w@smtp.example"], "Subject: by smtp\r\n\r\nhi\r\n")
        records = wait_until(lambda: receptions(data, 5))
        ids = {r["recipient"]: r["id"] for r in records}

        # A message by its id, without and with its content.
        reply = inspect_message(url, ids["v@other.example"])
        assert (reply.status_code, reply.headers["content-type"]) == (200, "application/json")
        assert reply.json() == {
            "id": ids["v@other.example"],
            "message": {
                "sender": "sender@example.net",
                "recipient": "v@other.example",
                "meta": {},
                "data": None,
            },
        }
        body = inspect_message(url, ids["v@other.example"], want_body="true").json()
        assert body["message"]["data"].endswith(CONTENT)
        smtp_body = inspect_message(url, ids["w@smtp.example"].upper(), want_body="true").json()
        assert smtp_body["id"] == ids["w@smtp.example"]
        assert smtp_body["message"]["data"].startswith("Received: from client.example")
        assert smtp_body["message"]["data"].endswith("Subject: by smtp\r\n\r\nhi\r\n")

        # A queue, its first two messages, its settings from the config file.
        reply = inspect_queue(url, SPRING, limit="2")
        assert reply.status_code == 200
        queue = reply.json()
        assert [m["message"]["recipient"] for m in queue["messages"]] == [
            "u0@example.com",
            "u1@example.com",
        ]
        first = queue["messages"][0]
        assert first["id"] == ids["u0@example.com"]
        assert first["message"]["meta"] == {"campaign": "spring", "tenant": "acme"}
        assert first["message"]["data"] is None
        assert first["message"]["num_attempts"] == 0
        created = {r["id"]: r["created_time"] for r in records}
        assert first["message"]["due"] == created[first["id"]]
        assert (queue["num_scheduled"], queue["delayed_metric"]) == (3, 3)
        assert queue["queue_config"]["retry_interval"] == "5m"
        assert queue["queue_config"]["max_age"] == "2days"
        assert queue["queue_config"]["protocol"] == {"smtp": {"mx_list": ["mx.example.net"]}}
        assert queue["last_changed"] == created[ids["u2@example.com"]]
        assert parse_rfc3339(queue["last_changed"]) <= parse_rfc3339(queue["now"])
        other = inspect_queue(url, "other.example").json()
        assert other["queue_config"]["protocol"] == {"smtp": {"mx_list": []}}

        # What kumo does not hold, and queries that do not fit.
        missing = inspect_message(url, "0" * 32)
        assert (missing.status_code, missing.text) == (404, f"Error: no such message {'0' * 32}")
        unknown = inspect_queue(url, "nowhere.example")
        assert (unknown.status_code, unknown.text) == (404, "Error: no such queue nowhere.example")
        bad = httpx.get(url + INSPECT_QUEUE_PATH, params={"queue_name": SPRING, "limit": "-1"})
        assert (bad.status_code, bad.text) == (
            400,
            QUERY_PREFIX + "limit: invalid digit found in string",
        )

        # Bounced: the messages are gone, the queue is known and empty.
        rule = httpx.post(url + BOUNCE_PATH, json={"campaign": "spring", "reason": "gone"})
        assert rule.status_code == 200, rule.text
        wait_until(lambda: inspect_queue(url, SPRING).json()["num_scheduled"] == 0)
        assert inspect_message(url, ids["u1@example.com"]).status_code == 404
        assert inspect_queue(url, SPRING).json()["messages"] == []
    finally:
        assert server.stop() == 0, server.stderr_text()

    server = start_server(data, config=CONFIG)
    try:
        url = server.url
        # After a restart: what is still queued is found, with its content.
        again = inspect_message(url, ids["w@smtp.example"], want_body="true").json()
        assert again == smtp_body
        assert inspect_queue(url, "other.example").json()["num_scheduled"] == 1
        # The swept queue held nothing at the restart: kumo no longer knows it.
        assert inspect_queue(url, SPRING).status_code == 404
    finally:
        assert server.stop() == 0, server.stderr_text()

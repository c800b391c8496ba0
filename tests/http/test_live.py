"""End to end against a real ``kumo serve``: inject, bounce, read back, restart.

Each test starts the server as a subprocess on a free loopback port with its own data
directory, talks to it over HTTP only, and reads the delivery log files it writes.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kumo.http.errors import (
    BODY_TOO_LARGE,
    JSON_SHAPE_PREFIX,
    JSON_SYNTAX_PREFIX,
    UNSUPPORTED_MEDIA_TYPE,
)
from kumo.http.routes import BOUNCE_PATH, INJECT_PATH, LIVENESS_PATH, METRICS_PATH
from kumo.model.prometheus_text import parse_samples, parse_scheduled_counts
from tests.live_server import (
    delivery_records,
    logged_events,
    running_server,
    start_server,
    wait_until,
)

JSON = {"Content-Type": "application/json"}


def inject(url: str, *recipients: dict[str, Any], content: Any = None) -> dict[str, Any]:
    body = {
        "envelope_sender": "sender@example.net",
        "recipients": list(recipients),
        "content": content or "Subject: test\r\n\r\nhello\r\n",
    }
    reply = httpx.post(url + INJECT_PATH, json=body)
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def rules(url: str) -> list[dict[str, Any]]:
    reply = httpx.get(url + BOUNCE_PATH)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    listed: list[dict[str, Any]] = reply.json()
    return listed


def metrics(url: str) -> dict[str, float]:
    """The unlabelled samples of /metrics, by name."""
    reply = httpx.get(url + METRICS_PATH)
    assert reply.status_code == 200, reply.text
    return {sample.name: sample.value for sample in parse_samples(reply.text) if not sample.labels}


def scheduled(url: str) -> dict[str, int]:
    reply = httpx.get(url + METRICS_PATH)
    assert reply.status_code == 200, reply.text
    return parse_scheduled_counts(reply.text)


def records_when(data: Path, *, count: int) -> list[dict[str, Any]] | None:
    """The delivery log's records once there are ``count`` of them."""
    records = delivery_records(data)
    return records if len(records) == count else None


def test_inject_bounce_read_back_and_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server(data) as url:
        result = inject(
            url,
            {"email": "a@Example.com", "metadata": {"campaign": "spring"}},
            {"email": "b@example.com", "metadata": {"campaign": "spring"}},
            {"email": "c@example.com", "metadata": {"campaign": "spring", "tenant": "acme"}},
            {"email": "d@other.org"},
            {"email": "e@other.org"},
            {"email": "not-an-address"},
        )
        assert result == {
            "success_count": 5,
            "fail_count": 1,
            "failed_recipients": ["not-an-address"],
            "errors": [
                "not-an-address: recipient address 'not-an-address' has no '@' before a domain"
            ],
        }
        assert scheduled(url) == {
            "spring:@example.com": 2,
            "spring:acme@example.com": 1,
            "other.org": 2,
        }
        assert metrics(url)["total_messages_received"] == 5

        reply = httpx.post(
            url + BOUNCE_PATH,
            json={"domain": "example.com", "reason": "going\r\naway", "duration": "1h"},
        )
        assert reply.status_code == 200
        posted = reply.json()
        assert posted == {"id": posted["id"], "bounced": {}, "total_bounced": 0}
        rule_id = posted["id"]
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", rule_id
        )

        [rule] = wait_until(lambda: [r for r in rules(url) if r["total_bounced"] == 3])
        assert rule["id"] == rule_id
        assert rule["bounced"] == {"spring:@example.com": 2, "spring:acme@example.com": 1}
        assert (rule["campaign"], rule["tenant"], rule["routing_domain"]) == (None, None, None)
        assert rule["domain"] == "example.com"
        assert rule["reason"] == "going\r\naway"
        assert re.fullmatch(r"59m( \d+s)?( \d+ms)?( \d+us)?( \d+ns)?", rule["duration"])
        assert rule["issued_by"] == "127.0.0.1"
        assert rule["queue_names"] == []
        assert rule["suppress_logging"] is False
        assert scheduled(url) == {"other.org": 2}
        assert metrics(url)["total_messages_bounced"] == 3

        # An arrival while the rule is live is received, then bounced.
        assert inject(url, {"email": "late@example.com"})["success_count"] == 1
        wait_until(lambda: rules(url)[0]["total_bounced"] == 4)
        assert rules(url)[0]["bounced"]["example.com"] == 1

        records = wait_until(lambda: records_when(data, count=6 + 4))
    kinds = [record["type"] for record in records]
    assert kinds.count("Reception") == 6
    assert kinds.count("AdminBounce") == 4
    bounces = [record for record in records if record["type"] == "AdminBounce"]
    assert {record["recipient"] for record in bounces} == {
        "a@Example.com",
        "b@example.com",
        "c@example.com",
        "late@example.com",
    }
    for record in bounces:
        assert re.fullmatch(r"[0-9a-f]{32}", record["id"])
        assert record["response"]["code"] == 551
        assert record["response"]["content"] == "Administrator bounced with reason: going away"
        assert record["site"] == "localhost"
        assert record["reception_protocol"] == "HTTP"
    assert len({record["nodeid"] for record in records}) == 1

    # KumoMTA forgets its rules on restart; kumo does not.
    with running_server(data) as url:
        [rule] = rules(url)
        assert rule["id"] == rule_id
        assert rule["total_bounced"] == 4
        assert rule["bounced"] == {
            "spring:@example.com": 2,
            "spring:acme@example.com": 1,
            "example.com": 1,
        }
        assert scheduled(url) == {"other.org": 2}
        assert metrics(url)["total_messages_received"] == 6
        assert metrics(url)["total_messages_bounced"] == 4
        # Restarting did not write any record twice.
        assert len(delivery_records(data)) == 10

        reply = httpx.request("DELETE", url + BOUNCE_PATH, json={"id": rule_id})
        assert (reply.status_code, reply.text) == (200, f"removed {rule_id}")
        reply = httpx.request("DELETE", url + BOUNCE_PATH, json={"id": rule_id})
        assert (reply.status_code, reply.text) == (404, f"bounce entry {rule_id} not found")
        assert rules(url) == []
        assert inject(url, {"email": "after@example.com"})["success_count"] == 1
        assert scheduled(url) == {"other.org": 2, "example.com": 1}

    with running_server(data) as url:
        assert rules(url) == []  # cancelled stays cancelled
        assert scheduled(url) == {"other.org": 2, "example.com": 1}


def test_acknowledged_requests_survive_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    # Over 64 recipients: the messages are built in a worker thread.
    inject(server.url, *({"email": f"r{i}@example.com"} for i in range(100)))
    reply = httpx.post(server.url + BOUNCE_PATH, json={"domain": "example.com", "reason": "r"})
    assert reply.status_code == 200
    server.kill()
    with running_server(data) as url:
        [rule] = rules(url)
        assert rule["id"] == reply.json()["id"]
        wait_until(lambda: rules(url)[0]["total_bounced"] == 100)
        assert scheduled(url) == {}


def test_suppress_logging_keeps_counts_but_writes_no_records(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with running_server(data) as url:
        inject(url, {"email": "a@quiet.org"}, {"email": "b@quiet.org"})
        reply = httpx.post(
            url + BOUNCE_PATH,
            json={"domain": "quiet.org", "reason": "hush", "suppress_logging": True},
        )
        assert reply.status_code == 200
        wait_until(lambda: rules(url)[0]["total_bounced"] == 2)
        assert rules(url)[0]["suppress_logging"] is True
        wait_until(lambda: len(delivery_records(data)) >= 2)
    assert [record["type"] for record in delivery_records(data)] == ["Reception", "Reception"]


def test_queue_names_rule_and_expired_rule(tmp_path: Path) -> None:
    with running_server(tmp_path / "data") as url:
        inject(
            url, {"email": "a@x.org", "metadata": {"queue": "custom-queue"}}, {"email": "b@x.org"}
        )
        reply = httpx.post(url + BOUNCE_PATH, json={"queue_names": ["custom-queue"], "reason": "q"})
        assert reply.status_code == 200
        [rule] = wait_until(lambda: [r for r in rules(url) if r["total_bounced"] == 1])
        assert rule["queue_names"] == ["custom-queue"]
        assert rule["domain"] is None
        # Issued already expired: sweeps once, never listed.
        reply = httpx.post(
            url + BOUNCE_PATH, json={"domain": "x.org", "reason": "now", "duration": 0}
        )
        assert reply.status_code == 200
        wait_until(lambda: scheduled(url) == {})
        assert [r["id"] for r in rules(url)] == [rule["id"]]


# -- every bad-input refusal (docs/operations.md, Error replies), over real HTTP ---------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("bad-input") / "data"
    with running_server(data) as url:
        yield url, data


BIG = b'{"reason": "' + b"x" * (2 * 1024 * 1024) + b'"}'


def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 65536):
        yield body[start : start + 65536]


BAD_INPUT = [
    # (method, path, headers, body, status, text prefix)
    ("POST", BOUNCE_PATH, {}, b'{"reason": "r"}', 415, UNSUPPORTED_MEDIA_TYPE),
    (
        "POST",
        BOUNCE_PATH,
        {"Content-Type": "text/plain"},
        b'{"reason": "r"}',
        415,
        UNSUPPORTED_MEDIA_TYPE,
    ),
    ("DELETE", BOUNCE_PATH, {"Content-Type": "text/json"}, b"{}", 415, UNSUPPORTED_MEDIA_TYPE),
    ("POST", INJECT_PATH, {"Content-Type": "form"}, b"{}", 415, UNSUPPORTED_MEDIA_TYPE),
    ("POST", BOUNCE_PATH, JSON, b"", 400, JSON_SYNTAX_PREFIX),
    ("POST", BOUNCE_PATH, JSON, b"reason=r", 400, JSON_SYNTAX_PREFIX),
    ("DELETE", BOUNCE_PATH, JSON, b"{", 400, JSON_SYNTAX_PREFIX),
    ("POST", INJECT_PATH, JSON, b"\xff", 400, JSON_SYNTAX_PREFIX),
    (
        "POST",
        BOUNCE_PATH,
        JSON,
        b'{"domain": "d"}',
        422,
        JSON_SHAPE_PREFIX + "missing field `reason`",
    ),
    ("POST", BOUNCE_PATH, JSON, b'{"reason": 1}', 422, JSON_SHAPE_PREFIX + "reason: invalid type"),
    (
        "POST",
        BOUNCE_PATH,
        JSON,
        b'{"reason": "r", "foo": 1}',
        422,
        JSON_SHAPE_PREFIX + "unknown field `foo`",
    ),
    (
        "POST",
        BOUNCE_PATH,
        JSON,
        b'{"reason": "r", "duration": "5 fortnights"}',
        422,
        JSON_SHAPE_PREFIX + "duration: ",
    ),
    (
        "POST",
        BOUNCE_PATH,
        JSON,
        b'{"reason": "r", "duration": "101 years"}',
        422,
        JSON_SHAPE_PREFIX + "duration: ",
    ),
    (
        "POST",
        BOUNCE_PATH,
        JSON,
        b'{"reason": "r", "expires": "soon"}',
        422,
        JSON_SHAPE_PREFIX + "expires: ",
    ),
    (
        "DELETE",
        BOUNCE_PATH,
        JSON,
        b'{"id": "not-a-uuid"}',
        422,
        JSON_SHAPE_PREFIX + "id: UUID parsing failed: ",
    ),
    ("DELETE", BOUNCE_PATH, JSON, b"{}", 422, JSON_SHAPE_PREFIX + "missing field `id`"),
    (
        "POST",
        INJECT_PATH,
        JSON,
        b'{"recipients": []}',
        422,
        JSON_SHAPE_PREFIX + "missing field `envelope_sender`",
    ),
    ("POST", BOUNCE_PATH, JSON, BIG, 413, BODY_TOO_LARGE),
    ("POST", BOUNCE_PATH, {"Content-Type": "text/plain"}, BIG, 413, BODY_TOO_LARGE),
    ("DELETE", BOUNCE_PATH, JSON, BIG, 413, BODY_TOO_LARGE),
    ("POST", INJECT_PATH, JSON, BIG, 413, BODY_TOO_LARGE),
    ("POST", BOUNCE_PATH, JSON, _chunks, 413, BODY_TOO_LARGE),  # chunked: no Content-Length
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "prefix"),
    BAD_INPUT,
    ids=[
        f"{row[4]}-{row[0]}-{row[1].rsplit('/', 2)[-2]}-{index}"
        for index, row in enumerate(BAD_INPUT)
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    shared: tuple[str, Path],
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any,
    status: int,
    prefix: str,
) -> None:
    url, data = shared
    before = logged_events(data)
    content = body(BIG) if callable(body) else body
    reply = httpx.request(method, url + path, headers=headers, content=content, timeout=30)
    assert reply.status_code == status
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    assert reply.text.startswith(prefix)
    assert logged_events(data) == before
    assert httpx.get(url + LIVENESS_PATH).status_code == 200


def test_body_at_the_limit_is_accepted(shared: tuple[str, Path]) -> None:
    url, _ = shared
    head, tail = b'{"reason": "', b'", "duration": 0}'
    body = head + b"x" * (2 * 1024 * 1024 - len(head) - len(tail)) + tail
    reply = httpx.post(url + BOUNCE_PATH, content=body, headers=JSON)
    assert reply.status_code == 200, reply.text[:200]


def test_kept_alive_connection_survives_refusals(shared: tuple[str, Path]) -> None:
    url, _ = shared
    big = b"x" * (3 * 1024 * 1024)
    with httpx.Client(timeout=10) as client:
        requests: list[tuple[str, str, bytes | Iterator[bytes]]] = [
            ("POST", BOUNCE_PATH, big),  # 413 on Content-Length, before reading
            ("POST", BOUNCE_PATH, _chunks(big)),  # 413 while reading
            ("PUT", BOUNCE_PATH, big),  # 405
            ("POST", "/nowhere", big),  # 404
        ]
        for method, path, content in requests:
            reply = client.request(method, url + path, content=content, headers=JSON)
            assert reply.status_code in (404, 405, 413)
            liveness = client.get(url + LIVENESS_PATH)  # same connection
            assert liveness.text == "OK"


def test_clients_that_ask_to_close_hold_no_descriptors(shared: tuple[str, Path]) -> None:
    # Each of these once held a descriptor of the server for as long as its client lived.
    url, _ = shared
    host, port = url.removeprefix("http://").rsplit(":", 1)
    requests = [
        b"GET /api/check-liveness/v1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET /api/check-liveness/v1 HTTP/1.0\r\n\r\n",
    ]
    clients = []
    for index in range(100):
        client = socket.create_connection((host, int(port)), timeout=10)
        client.sendall(requests[index % 2])
        clients.append(client)
    try:
        for client in clients:
            received = b""
            while chunk := client.recv(65536):  # until the server closes
                received += chunk
            assert received.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")), received
    finally:
        for client in clients:
            client.close()

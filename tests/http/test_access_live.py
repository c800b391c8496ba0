"""Access control over real HTTP: a server on 127.0.0.2 that does not trust its client.

The test client connects from 127.0.0.1, which the configuration below does not
trust, so only credentials get it in; the principal it authenticates as is what the
event log records as ``issued_by`` / ``cancelled_by``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kumo.http.access import hash_password, hash_token
from kumo.http.routes import (
    BOUNCE_PATH,
    INJECT_PATH,
    LIVENESS_PATH,
    METRICS_JSON_PATH,
    METRICS_PATH,
    OPENAPI_PATH,
)
from kumo.model.events import BounceCancelled, BounceIssued
from tests.live_server import logged_events, running_server

TOKEN = "kumo-test-token-0123456789"
CONFIG = f"""
trusted_hosts = ["192.0.2.0/24"]

[users]
alice = "{hash_password("wonderland")}"

[tokens]
deploy = "{hash_token(TOKEN)}"
"""


def _can_bind(host: str) -> bool:
    try:
        with socket.socket() as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    if not _can_bind("127.0.0.2"):
        pytest.skip("127.0.0.2 is not a loopback address here")
    data = tmp_path_factory.mktemp("access") / "data"
    with running_server(data, config=CONFIG, host="127.0.0.2") as url:
        assert url.startswith("http://127.0.0.2:")
        yield url, data


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", BOUNCE_PATH),
        ("POST", BOUNCE_PATH),
        ("DELETE", BOUNCE_PATH),
        ("POST", INJECT_PATH),
        ("GET", METRICS_PATH),
        ("GET", METRICS_JSON_PATH),
    ],
)
def test_untrusted_client_gets_401(server: tuple[str, Path], method: str, path: str) -> None:
    url, data = server
    before = logged_events(data)
    reply = httpx.request(method, url + path, json={"reason": "r"})
    assert reply.status_code == 401
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    assert reply.text == (
        "Missing Authorization header: 127.0.0.1 is not a trusted host; "
        "send Basic or Bearer credentials"
    )
    assert "Basic" in reply.headers["www-authenticate"]
    assert logged_events(data) == before


def test_open_endpoints_need_no_credentials(server: tuple[str, Path]) -> None:
    url, _ = server
    assert httpx.get(url + LIVENESS_PATH).text == "OK"
    assert httpx.get(url + OPENAPI_PATH).status_code == 200


@pytest.mark.parametrize(
    ("auth", "why"),
    [
        (("alice", "Wonderland"), "Invalid Authorization: unknown user or wrong password"),
        (("mallory", "wonderland"), "Invalid Authorization: unknown user or wrong password"),
        ("Bearer not-the-token", "Invalid Authorization: unknown bearer token"),
        ("Negotiate abc", "Unsupported Authorization scheme: expected `Basic` or `Bearer`"),
    ],
)
def test_wrong_credentials_get_401(
    server: tuple[str, Path], auth: tuple[str, str] | str, why: str
) -> None:
    url, data = server
    before = logged_events(data)
    if isinstance(auth, tuple):
        reply = httpx.post(url + BOUNCE_PATH, json={"reason": "r"}, auth=auth)
    else:
        reply = httpx.post(url + BOUNCE_PATH, json={"reason": "r"}, headers={"Authorization": auth})
    assert (reply.status_code, reply.text) == (401, why)
    assert logged_events(data) == before


def test_basic_and_bearer_work_and_name_the_principal(server: tuple[str, Path]) -> None:
    url, data = server
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    reply = httpx.post(
        url + BOUNCE_PATH,
        json={"domain": "access.example", "reason": "who asked?"},
        auth=("alice", "wonderland"),
    )
    assert reply.status_code == 200, reply.text
    rule_id = reply.json()["id"]

    listed = httpx.get(url + BOUNCE_PATH, headers=bearer)
    assert listed.status_code == 200
    [rule] = [entry for entry in listed.json() if entry["id"] == rule_id]
    assert rule["issued_by"] == "alice"

    reply = httpx.request("DELETE", url + BOUNCE_PATH, json={"id": rule_id}, headers=bearer)
    assert (reply.status_code, reply.text) == (200, f"removed {rule_id}")
    assert httpx.get(url + METRICS_PATH, headers=bearer).status_code == 200
    reply = httpx.post(
        url + INJECT_PATH,
        json={"envelope_sender": "s@x.org", "recipients": [{"email": "a@x.org"}], "content": "x"},
        headers=bearer,
    )
    assert reply.json()["success_count"] == 1

    events = [committed.event for committed in logged_events(data)]
    issued = [e for e in events if isinstance(e, BounceIssued) and e.rule_id == rule_id]
    cancelled = [e for e in events if isinstance(e, BounceCancelled) and e.rule_id == rule_id]
    assert [e.issued_by for e in issued] == ["alice"]
    assert [e.cancelled_by for e in cancelled] == ["deploy"]
    text = (data / "events.sqlite3").read_bytes()
    assert b"wonderland" not in text
    assert TOKEN.encode() not in text


def test_a_guesser_gets_429_and_retry_after_while_others_are_served(
    server: tuple[str, Path],
) -> None:
    url, _ = server
    # The guesser comes from 127.0.0.3, so that the other tests' client keeps its budget.
    guesser = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"))
    with guesser:
        statuses = [
            guesser.get(url + BOUNCE_PATH, auth=("guesser", f"guess{n}")).status_code
            for n in range(10)
        ]
        assert statuses == [401] * 10
        reply = guesser.get(url + BOUNCE_PATH, auth=("guesser", "guess10"))
        assert reply.status_code == 429
        # 6 s when the ten guesses took no time; less by what they took on a busy machine
        # (the exact figures are the gatekeeper's unit tests', on a mock clock).
        wait = int(reply.headers["Retry-After"])
        assert 1 <= wait <= 6
        assert reply.text == (
            f"Too many failed authentication attempts from 127.0.0.3; retry in {wait} s"
        )
        served = httpx.get(url + BOUNCE_PATH, auth=("alice", "wonderland"))
        assert served.status_code == 200

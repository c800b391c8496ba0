"""Fuzz a real server: no method, path, query, header or body gets a 5xx or hangs, and a
refused request leaves the event log as it was.

Every path the OpenAPI document describes is fuzzed, with query strings made of the
parameters it declares for it (each absent, given once or twice, with values near and
far from valid ones), so that a new route is fuzzed as soon as it is documented.

A refused request may not append any event a client causes (``MessageReceived``,
``BounceIssued``, ``BounceCancelled``, ``SuspendIssued``, ``SuspendCancelled``,
``RebindIssued``, ``ReadySuspendIssued``, ``ReadySuspendCancelled``).
The engine's own events (``Bounced`` from a sweep that an earlier, accepted request
started, ``BounceExpired``) may arrive at any time, so they are not held against the
request that happened to be in flight.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kumo.http.openapi import OPENAPI
from kumo.http.routes import INJECT_PATH
from kumo.model.events import (
    BounceCancelled,
    BounceIssued,
    MessageReceived,
    ReadySuspendCancelled,
    ReadySuspendIssued,
    RebindIssued,
    SuspendCancelled,
    SuspendIssued,
)
from tests.live_server import events_after, last_seq, running_server

CLIENT_EVENTS = (
    MessageReceived,
    BounceIssued,
    BounceCancelled,
    SuspendIssued,
    SuspendCancelled,
    RebindIssued,
    ReadySuspendIssued,
    ReadySuspendCancelled,
)
TIMEOUT = 10.0
"""Seconds any one request may take: more counts as a hang."""

PATHS = [
    "/api/admin/bounce/v1",
    "/api/admin/bounce/v1",
    "/api/admin/bounce/v1",
    "/api/inject/v1",
    "/api/inject/v1",
    "/api/check-liveness/v1",
    "/metrics",
    "/api-docs/openapi.json",
    "/api/admin/bounce/v1/",
    "/api/admin/bounce/v1?id=1",
    "//api/admin/bounce/v1",
    "/api/admin/../admin/bounce/v1",
    "/%ff",
    "/",
]
PATHS += sorted(set(OPENAPI["paths"]) - set(PATHS))

_PARAMETERS: dict[str, list[dict[str, Any]]] = {
    path: [p for operation in item.values() for p in operation.get("parameters", [])]
    for path, item in OPENAPI["paths"].items()
}
"""Path -> the query parameters its operations declare."""

KNOWN_IDS: list[str] = ["0" * 32]
"""Spool ids of messages a server holds (``holding_server`` puts its own here), so that
a fuzzed inspection finds something too."""

_known_ids = st.integers(0, 7).map(lambda n: KNOWN_IDS[n % len(KNOWN_IDS)])
"""One of :data:`KNOWN_IDS`, read at each draw: they are known once a server runs."""
_held = st.sampled_from(["held.fuzz.example", "fuzz.example", "00" * 16, ""]) | _known_ids
"""Strings that name what a server may hold: queues, spool ids."""
_well_formed = {
    "boolean": st.sampled_from(["true", "false"]),
    "integer": st.integers(0, 3).map(str),
    "string": _held,
}
_any_value = {
    "boolean": st.sampled_from(["true", "false", "TRUE", "1", ""]),
    "integer": st.sampled_from(["0", "5", "+3", "-1", "", "x", str(2**64), str(2**64 - 1)])
    | st.integers(0, 10**6).map(str),
    "string": _held
    | st.sampled_from(["D7EF132B-5D77-11EE-A8C8-000C29C33806", "{x}"])
    | st.text(max_size=20),
}


@st.composite
def _targets(draw: st.DrawFn, paths: list[str] = PATHS) -> str:
    """One of ``paths``, and for a documented one a query of the parameters it declares:
    half the time well formed (each once, optional ones maybe absent), else anything
    (each absent, once or twice, with any value)."""
    path = draw(st.sampled_from(paths))
    pairs: list[tuple[str, str]] = []
    well_formed = draw(st.booleans())
    for parameter in _PARAMETERS.get(path, []):
        schema = parameter["schema"]
        # An array is one parameter per element (``queues=a&queues=b``).
        kind = schema["items"]["type"] if schema["type"] == "array" else schema["type"]
        if well_formed:
            times = 1 if parameter["required"] else draw(st.integers(0, 1))
            values = _well_formed[kind]
        else:
            times = draw(st.sampled_from([0, 1, 1, 1, 2]))
            values = _any_value[kind]
        pairs += [(parameter["name"], draw(values)) for _ in range(times)]
    return f"{path}?{urlencode(pairs)}" if pairs else path


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["5m", "0", "1h 30m", "2030-01-01T00:00:00Z", "x@y.org", "00" * 16])
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_fields = st.sampled_from(
    [
        "reason",
        "duration",
        "expires",
        "domain",
        "campaign",
        "queue_names",
        "suppress_logging",
        "id",
        "name",
        "envelope_sender",
        "recipients",
        "content",
        "data",
        "always_flush",
        "foo",
    ]
)
_recipients = st.lists(
    st.fixed_dictionaries(
        {"email": st.sampled_from(["a@fuzz.example", "broken", "", "@", "b@FUZZ.example"])},
        optional={"metadata": st.dictionaries(st.sampled_from(["queue", "tenant"]), _values)},
    ),
    max_size=3,
)


def _dumps(value: Any) -> bytes:
    # allow_nan: the standard library writes NaN and Infinity, which are not JSON.
    return json.dumps(value).encode()


_near_valid_bounces = st.fixed_dictionaries(
    {"reason": st.text(max_size=10)},
    optional={
        "domain": st.sampled_from(["fuzz.example", "FUZZ.example", "", None]),
        "duration": st.sampled_from(["1s", "5m", 0, 0.5, "100y", "101y", -1, None, "5"]),
        "expires": st.sampled_from(["2030-01-01T00:00:00Z", "1970-01-01T00:00:00z", "soon"]),
        "queue_names": st.lists(st.sampled_from(["fuzz.example", "q", 1]), max_size=2),
        "suppress_logging": st.sampled_from([True, False, "no"]),
        "id": st.sampled_from(["8d2b1f7e-3c4a-4b5d-9e6f-0a1b2c3d4e5f", "nope"]),
    },
)
_near_valid_rebinds = st.fixed_dictionaries(
    {"reason": st.text(max_size=10)},
    optional={
        "data": st.dictionaries(
            st.sampled_from(["campaign", "tenant", "routing_domain", "queue", "domain", ""]),
            st.sampled_from(["fuzz.example", "", "c", 1, None]),
            max_size=2,
        )
        | st.sampled_from([None, [], "x"]),
        "domain": st.sampled_from(["fuzz.example", "held.fuzz.example", None, 1]),
        "routing_domain": st.sampled_from(["fuzz.example", None]),
        "always_flush": st.sampled_from([True, False, "yes"]),
        "suppress_logging": st.sampled_from([True, False]),
        "trigger_rebind_event": st.sampled_from([True, False, 0]),
        "dry_run": st.sampled_from([True, False, "yes"]),
    },
)
_near_valid_ready_suspensions = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["unspecified->mx.fuzz.example@smtp_client", "", 3, None]),
        "reason": st.text(max_size=10),
    },
    optional={
        "duration": st.sampled_from(["1s", "5m", 0, "101y", -1, None]),
        "expires": st.sampled_from(["2030-01-01T00:00:00Z", "soon"]),
        "domain": st.just("fuzz.example"),
    },
)
_bodies = st.one_of(
    _near_valid_bounces.map(_dumps),
    _near_valid_rebinds.map(_dumps),
    _near_valid_ready_suspensions.map(_dumps),
    st.just(b""),
    st.binary(max_size=200),
    _values.map(_dumps),
    st.dictionaries(_fields, _values, max_size=4).map(_dumps),
    st.fixed_dictionaries(
        {"envelope_sender": st.text(max_size=10), "recipients": _recipients, "content": _values}
    ).map(_dumps),
)
_content_types = st.sampled_from(
    [
        "application/json",
        "application/json",
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/merge-patch+json",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin-1; q=0.5",
        "*/*",
        ";;;",
    ]
)
_header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30
).map(str.strip)
_authorization = st.one_of(
    st.none(),
    st.sampled_from(["Basic", "Basic !!", "Basic Og==", "Bearer", "Bearer x", "Digest a"]),
    _header_text,
)
_methods = st.sampled_from(
    ["POST", "POST", "POST", "DELETE", "DELETE", "GET", "PUT", "PATCH", "HEAD", "OPTIONS", "TRACE"]
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    with running_server(data) as url:
        yield url, data


@pytest.fixture(scope="module")
def holding_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A server holding two messages, which nothing bounces: inspections find them."""
    data = tmp_path_factory.mktemp("fuzz-queries") / "data"
    with running_server(data) as url:
        reply = httpx.post(
            url + INJECT_PATH,
            json={
                "envelope_sender": "s@fuzz.example",
                "recipients": [{"email": "a@held.fuzz.example"}, {"email": "b@held.fuzz.example"}],
                "content": "Subject: held\r\n\r\nfor inspection\r\n",
            },
        )
        assert reply.status_code == 200, reply.text
        KNOWN_IDS[:] = [
            committed.event.message_id
            for committed in events_after(data, 0)
            if isinstance(committed.event, MessageReceived)
        ]
        yield url, data


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=_methods,
    path=_targets(),
    content_type=_content_types,
    authorization=_authorization,
    extra=st.dictionaries(
        st.sampled_from(["X-Campaign", "Accept", "Content-Encoding", "Expect", "X-Whatever"]),
        _header_text,
        max_size=2,
    ),
    body=_bodies,
)
def test_no_5xx_no_hang_and_refusals_change_nothing(
    server: tuple[str, Path],
    method: str,
    path: str,
    content_type: str | None,
    authorization: str | None,
    extra: dict[str, str],
    body: bytes,
) -> None:
    url, data = server
    headers = dict(extra)
    if content_type is not None:
        headers["Content-Type"] = content_type
    if authorization is not None:
        headers["Authorization"] = authorization
    before = last_seq(data)
    reply = httpx.request(method, url + path, headers=headers, content=body, timeout=TIMEOUT)
    assert reply.status_code < 500, (reply.status_code, reply.text)
    event(f"{method} {path.partition('?')[0]} {reply.status_code}")
    if reply.status_code >= 400:
        if method != "HEAD":
            assert reply.text, "a refusal says why"
        caused = [
            committed.event
            for committed in events_after(data, before)
            if isinstance(committed.event, CLIENT_EVENTS)
        ]
        assert caused == []


_QUERIED = sorted(path for path, parameters in _PARAMETERS.items() if parameters)
"""The documented paths that take query parameters (each a GET)."""


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(target=_targets(_QUERIED))
def test_every_documented_query_gets_an_answer_and_no_5xx(
    holding_server: tuple[str, Path], target: str
) -> None:
    url, data = holding_server
    before = last_seq(data)
    reply = httpx.get(url + target, timeout=TIMEOUT)
    event(f"GET {target.partition('?')[0]} {reply.status_code}")
    assert reply.status_code in (200, 400, 404), (reply.status_code, reply.text)
    if reply.status_code == 200:
        assert reply.headers["content-type"] == "application/json"
        reply.json()
    else:
        assert reply.text, "a refusal says why"
    assert not [
        committed
        for committed in events_after(data, before)
        if isinstance(committed.event, CLIENT_EVENTS)
    ]


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /api/admin/bounce/v1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\nzz\r\n",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello
    ],
)
def test_broken_http_gets_an_answer_or_a_close(server: tuple[str, Path], raw: bytes) -> None:
    url, data = server
    host, port = url.removeprefix("http://").rsplit(":", 1)
    before = last_seq(data)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as connection:
        connection.sendall(raw)
        answer = connection.recv(4096)  # a timeout here is a hang
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:200]
    assert not [
        committed
        for committed in events_after(data, before)
        if isinstance(committed.event, CLIENT_EVENTS)
    ]

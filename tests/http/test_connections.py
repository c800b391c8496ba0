"""Connections stay usable after a refusal, or are closed: the app served by hypercorn.

A client that keeps its connection alive must be able to send its next request after
any refusal, including those answered without reading the body (401, 404, 405, and a
413 decided on ``Content-Length``); a body that never ends gets its answer with
``Connection: close``, ``body_timeout`` after the request started (not twice that).
Every connection that must close does close (``Connection: close``, HTTP/1.0, the 408,
a body declared far over the limit), and an idle kept-alive one closes after hypercorn's
keep-alive timeout (kumo.http.connection_guard says why each once stayed open).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import cast

import trio
import trio.testing
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from kumo.http.access import AccessPolicy, parse_network
from kumo.http.app import ASGIApp, ASGIMessage, Scope, create_app
from kumo.http.connection_guard import DRAIN_LIMIT
from kumo.http.errors import BODY_TOO_LARGE
from kumo.http.routes import BOUNCE_PATH, INJECT_PATH
from tests.http.test_app import FakeEngine

LIMIT = 1000
BODY_TIMEOUT = 0.5
KEEP_ALIVE_TIMEOUT = 0.3


@asynccontextmanager
async def serving(*, trusted: bool = True) -> AsyncIterator[tuple[str, int]]:
    policy = AccessPolicy(trusted_hosts=(parse_network("127.0.0.1"),) if trusted else ())
    app = create_app(FakeEngine(), access=policy, body_limit=LIMIT, body_timeout=BODY_TIMEOUT)
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.graceful_timeout = 0.1
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT
    config.loglevel = "WARNING"
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
        host, port = url.removeprefix("http://").rsplit(":", 1)
        yield host, int(port)
        stop.set()


async def read_response(stream: trio.SocketStream) -> tuple[int, dict[str, str], bytes]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = await stream.receive_some()
        assert chunk, f"connection closed before a response: {buffer!r}"
        buffer += chunk
    head, _, body = buffer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = await stream.receive_some()
        assert chunk
        body += chunk
    return int(status_line.split(" ")[1]), headers, body[:length]


def request(
    method: str, path: str, body: bytes = b"", content_type: str = "application/json"
) -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


LIVENESS = b"GET /api/check-liveness/v1 HTTP/1.1\r\nHost: test\r\n\r\n"


async def closed_by_server(stream: trio.SocketStream) -> None:
    """Wait (at most 5 s) for the server to close the connection."""
    with trio.fail_after(5):
        while True:
            try:
                if not await stream.receive_some():
                    return
            except trio.BrokenResourceError:
                return  # reset: closed too


async def refused_then_reused(stream: trio.SocketStream, raw: bytes, status: int) -> None:
    with trio.fail_after(10):
        await stream.send_all(raw)
        got, headers, _ = await read_response(stream)
        assert got == status
        assert headers.get("connection") != "close"
        await stream.send_all(LIVENESS)
        assert (await read_response(stream))[0] == 200


async def test_connection_is_reused_after_refusals_with_unread_bodies() -> None:
    big = b"x" * (4 * 2**20)  # more than hypercorn reads before the app answers
    async with serving() as (host, port):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await refused_then_reused(stream, request("POST", BOUNCE_PATH, big), 413)
            await refused_then_reused(stream, request("POST", "/nowhere", big), 404)
            await refused_then_reused(stream, request("PUT", BOUNCE_PATH, big), 405)
            await refused_then_reused(
                stream, request("POST", BOUNCE_PATH, b"{}", "text/plain"), 415
            )
            await refused_then_reused(stream, request("DELETE", BOUNCE_PATH, b"{"), 400)
            await refused_then_reused(stream, request("POST", INJECT_PATH, b"{}"), 422)


async def test_connection_is_reused_after_401_with_a_body() -> None:
    async with serving(trusted=False) as (host, port):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            big = b"x" * (4 * 2**20)  # more than hypercorn reads before the app answers
            await refused_then_reused(stream, request("POST", BOUNCE_PATH, big), 401)


async def test_chunked_body_over_the_limit() -> None:
    async with serving() as (host, port):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            head = (
                b"POST /api/admin/bounce/v1 HTTP/1.1\r\nHost: test\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"%x\r\n%s\r\n" % (500, b"y" * 500)
            await refused_then_reused(stream, head + chunk * 10 + b"0\r\n\r\n", 413)


async def test_body_that_stops_arriving_gets_408_and_connection_close() -> None:
    async with serving() as (host, port):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            partial_request = request("POST", BOUNCE_PATH, b"x" * 100)[:-90]
            with trio.fail_after(10):
                started = trio.current_time()
                await stream.send_all(partial_request)
                status, headers, body = await read_response(stream)
                elapsed = trio.current_time() - started
            assert status == 408
            # The answer is due BODY_TIMEOUT after the request started, not twice that.
            assert BODY_TIMEOUT <= elapsed < 1.9 * BODY_TIMEOUT
            assert headers["connection"] == "close"
            assert body.startswith(b"408 Request Timeout")
            await closed_by_server(stream)


async def test_connection_close_is_honoured() -> None:
    async with serving() as (host, port):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            with trio.fail_after(10):
                await stream.send_all(
                    LIVENESS.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
                )
                status, headers, _ = await read_response(stream)
            assert (status, headers["connection"]) == (200, "close")
            await closed_by_server(stream)


async def test_http_1_0_connection_is_closed_after_its_response() -> None:
    async with serving() as (host, port):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            with trio.fail_after(10):
                await stream.send_all(b"GET /api/check-liveness/v1 HTTP/1.0\r\n\r\n")
                assert (await read_response(stream))[0] == 200
            await closed_by_server(stream)


async def test_idle_kept_alive_connection_closes_after_the_keep_alive_timeout() -> None:
    async with serving() as (host, port):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            with trio.fail_after(10):
                await stream.send_all(LIVENESS)
                assert (await read_response(stream))[0] == 200
            started = trio.current_time()
            await closed_by_server(stream)
            assert trio.current_time() - started >= KEEP_ALIVE_TIMEOUT * 0.9


async def test_a_body_declared_far_over_the_limit_gets_413_before_it_is_sent() -> None:
    async with serving() as (host, port):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            head = request("POST", BOUNCE_PATH, b"")
            head = head.replace(b"Content-Length: 0", b"Content-Length: 100000000")
            with trio.fail_after(5):
                await stream.send_all(head)  # and not one byte of the body
                status, headers, body = await read_response(stream)
            assert (status, headers["connection"]) == (413, "close")
            assert body == BODY_TOO_LARGE.encode()
            await closed_by_server(stream)


async def test_chunked_body_413_at_the_limit_and_closed_past_the_drain_limit() -> None:
    async with serving() as (host, port):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            head = (
                b"POST /api/admin/bounce/v1 HTTP/1.1\r\nHost: test\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            chunk = b"%x\r\n%s\r\n" % (600, b"y" * 600)
            with trio.fail_after(5):
                await stream.send_all(head + chunk * 2)  # over the limit, and no end
                status, headers, _ = await read_response(stream)
            assert status == 413
            assert "connection" not in headers  # kept, should the body end soon

            async def keep_sending() -> None:
                big = b"%x\r\n%s\r\n" % (2**16, b"z" * 2**16)
                with contextlib.suppress(trio.BrokenResourceError):
                    for _ in range(DRAIN_LIMIT // 2**16 + 64):
                        await stream.send_all(big)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_sending)
                await closed_by_server(stream)  # once DRAIN_LIMIT more bytes were dropped
                nursery.cancel_scope.cancel()


async def test_408_is_sent_body_timeout_after_the_request_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The app alone, under virtual time: the exact moment the 408 leaves, whatever the load.
    app = cast(ASGIApp, create_app(FakeEngine(), body_timeout=15))
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": BOUNCE_PATH,
        "raw_path": BOUNCE_PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"test"),
            (b"content-type", b"application/json"),
            (b"content-length", b"100"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "extensions": {},
    }
    body_sent = False

    async def receive() -> ASGIMessage:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": b"x" * 10, "more_body": True}
        await trio.sleep_forever()

    starts: list[tuple[float, ASGIMessage]] = []

    async def send(message: ASGIMessage) -> None:
        if message["type"] == "http.response.start":
            starts.append((trio.current_time(), message))

    started = trio.current_time()
    await app(scope, receive, send)

    [(sent_at, start)] = starts
    assert start["status"] == 408
    assert (b"connection", b"close") in start["headers"]
    assert sent_at - started == 15

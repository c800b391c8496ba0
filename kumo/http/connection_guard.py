"""ASGI middleware: every HTTP/1.1 exchange leaves its connection reusable or closed.

Two faults of the stack below (hypercorn 0.18 serving quart-trio) are handled here, and
one policy is decided here: what an answer given before the request body has arrived
does to the connection.

**The end of a response is sent shielded.** quart-trio cancels a request's tasks as soon
as hypercorn reports the request stream closed, which hypercorn does from inside the send
of the response's last message; it then finishes the exchange in that same send:
recycling a kept-alive connection (and re-arming its keep-alive timer), or closing one
that must close (``Connection: close``, HTTP/1.0, a body left unread). Under the
cancellation the first checkpoint of that work raises, so a connection that had to close
stayed open, and an idle kept-alive one never timed out: each held a file descriptor for
as long as its client liked (200 clients, 200 descriptors, none ever freed). Sending the
last message in a shielded scope lets hypercorn finish; hypercorn already shields its own
socket writes, so the shield adds no new way to wait.

**An early answer** (401, 404, 405, a 413 decided on ``Content-Length``: any response
that starts before the request body has ended) goes out at once; only the message that
ends it is held while the rest of the body arrives and is dropped (quart reads it and
keeps at most the body limit), so that the connection stays in step for the client's
next request. That wait is bounded: it ends when the body ends, when
``drain_limit`` more bytes were dropped, or at the body deadline (``body_timeout``
after the request started), whichever comes first; hypercorn closes a connection whose
request body has not ended. A body declared (``Content-Length``) longer than
``drain_limit`` beyond what has arrived, and any answer given at or after the body
deadline (the 408), carry ``Connection: close`` and are not waited on: a 100 MB upload
gets its 413 before the server reads it, and the connection is closed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeAlias

import trio

Scope: TypeAlias = dict[str, Any]
ASGIMessage: TypeAlias = dict[str, Any]
ASGIReceive: TypeAlias = Callable[[], Awaitable[ASGIMessage]]
ASGISend: TypeAlias = Callable[[ASGIMessage], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, ASGIReceive, ASGISend], Awaitable[None]]

DRAIN_LIMIT: Final = 8 * 2**20
"""Bytes of a request body that may still arrive after an early answer for the
connection to be kept: read and dropped (at loopback speed, tens of milliseconds)."""

_CLOSE: Final = (b"connection", b"close")


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length`` (None if absent or not a number: chunked)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _Exchange:
    """What has arrived of one request body, and the wait for the rest of it."""

    def __init__(self, declared: int | None, deadline: float) -> None:
        self.declared = declared
        self.deadline = deadline
        self.received = 0
        self.ended = False
        self._arrived = trio.Event()

    def note(self, message: ASGIMessage) -> None:
        kind = message["type"]
        if kind == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.ended = True
        elif kind == "http.disconnect":
            self.ended = True
        self._arrived.set()
        self._arrived = trio.Event()

    def must_close(self) -> bool:
        """Whether an answer given now ends the connection (and says so)."""
        if trio.current_time() >= self.deadline:
            return True
        return self.declared is not None and self.declared - self.received > DRAIN_LIMIT

    async def wait_drained(self, limit: int) -> None:
        """Return once the body has ended, ``limit`` more bytes have arrived, or the
        deadline has passed."""
        stop_at = self.received + limit
        with trio.move_on_at(self.deadline):
            while not self.ended and self.received <= stop_at:
                await self._arrived.wait()


class ConnectionGuard:
    """The middleware of the module docstring around ``app``."""

    def __init__(self, app: ASGIApp, *, body_timeout: float, drain_limit: int = DRAIN_LIMIT):
        self.app = app
        self.body_timeout = body_timeout
        self.drain_limit = drain_limit

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(declared_length(scope), trio.current_time() + self.body_timeout)
        early = False

        async def tracking_receive() -> ASGIMessage:
            message = await receive()
            exchange.note(message)
            return message

        async def guarded_send(message: ASGIMessage) -> None:
            nonlocal early
            kind = message["type"]
            if kind == "http.response.start" and not exchange.ended:
                if exchange.must_close():
                    headers = [*message.get("headers", ()), _CLOSE]
                    message = {**message, "headers": headers}
                else:
                    early = True
            elif kind == "http.response.body" and not message.get("more_body", False):
                if early and not exchange.ended:
                    if message.get("body"):
                        await send({**message, "more_body": True})
                        message = {"type": "http.response.body", "body": b"", "more_body": False}
                    await exchange.wait_drained(self.drain_limit)
                with trio.CancelScope(shield=True):
                    await send(message)
                return
            await send(message)

        await self.app(scope, tracking_receive, guarded_send)

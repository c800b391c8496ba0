"""hypercorn (0.18, Trio worker) leaves connections open when the app's task is cancelled.

``python scripts/hypercorn_cancelled_close.py [--shield]``

A minimal ASGI app, no Quart: it cancels its own scope once it receives
``http.disconnect``, which is what quart-trio does. hypercorn sends that message from
inside the app's send of the response's last message, and then, in that same send,
closes the connection (``Connection: close``, HTTP/1.0) or re-arms its keep-alive
timer; both start with a checkpoint, which raises ``Cancelled``, so neither happens.
Each of the three clients below is still connected 3 s after its response:

    shield=False Connection: close: still open after 3 s
    shield=False HTTP/1.0: still open after 3 s
    shield=False keep-alive, idle (timeout 1 s): still open after 3 s

With ``--shield`` the app sends its last message in a shielded cancel scope (what
:mod:`kumo.http.connection_guard` does), and the server closes all three.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

REQUESTS = (
    ("Connection: close", b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("HTTP/1.0", b"GET / HTTP/1.0\r\n\r\n"),
    ("keep-alive, idle (timeout 1 s)", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
)


def make_app(shield: bool) -> Callable[[dict[str, Any], Receive, Send], Awaitable[None]]:
    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": kind + ".complete"})
                if kind == "lifespan.shutdown":
                    return
        async with trio.open_nursery() as nursery:

            async def messages() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()  # what quart-trio does

            nursery.start_soon(messages)
            headers = [(b"content-length", b"2")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            with trio.CancelScope(shield=shield):
                await send({"type": "http.response.body", "body": b"OK"})
            await trio.sleep_forever()

    return app


def client(port: int, request: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.settimeout(3)
        connection.sendall(request)
        try:
            while connection.recv(1024):
                pass
        except TimeoutError:
            return "still open after 3 s"
        return "closed by the server"


async def main(shield: bool) -> None:
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.keep_alive_timeout = 1
    config.loglevel = "WARNING"
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(serve, make_app(shield), config)
        port = int(url.rsplit(":", 1)[1])
        for name, request in REQUESTS:
            outcome = await trio.to_thread.run_sync(client, port, request)
            print(f"shield={shield} {name}: {outcome}", flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, "--shield" in sys.argv[1:])

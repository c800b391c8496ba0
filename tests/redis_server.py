"""A real ``redis-server`` (Debian's package) for the fleet tests, on loopback.

Each server listens on 127.0.0.1 at a free port, keeps its files in a directory of the
test's own, persists nothing unless asked, and is stopped by the test through its pid
(SIGTERM, then waited for). :meth:`RedisServer.start` after :meth:`RedisServer.stop`
brings it back on the same port: empty, unless it persists (append-only file).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
import trio

from tests.required_tools import require_tool

REDIS_SERVER: Final = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
)
DEADLINE: Final = 20.0
_READY: Final = b"Ready to accept connections"


def require_redis_server() -> str:
    return require_tool(REDIS_SERVER, "redis-server", "redis-server")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class RedisServer:
    """One redis-server process at a time, on a fixed port, in ``directory``."""

    def __init__(self, binary: str, directory: Path, *, persist: bool) -> None:
        self.binary = binary
        self.directory = directory
        self.persist = persist
        self.port = _free_port()
        self.process: trio.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    async def start(self) -> None:
        """Start the server; return once it accepts connections."""
        assert self.process is None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else []
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "no",
            *persistence,
            "--daemonize",
            "no",
            "--loglevel",
            "notice",
        ]
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert process.stdout is not None
        log = bytearray()
        try:
            with trio.fail_after(DEADLINE):
                while _READY not in log:
                    chunk = await process.stdout.receive_some(4096)
                    if not chunk:
                        pytest.fail(f"redis-server did not start: {log.decode(errors='replace')}")
                    log += chunk
        except BaseException:
            process.kill()
            await process.wait()
            raise
        # Nothing reads its log from here on: redis-server ignores SIGPIPE and goes on.
        await process.stdout.aclose()
        self.process = process

    async def stop(self) -> None:
        """Stop the server by its pid (SIGTERM) and wait until it has exited."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        with trio.move_on_after(DEADLINE) as waited:
            await process.wait()
        if waited.cancelled_caught:
            process.kill()
            await process.wait()


@asynccontextmanager
async def redis_server(directory: Path, *, persist: bool = False) -> AsyncIterator[RedisServer]:
    """A started :class:`RedisServer` in ``directory``, stopped on exit."""
    server = RedisServer(require_redis_server(), directory, persist=persist)
    await server.start()
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.stop()

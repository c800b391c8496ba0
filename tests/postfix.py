"""Postfix's ``smtp-sink`` as a real SMTP peer for tests (Debian package ``postfix``).

A test that needs it calls :func:`require_smtp_sink` first: it skips, saying why, when
the tool is missing, and fails instead in CI (``CI=true``), where ``.ci/run`` installs it.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import trio

from tests.required_tools import require_tool

SMTP_SINK = shutil.which("smtp-sink") or (
    "/usr/sbin/smtp-sink" if os.path.exists("/usr/sbin/smtp-sink") else None
)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _sink_command(options: Sequence[str], dumps: Path, port: int) -> list[str]:
    assert SMTP_SINK is not None
    command = [SMTP_SINK, *options, "-d", f"{dumps}/%M.", f"127.0.0.1:{port}", "64"]
    if os.geteuid() == 0:
        command[1:1] = ["-u", "nobody"]  # smtp-sink refuses to run as root
    return command


@asynccontextmanager
async def postfix_smtp_sink(*options: str) -> AsyncIterator[tuple[int, Path]]:
    """Postfix's smtp-sink on a free port, and the directory it dumps each message in.

    ``options`` go before the address: ``-r rcpt`` answers RCPT with a 4xx, ``-f data``
    DATA with a 5xx (smtp-sink(1)). It stops when the block ends.
    """
    port = free_port()
    # Not under tmp_path: as root, smtp-sink writes as nobody, who cannot enter it.
    with tempfile.TemporaryDirectory(prefix="kumo-smtp-sink-") as directory:
        dumps = Path(directory)
        await trio.Path(dumps).chmod(0o777)
        command = _sink_command(options, dumps, port)
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                functools.partial(trio.run_process, command, check=False)
            )
            try:
                # smtp-sink has no readiness signal: wait until it accepts.
                while True:
                    try:
                        stream = await trio.open_tcp_stream("127.0.0.1", port)
                    except OSError:
                        await trio.sleep(0.01)
                        continue
                    await stream.aclose()
                    break
                yield port, dumps
            finally:
                process.terminate()


@contextmanager
def running_smtp_sink(*options: str) -> Iterator[tuple[int, Path]]:
    """:func:`postfix_smtp_sink` for a test without an event loop (one that drives a
    ``kumo serve`` subprocess): the port and the dump directory, until the block ends."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="kumo-smtp-sink-") as directory:
        dumps = Path(directory)
        dumps.chmod(0o777)
        process = subprocess.Popen(_sink_command(options, dumps, port))
        try:
            deadline = time.monotonic() + _SINK_START_TIMEOUT
            # smtp-sink has no readiness signal: wait until it accepts.
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(
                            f"smtp-sink did not start ({process.returncode})"
                        ) from None
                    time.sleep(0.01)
            yield port, dumps
        finally:
            process.terminate()
            process.wait(10)


_SINK_START_TIMEOUT = 10.0


def require_smtp_sink() -> None:
    """Skip (fail in CI) unless Postfix's smtp-sink is installed."""
    require_tool(SMTP_SINK, "Postfix's smtp-sink", "postfix")

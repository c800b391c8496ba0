"""A real ``kumo serve`` in a subprocess, for end-to-end tests.

    with running_server(tmp_path / "data") as url:
        httpx.get(f"{url}/api/check-liveness/v1")

The server binds port 0 on ``host`` for HTTP and for SMTP, and the helper reads the
addresses it prints (``ServerProcess.smtp_port``: the SMTP listener's). On exit
it sends SIGTERM and checks that the server stopped cleanly (exit status 0) within
:data:`STOP_TIMEOUT`. Use :func:`start_server` to hold the process yourself (to send
it signals, or to read its exit status).
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import IO, Any, Final, TypeVar

from kumo.model.events import Committed, MessageReceived
from kumo.store.delivery_files import read_records
from kumo.store.layout import DATABASE, LOGS
from kumo.store.sqlite_log import SqliteEventStore

T = TypeVar("T")

START_TIMEOUT: Final = 30.0
STOP_TIMEOUT: Final = 30.0
_READY: Final = "kumo listening on "
_SMTP_READY: Final = "kumo smtp listening on "


class ServerProcess:
    """A running ``kumo serve``; ``url`` is its base URL (no trailing slash)."""

    def __init__(self, process: subprocess.Popen[str], url: str, stderr: IO[bytes]) -> None:
        self.process = process
        self.url = url
        self.smtp: str | None = None
        """The SMTP listener's ``HOST:PORT`` as printed; None when it is off."""
        self._stderr = stderr
        self._final_stderr: str | None = None

    @property
    def smtp_port(self) -> int:
        assert self.smtp is not None, "the server runs no SMTP listener"
        return int(self.smtp.rpartition(":")[2])

    def stderr_text(self) -> str:
        """What the server wrote on stderr so far (all of it, once it was stopped)."""
        if self._final_stderr is not None:
            return self._final_stderr
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` and return the exit status; kill it if it outlives ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"kumo serve did not stop within {timeout}s of signal {sig}:\n" + self.stderr_text()
            ) from None
        finally:
            self._close()

    def kill(self) -> None:
        """SIGKILL: no shutdown at all, as a crash."""
        self.process.kill()
        self.process.wait()
        self._close()

    def _close(self) -> None:
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self._final_stderr is None:
            self._final_stderr = self.stderr_text()
        self._stderr.close()


def start_server(
    data_dir: Path,
    *,
    config: str | None = None,
    host: str = "127.0.0.1",
    extra_args: tuple[str, ...] = (),
    smtp: bool = True,
    deliver: bool = False,
) -> ServerProcess:
    """Start ``kumo serve`` on ``host`` port 0 with ``data_dir``; return once it serves.

    ``config`` is TOML text, written next to ``data_dir`` (as ``<data_dir>.toml``). The
    SMTP listener listens on ``host`` port 0 too (``--smtp-listen``, which wins over the
    config), or not at all with ``smtp=False``: never on the fixed default port, which
    tests running side by side would fight over. It delivers nothing unless
    ``deliver`` (``--no-deliver``): a test's queues stay as it filled them.
    """
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    bracketed = f"[{host}]" if ":" in host else host
    args = [
        sys.executable,
        "-m",
        "kumo.cli.serve",
        "--listen",
        f"{bracketed}:0",
        "--data-dir",
        str(data_dir),
        "--smtp-listen",
        f"{bracketed}:0" if smtp else "off",
        "--deliver" if deliver else "--no-deliver",
        *extra_args,
    ]
    if config is not None:
        config_path = data_dir.with_name(data_dir.name + ".toml")
        config_path.write_text(config, encoding="utf-8")
        args += ["--config", str(config_path)]
    stderr = tempfile.TemporaryFile()  # noqa: SIM115  # the ServerProcess closes it
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
    server = ServerProcess(process, "", stderr)
    try:
        server.url, server.smtp = _wait_for_addresses(process, smtp=smtp)
    except BaseException:
        process.kill()
        process.wait()
        text = server.stderr_text()
        server._close()
        raise AssertionError(f"kumo serve did not start:\n{text}") from None
    return server


def _wait_for_addresses(process: subprocess.Popen[str], *, smtp: bool) -> tuple[str, str | None]:
    """The URL, and with ``smtp`` the SMTP address printed right after it."""
    assert process.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise TimeoutError("no URL printed")
            line = process.stdout.readline()
            if not line:
                raise EOFError("kumo serve exited")
            if line.startswith(_READY):
                url = line[len(_READY) :].strip()
                break
    if not smtp:
        return url, None
    # Printed at once after the URL, and maybe already read into the pipe's buffer,
    # where a select() would not see it: read it straight.
    line = process.stdout.readline()
    if not line.startswith(_SMTP_READY):
        raise EOFError(f"no SMTP address after the URL: {line!r}")
    return url, line[len(_SMTP_READY) :].strip()


@contextmanager
def running_server(
    data_dir: Path, *, config: str | None = None, host: str = "127.0.0.1"
) -> Iterator[str]:
    """A ``kumo serve`` for the duration of the block; yields its base URL.

    On a normal exit the server must stop cleanly (status 0) on SIGTERM.
    """
    server = start_server(data_dir, config=config, host=host)
    try:
        yield server.url
    except BaseException:
        if server.process.poll() is None:
            server.stop()
        raise
    status = server.stop()
    assert status == 0, f"kumo serve exited {status}:\n{server.stderr_text()}"


# -- reading what a server left in its data directory ----------------------------------


def build_queued(data_dir: Path, messages: int, *, queues: int = 50) -> None:
    """A data directory whose log holds ``messages`` received messages over ``queues``
    queues (``q<n>.example``) and no delivery log yet, written straight to the store
    (50,000 in about 1.5 s). A server started on it has work for a second or more:
    writing their Reception records, and sweeping them once a rule matches them all.
    """
    data_dir.mkdir(parents=True)
    body = b"Subject: queued\r\n\r\nx\r\n"
    with closing(SqliteEventStore(data_dir / DATABASE)) as store:
        for start in range(0, messages, 10_000):
            batch = [
                MessageReceived(
                    f"{index:032x}",
                    f"q{index % queues}.example",
                    "sender@example.net",
                    f"r{index}@q{index % queues}.example",
                    len(body),
                )
                for index in range(start, min(messages, start + 10_000))
            ]
            store.commit(
                batch,
                time=1_767_225_600_000_000_000 + start,
                bodies=dict.fromkeys(range(len(batch)), body),
            )


def logged_events(data_dir: Path) -> list[Committed]:
    """Every event of the server's event log, in order (read-only; safe while it runs)."""
    path = data_dir / DATABASE
    if not path.exists():
        return []
    with closing(SqliteEventStore(path, readonly=True)) as store:
        return [committed for batch in store.scan() for committed in batch]


def events_after(data_dir: Path, seq: int) -> list[Committed]:
    """The events of the server's log after sequence number ``seq``."""
    path = data_dir / DATABASE
    if not path.exists():
        return []
    with closing(SqliteEventStore(path, readonly=True)) as store:
        return [committed for batch in store.scan(after_seq=seq) for committed in batch]


def last_seq(data_dir: Path) -> int:
    """The sequence number of the last event in the server's log (0 when empty)."""
    path = data_dir / DATABASE
    if not path.exists():
        return 0
    with closing(SqliteEventStore(path, readonly=True)) as store:
        return store.last_seq


def delivery_records(data_dir: Path) -> list[dict[str, Any]]:
    """Every record of the delivery log, in log order; a last line still being written
    (no newline yet) is left out."""
    return read_records(data_dir / LOGS)


def wait_until(
    probe: Callable[[], T | None], *, timeout: float = 15.0, interval: float = 0.05
) -> T:
    """Call ``probe`` until it returns something truthy, and return that; fail after
    ``timeout`` seconds with the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still {value!r} after {timeout}s")
        time.sleep(interval)

"""The peers of the mail benchmarks (``scripts/mail_bench.py``), each started on
127.0.0.1 and stopped by this module: Postfix's ``smtp-sink`` (counting what it
receives) and ``smtp-source``, a private Postfix instance, ``kumo serve``, and a sink
and a client of this module's own for latency (the sink timestamps each message's
end of DATA; the client offers messages at a fixed rate).

A private Postfix has its own configuration, queue and data directories under a
temporary directory (``postfix -c DIR start`` and ``stop``), smtpd on
127.0.0.1:<free port>, and relays to ``[127.0.0.1]:<port>``; the system's
``/etc/postfix``, and any mail system it runs, are never touched. That needs root (as
``postfix start`` does) and the Debian package ``postfix``.

Every timestamp is :func:`time.monotonic` (CLOCK_MONOTONIC, one clock for every process
of the machine), so that the sink's times and the client's compare.

``python scripts/mail_peers.py sink`` runs the timestamping sink (what
:class:`TimestampingSink` starts).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Final

import attrs
import httpx
import orjson
import trio

SENDER: Final = "bench@source.example"
DOMAIN: Final = "dest.example"
RECIPIENT: Final = f"rcpt@{DOMAIN}"
HOSTNAME: Final = "bench.invalid"
BOUNCE_PATH: Final = "/api/admin/bounce/v1"
DELIVERY_CONCURRENCY: Final = 32
"""Connections to the destination at most, in both: kumo's default ``connection_limit``;
Postfix's default (``default_destination_concurrency_limit``) is 20, raised to this."""
TIMEOUT: Final = 900.0
"""Seconds any one wait of a benchmark may take before it counts as broken."""
SMTP_SINK: Final = "smtp-sink"
SMTP_SOURCE: Final = "smtp-source"
DISCARD_PORT: Final = 9
"""The relay port of a kumo that delivers nothing (``--no-deliver``): never connected to."""
POSTFIX_TOOLS: Final = ("postfix", "postsuper", "postqueue", SMTP_SINK, SMTP_SOURCE)


# -- small things -------------------------------------------------------------------------


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Return once something accepts on 127.0.0.1:``port`` (tools with no ready signal)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.02)


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc status")


def cpu_seconds(root: int) -> float:
    """CPU time (user and system, every thread) used so far by process ``root``, by its
    live descendants and by the children they reaped, from /proc: what a peer spent,
    whatever else this shared machine runs.

    /proc's ``stat`` counts in clock ticks (10 ms), truncated per process: a Postfix of
    a dozen processes that each spent 9 ms reads 0. So a live process counts its live
    threads' scheduler time in nanoseconds (``schedstat``), or its ticks when those are
    more (threads that ended are only in the ticks); reaped children count in ticks. The
    figure is a lower bound of the truth, within one tick per process, and not 0 once
    any process of the tree has run."""
    tick = 1 / os.sysconf("SC_CLK_TCK")
    seconds = 0.0
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            exact = _live_threads_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone meanwhile: its time is in its parent's reaped children's now
        utime, stime, cutime, cstime = (int(field) for field in fields[11:15])
        seconds += max((utime + stime) * tick, exact) + (cutime + cstime) * tick
        todo += [int(child) for child in children]
    return seconds


def _live_threads_seconds(pid: int) -> float:
    """The scheduler's CPU time (nanoseconds, untruncated) of the live threads of
    ``pid``; 0 on a kernel without ``schedstat`` (CONFIG_SCHED_INFO)."""
    nanoseconds = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        try:
            nanoseconds += int(Path(f"/proc/{pid}/task/{thread}/schedstat").read_text().split()[0])
        except FileNotFoundError:
            continue  # the thread ended meanwhile, or no schedstat here
    return nanoseconds / 1e9


def missing_tools() -> str | None:
    """Why the Postfix side cannot run here, or None."""
    absent = [tool for tool in POSTFIX_TOOLS if _tool(tool) is None]
    if absent:
        return f"{', '.join(absent)} not installed (Debian: apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (postfix start)"
    return None


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and os.path.exists(f"/usr/sbin/{name}"):
        found = f"/usr/sbin/{name}"
    return found


def tool(name: str) -> str:
    found = _tool(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed")
    return found


# -- Postfix's smtp-sink and smtp-source --------------------------------------------------


_SINK_COUNT: Final = re.compile(rb"mesg=(\d+)")


def sink_counts(data: bytes) -> tuple[list[int], bytes]:
    """The message counts in smtp-sink's ``-c`` output ``data``, and what follows the last
    one a CR or LF ends: a read may stop inside a count (``mesg=1000`` of ``mesg=10001``),
    whose rest comes with the next read."""
    ended = max(data.rfind(b"\r"), data.rfind(b"\n")) + 1
    return [int(count) for count in _SINK_COUNT.findall(data[:ended])], data[ended:]


class SmtpSink:
    """Postfix's smtp-sink on a free port of 127.0.0.1, counting what it receives.

    ``-c`` makes it print ``sess=N quit=N mesg=N`` (with a CR) at every message's end,
    flushed at once; a thread reads those and timestamps each count on
    :func:`time.monotonic` (CLOCK_MONOTONIC, the same clock in every process here).
    ``options`` go before the address: ``("-r", "rcpt")`` answers RCPT with a 4xx.
    """

    def __init__(self, *options: str) -> None:
        self.port = free_port()
        command = [tool(SMTP_SINK), "-c", *options, f"127.0.0.1:{self.port}", "1024"]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "nobody"]  # smtp-sink refuses to run as root
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._changed = threading.Condition()
        self.count = 0
        self.first_at = math.nan
        self._reached: list[tuple[int, float]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for_port(self.port)

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        partial = b""
        while chunk := os.read(stdout.fileno(), 65_536):
            now = time.monotonic()
            counts, partial = sink_counts(partial + chunk)
            if not counts:
                continue
            with self._changed:
                self.count = max(self.count, counts[-1])
                if self.count and math.isnan(self.first_at):
                    self.first_at = now
                self._reached.append((self.count, now))
                self._changed.notify_all()

    def wait_for(self, messages: int, timeout: float = TIMEOUT) -> float:
        """Block until the sink has received ``messages`` since it started; return the
        monotonic time at which its count reached them."""
        with self._changed:
            if not self._changed.wait_for(lambda: self.count >= messages, timeout):
                raise TimeoutError(f"smtp-sink has {self.count} of {messages} after {timeout}s")
            return next(at for count, at in self._reached if count >= messages)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@contextmanager
def smtp_sink(*options: str) -> Iterator[SmtpSink]:
    sink = SmtpSink(*options)
    try:
        yield sink
    finally:
        sink.stop()


def smtp_source(port: int, messages: int, sessions: int, size: int) -> float:
    """Send ``messages`` of ``size`` payload bytes to 127.0.0.1:``port`` over ``sessions``
    parallel sessions, each kept open for its next message; return the seconds it took.
    Every reply must be positive (smtp-source stops at the first that is not)."""
    command = [tool(SMTP_SOURCE), "-d", "-s", str(sessions), "-m", str(messages)]
    command += ["-l", str(size), "-M", HOSTNAME, "-f", SENDER, "-t", RECIPIENT]
    started = time.monotonic()
    completed = subprocess.run(
        [*command, f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=TIMEOUT
    )
    seconds = time.monotonic() - started
    if completed.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({completed.returncode}): {completed.stderr}")
    return seconds


# -- a private Postfix --------------------------------------------------------------------


_MASTER_CF: Final = """\
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """A Postfix instance of its own under a temporary directory, relaying everything
    it accepts from 127.0.0.1 to ``[127.0.0.1]:relay_port``.

    Debian's defaults but for: no local delivery (``mydestination`` empty), no TLS, no
    chroot (the queue directory is under /tmp), its log in a file of its own
    (``maillog_file``, through postlogd), and :data:`DELIVERY_CONCURRENCY` connections
    to the relay host. ``hold`` puts every accepted message on hold (after its queue
    file is fsynced and before the ``250``): the pure ingress, and a queue to release.
    """

    def __init__(self, relay_port: int, *, hold: bool = False) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="kumo-bench-postfix-"))
        # The daemons run as the postfix user and must reach data_directory and the log.
        self.base.chmod(0o755)
        self.config = self.base / "conf"
        self.queue = self.base / "queue"
        self.maillog = self.base / "maillog"
        for directory in (self.config, self.queue):
            directory.mkdir(mode=0o755)
        data = self.base / "data"
        data.mkdir(mode=0o700)
        shutil.chown(data, "postfix")
        self.port = free_port()
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(data),
            "myhostname": f"postfix.{HOSTNAME}",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "relayhost": f"[127.0.0.1]:{relay_port}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "alias_maps": "",
            "local_recipient_maps": "",
            "biff": "no",
            "maillog_file_prefixes": str(self.base),
            "maillog_file": str(self.maillog),
            "default_destination_concurrency_limit": str(DELIVERY_CONCURRENCY),
        }
        if hold:
            settings["smtpd_end_of_data_restrictions"] = "check_client_access static:HOLD"
        (self.config / "main.cf").write_text(
            "".join(f"{key} = {value}\n" for key, value in settings.items())
        )
        (self.config / "master.cf").write_text(_MASTER_CF.format(port=self.port))
        self.master = 0
        try:
            self._run("postfix", "start")
            self.master = int((self.queue / "pid" / "master.pid").read_text().split()[0])
            wait_for_port(self.port)
        except BaseException:
            self.stop()
            raise

    def _run(self, command: str, *arguments: str, stdin: str | None = None) -> str:
        completed = subprocess.run(
            [tool(command), "-c", str(self.config), *arguments],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        if completed.returncode != 0:
            log = self.maillog.read_text() if self.maillog.exists() else ""
            raise RuntimeError(
                f"{command} {' '.join(arguments)} failed: {completed.stderr}\n{log[-4000:]}"
            )
        return completed.stdout

    def count(self, *queues: str) -> int:
        """Queue files in the named queues (``incoming``, ``active``, ``deferred``,
        ``hold``), read from the directories (hashed ones included)."""
        return sum(len(files) for queue in queues for _, _, files in os.walk(self.queue / queue))

    def wait_until(self, done: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> float:
        """Poll ``done`` every 50 ms; return the monotonic time it held."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Postfix: {what} after {timeout}s")
            time.sleep(0.05)
        return time.monotonic()

    def release_held(self) -> None:
        """Every message on hold to the deferred queue, and the queue manager to it now."""
        self._run("postsuper", "-H", "ALL")
        self._run("postqueue", "-f")

    def ids_to(self, domain: str, queue: str = "deferred") -> list[str]:
        """The queue ids of the messages in ``queue`` with a recipient at ``domain``
        (``postqueue -j``, as an operator would select them)."""
        ids = []
        for line in self._run("postqueue", "-j").splitlines():
            entry = json.loads(line)
            if entry["queue_name"] == queue and any(
                r["address"].endswith("@" + domain) for r in entry["recipients"]
            ):
                ids.append(entry["queue_id"])
        return ids

    def delete(self, ids: Sequence[str]) -> None:
        self._run("postsuper", "-d", "-", "deferred", stdin="".join(f"{i}\n" for i in ids))

    def expire(self, ids: Sequence[str]) -> None:
        """Mark the messages expired and flush: the queue manager returns each to its
        sender at its next look, which the flush makes now."""
        self._run("postsuper", "-e", "-", "deferred", stdin="".join(f"{i}\n" for i in ids))
        self._run("postqueue", "-f")

    def logged(self, text: str) -> int:
        """Lines of the instance's log that contain ``text``."""
        with self.maillog.open("rb") as log:
            return sum(chunk.count(text.encode()) for chunk in iter(lambda: log.read(1 << 20), b""))

    def stop(self) -> None:
        """``postfix stop``; wait until its master is gone; delete its directories."""
        try:
            if self.master:
                self._run("postfix", "stop")
            deadline = time.monotonic() + 60
            while Path(f"/proc/{self.master}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


@contextmanager
def postfix(relay_port: int, *, hold: bool = False) -> Iterator[Postfix]:
    instance = Postfix(relay_port, hold=hold)
    try:
        yield instance
    finally:
        instance.stop()


# -- kumo serve ---------------------------------------------------------------------------


def kumo_config(relay_port: int, *, top: str = "", listener: str = "") -> str:
    """``kumo serve``'s configuration: mail to :data:`DOMAIN` goes to 127.0.0.1:``relay_port``
    (``mx_list``; loopback allowed), in clear text, as Postfix relays it. ``top`` and
    ``listener``: more lines for the top level and for ``[smtp_listener]``."""
    return (
        f'{top}[smtp_listener]\nhostname = "kumo.{HOSTNAME}"\n{listener}'
        f'[egress]\nprohibited_hosts = []\nenable_tls = "Disabled"\n'
        f'ehlo_domain = "kumo.{HOSTNAME}"\nconnection_limit = {DELIVERY_CONCURRENCY}\n'
        f'[domains."{DOMAIN}"]\nmx_list = ["127.0.0.1:{relay_port}"]\n'
    )


class Kumo:
    """A ``kumo serve`` on 127.0.0.1 (HTTP and SMTP on free ports), delivering to
    127.0.0.1:``relay_port`` unless ``deliver`` is false (``--no-deliver``); ``config``
    replaces :func:`kumo_config`'s text."""

    _HTTP: Final = "kumo listening on "
    _SMTP: Final = "kumo smtp listening on "

    def __init__(
        self, data_dir: Path, relay_port: int, *, deliver: bool, config: str | None = None
    ) -> None:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        config_path = data_dir.with_name(data_dir.name + ".toml")
        config_path.write_text(kumo_config(relay_port) if config is None else config)
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115  # closed by stop()
        command = [sys.executable, "-m", "kumo.cli.serve", "--listen", "127.0.0.1:0"]
        command += ["--smtp-listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
        command += ["--config", str(config_path), "--deliver" if deliver else "--no-deliver"]
        self.spawned = time.monotonic()
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.url = self._line(self._HTTP)
        self.ready = time.monotonic()
        # Printed right after the URL (and perhaps already in the pipe's buffer).
        self.smtp_port = int(self._line(self._SMTP, select=False).rpartition(":")[2])

    def _line(self, prefix: str, *, select: bool = True) -> str:
        stdout = self.process.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + TIMEOUT
            while True:
                if select and not selector.select(max(0.0, deadline - time.monotonic())):
                    self.kill()
                    raise TimeoutError("kumo serve did not start")
                line = stdout.readline()
                if not line:
                    raise RuntimeError(f"kumo serve exited:\n{self.stderr_text()}")
                if line.startswith(prefix):
                    return line[len(prefix) :].strip()

    def rss(self) -> int:
        return rss_bytes(self.process.pid)

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM, and wait for a clean exit (status 0)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        if status != 0:
            raise RuntimeError(f"kumo serve exited {status}:\n{self.stderr_text()}")
        self._close()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self._close()

    def _close(self) -> None:
        if self.process.stdout is not None:
            self.process.stdout.close()
        if not self._stderr.closed:
            self._stderr.close()


@contextmanager
def kumo(
    data_dir: Path, relay_port: int, *, deliver: bool, config: str | None = None
) -> Iterator[Kumo]:
    server = Kumo(data_dir, relay_port, deliver=deliver, config=config)
    try:
        yield server
    except BaseException:
        if server.process.poll() is None:
            server.kill()
        raise
    server.stop()


class RecordCounter:
    """Counts the records of one type in a kumo data directory's delivery log, reading
    only what was appended since the last call (complete lines only)."""

    def __init__(self, data_dir: Path, record_type: str) -> None:
        self._logs = data_dir / "logs"
        self._marker = b'{"type":"' + record_type.encode() + b'"'
        self._offsets: dict[Path, int] = {}
        self.count = 0

    def __call__(self) -> int:
        for segment in sorted(self._logs.glob("*.jsonl")):
            offset = self._offsets.get(segment, 0)
            with segment.open("rb") as file:
                file.seek(offset)
                data = file.read()
            end = data.rfind(b"\n") + 1
            self.count += data.count(self._marker, 0, end)
            self._offsets[segment] = offset + end
        return self.count


def rule_bounced(client: httpx.Client, rule_id: str) -> int:
    response = client.get(BOUNCE_PATH)
    response.raise_for_status()
    for rule in orjson.loads(response.content):
        if rule["id"] == rule_id:
            return int(rule["total_bounced"])
    return 0


def poll(probe: Callable[[], bool], what: str, period: float = 0.05) -> float:
    """Call ``probe`` every ``period`` s until it holds; return the monotonic time."""
    deadline = time.monotonic() + TIMEOUT
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {TIMEOUT}s")
        time.sleep(period)
    return time.monotonic()


# -- a timestamping sink and a paced client -----------------------------------------------


class _Lines:
    """Lines (CRLF-terminated) from a Trio stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            chunk = await self.stream.receive_some(65_536)
            if not chunk:
                raise EOFError("connection closed")
            self._buffer += chunk

    async def reply(self) -> int:
        """The code of the next (maybe multi-line) SMTP reply."""
        while True:
            line = await self.line()
            if line[3:4] != b"-":
                return int(line[:3])


SEQ_HEADER: Final = b"X-Bench-Seq: "


async def _sink_session(stream: trio.SocketStream, out: IO[str]) -> None:
    """One SMTP session of :func:`serve_sink`: everything accepted; each message's
    ``X-Bench-Seq`` and the monotonic time its final dot came, one line on ``out``."""
    lines = _Lines(stream)
    async with stream:
        await stream.send_all(b"220 sink.bench.invalid ESMTP\r\n")
        try:
            while True:
                command = (await lines.line())[:4].upper()
                if command in (b"EHLO", b"HELO"):
                    await stream.send_all(b"250-sink.bench.invalid\r\n250 PIPELINING\r\n")
                elif command == b"DATA":
                    await stream.send_all(b"354 go ahead\r\n")
                    seq = b"?"
                    while (line := await lines.line()) != b".\r\n":
                        if line.startswith(SEQ_HEADER):
                            seq = line[len(SEQ_HEADER) :].strip()
                    out.write(f"{seq.decode()} {time.monotonic()!r}\n")
                    out.flush()
                    await stream.send_all(b"250 2.0.0 ok\r\n")
                elif command == b"QUIT":
                    await stream.send_all(b"221 2.0.0 bye\r\n")
                    return
                else:  # MAIL, RCPT, RSET, NOOP
                    await stream.send_all(b"250 2.0.0 ok\r\n")
        except (EOFError, trio.BrokenResourceError):
            return


async def serve_sink(out: IO[str]) -> None:
    """Listen on a free port of 127.0.0.1, print ``port N``, then one line per message
    (see :func:`_sink_session`), until killed."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    out.write(f"port {listener.socket.getsockname()[1]}\n")
    out.flush()
    await trio.serve_listeners(functools.partial(_sink_session, out=out), [listener])


class TimestampingSink:
    """:func:`serve_sink` in a child process; ``received[seq]`` is when message ``seq``
    arrived (monotonic)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "sink"],
            stdout=subprocess.PIPE,
            text=True,
        )
        stdout = self.process.stdout
        assert stdout is not None
        self.port = int(stdout.readline().split()[1])
        self.received: dict[int, float] = {}
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        for line in stdout:
            seq, at = line.split()
            with self._changed:
                self.received[int(seq)] = float(at)
                self._changed.notify_all()

    def wait_for(self, messages: int, timeout: float = TIMEOUT) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.received) >= messages, timeout):
                raise TimeoutError(f"the sink has {len(self.received)} of {messages}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@attrs.frozen
class Sent:
    seq: int
    due: float
    """Monotonic time the message was due to be sent."""
    acked: float
    """Monotonic time its ``250`` came."""


def latency_message(seq: int, size: int) -> bytes:
    """Message ``seq``: a few headers, ``X-Bench-Seq``, ``size`` bytes in 78-byte lines."""
    line = b"x" * 76 + b"\r\n"
    body = line * (size // len(line)) + b"x" * (size % len(line)) + b"\r\n"
    headers = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: latency {seq}\r\n"
        f"Message-ID: <{seq}.latency@{HOSTNAME}>\r\n"
    ).encode()
    return headers + SEQ_HEADER + str(seq).encode() + b"\r\n\r\n" + body + b".\r\n"


async def paced_client(
    port: int, rate: float, messages: int, sessions: int, size: int
) -> list[Sent]:
    """Offer ``messages`` to 127.0.0.1:``port``, message k due at start + k/``rate``,
    over ``sessions`` persistent sessions (one transaction at a time each, no
    pipelining, as smtp-source). A message waits for a free session; its latency still
    counts from when it was due."""
    send, receive = trio.open_memory_channel[tuple[int, float]](messages)
    sent: list[Sent] = []

    async def session(receive: trio.MemoryReceiveChannel[tuple[int, float]]) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        lines = _Lines(stream)
        async with stream, receive:

            async def command(text: bytes, expected: int) -> None:
                await stream.send_all(text)
                code = await lines.reply()
                if code != expected:
                    raise RuntimeError(f"{text[:20]!r}: {code} (expected {expected})")

            if await lines.reply() != 220:
                raise RuntimeError("no 220 banner")
            await command(f"EHLO client.{HOSTNAME}\r\n".encode(), 250)
            async for seq, due in receive:
                await command(f"MAIL FROM:<{SENDER}>\r\n".encode(), 250)
                await command(f"RCPT TO:<{RECIPIENT}>\r\n".encode(), 250)
                await command(b"DATA\r\n", 354)
                await command(latency_message(seq, size), 250)
                sent.append(Sent(seq, due, time.monotonic()))
            await command(b"QUIT\r\n", 221)

    async with trio.open_nursery() as nursery:
        for _ in range(sessions):
            nursery.start_soon(session, receive.clone())
        await receive.aclose()
        async with send:
            start = time.monotonic() + 0.2  # the sessions connect and say EHLO first
            for seq in range(messages):
                due = start + seq / rate
                await trio.sleep_until(_trio_deadline(due))
                send.send_nowait((seq, due))
    return sent


def _trio_deadline(monotonic: float) -> float:
    """Trio's clock for a :func:`time.monotonic` time (both count from boot here, but
    Trio's clock has an offset of its own)."""
    return trio.current_time() + (monotonic - time.monotonic())


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/mail_peers.py sink``: :func:`serve_sink` on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["sink"])
    parser.parse_args(argv)
    trio.run(serve_sink, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

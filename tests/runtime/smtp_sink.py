"""A small scripted SMTP server for the tests of the SMTP client's shell.

:class:`SmtpSink` listens on 127.0.0.1 (a free port) and answers every command with a
default reply, or with the next scripted :data:`Action` for that verb: a reply, a dropped
connection, or silence. It records, per connection, every command line, every chunk it
read, and each transaction with its content exactly as it came over the wire (dot-stuffed,
final dot included), so that a test can check deliveries byte for byte.

Verbs: ``BANNER`` (before any command), ``EHLO``, ``STARTTLS``, ``MAIL``, ``RCPT``,
``DATA``, ``DOT`` (the reply after the content), ``RSET``, ``QUIT``.
"""

from __future__ import annotations

import enum
import functools
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final, TypeAlias

import attrs
import trio


class Act(enum.Enum):
    DROP = "drop"
    """Close the connection instead of replying."""
    STALL = "stall"
    """Never reply (nor read again)."""


Action: TypeAlias = bytes | Act | trio.Event
"""A reply (CRLF included), an :class:`Act`, or an event: the default reply once it is
set (a reply held back until the test lets it go)."""

DEFAULTS: Final[dict[str, bytes]] = {
    "BANNER": b"220 sink.test ESMTP ready\r\n",
    "STARTTLS": b"220 2.0.0 Ready to start TLS\r\n",
    "MAIL": b"250 2.1.0 Ok\r\n",
    "RCPT": b"250 2.1.5 Ok\r\n",
    "DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    "DOT": b"250 2.0.0 Ok: queued\r\n",
    "RSET": b"250 2.0.0 Ok\r\n",
    "QUIT": b"221 2.0.0 Bye\r\n",
    "NOOP": b"250 2.0.0 Ok\r\n",
}


@attrs.define
class Transaction:
    sender: bytes
    recipients: list[bytes]
    data: bytes = b""
    """The bytes after the 354, through the final ``.\\r\\n``."""


@attrs.define
class SinkSession:
    """What one connection brought."""

    commands: list[bytes] = attrs.Factory(list)
    """Each command line, CRLF included."""
    chunks: list[bytes] = attrs.Factory(list)
    """Each read, as it came (after STARTTLS: as decrypted)."""
    transactions: list[Transaction] = attrs.Factory(list)
    tls: bool = False
    early: list[bytes] = attrs.Factory(list)
    """Commands that arrived before the reply to the previous one was sent, on a sink
    that does not offer PIPELINING."""
    closed_by_client: bool = False
    peer: str = ""
    """The client's ``ip:port``."""


class _Dropped(Exception):
    pass


@attrs.define(eq=False)
class _Reader:
    stream: trio.abc.Stream
    session: SinkSession
    buffer: bytearray = attrs.Factory(bytearray)

    async def fill(self) -> bool:
        data = await self.stream.receive_some(65536)
        if not data:
            return False
        self.session.chunks.append(bytes(data))
        self.buffer += data
        return True

    async def line(self) -> bytes | None:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if not await self.fill():
                return None
        line = bytes(self.buffer[: end + 2])
        del self.buffer[: end + 2]
        return line

    async def data(self) -> bytes | None:
        """The content through the final dot."""
        while True:
            if self.buffer.startswith(b".\r\n"):
                end = 3
                break
            found = self.buffer.find(b"\r\n.\r\n")
            if found >= 0:
                end = found + 5
                break
            if not await self.fill():
                return None
        data = bytes(self.buffer[:end])
        del self.buffer[:end]
        return data


@attrs.define(eq=False)
class SmtpSink:
    """See the module docstring; :func:`running_sink` starts one."""

    pipelining: bool = True
    tls: ssl.SSLContext | None = None
    """The server context; STARTTLS is offered when set."""
    extensions: tuple[str, ...] = ("8BITMIME", "SMTPUTF8")
    script: dict[str, list[Action]] = attrs.Factory(dict)
    sessions: list[SinkSession] = attrs.Factory(list)
    port: int = 0

    def then(self, verb: str, *actions: Action) -> SmtpSink:
        """Script the next replies to ``verb``, in turn."""
        self.script.setdefault(verb, []).extend(actions)
        return self

    @property
    def transactions(self) -> list[Transaction]:
        """Every transaction of every session that got as far as its content."""
        return [t for s in self.sessions for t in s.transactions if t.data]

    async def handle(self, stream: trio.SocketStream) -> None:
        host, port = stream.socket.getpeername()[:2]
        await self.serve(stream, f"{host}:{port}")

    async def serve(self, stream: trio.abc.Stream, peer: str = "") -> None:
        """Converse over ``stream`` (a TCP connection, or one end of an in-memory pair)."""
        session = SinkSession(peer=peer)
        self.sessions.append(session)
        reader = _Reader(stream, session)
        try:
            await self._converse(reader)
        except (_Dropped, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(reader.stream)

    async def _reply(self, reader: _Reader, verb: str, default: bytes | None = None) -> None:
        queued = self.script.get(verb)
        action: Action = queued.pop(0) if queued else (default or DEFAULTS[verb])
        if action is Act.DROP:
            raise _Dropped
        if action is Act.STALL:
            await trio.sleep_forever()
        if isinstance(action, trio.Event):
            await action.wait()
            action = default or DEFAULTS[verb]
        assert isinstance(action, bytes)
        await reader.stream.send_all(action)

    def _ehlo(self, session: SinkSession) -> bytes:
        lines = ["sink.test greets you"]
        if self.pipelining:
            lines.append("PIPELINING")
        lines.extend(self.extensions)
        if self.tls is not None and not session.tls:
            lines.append("STARTTLS")
        text = "".join(f"250-{line}\r\n" for line in lines[:-1]) + f"250 {lines[-1]}\r\n"
        return text.encode()

    async def _converse(self, reader: _Reader) -> None:
        session = reader.session
        await self._reply(reader, "BANNER")
        transaction: Transaction | None = None
        while True:
            line = await reader.line()
            if line is None:
                session.closed_by_client = True
                return
            session.commands.append(line)
            if not self.pipelining and reader.buffer:
                session.early.append(bytes(reader.buffer))
            verb = line[:4].upper().decode("ascii", "replace")
            if line.upper().startswith(b"STARTTLS"):
                verb = "STARTTLS"
            if verb == "EHLO":
                await self._reply(reader, "EHLO", self._ehlo(session))
            elif verb == "STARTTLS":
                assert self.tls is not None
                await self._reply(reader, "STARTTLS")
                reader.buffer.clear()
                tls = trio.SSLStream(reader.stream, self.tls, server_side=True)
                await tls.do_handshake()
                reader.stream = tls
                session.tls = True
            elif verb == "MAIL":
                transaction = Transaction(line, [])
                session.transactions.append(transaction)
                await self._reply(reader, "MAIL")
            elif verb == "RCPT":
                assert transaction is not None
                transaction.recipients.append(line)
                await self._reply(reader, "RCPT")
            elif verb == "DATA":
                queued = self.script.get("DATA")
                upcoming = queued[0] if queued else DEFAULTS["DATA"]
                await self._reply(reader, "DATA")
                if not (isinstance(upcoming, bytes) and upcoming.startswith(b"354")):
                    continue
                data = await reader.data()
                if data is None:
                    return
                assert transaction is not None
                transaction.data = data
                await self._reply(reader, "DOT")
                transaction = None
            elif verb == "RSET":
                transaction = None
                await self._reply(reader, "RSET")
            elif verb == "QUIT":
                await self._reply(reader, "QUIT")
                return
            else:
                await reader.stream.send_all(b"502 5.5.2 Error: command not recognized\r\n")


@asynccontextmanager
async def running_sink(sink: SmtpSink | None = None) -> AsyncIterator[SmtpSink]:
    """``sink`` (a default one if None) listening on 127.0.0.1; stopped at the end."""
    sink = sink or SmtpSink()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, sink.handle, 0, host="127.0.0.1")
        )
        sink.port = listeners[0].socket.getsockname()[1]
        try:
            yield sink
        finally:
            nursery.cancel_scope.cancel()

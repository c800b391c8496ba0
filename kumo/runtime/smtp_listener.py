"""The SMTP listener: the Trio shell around :class:`kumo.model.smtp_server.SmtpSession`.

Task tree (``await nursery.start(listener.run)`` reports the bound address)::

    SmtpListener.run
    ├── trio.serve_listeners     accepts connections until shut_down()
    └── sessions (a nursery)     one task per connection, SmtpListener._serve

The session decides every reply and :mod:`kumo.model.smtp_reception` what the log
records; this shell only reads (each read bounded by ``client_timeout``), writes,
draws spool ids, has the engine make messages durable, and wraps the connection in TLS
when the session says so. What it guarantees:

- ``250 OK ids=...`` is written only once :meth:`MailEngine.receive` has returned, that
  is once every message of the transaction is durable (group commit with whatever else
  waits). If the engine refuses (stopping, log failed) the client gets ``421 4.3.2
  <hostname> the spool is not accepting writes. Try later``; if making them durable
  takes longer than ``data_processing_timeout``, ``451 4.4.5 data_processing_timeout
  exceeded (spool)``. Never a ``250``. (After that ``451`` the messages may still become
  durable, as in KumoMTA: a client that sends again may deliver twice.)
- Nothing half-received is queued: a message cut off by a disconnect, a time-out or a
  shutdown is dropped by the session before anything reaches the engine.
- At most ``max_connections`` sessions at a time; a connection over the limit gets
  ``421 4.3.2 <hostname> too many concurrent sessions. Try later`` and is closed.
- Every ``4xx``/``5xx`` the session decides is recorded as a ``Rejected`` event on the
  log's background lane: the reply does not wait for it to be durable.
- :meth:`SmtpListener.shut_down` stops accepting at once and gives every session
  ``421 4.3.2 <hostname> shutting down`` (a session whose messages are being made
  durable first gets the reply it owes them), then closes it; :meth:`SmtpListener.run`
  returns once every session is closed, or ``shutdown_grace`` after the call, cutting
  off what is left (a client that does not read its replies, say).
- A client that goes away, sends garbage or fails its TLS handshake ends its own
  session only; nothing it does raises out of :meth:`SmtpListener.run`.
"""

from __future__ import annotations

import contextlib
import math
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Final, Protocol

import attrs
import trio

from kumo.model.duration import NANOS_PER_MINUTE, NANOS_PER_SECOND
from kumo.model.events import MessageReceived, Rejected
from kumo.model.smtp_reception import plan_reception, rejected_event
from kumo.model.smtp_server import (
    SPOOL_TIMED_OUT,
    Close,
    MessagesReceived,
    Output,
    Peer,
    Phase,
    Rejection,
    Reply,
    SmtpServerSettings,
    SmtpSession,
    StartTls,
    spool_refused,
    too_many_sessions,
)
from kumo.model.statistics import counter, gauge, info
from kumo.runtime.refusal import RefusedError
from kumo.store.ids import random_ids

READ_SIZE: Final = 128 * 1024
"""Bytes asked of each read (KumoMTA's ``data_buffer_size``)."""


class MailEngine(Protocol):
    """What the listener needs of the engine (:class:`kumo.runtime.engine.Engine`)."""

    def now(self) -> int:
        """The engine clock's reading, ns since the epoch."""
        ...

    async def receive(self, events: Sequence[MessageReceived], bodies: Sequence[bytes]) -> object:
        """Return once the messages are durable; raise ``RefusedError`` if they cannot be."""
        ...

    async def record_rejections(self, events: Sequence[Rejected]) -> None:
        """Queue the events for the log without waiting for durability."""
        ...


def _check_positive(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive int, got {value!r}")


@attrs.frozen(eq=False)
class ListenerSettings:
    """Everything the listener runs with; ``kumo serve`` makes it from ``[smtp_listener]``.

    Durations are integer nanoseconds, as everywhere in kumo.
    """

    host: str
    """The address to listen on (an IP or a name); ``port`` 0 picks a free port."""
    port: int
    session: SmtpServerSettings
    """What every session decides with; its ``starttls`` says whether ``tls`` is set."""
    max_connections: int = attrs.field(default=32_768, validator=_check_positive)
    client_timeout: int = attrs.field(default=60 * NANOS_PER_SECOND, validator=_check_positive)
    """How long each read (and each write, and the TLS handshake) may wait."""
    data_processing_timeout: int = attrs.field(
        default=5 * NANOS_PER_MINUTE, validator=_check_positive
    )
    """How long the messages of a transaction may take to become durable."""
    tls: ssl.SSLContext | None = None
    """The server's TLS context (certificate and key loaded); None: no STARTTLS."""
    shutdown_grace: int = attrs.field(default=10 * NANOS_PER_SECOND, validator=_check_positive)
    """How long sessions get to say goodbye after :meth:`SmtpListener.shut_down`."""

    def __attrs_post_init__(self) -> None:
        if self.session.starttls != (self.tls is not None):
            raise ValueError("session.starttls must be set exactly when a TLS context is given")


def server_tls_context(certificate: Path, private_key: Path) -> ssl.SSLContext:
    """A TLS server context with ``certificate`` and ``private_key`` (PEM files).

    Blocking (it reads the files); raises ``OSError`` or ``ssl.SSLError`` if they cannot
    be read or do not match.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, private_key)
    return context


@attrs.frozen
class SmtpListenerStatistics:
    """What the SMTP listener has done and holds now."""

    address: str = info("HOST:PORT the listener is bound to (empty until it is).")
    sessions: int = gauge("SMTP sessions open now.")
    connections: int = counter("SMTP connections accepted by this process, refused ones too.")
    refused: int = counter("SMTP connections refused by this process for max_connections.")
    messages_received: int = counter("Messages received over SMTP and made durable.")
    rejections: int = counter("4xx and 5xx replies the SMTP sessions of this process gave.")


class _Abandon(Exception):
    """The connection cannot go on (a write or handshake timed out): drop it."""


@attrs.define(eq=False)
class _Connection:
    stream: trio.abc.Stream
    session: SmtpSession
    local_ip: str
    io: trio.CancelScope = attrs.Factory(trio.CancelScope)
    """Bounds the session's reads and writes: one scope for the whole exchange, whose
    deadline each read and write moves (a scope per read and per write cost a third of
    the listener's time). Nothing else waits under it (see :meth:`SmtpListener._wait`)."""
    reading: bool = False
    sending: bool = False
    told_to_stop: bool = False
    """:meth:`SmtpListener.shut_down` cancelled :attr:`io` during a read."""


def _seconds(nanoseconds: int) -> float:
    return nanoseconds / NANOS_PER_SECOND


def _address_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SmtpListener:
    """Listens for SMTP clients and serves each one; see the module docstring."""

    def __init__(
        self,
        engine: MailEngine,
        settings: ListenerSettings,
        *,
        new_ids: Callable[[int], list[str]] = random_ids,
        turn: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``turn``: awaited after each read, before the session acts on it (admin
        requests first: :class:`kumo.runtime.admin_gate.AdminGate`)."""
        self._engine = engine
        self._turn = turn
        self._settings = settings
        self._new_ids = new_ids
        self._stopping = False
        self._accepting = trio.CancelScope()
        self._sessions_scope = trio.CancelScope()
        self._sessions: set[_Connection] = set()
        self._open = 0
        self._connections = 0
        self._refused = 0
        self._received = 0
        self._rejections = 0
        self.address: str | None = None
        """``HOST:PORT`` bound to (``[v6]:PORT``), once :meth:`run` has started."""

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, report the bound ``HOST:PORT``, and serve until :meth:`shut_down`
        and every session has ended. Raises ``OSError`` if the address cannot be bound
        (before reporting)."""
        settings = self._settings
        listeners = await trio.open_tcp_listeners(settings.port, host=settings.host)
        try:
            host, port = listeners[0].socket.getsockname()[:2]
            self.address = _address_text(host, port)
            with self._sessions_scope:
                async with trio.open_nursery() as sessions:
                    with self._accepting:
                        task_status.started(self.address)
                        await trio.serve_listeners(self._serve, listeners, handler_nursery=sessions)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    def shut_down(self) -> None:
        """Stop accepting and close every session gracefully (see the module docstring).
        Returns at once; :meth:`run` returns when it is done."""
        if self._stopping:
            return
        self._stopping = True
        self._accepting.cancel()
        for connection in self._sessions:
            if connection.reading:  # else it sees _stopping before its next read
                connection.told_to_stop = True
                connection.io.cancel()
        self._sessions_scope.deadline = trio.current_time() + _seconds(
            self._settings.shutdown_grace
        )

    def statistics(self) -> SmtpListenerStatistics:
        return SmtpListenerStatistics(
            address=self.address or "",
            sessions=self._open,
            connections=self._connections,
            refused=self._refused,
            messages_received=self._received,
            rejections=self._rejections,
        )

    # -- one connection ------------------------------------------------------------------

    async def _serve(self, stream: trio.SocketStream) -> None:
        """Serve one TCP connection; ``serve_listeners`` closes the stream afterwards."""
        try:
            peer_ip, peer_port = stream.socket.getpeername()[:2]
            local_ip = stream.socket.getsockname()[0]
        except OSError:
            self._connections += 1
            return  # gone before it could be served
        await self.serve_connection(stream, Peer(peer_ip, peer_port), local_ip)

    async def serve_connection(self, stream: trio.abc.Stream, peer: Peer, local_ip: str) -> None:
        """Serve one connection from ``peer`` that reached ``local_ip``, as :meth:`run`
        serves each it accepts (an in-process scenario hands in streams of its own,
        without a socket). Returns when the session is over; closing ``stream`` is the
        caller's (a stream the session wrapped in TLS is closed here). Never raises for
        what the client does."""
        self._connections += 1
        settings = self._settings
        if self._open >= settings.max_connections:
            self._refused += 1
            with (
                trio.move_on_after(_seconds(settings.client_timeout)),
                contextlib.suppress(trio.BrokenResourceError),
            ):
                await stream.send_all(too_many_sessions(settings.session).encode())
            return
        self._open += 1
        session = SmtpSession(settings.session, peer)
        connection = _Connection(stream, session, local_ip)
        try:
            await self._converse(connection)
        except (trio.BrokenResourceError, trio.ClosedResourceError, _Abandon):
            pass  # the client went away, or would not read: its session just ends
        finally:
            self._open -= 1
            if connection.stream is not stream:
                await trio.aclose_forcefully(connection.stream)

    async def _converse(self, connection: _Connection) -> None:
        session = connection.session
        outputs: list[Output] | None = (
            session.shutting_down() if self._stopping else session.start()
        )
        self._sessions.add(connection)
        try:
            while outputs is not None:
                outputs = await self._exchange(connection, outputs)
        finally:
            self._sessions.discard(connection)

    async def _exchange(
        self, connection: _Connection, outputs: list[Output]
    ) -> list[Output] | None:
        """Carry out ``outputs``, then read and feed the session, until it closes
        (None) or a read is cut short: then the outputs of its time-out or of the
        shutdown, to carry out under a new scope."""
        session = connection.session
        timeout = _seconds(self._settings.client_timeout)
        io = connection.io = trio.CancelScope()
        with io:
            while True:
                await self._carry_out(connection, outputs)
                if session.phase is Phase.CLOSED:
                    return None
                if self._stopping:
                    outputs = session.shutting_down()
                    continue
                io.deadline = trio.current_time() + timeout
                connection.reading = True
                try:
                    data = await connection.stream.receive_some(READ_SIZE)
                finally:
                    connection.reading = False
                if self._turn is not None:
                    await self._turn()
                outputs = session.receive_data(data if type(data) is bytes else bytes(data))
                if io.cancel_called:
                    # Cancelled after the data came (by shut_down() or the deadline):
                    # what it asks for is carried out under a new scope.
                    return outputs
        # Only a cancelled scope gets here: a write or a read timed out, or shut_down().
        if connection.sending:
            raise _Abandon("the client does not read its replies")
        return session.shutting_down() if connection.told_to_stop else session.timed_out()

    @staticmethod
    def _wait(connection: _Connection) -> None:
        """What follows waits on kumo, not on the client: no read or write deadline."""
        connection.io.deadline = math.inf

    async def _carry_out(self, connection: _Connection, outputs: Iterable[Output]) -> None:
        """Do what the session asked, in order; replies are written together, at the end
        or before anything that waits."""
        replies: list[bytes] = []
        rejections: list[Rejected] = []
        todo = deque(outputs)
        while todo:
            output = todo.popleft()
            if isinstance(output, Reply):
                replies.append(output.encode())
            elif isinstance(output, Rejection):
                rejections.append(rejected_event(output))
            elif isinstance(output, MessagesReceived):
                await self._flush(connection, replies, rejections)
                self._wait(connection)
                todo.extend(await self._make_durable(connection, output))
            elif isinstance(output, StartTls):
                await self._flush(connection, replies, rejections)
                self._wait(connection)
                await self._start_tls(connection)
                todo.extend(connection.session.tls_established())
            else:
                assert isinstance(output, Close)
        await self._flush(connection, replies, rejections)

    async def _flush(
        self, connection: _Connection, replies: list[bytes], rejections: list[Rejected]
    ) -> None:
        if rejections:
            self._rejections += len(rejections)
            self._wait(connection)
            # When the log is closing the records are lost; the replies are still given.
            with contextlib.suppress(RefusedError):
                await self._engine.record_rejections(rejections)
            rejections.clear()
        if replies:
            data = b"".join(replies)
            replies.clear()
            # A write that times out cancels the session's scope: _exchange drops it.
            connection.io.deadline = trio.current_time() + _seconds(self._settings.client_timeout)
            connection.sending = True
            try:
                await connection.stream.send_all(data)
            finally:
                connection.sending = False

    async def _make_durable(
        self, connection: _Connection, received: MessagesReceived
    ) -> list[Output]:
        session = connection.session
        settings = self._settings
        ids = self._new_ids(len(received.recipients))
        events, content = plan_reception(
            received,
            ids,
            hostname=settings.session.hostname,
            local_ip=connection.local_ip,
            received_at=self._engine.now(),
        )
        with trio.move_on_after(_seconds(settings.data_processing_timeout)):
            try:
                await self._engine.receive(events, [content] * len(events))
            except RefusedError:
                return session.messages_failed(spool_refused(settings.session))
            self._received += len(events)
            return session.messages_durable(ids)
        return session.messages_failed(SPOOL_TIMED_OUT)

    async def _start_tls(self, connection: _Connection) -> None:
        context = self._settings.tls
        assert context is not None  # the session offers STARTTLS only with one
        stream = trio.SSLStream(connection.stream, context, server_side=True)
        with trio.move_on_after(_seconds(self._settings.client_timeout)) as waited:
            await stream.do_handshake()
        if waited.cancelled_caught:
            raise _Abandon("the TLS handshake timed out")
        connection.stream = stream

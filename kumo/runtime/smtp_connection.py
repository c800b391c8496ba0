"""One outgoing SMTP connection: the Trio shell around :class:`kumo.model.smtp_client.SmtpClient`.

:meth:`SmtpConnection.run` delivers the messages a caller hands it, one transaction
each, over one connection, and reports what became of each. The client machine decides
every command, every text and what each reply means; this shell only connects, reads,
writes, wraps the stream in TLS when the machine says so, and keeps the machine's one
timer (the deadline of :attr:`SmtpClient.timeout`, restarted whenever its serial
changes, on one cancel scope that bounds the reads and writes).

How it goes (KumoMTA's dispatcher, reference sections 2.4, 3.1, 3.5 and 3.7):

1. It takes the first message from ``messages`` (waiting at most ``idle_timeout``), so
   that a connection is opened only for mail, and a message is held only once the
   caller has let it go.
2. It tries the plan's addresses in order: TCP connect (``connect_timeout``), banner,
   EHLO, STARTTLS per ``enable_tls``, EHLO again. An address that fails is a
   :class:`~kumo.model.smtp_client.ConnectionFailed`; the next is tried. When every
   address has failed, the held message is reported as a TransientFailure
   ``400 KumoMTA internal: failed to connect to any candidate hosts: <each failure>``
   with no peer, and :meth:`run` returns.
3. Once ready, it sends the held message, then takes the next from ``messages``
   whenever the connection is ready again: the caller decides what goes next, at the
   moment it goes (so that a bounce rule or a suspension can still catch a message
   that no connection has taken). RSET before every transaction but the first,
   PIPELINING when offered: the machine's rules.
4. It ends with QUIT when ``messages`` is exhausted, when no message comes within
   ``idle_timeout``, after ``max_deliveries_per_connection`` messages, or after
   :meth:`close_when_idle`; without QUIT when the server breaks the connection (a
   421, a time-out, a reset), after reporting the message under way.

Every message taken is reported exactly once, through ``report``, before the next is
taken, unless :meth:`run` is cancelled or ``report`` raises: a message taken and not
reported then is the caller's to put back (it may have been delivered: SPEC 8.4's one
window). Nothing a server does raises out of :meth:`run`.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import ssl
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final, Protocol

import attrs
import trio

from kumo.model.cidr_set import rust_ip_text
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.events import PeerAddress
from kumo.model.ready_queue import ResolvedAddress
from kumo.model.smtp_client import (
    ClientSettings,
    ClientState,
    Closed,
    ConnectionFailed,
    Output,
    Ready,
    Send,
    SmtpClient,
    StartTls,
    Timeout,
    TransactionOutcome,
    connection_failure_response,
)
from kumo.model.smtp_reply import Disposition, EnhancedCode, Response, classify_reply
from kumo.model.statistics import counter, gauge

__all__ = [
    "DELIVERY_PROTOCOL",
    "ConnectionSettings",
    "ConnectionSummary",
    "Connector",
    "MessageOutcome",
    "OutgoingMessage",
    "SmtpConnection",
    "SmtpConnectionStatistics",
    "TlsDetails",
    "client_tls_context",
    "connect_tcp",
]

READ_SIZE: Final = 64 * 1024
"""Bytes asked of each read."""

DELIVERY_PROTOCOL: Final = "ESMTP"
"""The ``delivery_protocol`` of every record a connection makes."""


def client_tls_context(*, verify: bool, cafile: str | None = None) -> ssl.SSLContext:
    """A TLS client context: verifying (the system's CAs, or ``cafile``'s) or not.

    Blocking (it reads the CA store): make it once, at start.
    """
    context = ssl.create_default_context(cafile=cafile)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Connector(Protocol):
    """How a connection reaches an address of its plan."""

    async def __call__(self, address: ResolvedAddress, port: int, /) -> tuple[trio.abc.Stream, str]:
        """A stream to ``address`` on ``port`` and the local end's ``ip:port`` (the
        records' ``source_address``). Raises ``OSError`` when the address cannot be
        reached (its text goes into the failure); cancelled (the connect time-out),
        it leaves nothing open."""
        ...


async def connect_tcp(address: ResolvedAddress, port: int) -> tuple[trio.abc.Stream, str]:
    """The :class:`Connector` of every real connection: TCP to the address."""
    ip = address.address
    family = socket.AF_INET6 if isinstance(ip, ipaddress.IPv6Address) else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((str(ip), port))
        host, local_port = sock.getsockname()[:2]
    except BaseException:
        sock.close()
        raise
    source = f"[{host}]:{local_port}" if ":" in host else f"{host}:{local_port}"
    return trio.SocketStream(sock), source


def _check_port(_: object, __: object, value: int) -> None:
    if type(value) is not int or not 1 <= value <= 65535:
        raise ValueError(f"smtp_port must be a port number from 1 to 65535, got {value!r}")


@attrs.frozen(eq=False)
class ConnectionSettings:
    """What every connection of one egress path runs with (``[egress]``, per domain)."""

    client: ClientSettings
    """EHLO name, ``enable_tls``, ``max_deliveries_per_connection`` and the time-outs
    (``connect_timeout`` included) the machine decides with."""
    smtp_port: int = attrs.field(default=25, validator=_check_port, kw_only=True)
    """The port of an address whose plan entry carries none."""
    verifying_tls: ssl.SSLContext = attrs.field(
        factory=lambda: client_tls_context(verify=True), kw_only=True
    )
    """The context of Opportunistic and Required STARTTLS (certificate and host name
    checked). The default reads the system's CA store when the settings are made."""
    insecure_tls: ssl.SSLContext = attrs.field(
        factory=lambda: client_tls_context(verify=False), kw_only=True
    )
    """The context of OpportunisticInsecure and RequiredInsecure STARTTLS (nothing checked)."""
    connector: Connector = attrs.field(default=connect_tcp, kw_only=True)
    """How a connection reaches an address: TCP (:func:`connect_tcp`). An in-process
    scenario gives its simulated destinations' instead (:mod:`kumo.scenario.destinations`),
    so that everything above the stream is the real code path."""


@attrs.frozen
class OutgoingMessage:
    """A message handed to a connection: its envelope and its content as spooled."""

    id: str
    """The message id (the caller's; reported back as is)."""
    sender: str
    """The envelope sender; ``""`` for the null sender."""
    recipient: str
    content: bytes
    """Headers and body, CRLF line ends; dot-stuffing is the connection's."""


@attrs.frozen
class TlsDetails:
    """The TLS session a message went over."""

    cipher: str
    """The cipher suite's name (``TLS_AES_256_GCM_SHA384``)."""
    protocol_version: str
    """As the ssl module names it (``TLSv1.3``)."""


@attrs.frozen
class MessageOutcome:
    """What became of one message: the fields of its delivery-log record (reference 5.2).

    ``disposition`` is the record type: ``Delivery``, ``TransientFailure`` or ``Bounce``.
    """

    message: OutgoingMessage
    disposition: Disposition
    response: Response
    """The reply that decided, ``command`` as sent (CRLF included), or the internal
    failure told as one."""
    site: str
    """The ready queue the message came from."""
    peer_address: PeerAddress | None
    """``{name: MX host, addr: IP or IP:port}``; None when no host could be reached."""
    source_address: str | None
    """The local ``ip:port`` of the connection; None when no host could be reached."""
    tls: TlsDetails | None
    """The TLS session, if the message went over one."""
    session_id: str
    """The connection's id (the ``session_id`` of the record)."""

    @property
    def delivery_protocol(self) -> str:
        return DELIVERY_PROTOCOL


@attrs.frozen
class ConnectionSummary:
    """How a connection went, once :meth:`SmtpConnection.run` has returned."""

    failures: tuple[ConnectionFailed, ...]
    """Each address that could not be used, in the order tried."""
    peer: ResolvedAddress | None
    """The address the connection was made to; None if no address could be used (or
    no message came)."""
    messages: int
    """Messages taken and reported."""
    error: str | None
    """What ended a connection that was ready, if not QUIT (a 421, a time-out, a reset)."""

    @property
    def exhausted(self) -> bool:
        """Whether every address of the plan failed (KumoMTA counts these toward its
        bulk delay of a ready queue)."""
        return self.peer is None and bool(self.failures)


@attrs.frozen
class SmtpConnectionStatistics:
    """What one connection has done."""

    taken: int = counter("Messages this connection took from its caller.")
    delivered: int = counter("Messages reported as Delivery.")
    transient: int = counter("Messages reported as TransientFailure.")
    bounced: int = counter("Messages reported as Bounce.")
    connected: int = gauge("1 while the connection is up, else 0.")


class _Ended(Exception):
    """The connection to one address is over (the machine gave its last output)."""


def _os_error_text(error: BaseException) -> str:
    """An OS error as Rust prints one (``Connection refused (os error 111)``), which is
    how KumoMTA's texts show them; anything else as its ``str``."""
    cause = error
    while not isinstance(cause, OSError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, ssl.SSLError):
        return str(cause)
    if isinstance(cause, OSError) and cause.errno is not None:
        # strerror itself, not the OSError's text: trio adds "Error connecting to ...".
        return f"{os.strerror(cause.errno)} (os error {cause.errno})"
    return str(cause) or type(cause).__name__


def _peer_text(address: ResolvedAddress, port: int) -> str:
    ip = rust_ip_text(address.address)
    return (
        f"[{ip}]:{port}" if isinstance(address.address, ipaddress.IPv6Address) else f"{ip}:{port}"
    )


def _server_hostname(address: ResolvedAddress) -> str:
    """The name a verified certificate must carry: the host name without its dot, or
    the address for a literal."""
    name = address.name.removesuffix(".")
    if name.startswith("[") and name.endswith("]"):
        return str(address.address)
    return name


_UNSENDABLE: Final = "KumoMTA internal: message cannot be sent: "


class SmtpConnection:
    """One outgoing connection; see the module docstring."""

    def __init__(
        self,
        settings: ConnectionSettings,
        plan: Sequence[ResolvedAddress],
        *,
        site: str,
        messages: AsyncIterator[OutgoingMessage],
        report: Callable[[MessageOutcome], Awaitable[object]],
        session_id: str | None = None,
        turn: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``plan``: the addresses to try, in order (at least one; the caller has checked
        it against ``prohibited_hosts``). ``site``: the ready queue's name.
        ``messages``: where the next message comes from, asked only when the connection
        can send it at once; exhausted, the connection ends. Its ``__anext__`` is
        cancelled when ``idle_timeout`` passes, so it must be cancel-safe (a Trio memory
        channel is). ``report``: called with each message's outcome, in order.
        ``turn``: awaited after each read, before what was read is acted on (admin
        requests first: :class:`kumo.runtime.admin_gate.AdminGate`)."""
        if not plan:
            raise ValueError("a connection needs at least one address to try")
        self._settings = settings
        self._plan = tuple(plan)
        self._site = site
        self._messages = messages
        self._report = report
        self._turn = turn
        self._session_id = session_id if session_id is not None else str(uuid.uuid4())
        self._closing = False
        self._waiting: trio.CancelScope | None = None
        self._taken = 0
        self._outcomes = {d: 0 for d in Disposition}
        self._connected = False

    @property
    def session_id(self) -> str:
        return self._session_id

    def close_when_idle(self) -> None:
        """End the connection with QUIT at its next idle moment (at once if it is
        waiting for a message); a transaction under way finishes first."""
        self._closing = True
        if self._waiting is not None:
            self._waiting.cancel()

    def statistics(self) -> SmtpConnectionStatistics:
        return SmtpConnectionStatistics(
            taken=self._taken,
            delivered=self._outcomes[Disposition.DELIVERY],
            transient=self._outcomes[Disposition.TRANSIENT_FAILURE],
            bounced=self._outcomes[Disposition.BOUNCE],
            connected=int(self._connected),
        )

    async def run(self) -> ConnectionSummary:
        """Deliver messages until the connection ends; see the module docstring."""
        idle = self._settings.client.timeouts.idle
        held = await self._take(trio.current_time() + idle / NANOS_PER_SECOND)
        if held is None:
            return ConnectionSummary((), None, 0, None)
        failures: list[ConnectionFailed] = []
        for address in self._plan:
            session = _Session(self, address, held)
            try:
                await session.converse()
            finally:
                self._connected = False
                await session.aclose()
            if session.failure is None:
                return ConnectionSummary(tuple(failures), address, session.reported, session.error)
            failures.append(session.failure)
        response = connection_failure_response(failures)
        await self._deliver_outcome(
            MessageOutcome(
                message=held,
                disposition=classify_reply(response),
                response=response,
                site=self._site,
                peer_address=None,
                source_address=None,
                tls=None,
                session_id=self._session_id,
            )
        )
        return ConnectionSummary(tuple(failures), None, 1, None)

    async def _take(self, deadline: float) -> OutgoingMessage | None:
        """The next message, or None: none came by ``deadline``, there are no more, or
        :meth:`close_when_idle` was called."""
        if self._closing:
            return None
        message: OutgoingMessage | None = None
        with trio.CancelScope(deadline=deadline) as waiting:
            self._waiting = waiting
            try:
                message = await self._messages.__anext__()
            except StopAsyncIteration:
                message = None
            finally:
                self._waiting = None
        # A message that arrived as the deadline passed is taken all the same: it has
        # left the caller, and the connection is still ready for it.
        if message is not None:
            self._taken += 1
        return message

    async def _deliver_outcome(self, outcome: MessageOutcome) -> None:
        self._outcomes[outcome.disposition] += 1
        await self._report(outcome)


class _Session:
    """The conversation with one address of the plan."""

    def __init__(
        self, connection: SmtpConnection, address: ResolvedAddress, held: OutgoingMessage
    ) -> None:
        self.connection = connection
        settings = connection._settings
        self.settings = settings
        self.address = address
        self.port = address.port if address.port is not None else settings.smtp_port
        self.client = SmtpClient(
            settings.client, peer=_peer_text(address, self.port), site=connection._site
        )
        self.held: OutgoingMessage | None = held
        self.current: OutgoingMessage | None = None
        self.stream: trio.abc.Stream | None = None
        self.raw: trio.abc.Stream | None = None
        self.tls: TlsDetails | None = None
        self.source_address: str | None = None
        self.failure: ConnectionFailed | None = None
        self.error: str | None = None
        self.reported = 0
        self._serial = -1
        self._deadline = 0.0
        self._pending: list[bytes] = []
        self._todo: deque[Output] = deque()
        self._io = trio.CancelScope()
        """Bounds the reads and writes with the machine's deadline: one scope for many,
        its deadline moved by each (a scope per read and per write cost a sixth of the
        delivery's time). Nothing else waits under it (see :meth:`_unbounded`)."""

    # -- the timer ------------------------------------------------------------------------

    def deadline(self) -> float:
        """When the machine's current wait ends, on Trio's clock."""
        timeout: Timeout | None = self.client.timeout
        if timeout is None:
            return trio.current_time()
        if timeout.serial != self._serial:
            self._serial = timeout.serial
            self._deadline = trio.current_time() + timeout.seconds
        return self._deadline

    # -- the conversation -----------------------------------------------------------------

    async def converse(self) -> None:
        """Talk with the address until the machine gives its last output."""
        todo = self._todo
        todo.extend(await self._connect())
        try:
            while True:
                io = self._io = trio.CancelScope()
                with io:
                    while True:
                        while todo:
                            await self._carry_out(todo.popleft())
                        await self._flush()
                        if not todo:
                            todo.extend(await self._read())
                            if io.cancel_called:
                                # The deadline passed as the data came: what it says
                                # goes on under a new scope.
                                break
                if io.cancelled_caught:
                    # The read or the write under way outlived the machine's timer.
                    todo.extend(self.client.timed_out())
        except _Ended:
            pass

    def _unbounded(self) -> None:
        """What follows waits on kumo (or bounds itself), not on the peer."""
        self._io.deadline = math.inf

    async def _connect(self) -> list[Output]:
        with trio.move_on_at(self.deadline()):
            try:
                stream, source = await self.settings.connector(self.address, self.port)
            except OSError as error:
                return self.client.connection_lost(_os_error_text(error))
            self.raw = self.stream = stream
            self.connection._connected = True
            self.source_address = source
            return self.client.connection_made()
        return self.client.timed_out()

    async def _carry_out(self, output: Output) -> None:
        """Do what one output asks; what doing it makes the machine say goes to the end
        of the outputs to carry out."""
        if isinstance(output, Send):
            self._pending.append(output.data)
            return
        # Whatever was written before an output is on its way before it is acted on.
        await self._flush()
        self._unbounded()
        if isinstance(output, Ready):
            self._todo.extend(await self._next_message())
        elif isinstance(output, TransactionOutcome):
            await self._outcome(output)
        elif isinstance(output, StartTls):
            self._todo.extend(await self._start_tls(output))
        elif isinstance(output, ConnectionFailed):
            self.failure = output
            raise _Ended
        else:
            assert isinstance(output, Closed)
            self.error = output.error
            raise _Ended

    async def _flush(self) -> None:
        """Write what is pending, in one write; what a failed write makes the machine
        say goes to the end of the outputs to carry out."""
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        assert self.stream is not None
        self._io.deadline = self.deadline()
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._todo.extend(self.client.connection_lost(_os_error_text(error)))

    async def _read(self) -> list[Output]:
        assert self.stream is not None
        self._io.deadline = self.deadline()
        try:
            data = await self.stream.receive_some(READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            return self.client.connection_lost(_os_error_text(error))
        if self.connection._turn is not None:
            await self.connection._turn()
        return self.client.receive_data(bytes(data))

    async def _next_message(self) -> list[Output]:
        if self.client.state is not ClientState.READY:
            return []  # a failed write closed it after this Ready was given
        message = self.held
        self.held = None
        if message is None:
            message = await self.connection._take(self.deadline())
            if message is None:
                # The idle wait ran out (the machine's own QUIT), or nothing more comes.
                expired = trio.current_time() >= self.deadline()
                return self.client.timed_out() if expired else self.client.close()
        self.current = message
        try:
            return self.client.send_message(message.sender, [message.recipient], message.content)
        except (TypeError, ValueError) as error:
            # An envelope no command can carry (a control character): no server will
            # ever take it, so it bounces; the connection is untouched.
            response = Response(554, EnhancedCode(5, 1, 3), f"{_UNSENDABLE}{error}")
            await self._report(message, Disposition.BOUNCE, response)
            return [Ready()]

    async def _outcome(self, output: TransactionOutcome) -> None:
        message = self.current
        assert message is not None
        self.current = None
        [result] = output.results
        await self._report(message, result.disposition, result.response)

    async def _report(
        self, message: OutgoingMessage, disposition: Disposition, response: Response
    ) -> None:
        self.reported += 1
        await self.connection._deliver_outcome(
            MessageOutcome(
                message=message,
                disposition=disposition,
                response=response,
                site=self.connection._site,
                peer_address=PeerAddress(self.address.name, self.address.address_text()),
                source_address=self.source_address,
                tls=self.tls,
                session_id=self.connection._session_id,
            )
        )

    async def _start_tls(self, request: StartTls) -> list[Output]:
        assert self.raw is not None
        settings = self.settings
        context = settings.verifying_tls if request.verify_certificate else settings.insecure_tls
        hostname = _server_hostname(self.address) if request.verify_certificate else None
        stream = trio.SSLStream(self.raw, context, server_hostname=hostname)
        with trio.move_on_at(self.deadline()):
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                # A failed handshake leaves the raw stream as it was: an
                # OpportunisticInsecure connection goes on over it in clear text.
                return self.client.tls_failed(_os_error_text(error))
            self.stream = stream
            cipher = stream.cipher()
            self.tls = TlsDetails(
                cipher=cipher[0] if cipher else "", protocol_version=stream.version() or ""
            )
            return self.client.tls_established()
        return self.client.timed_out()

    async def aclose(self) -> None:
        if self.raw is not None:
            await trio.aclose_forcefully(self.raw)

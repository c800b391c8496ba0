"""The SMTP client as a sans-io state machine: one outbound connection, bytes in, decisions out.

The machine does no I/O and knows no clock (h11's ``Connection`` is the model). The Trio
shell connects, reads, writes, wraps the stream in TLS and runs one timer; the machine
decides everything else, the way KumoMTA's client does (reference
``kumomta-mail-path.md`` sections 3.1 to 3.7):

* banner ``220``, then ``EHLO``; any other banner or EHLO reply is a connection failure
  (KumoMTA does not fall back to HELO, so neither does kumo);
* STARTTLS per :class:`TlsMode`, then EHLO again;
* one transaction per message: ``RSET`` before every one but the first on the
  connection, ``MAIL FROM``, one ``RCPT TO`` per recipient, ``DATA``, the dot-stuffed
  content and CRLF.CRLF; with PIPELINING (when the server offers it) ``[RSET] MAIL RCPT...
  DATA`` go as one write and the replies are read in turn, otherwise one command at a time;
* each recipient's outcome is a :class:`~kumo.model.smtp_reply.Response` and its
  :func:`~kumo.model.smtp_reply.classify_reply`;
* the connection is reused for up to ``max_deliveries_per_connection`` messages, then
  closed with QUIT; QUIT also when idle too long.

How the shell drives it: every method returns the list of :data:`Output` values it
produced, in order, and the shell carries them out in that order (write a :class:`Send`,
start TLS on :class:`StartTls`, hand a message on :class:`Ready`, record a
:class:`TransactionOutcome`, close the socket on :class:`Closed` or
:class:`ConnectionFailed`). Exactly one of those two ends every connection, and it is
always the last output; afterwards every method returns ``[]``, except
:meth:`SmtpClient.send_message`, which raises (a message must never vanish silently).

Time-outs: :attr:`SmtpClient.timeout` says what the machine is waiting for and for how
long. Each new wait carries a new serial number, so the shell restarts its timer whenever
the value changes, and calls :meth:`SmtpClient.timed_out` when it fires.

Exceptions: :class:`ClientUsageError` when the shell calls a method in a state that does
not allow it (a bug in the shell), and :class:`ValueError` (:class:`TypeError` for
values of the wrong type) from :meth:`SmtpClient.send_message` for an envelope that
cannot be written as a command.
Nothing a server sends raises: garbage, over-long lines, replies out of order and EOF
anywhere end in a failure told as an output, and the machine keeps at most one incomplete
reply (:data:`~kumo.model.smtp_reply.MAX_REPLY_LENGTH` bytes) between calls.

Texts follow KumoMTA byte for byte where they reach a log record's ``response``. The
reasons inside a :class:`ConnectionFailed` follow the shape of KumoMTA's error chains,
with ``peer`` (the shell's label of the host) where KumoMTA prints Rust debug values:
the reference leaves those chains as implementation detail (its section 10).
"""

from __future__ import annotations

import enum
import string
from collections.abc import Sequence
from typing import Final, TypeAlias

import attrs

from kumo.model.duration import (
    NANOS_PER_MICROSECOND,
    NANOS_PER_MILLISECOND,
    NANOS_PER_SECOND,
)
from kumo.model.smtp_reply import (
    Disposition,
    EnhancedCode,
    ReplyError,
    ReplyReader,
    Response,
    classify_reply,
)

__all__ = [
    "ClientSettings",
    "ClientState",
    "ClientTimeouts",
    "ClientUsageError",
    "Closed",
    "ConnectionFailed",
    "Output",
    "Phase",
    "Ready",
    "RecipientOutcome",
    "Send",
    "SmtpClient",
    "StartTls",
    "Timeout",
    "TlsMode",
    "TransactionOutcome",
    "connection_failure_response",
    "format_rust_duration",
    "stuff_content",
]

CONNECTION_CLOSED: Final = "Connection closed by peer"
"""The error a lost connection is reported with when the shell saw a clean EOF."""

DATA_IS_8BIT: Final = Response(
    554,
    EnhancedCode(5, 6, 3),
    "KumoMTA internal: DATA is 8bit, destination does not support 8BITMIME. "
    "Conversion via msg:check_fix_conformance during reception is required",
)
ENVELOPE_IS_8BIT: Final = Response(
    554,
    EnhancedCode(5, 6, 7),
    "KumoMTA internal: envelope is 8bit, destination does not support SMTPUTF8.",
)
OPPORTUNISTIC_INSECURE_HINT: Final = (
    "All failures are related to OpportunisticInsecure STARTTLS. "
    "Consider setting enable_tls=Disabled for this site. "
)

_RSET: Final = b"RSET\r\n"
_DATA: Final = b"DATA\r\n"
_DOT: Final = b".\r\n"
_QUIT: Final = b"QUIT\r\n"
_STARTTLS: Final = b"STARTTLS\r\n"


class ClientUsageError(RuntimeError):
    """The shell called a method that the machine's state does not allow."""


class TlsMode(enum.Enum):
    """``enable_tls`` of an egress path (reference 3.1 step 4)."""

    OPPORTUNISTIC = "Opportunistic"
    """STARTTLS when offered, certificate verified; a failed handshake fails the host."""
    OPPORTUNISTIC_INSECURE = "OpportunisticInsecure"
    """STARTTLS when offered, not verified; a failed handshake goes on in clear text."""
    REQUIRED = "Required"
    """STARTTLS or fail the host; certificate verified."""
    REQUIRED_INSECURE = "RequiredInsecure"
    """STARTTLS or fail the host; not verified."""
    DISABLED = "Disabled"
    """Never STARTTLS."""


class Phase(enum.Enum):
    """What the machine waits for: the names of KumoMTA's ``*_timeout`` settings."""

    CONNECT = "connect"
    BANNER = "banner"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    RSET = "rset"
    MAIL_FROM = "mail_from"
    RCPT_TO = "rcpt_to"
    DATA = "data"
    DATA_DOT = "data_dot"
    IDLE = "idle"
    """Waiting for the next message, or for the reply to QUIT."""


def _positive_nanos(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive int of nanoseconds, got {value!r}")


def _seconds(default: int) -> int:
    return attrs.field(default=default * NANOS_PER_SECOND, validator=_positive_nanos)


@attrs.frozen
class ClientTimeouts:
    """How long each wait may last, in nanoseconds: KumoMTA's code defaults (reference 3.2).

    The docs pages of KumoMTA say 60 s for ``idle`` and ``data_dot``; its code says 5 s and
    300 s, and the code is what runs.
    """

    connect: int = _seconds(60)
    """TCP connect (the shell's, reported through :meth:`SmtpClient.timed_out`)."""
    banner: int = _seconds(60)
    """The 220 banner."""
    ehlo: int = _seconds(300)
    """The reply to EHLO, before and after STARTTLS."""
    starttls: int = _seconds(5)
    """The reply to STARTTLS, and the TLS handshake after it."""
    rset: int = _seconds(5)
    """The reply to RSET."""
    mail_from: int = _seconds(300)
    """The reply to MAIL FROM."""
    rcpt_to: int = _seconds(300)
    """The reply to each RCPT TO."""
    data: int = _seconds(300)
    """The reply to DATA (354)."""
    data_dot: int = _seconds(300)
    """The reply after the final dot."""
    idle: int = _seconds(5)
    """How long a ready connection waits for a message before QUIT; also the reply to QUIT."""

    def of(self, phase: Phase) -> int:
        """The time-out of ``phase``, in nanoseconds."""
        nanos: int = getattr(self, phase.value)
        return nanos


def _ehlo_domain(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if type(value) is not str or not value or not all("!" <= c <= "~" for c in value):
        raise ValueError(f"{attribute.name} must be printable ASCII without spaces, got {value!r}")


@attrs.frozen
class ClientSettings:
    """What one egress path asks of its connections (SPEC 8.1 ``[egress]``)."""

    ehlo_domain: str = attrs.field(validator=_ehlo_domain)
    """The name sent with EHLO (no default here: the configuration defaults it to the host
    name, which the model cannot know)."""
    enable_tls: TlsMode = attrs.field(
        default=TlsMode.OPPORTUNISTIC, converter=TlsMode, kw_only=True
    )
    """When to use STARTTLS; accepts the enum or its KumoMTA name (``"Required"``)."""
    max_deliveries_per_connection: int = attrs.field(
        default=1024,
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)],
        kw_only=True,
    )
    """Messages handed to one connection before it is closed with QUIT."""
    timeouts: ClientTimeouts = attrs.field(factory=ClientTimeouts, kw_only=True)
    """How long each wait may last."""


class ClientState(enum.Enum):
    """Where a connection is."""

    CONNECTING = "connecting"
    """Waiting for the shell's :meth:`SmtpClient.connection_made`."""
    BANNER = "banner"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    """STARTTLS sent, waiting for its 220."""
    TLS_HANDSHAKE = "tls_handshake"
    """Waiting for :meth:`SmtpClient.tls_established` or :meth:`SmtpClient.tls_failed`."""
    EHLO_AFTER_TLS = "ehlo_after_tls"
    READY = "ready"
    """Idle: :meth:`SmtpClient.send_message` may be called."""
    TRANSACTION = "transaction"
    QUITTING = "quitting"
    CLOSED = "closed"
    """The last output has been given; nothing more will be."""


# -- outputs ------------------------------------------------------------------------------


@attrs.frozen
class Send:
    """Bytes to write to the server, in order with the other outputs."""

    data: bytes


@attrs.frozen
class StartTls:
    """The server agreed to STARTTLS: wrap the stream in TLS now, then call
    :meth:`SmtpClient.tls_established` or :meth:`SmtpClient.tls_failed`.

    The bytes read after the 220 and before the handshake are dropped by the machine
    (STARTTLS command injection): the shell must start the handshake on the raw stream.
    """

    verify_certificate: bool


@attrs.frozen
class Ready:
    """The connection is idle and may take a message (:meth:`SmtpClient.send_message`).
    If the shell has none within :attr:`ClientTimeouts.idle`, the timer fires and
    :meth:`SmtpClient.timed_out` closes the connection with QUIT."""


@attrs.frozen
class RecipientOutcome:
    """What became of one recipient of a transaction."""

    recipient: str
    disposition: Disposition
    response: Response


@attrs.frozen
class TransactionOutcome:
    """The end of the transaction :meth:`SmtpClient.send_message` started: one outcome
    per recipient, in the order given."""

    results: tuple[RecipientOutcome, ...]


@attrs.frozen
class ConnectionFailed:
    """The connection ended before it was ever ready for a message (banner, EHLO, TLS,
    a time-out or a lost connection on the way): the shell tries the next host.

    ``error`` is one entry of KumoMTA's "failed to connect to any candidate hosts: ..."
    (see :func:`connection_failure_response`).
    """

    error: str
    opportunistic_insecure_tls: bool = False
    """Whether this failure came of an OpportunisticInsecure STARTTLS attempt (KumoMTA
    then hints that TLS be disabled for the site)."""


@attrs.frozen
class Closed:
    """The connection is over after having been ready: close the socket.

    ``error`` is ``None`` after a QUIT (or a :meth:`SmtpClient.close` before ready), or
    what broke the connection (a time-out, a lost connection, a 421, garbage, a reply
    the client did not ask for).
    """

    error: str | None = None


Output: TypeAlias = Send | StartTls | Ready | TransactionOutcome | ConnectionFailed | Closed


@attrs.frozen
class Timeout:
    """A wait the shell must bound: call :meth:`SmtpClient.timed_out` after ``nanos``.

    ``serial`` grows with each new wait, so that two successive waits of the same phase
    compare unequal and the shell knows to restart its timer.
    """

    phase: Phase
    nanos: int
    serial: int

    @property
    def seconds(self) -> float:
        """``nanos`` in seconds, for ``trio.move_on_after``."""
        return self.nanos / NANOS_PER_SECOND


# -- pure helpers -------------------------------------------------------------------------


def stuff_content(content: bytes) -> bytes:
    """``content`` as it goes after a 354: dot-stuffed, then CRLF.CRLF.

    A dot is doubled at the start and after every LF (KumoMTA's rule, which also covers
    a bare LF, so that no reading of the lines can see an early end). CRLF is added when
    the content does not end with one, then ``.CRLF``. (KumoMTA adds nothing after a
    bare LF and sends ``\\n.\\r\\n``, which a strict server never reads as the end.)
    """
    stuffed = content.replace(b"\n.", b"\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + (b".\r\n" if stuffed.endswith(b"\r\n") else b"\r\n.\r\n")


def format_rust_duration(nanos: int) -> str:
    """``nanos`` as Rust's ``{:?}`` prints a ``Duration`` (``300s``, ``1.5s``, ``250ms``)."""
    if nanos >= NANOS_PER_SECOND:
        scale, digits, unit = NANOS_PER_SECOND, 9, "s"
    elif nanos >= NANOS_PER_MILLISECOND:
        scale, digits, unit = NANOS_PER_MILLISECOND, 6, "ms"
    elif nanos >= NANOS_PER_MICROSECOND:
        scale, digits, unit = NANOS_PER_MICROSECOND, 3, "µs"
    else:
        return f"{nanos}ns"
    whole, part = divmod(nanos, scale)
    decimals = f"{part:0{digits}d}".rstrip("0")
    return f"{whole}.{decimals}{unit}" if decimals else f"{whole}{unit}"


def connection_failure_response(failures: Sequence[ConnectionFailed]) -> Response:
    """The TransientFailure every held message gets when no host could be used
    (reference 3.7): ``400 KumoMTA internal: failed to connect to any candidate hosts: ...``,
    the failures joined by ``", "``, after a hint when all came of OpportunisticInsecure
    STARTTLS."""
    hint = (
        OPPORTUNISTIC_INSECURE_HINT
        if failures and all(f.opportunistic_insecure_tls for f in failures)
        else ""
    )
    errors = ", ".join(f.error for f in failures)
    return Response(
        400, None, f"KumoMTA internal: failed to connect to any candidate hosts: {hint}{errors}"
    )


def _check_address(kind: str, address: str) -> None:
    if type(address) is not str:
        raise TypeError(f"{kind} must be a str, got {address!r}")
    if any(c < " " or c == "\x7f" for c in address):
        raise ValueError(f"{kind} {address!r} contains a control character")


# -- the machine ---------------------------------------------------------------------------


class _Stage(enum.Enum):
    ENVELOPE = "envelope"
    """Waiting for the replies to [RSET] MAIL RCPT... DATA."""
    CONTENT = "content"
    """Content and final dot sent, waiting for the reply."""
    ABORT = "abort"
    """DATA got 354 though the envelope failed: a lone dot sent (RFC 2920 3.1)."""


@attrs.frozen
class _Command:
    line: bytes
    phase: Phase

    @property
    def as_sent(self) -> str:
        return self.line.decode("utf-8")

    @property
    def in_text(self) -> str:
        # KumoMTA's error texts print the command without its CRLF.
        return self.as_sent.removesuffix("\r\n")


_DOT_COMMAND: Final = _Command(_DOT, Phase.DATA_DOT)


@attrs.define
class _Transaction:
    recipients: tuple[str, ...]
    commands: tuple[_Command, ...]
    has_rset: bool
    pipelined: bool
    content: bytes
    replies: list[Response] = attrs.field(factory=list)
    stage: _Stage = _Stage.ENVELOPE
    failure: tuple[Response, ...] = ()

    @property
    def awaited(self) -> _Command:
        if self.stage is _Stage.ENVELOPE:
            return self.commands[len(self.replies)]
        return _DOT_COMMAND

    def envelope_failure(self) -> tuple[Response, ...] | None:
        """The replies that fail the envelope, one per recipient, as KumoMTA picks them
        from what has arrived: a refused RSET, a refused MAIL, or every RCPT refused."""
        replies = self.replies
        count = len(self.recipients)
        index = 0
        if self.has_rset:
            if not replies:
                return None
            if not _positive(replies[0]):
                return (replies[0],) * count
            index = 1
        if len(replies) <= index:
            return None
        if not _positive(replies[index]):
            return (replies[index],) * count
        rcpts = replies[index + 1 : index + 1 + count]
        if len(rcpts) == count and not any(_positive(r) for r in rcpts):
            return tuple(rcpts)
        return None

    def rcpt_replies(self) -> list[Response]:
        start = 2 if self.has_rset else 1
        return self.replies[start : start + len(self.recipients)]


def _positive(response: Response) -> bool:
    # KumoMTA wants exactly 250 to MAIL and RCPT; a 251 or 252 to RCPT (RFC 5321: will
    # forward, cannot verify) would then end the transaction as a "Delivery" that never
    # sent the content. kumo takes any 2xx as the positive reply it is.
    return 200 <= response.code < 300


class SmtpClient:
    """One outbound SMTP connection, from TCP connect to close (see the module docstring).

    Not thread-safe; each method runs to completion and returns what it produced.
    """

    def __init__(self, settings: ClientSettings, *, peer: str, site: str = "") -> None:
        """``peer`` names the host in texts (e.g. ``"10.0.0.1:25"``); ``site`` is the ready
        queue the messages come from (it appears in time-out texts, as in KumoMTA's)."""
        self._settings = settings
        self._peer = peer
        self._site = site
        self._state = ClientState.CONNECTING
        self._reader = ReplyReader()
        self._out: list[Output] = []
        self._serial = 0
        self._timeout: Timeout | None = None
        self._capabilities: dict[str, str | None] = {}
        self._tls_active = False
        # OpportunisticInsecure: how the handshake went, for the text of a failed EHLO.
        self._insecure_label: str | None = None
        self._deliveries = 0
        self._rset_next = False
        self._transaction: _Transaction | None = None
        self._wait(Phase.CONNECT)

    # -- what the shell may read ---------------------------------------------------------

    @property
    def state(self) -> ClientState:
        """Where the connection is."""
        return self._state

    @property
    def timeout(self) -> Timeout | None:
        """The current wait; ``None`` only once closed."""
        return self._timeout

    @property
    def capabilities(self) -> dict[str, str | None]:
        """The last EHLO's extensions, upper-case keyword to parameter (a copy)."""
        return dict(self._capabilities)

    @property
    def tls_active(self) -> bool:
        """Whether the shell established TLS on this connection."""
        return self._tls_active

    @property
    def buffered_bytes(self) -> int:
        """Bytes from the server held between calls: an incomplete reply, at most
        :data:`~kumo.model.smtp_reply.MAX_REPLY_LENGTH`."""
        return self._reader.buffered

    @property
    def deliveries(self) -> int:
        """Messages handed to this connection so far."""
        return self._deliveries

    # -- inputs --------------------------------------------------------------------------

    def connection_made(self) -> list[Output]:
        """The TCP connection is up: wait for the banner (nothing if already closed)."""
        self._begin()
        if self._state is ClientState.CLOSED:
            return self._end()
        self._require(ClientState.CONNECTING, "connection_made")
        self._state = ClientState.BANNER
        self._wait(Phase.BANNER)
        return self._end()

    def receive_data(self, data: bytes) -> list[Output]:
        """Bytes read from the server; ``b""`` is EOF.

        Bytes that arrive between the 220 to STARTTLS and the end of the handshake were
        sent in the clear after the switch to TLS was agreed, and are dropped.
        """
        self._begin()
        if self._state is ClientState.CLOSED:
            return self._end()
        if self._state is ClientState.CONNECTING:
            raise ClientUsageError("receive_data before connection_made")
        if not data:
            self._lost(CONNECTION_CLOSED)
        elif self._state is not ClientState.TLS_HANDSHAKE:
            self._reader.feed(data)
            self._read_replies()
        return self._end()

    def connection_lost(self, error: str) -> list[Output]:
        """The connection failed (``error`` as the OS tells it); before
        :meth:`connection_made`, the connect itself failed."""
        self._begin()
        if self._state is not ClientState.CLOSED:
            self._lost(error)
        return self._end()

    def tls_established(self) -> list[Output]:
        """The TLS handshake after :class:`StartTls` succeeded: EHLO again."""
        self._begin()
        if self._state is ClientState.CLOSED:
            return self._end()
        self._require(ClientState.TLS_HANDSHAKE, "tls_established")
        self._tls_active = True
        if self._settings.enable_tls is TlsMode.OPPORTUNISTIC_INSECURE:
            self._insecure_label = "OK"
        self._send_ehlo(ClientState.EHLO_AFTER_TLS)
        return self._end()

    def tls_failed(self, error: str) -> list[Output]:
        """The TLS handshake after :class:`StartTls` failed (``error`` says why).

        OpportunisticInsecure goes on in clear text (EHLO again, as KumoMTA does); every
        other mode sends QUIT, best effort, and fails the host.
        """
        self._begin()
        if self._state is ClientState.CLOSED:
            return self._end()
        self._require(ClientState.TLS_HANDSHAKE, "tls_failed")
        if self._settings.enable_tls is TlsMode.OPPORTUNISTIC_INSECURE:
            self._insecure_label = f"failed: {error}"
            self._send_ehlo(ClientState.EHLO_AFTER_TLS)
        else:
            self._send(_QUIT)
            self._fail_connection(f"TLS handshake with {self._peer} failed: {error}")
        return self._end()

    def send_message(self, sender: str, recipients: Sequence[str], content: bytes) -> list[Output]:
        """Start the transaction of one message; allowed only when :class:`Ready` was the
        last output.

        ``sender`` may be ``""`` (``MAIL FROM:<>``). The outputs end, now or after more
        :meth:`receive_data`, with one :class:`TransactionOutcome`, followed by
        :class:`Ready`, by QUIT (the reuse limit is reached), or by :class:`Closed`.
        Raises :class:`ValueError` for an address with a control character or an empty
        ``recipients``, and changes nothing then.
        """
        self._begin()
        self._require(ClientState.READY, "send_message")
        _check_address("sender", sender)
        rcpts = tuple(recipients)
        if not rcpts:
            raise ValueError("a message needs at least one recipient")
        for recipient in rcpts:
            _check_address("recipient", recipient)
        if type(content) is not bytes:
            raise TypeError(f"content must be bytes, got {type(content).__name__}")
        self._deliveries += 1
        parameters = ""
        if not content.isascii():
            if "8BITMIME" not in self._capabilities:
                return self._rejected_before_sending(rcpts, DATA_IS_8BIT)
            parameters += " BODY=8BITMIME"
        if not (sender.isascii() and all(r.isascii() for r in rcpts)):
            if "SMTPUTF8" not in self._capabilities:
                return self._rejected_before_sending(rcpts, ENVELOPE_IS_8BIT)
            parameters += " SMTPUTF8"
        commands: list[_Command] = []
        if self._rset_next:
            commands.append(_Command(_RSET, Phase.RSET))
        commands.append(_Command(f"MAIL FROM:<{sender}>{parameters}\r\n".encode(), Phase.MAIL_FROM))
        commands.extend(
            _Command(f"RCPT TO:<{recipient}>\r\n".encode(), Phase.RCPT_TO) for recipient in rcpts
        )
        commands.append(_Command(_DATA, Phase.DATA))
        transaction = _Transaction(
            recipients=rcpts,
            commands=tuple(commands),
            has_rset=self._rset_next,
            pipelined="PIPELINING" in self._capabilities,
            content=stuff_content(content),
        )
        # Whatever happens from here, the next transaction starts with RSET.
        self._rset_next = True
        self._transaction = transaction
        self._state = ClientState.TRANSACTION
        if transaction.pipelined:
            self._send(b"".join(command.line for command in commands))
        else:
            self._send(commands[0].line)
        self._wait(commands[0].phase)
        return self._end()

    def timed_out(self) -> list[Output]:
        """The shell's timer for :attr:`timeout` fired."""
        self._begin()
        state = self._state
        if state is ClientState.CLOSED:
            return self._end()
        assert self._timeout is not None
        waited = format_rust_duration(self._timeout.nanos)
        if state is ClientState.READY:
            self._quit()
        elif state is ClientState.QUITTING:
            self._close(None)
        elif state is ClientState.CONNECTING:
            self._fail_connection(
                f"connect to {self._peer} and read initial banner: "
                f"timeout after {waited} while connecting to {self._peer}"
            )
        elif state is ClientState.TLS_HANDSHAKE:
            self._fail_connection(f"Timed Out waiting {waited} for response to cmd=STARTTLS")
        elif state is ClientState.TRANSACTION:
            assert self._transaction is not None
            command = self._transaction.awaited
            text = f"Timed Out waiting {waited} for response to cmd={command.in_text}"
            error = Response(
                421,
                EnhancedCode(4, 4, 2),
                f"KumoMTA internal: failed to send message to {self._site} {self._peer}: {text}",
                command.as_sent,
            )
            self._transaction_broken(error, text)
        else:
            self._fail_before_ready(
                f"Timed Out waiting {waited} for response to cmd={self._pending_command()}"
            )
        return self._end()

    def close(self) -> list[Output]:
        """The shell wants the connection closed (shutting down, suspended queue).

        When ready: QUIT, then :class:`Closed` on its reply. Before ready: :class:`Closed`
        at once. During a transaction: :class:`ClientUsageError` (a transaction under way
        is allowed to finish). Once quitting or closed: nothing.
        """
        self._begin()
        state = self._state
        if state is ClientState.TRANSACTION:
            raise ClientUsageError("close during a transaction; let it finish")
        if state is ClientState.READY:
            self._quit()
        elif state not in (ClientState.QUITTING, ClientState.CLOSED):
            self._close(None)
        return self._end()

    # -- the machinery -------------------------------------------------------------------

    def _begin(self) -> None:
        self._out = []

    def _end(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    def _require(self, state: ClientState, method: str) -> None:
        if self._state is not state:
            raise ClientUsageError(f"{method} in state {self._state.value}")

    def _send(self, data: bytes) -> None:
        self._out.append(Send(data))

    def _wait(self, phase: Phase) -> None:
        self._serial += 1
        self._timeout = Timeout(phase, self._settings.timeouts.of(phase), self._serial)

    def _send_ehlo(self, state: ClientState) -> None:
        self._send(f"EHLO {self._settings.ehlo_domain}\r\n".encode())
        self._state = state
        self._wait(Phase.EHLO)

    def _ready(self) -> None:
        self._state = ClientState.READY
        self._transaction = None
        self._wait(Phase.IDLE)
        self._out.append(Ready())

    def _quit(self) -> None:
        self._send(_QUIT)
        self._state = ClientState.QUITTING
        self._wait(Phase.IDLE)

    def _terminate(self, output: Output) -> None:
        self._out.append(output)
        self._state = ClientState.CLOSED
        self._timeout = None
        self._transaction = None
        self._reader.clear()

    def _close(self, error: str | None) -> None:
        self._terminate(Closed(error))

    def _fail_connection(self, error: str, *, insecure_tls: bool = False) -> None:
        self._terminate(ConnectionFailed(error, insecure_tls))

    def _read_replies(self) -> None:
        while self._state not in (ClientState.CLOSED, ClientState.TLS_HANDSHAKE):
            try:
                reply = self._reader.next_reply()
            except ReplyError as error:
                self._garbage(str(error))
                return
            if reply is None:
                return
            self._on_reply(reply)
        if self._state is ClientState.TLS_HANDSHAKE:
            self._reader.clear()

    def _on_reply(self, reply: Response) -> None:
        state = self._state
        if state is ClientState.BANNER:
            if reply.code == 220:
                self._send_ehlo(ClientState.EHLO)
            else:
                self._fail_before_ready(_rejected(reply), refused=True)
        elif state is ClientState.EHLO:
            if reply.code == 250:
                self._capabilities = _capabilities(reply)
                self._after_ehlo()
            else:
                self._fail_before_ready(_rejected(reply), refused=True)
        elif state is ClientState.STARTTLS:
            if reply.code == 220:
                self._state = ClientState.TLS_HANDSHAKE
                self._wait(Phase.STARTTLS)
                insecure = self._settings.enable_tls in (
                    TlsMode.OPPORTUNISTIC_INSECURE,
                    TlsMode.REQUIRED_INSECURE,
                )
                self._out.append(StartTls(verify_certificate=not insecure))
            else:
                self._fail_before_ready(_rejected(reply), refused=True)
        elif state is ClientState.EHLO_AFTER_TLS:
            if reply.code == 250:
                self._capabilities = _capabilities(reply)
                self._ready()
            else:
                self._fail_before_ready(_rejected(reply), refused=True)
        elif state is ClientState.READY:
            self._close(f"unilateral response: {reply.to_single_line()}")
        elif state is ClientState.QUITTING:
            self._close(None)
        else:
            assert state is ClientState.TRANSACTION
            self._on_transaction_reply(reply)

    def _after_ehlo(self) -> None:
        mode = self._settings.enable_tls
        offered = "STARTTLS" in self._capabilities
        if mode in (TlsMode.REQUIRED, TlsMode.REQUIRED_INSECURE) and not offered:
            self._fail_connection(
                f"tls policy is {mode.value} but STARTTLS is not advertised by {self._peer}"
            )
        elif mode is TlsMode.DISABLED or not offered:
            self._ready()
        else:
            self._send(_STARTTLS)
            self._state = ClientState.STARTTLS
            self._wait(Phase.STARTTLS)

    def _pending_command(self) -> str:
        state = self._state
        if state in (ClientState.EHLO, ClientState.EHLO_AFTER_TLS):
            return f"EHLO {self._settings.ehlo_domain}"
        if state in (ClientState.STARTTLS, ClientState.TLS_HANDSHAKE):
            return "STARTTLS"
        return "NONE"

    def _fail_before_ready(self, error: str, *, refused: bool = False) -> None:
        """A failure in a state before ready, with the context KumoMTA gives it."""
        state = self._state
        peer = self._peer
        if state is ClientState.BANNER:
            # A refused banner is not a read error, so KumoMTA has no "reading banner" then.
            detail = error if refused else f"reading banner: {error}"
            self._fail_connection(f"connect to {peer} and read initial banner: {detail}")
        elif state is ClientState.EHLO:
            self._fail_connection(f"{peer}: EHLO after banner: {error}")
        elif state is ClientState.EHLO_AFTER_TLS and self._insecure_label is not None:
            self._fail_connection(
                f"{peer}: EHLO after OpportunisticInsecure STARTTLS handshake status: "
                f"{self._insecure_label}",
                insecure_tls=True,
            )
        elif state is ClientState.EHLO_AFTER_TLS:
            self._fail_connection(f"{peer}: EHLO after STARTTLS: {error}")
        else:
            self._fail_connection(error)

    def _lost(self, error: str) -> None:
        state = self._state
        if state is ClientState.CONNECTING:
            self._fail_connection(
                f"connect to {self._peer} and read initial banner: "
                f"failed to connect to {self._peer}: {error}"
            )
        elif state is ClientState.TLS_HANDSHAKE:
            self._fail_connection(f"TLS handshake with {self._peer} failed: {error}")
        elif state is ClientState.READY:
            self._close(error)
        elif state is ClientState.QUITTING:
            self._close(None)
        elif state is ClientState.TRANSACTION:
            assert self._transaction is not None
            command = self._transaction.awaited
            text = f"Error {error} reading response to cmd={command.in_text}"
            failure = Response(
                400, None, f"KumoMTA internal: failed to send message: {text}", command.as_sent
            )
            self._transaction_broken(failure, text)
        else:
            self._fail_before_ready(
                f"Error {error} reading response to cmd={self._pending_command()}"
            )

    def _garbage(self, error: str) -> None:
        state = self._state
        if state is ClientState.READY:
            self._close(error)
        elif state is ClientState.QUITTING:
            self._close(None)
        elif state is ClientState.TRANSACTION:
            failure = Response(400, None, f"KumoMTA internal: failed to send message: {error}")
            self._transaction_broken(failure, error)
        else:
            self._fail_before_ready(error)

    # -- the transaction -----------------------------------------------------------------

    def _rejected_before_sending(
        self, recipients: tuple[str, ...], response: Response
    ) -> list[Output]:
        # Nothing was sent, so the connection stays as it was (and a first transaction
        # still goes without RSET), as in KumoMTA.
        self._state = ClientState.TRANSACTION
        self._transaction = _Transaction(
            recipients=recipients, commands=(), has_rset=False, pipelined=False, content=b""
        )
        self._finish((response,) * len(recipients))
        return self._end()

    def _on_transaction_reply(self, reply: Response) -> None:
        transaction = self._transaction
        assert transaction is not None
        reply = attrs.evolve(reply, command=transaction.awaited.as_sent)
        if transaction.stage is _Stage.CONTENT:
            if _positive(reply):
                self._finish(
                    tuple(reply if _positive(rcpt) else rcpt for rcpt in transaction.rcpt_replies())
                )
            else:
                self._finish((reply,) * len(transaction.recipients))
            return
        if transaction.stage is _Stage.ABORT:
            self._finish(transaction.failure)
            return
        transaction.replies.append(reply)
        received = len(transaction.replies)
        commands = transaction.commands
        if received < len(commands):
            if not transaction.pipelined:
                failure = transaction.envelope_failure()
                if failure is not None:
                    self._finish(failure)
                    return
                self._send(commands[received].line)
            self._wait(commands[received].phase)
            return
        failure = transaction.envelope_failure()
        if failure is not None:
            if reply.code == 354:
                # RFC 2920 3.1: DATA was accepted although nothing can be sent; a lone dot
                # ends it and keeps the connection in step.
                transaction.stage = _Stage.ABORT
                transaction.failure = failure
                self._send(_DOT)
                self._wait(Phase.DATA_DOT)
            else:
                self._finish(failure)
        elif reply.code != 354:
            self._finish((reply,) * len(transaction.recipients))
        else:
            transaction.stage = _Stage.CONTENT
            self._send(transaction.content)
            self._wait(Phase.DATA_DOT)

    def _transaction_broken(self, error: Response, reason: str) -> None:
        """The connection broke while ``_transaction`` waited for a reply."""
        transaction = self._transaction
        assert transaction is not None
        failure = None
        if transaction.stage is _Stage.ENVELOPE:
            # A refusal that arrived before the break outranks it, as in KumoMTA.
            failure = transaction.envelope_failure()
        self._finish(failure or (error,) * len(transaction.recipients), broken=reason)

    def _finish(self, responses: tuple[Response, ...], *, broken: str | None = None) -> None:
        transaction = self._transaction
        assert transaction is not None
        self._out.append(
            TransactionOutcome(
                tuple(
                    RecipientOutcome(recipient, classify_reply(response), response)
                    for recipient, response in zip(transaction.recipients, responses, strict=True)
                )
            )
        )
        self._transaction = None
        if broken is None:
            closing = next((r for r in responses if r.code == 421), None)
            if closing is not None:
                # The server said it is closing the connection; do not wait to see it.
                broken = closing.to_single_line()
        if broken is not None:
            self._close(broken)
        elif self._deliveries >= self._settings.max_deliveries_per_connection:
            self._quit()
        else:
            self._ready()


_ASCII_UPPER: Final = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)


def _rejected(reply: Response) -> str:
    return f"Command rejected {reply.to_single_line()}"


def _capabilities(reply: Response) -> dict[str, str | None]:
    """The EHLO extensions: every line after the first, keyword upper-cased."""
    capabilities: dict[str, str | None] = {}
    for line in reply.content.split("\n")[1:]:
        line = line.removesuffix("\r")  # Rust's lines() drops one CR before each break
        keyword, space, parameter = line.partition(" ")
        capabilities[keyword.translate(_ASCII_UPPER)] = parameter if space else None
    return capabilities

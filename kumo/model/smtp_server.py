"""The ESMTP server of one connection, as a sans-io state machine: bytes in, outputs out.

An :class:`SmtpSession` knows no socket, no Trio and no clock (h11's ``Connection`` is the
model). Its shell reads, writes, times out and makes messages durable; the session decides
every reply. The shell's loop is::

    outputs = session.start()                      # the banner
    while session.phase is not Phase.CLOSED:
        carry out outputs, in order:
            Reply             -> write reply.encode() (the shell may join consecutive ones)
            Rejection         -> log a Rejection record
            MessagesReceived  -> make one message per recipient durable, then
                                 outputs = session.messages_durable(ids)
                                 (or session.messages_failed(reply))
            StartTls          -> flush, wrap the stream in TLS, then
                                 outputs = session.tls_established()
            Close             -> flush and close the connection
        outputs = session.receive_data(read())     # b"" at end of input
                  (or session.timed_out() when a read waits longer than client_timeout,
                   session.shutting_down() when the server stops)

Texts, limits and the order of checks are KumoMTA's (SPEC 8.2; reference
``kumomta-mail-path.md`` section 4), byte for byte. Where KumoMTA departs from RFC 5321
(the first four points garble mail or refuse good clients), the session follows the RFC:

- a leading ``..`` on the first line of a message is unstuffed like any other line
  (KumoMTA only unstuffs after a CRLF, so the first line keeps both dots);
- a message may be empty: ``.`` right after the ``354`` ends it (KumoMTA waits for CRLF.CRLF);
- every final reply to DATA (``250``, ``552``, ``500``) ends the transaction (RFC 5321
  4.1.1.4; KumoMTA keeps it after ``552``/``500``, so that the next MAIL gets ``503``);
- EHLO and HELO reset the transaction (RFC 5321 4.1.4; KumoMTA keeps it);
- STARTTLS is offered only when the shell has a certificate; when it is not offered the
  verb is ``502 5.5.1 Command unimplemented``. After the TLS handshake the session forgets
  the EHLO name and the transaction, and plaintext that followed the STARTTLS line is
  discarded (RFC 3207 4.2; the command-injection attack). AUTH is not offered: ``502``.
- the size limit counts the message as received (unstuffed, line ends included), and a
  message of exactly ``max_message_size`` bytes is accepted.

Line ends: commands and DATA lines end in CRLF only. A lone CR or LF inside a command is
part of the line (it then fails to parse); inside a message it makes the message
``552 5.6.0 message data must use CRLF for line endings`` (KumoMTA's default
``invalid_line_endings = "Deny"``), and only CRLF.CRLF ends the data (so ``LF.LF`` and
``LF.CRLF`` cannot smuggle a second message in).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeAlias

import attrs
from attrs.validators import instance_of

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

BANNER: Final = "KumoMTA"
"""The word after the host name in the ``220`` greeting, as KumoMTA's default banner."""


# --- settings -----------------------------------------------------------------------------


def _networks(value: Iterable[str | IPAddress | IPNetwork]) -> tuple[IPNetwork, ...]:
    if isinstance(value, str):
        # A lone string would be taken as an iterable of one-character "networks".
        raise TypeError(f"relay_hosts must be a list of IPs or CIDRs, got {value!r}")
    return tuple(ipaddress.ip_network(item, strict=False) for item in value)


def _positive(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if type(value) is not int or value <= 0:
        raise ValueError(f"{attribute.name} must be a positive int, got {value!r}")


def _reply_safe(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    # The host name goes into replies: a space would shift the greeting's words, a line
    # break would forge a reply line.
    if not value or any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"{attribute.name} must be a non-empty word, got {value!r}")


@attrs.frozen
class SmtpServerSettings:
    """What a session needs of ``[smtp_listener]`` (SPEC 8.1). Every field has a default.

    The time-outs are not here: time belongs to the shell, which calls
    :meth:`SmtpSession.timed_out`.
    """

    hostname: str = attrs.field(
        default="localhost", validator=[instance_of(str), _reply_safe], kw_only=True
    )
    """The name in the banner and in the ``421`` texts (KumoMTA: the host's name, and
    ``localhost`` when it has none)."""
    relay_hosts: tuple[IPNetwork, ...] = attrs.field(
        default=("127.0.0.1", "::1"), converter=_networks, kw_only=True
    )
    """The peers allowed to relay: IPs or CIDRs (``ipaddress`` networks after conversion;
    host bits are ignored). A peer outside gets ``550 5.7.1`` for every RCPT."""
    max_message_size: int = attrs.field(default=20 * 1024 * 1024, validator=_positive, kw_only=True)
    """Bytes of message content (unstuffed, line ends included) accepted at most; more is
    ``552 5.3.4 message too big`` once the client has sent the final dot."""
    max_recipients_per_message: int = attrs.field(default=1024, validator=_positive, kw_only=True)
    """Recipients of one transaction at most; more is ``452 4.5.3 too many recipients``."""
    max_messages_per_connection: int = attrs.field(
        default=10_000, validator=_positive, kw_only=True
    )
    """Recipients accepted on one connection at most (KumoMTA counts RCPTs here, not
    MAILs: one message is made per recipient)."""
    starttls: bool = attrs.field(default=False, validator=instance_of(bool), kw_only=True)
    """Whether STARTTLS is offered (the shell has a certificate and key)."""
    line_length_limit: int = attrs.field(default=998, validator=_positive, kw_only=True)
    """Characters of a command line or of a message line at most, CRLF excluded; more is
    ``500 5.2.3 line too long``."""
    max_errors: int = attrs.field(default=20, validator=_positive, kw_only=True)
    """Refused commands (``4xx``/``5xx`` replies) a session may earn since it last had a
    message accepted; the next one is followed by ``421 4.7.0 <hostname> too many
    errors`` and the connection closes. Beyond KumoMTA (Postfix's
    ``smtpd_hard_error_limit``): every refusal is a ``Rejection`` record in the log, so a
    client that sends garbage must not write to it without end."""

    @property
    def paused_input_limit(self) -> int:
        """Bytes of input a paused session buffers from later reads before it gives up on
        the client (see :meth:`SmtpSession.receive_data`)."""
        return self.max_message_size + self.line_length_limit + 2


def _port(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if type(value) is not int or not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be a port number, got {value!r}")


def _ip(value: str | IPAddress) -> IPAddress:
    return ipaddress.ip_address(value)


@attrs.frozen
class Peer:
    """The client's address. ``str()`` gives ``10.0.0.5:51234`` or ``[::1]:51234``."""

    ip: IPAddress = attrs.field(converter=_ip)
    port: int = attrs.field(validator=_port)

    def __str__(self) -> str:
        if self.ip.version == 6:
            return f"[{self.ip}]:{self.port}"
        return f"{self.ip}:{self.port}"

    def is_in(self, networks: Iterable[IPNetwork]) -> bool:
        """Whether the peer's IP is inside one of ``networks`` (an IPv4-mapped IPv6
        address, as a dual-stack socket reports an IPv4 client, counts as its IPv4)."""
        ips: list[IPAddress] = [self.ip]
        if isinstance(self.ip, ipaddress.IPv6Address) and self.ip.ipv4_mapped is not None:
            ips.append(self.ip.ipv4_mapped)
        return any(ip in network for network in networks for ip in ips)


# --- outputs ------------------------------------------------------------------------------

_enhanced_code: Final = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3}) ").match


def _reply_code(_: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if type(value) is not int or not 200 <= value <= 599:
        raise ValueError(f"{attribute.name} must be an SMTP reply code, got {value!r}")


def _reply_text(_: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if "\r" in value:
        raise ValueError(f"{attribute.name} must not hold a CR, got {value!r}")


@attrs.frozen
class Reply:
    """One reply to the client: a code and a text whose ``\\n`` separate the lines of a
    multi-line reply (``250-...`` then ``250 ...``)."""

    code: int = attrs.field(validator=_reply_code)
    text: str = attrs.field(validator=[instance_of(str), _reply_text])

    def encode(self) -> bytes:
        """The reply on the wire: every line ends in CRLF, UTF-8 (an echoed SMTPUTF8
        address may hold non-ASCII)."""
        lines = self.text.split("\n")
        last = len(lines) - 1
        return "".join(
            f"{self.code}{' ' if number == last else '-'}{line}\r\n"
            for number, line in enumerate(lines)
        ).encode()

    @property
    def enhanced_code(self) -> tuple[int, int, int] | None:
        """The RFC 3463 code that starts the text (class, subject, detail), if any."""
        match = _enhanced_code(self.text)
        if match is None:
            return None
        return int(match[1]), int(match[2]), int(match[3])

    @property
    def content(self) -> str:
        """The text after the enhanced code (all of it when there is none)."""
        match = _enhanced_code(self.text)
        return self.text if match is None else self.text[match.end() :]

    @property
    def closes(self) -> bool:
        """Whether the session closes after this reply (every ``421`` does)."""
        return self.code == 421


@attrs.frozen
class Rejection:
    """A ``4xx``/``5xx`` reply that the shell logs as a ``Rejection`` record (reference
    4.5). Every such reply has one, placed just before the :class:`Reply` in the outputs,
    except ``421 4.3.2 ...`` (idle, shutting down, load), which KumoMTA does not log."""

    reply: Reply
    command: str | None
    """The client's line without CRLF, ``"DATA"`` for a reply after the message data,
    ``None`` when there is no line to show (too long, not UTF-8)."""
    sender: str
    """The transaction's sender, ``""`` outside a transaction (and for the null sender)."""
    recipient: str
    """The last accepted recipient of the transaction (not the refused one), or ``""``."""
    ehlo_name: str
    """The name given by EHLO or HELO, ``""`` before one."""
    peer: Peer


@attrs.frozen
class MessagesReceived:
    """A transaction's message data arrived whole and passed every check.

    The shell makes one message per recipient durable, then calls
    :meth:`SmtpSession.messages_durable` with their ids (or
    :meth:`SmtpSession.messages_failed`). Until then the session is paused: it sends no
    reply and buffers, unread, whatever the client pipelines.
    """

    sender: str
    """The reverse path without angle brackets; ``""`` for the null sender."""
    recipients: tuple[str, ...]
    """The accepted forward paths, in order, without angle brackets (duplicates kept:
    the client asked for each)."""
    content: bytes
    """The message as sent, dot-unstuffed, every line ending in CRLF (``b""`` for an
    empty message). No ``Received:`` header: the shell adds it with the spool id."""
    ehlo_name: str
    peer: Peer
    tls: bool
    """Whether the message came over TLS (``ESMTPS`` in a ``Received:`` header)."""


@attrs.frozen
class StartTls:
    """The ``220 Ready to Start TLS`` reply was just given: flush it, wrap the stream in
    TLS, and call :meth:`SmtpSession.tls_established`. If the handshake fails, close the
    connection: the stream is beyond repair."""


@attrs.frozen
class Close:
    """Flush what was written and close the connection. Always the last output."""


Output: TypeAlias = Reply | Rejection | MessagesReceived | StartTls | Close


class Phase(enum.Enum):
    """Where a session is; see :attr:`SmtpSession.phase`."""

    NEW = "new"
    """Created; :meth:`SmtpSession.start` (or ``shutting_down``) comes next."""
    COMMAND = "command"
    """Reading commands."""
    DATA = "data"
    """Reading message data, after a ``354``."""
    AWAITING_DURABLE = "awaiting_durable"
    """Paused after :class:`MessagesReceived` until the shell says how it went."""
    AWAITING_TLS = "awaiting_tls"
    """Paused after :class:`StartTls` until the handshake is done."""
    CLOSED = "closed"
    """Done: every call returns no output."""


# --- command syntax (RFC 5321 4.1, with RFC 6531's UTF-8) -----------------------------------

_NON_ASCII: Final = "\x80-\U0010ffff"
_ATOM: Final = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_NON_ASCII}]+"
_QUOTED: Final = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_NON_ASCII}]|\\[\x20-\x7e])*"'
_DOMAIN: Final = rf"[A-Za-z0-9\-{_NON_ASCII}]+(?:\.[A-Za-z0-9\-{_NON_ASCII}]+)*"
_LITERAL: Final = r"\[[\x21-\x5a\x5e-\x7e]*\]"
_MAILBOX: Final = rf"(?:{_ATOM}(?:\.{_ATOM})*|{_QUOTED})@(?:{_DOMAIN}|{_LITERAL})"
_PARAMETER: Final = rf"[A-Za-z0-9][A-Za-z0-9\-]*(?:=[\x21-\x3c\x3e-\x7e{_NON_ASCII}]+)?"

_command_line: Final = re.compile(r"([A-Za-z0-9]+)(?:[ \t]+(.+))?", re.DOTALL).fullmatch
_angle_path: Final = re.compile(rf"<(?:@{_DOMAIN}(?:,@{_DOMAIN})*:)?({_MAILBOX})>").match
_bare_mailbox: Final = re.compile(_MAILBOX).match
_parameters: Final = re.compile(rf"[ \t]+{_PARAMETER}(?:[ \t]+{_PARAMETER})*").fullmatch
_string: Final = re.compile(rf"{_ATOM}|{_QUOTED}").fullmatch
_domain_or_literal: Final = re.compile(rf"{_DOMAIN}|{_LITERAL}").fullmatch
_tag: Final = re.compile(r"[A-Za-z0-9\-]*[A-Za-z0-9]:").match

_NO_ARGUMENT: Final = frozenset({"DATA", "RSET", "QUIT", "STARTTLS"})
_OPTIONAL_STRING: Final = frozenset({"NOOP", "HELP", "VRFY", "EXPN"})
_KNOWN: Final = _NO_ARGUMENT | _OPTIONAL_STRING | {"EHLO", "HELO", "MAIL", "RCPT"}


def _valid_domain(domain: str) -> bool:
    """A host name (letter-digit-hyphen labels, no hyphen at either end, U-labels
    allowed) or an address literal (``[IPv4]``, ``[IPv6:...]``, ``[tag:content]``)."""
    if domain.startswith("["):
        inner = domain[1:-1]
        if inner[:5].lower() == "ipv6:":
            return _is_ip(ipaddress.IPv6Address, inner[5:])
        if _is_ip(ipaddress.IPv4Address, inner):
            return True
        tag = _tag(inner)
        return tag is not None and tag.end() < len(inner)
    return all(label[0] != "-" and label[-1] != "-" for label in domain.split("."))


def _is_ip(kind: type[IPAddress], text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def _path(argument: str, keyword: str, *, null: str | None) -> tuple[str | None, str]:
    """Parse ``keyword [WSP] path [SP parameters]``; KumoMTA's leniencies: a space after the
    colon, a bare mailbox without angle brackets, and a source route (dropped).

    Returns ``(address, "")`` when it parses, ``(address, "syntax")`` when the path is
    fine but the parameters are not, ``(None, "address")`` when the path is not, and
    ``(None, "syntax")`` when the keyword is missing. ``null`` is the one special
    bracketed path allowed (``<>`` for MAIL, ``<Postmaster>`` for RCPT), matched without
    regard to case.
    """
    if argument[: len(keyword)].upper() != keyword:
        return None, "syntax"
    position = len(argument) - len(argument[len(keyword) :].lstrip(" \t"))
    address: str | None = None
    end = position
    if null is not None and argument[position : position + len(null)].lower() == null.lower():
        address = null[1:-1]
        end = position + len(null)
    else:
        match = _angle_path(argument, position)
        if match is not None:
            address, end = match[1], match.end()
        else:
            match = _bare_mailbox(argument, position)
            if match is not None:
                address, end = match[0], match.end()
        if address is not None and not _valid_domain(address.rpartition("@")[2]):
            address = None
    if address is None:
        return None, "address"
    rest = argument[end:]
    if not rest or _parameters(rest) is not None:
        return address, ""
    # A good path then a space then garbage is a syntax error; garbage glued to the path
    # makes the path itself bad (the order of KumoMTA's parser).
    return (address, "syntax") if rest[0] in " \t" else (None, "address")


# --- the session --------------------------------------------------------------------------

_SYNTAX: Final = "Syntax error in command or arguments"
# The fixed replies (reference 4.3); those naming the host or the client are built in place.
_SYNTAX_ERROR: Final = Reply(501, _SYNTAX)
_UNPARSEABLE: Final = Reply(
    501, f"{_SYNTAX}: expected a command word, then arguments after a space"
)
_UNIMPLEMENTED: Final = Reply(502, "5.5.1 Command unimplemented")
_INVALID_UTF8: Final = Reply(501, "5.5.2 Invalid UTF-8 in command")
_LINE_TOO_LONG: Final = Reply(500, "5.2.3 line too long")
_RESET: Final = Reply(250, "Reset state")
_NOOP: Final = Reply(250, "the goggles do nothing")
_BYE: Final = Reply(221, "So long, and thanks for all the fish!")
_BAD_SENDER: Final = Reply(501, "5.1.7 Bad sender's mailbox address syntax")
_BAD_RECIPIENT: Final = Reply(501, "5.1.3 Invalid recipient address syntax")
_MAIL_TWICE: Final = Reply(503, "5.5.0 MAIL FROM already issued; you must RSET first")
_NO_MAIL: Final = Reply(503, "5.5.0 MAIL FROM must be issued first")
_NO_RCPT: Final = Reply(503, "5.5.0 RCPT TO must be issued first")
_TOO_MANY_RECIPIENTS: Final = Reply(452, "4.5.3 too many recipients")
_TOO_MANY_ON_CONNECTION: Final = Reply(452, "4.5.3 too many recipients on this connection")
_SEND_DATA: Final = Reply(354, "Send body; end with CRLF.CRLF")
_TLS_ACTIVE: Final = Reply(501, "Cannot STARTTLS as TLS is already active")
_START_TLS: Final = Reply(220, "Ready to Start TLS")
_TOO_BIG: Final = Reply(552, "5.3.4 message too big")
_LONE_LINE_END: Final = Reply(552, "5.6.0 message data must use CRLF for line endings")
_CRLF: Final = b"\r\n"


# Session-level replies the shell gives on its own (reference 4.2, 4.1), outside a session
# or through messages_failed. Like every "421 4.3.2", the first two are not Rejections.


def too_many_sessions(settings: SmtpServerSettings) -> Reply:
    """``421 4.3.2 <hostname> too many concurrent sessions. Try later``: the reply, in
    place of the banner, to a connection over ``max_connections``."""
    return Reply(421, f"4.3.2 {settings.hostname} too many concurrent sessions. Try later")


def spool_refused(settings: SmtpServerSettings) -> Reply:
    """``421 4.3.2 <hostname> the spool is not accepting writes. Try later``: for
    :meth:`SmtpSession.messages_failed` when the messages cannot be made durable (the
    server is stopping, its log failed)."""
    return Reply(421, f"4.3.2 {settings.hostname} the spool is not accepting writes. Try later")


SPOOL_TIMED_OUT: Final = Reply(451, "4.4.5 data_processing_timeout exceeded (spool)")
"""For :meth:`SmtpSession.messages_failed` when making the messages durable took longer
than ``data_processing_timeout``."""


class SmtpSession:
    """The server side of one SMTP connection; see the module docstring.

    Guarantees:

    - :meth:`receive_data` never raises, whatever the bytes; commands pipelined in one
      read are answered in order. The outputs do not depend on how the input is cut
      into reads, provided the shell resumes a paused session before it reads again (as
      the loop above does), with one deliberate exception: plaintext read together with
      a STARTTLS line is discarded.
    - Every method returns the outputs it produced, in order; :class:`Close` is last when
      present, and afterwards every call returns ``[]``.
    - Nothing of a message is handed over before its final dot has arrived and the
      message passed every check; a message cut off (EOF, time-out, shutdown, close) is
      dropped whole.
    - Between calls the session holds at most about ``max_message_size`` plus one line of
      the client's input (:attr:`held_bytes`): message data over the limit and the rest
      of an over-long line are counted, not kept. While paused it buffers later reads up
      to :attr:`SmtpServerSettings.paused_input_limit`.
    - A call that the shell may not make in the current phase (``receive_data`` before
      ``start``, ``messages_durable`` without a pending transaction...) raises
      :class:`RuntimeError`: a bug of the shell, never of the client.
    """

    __slots__ = (
        "_buffer",
        "_chunks",
        "_close_when_resumed",
        "_connection_recipients",
        "_discarding",
        "_ehlo_name",
        "_errors",
        "_lone_line_end",
        "_out",
        "_phase",
        "_recipients",
        "_sender",
        "_settings",
        "_shut_down_when_resumed",
        "_size",
        "_tls",
        "_too_big",
        "_too_long",
        "peer",
    )

    def __init__(self, settings: SmtpServerSettings, peer: Peer) -> None:
        self._settings = settings
        self.peer: Final = peer
        self._phase = Phase.NEW
        self._out: list[Output] = []
        self._buffer = bytearray()
        self._tls = False
        self._ehlo_name = ""
        self._sender: str | None = None
        """The transaction's reverse path; ``None`` outside a transaction."""
        self._recipients: list[str] = []
        self._connection_recipients = 0
        self._errors = 0
        """Refused commands since the last accepted message (see ``max_errors``)."""
        self._close_when_resumed = False
        self._shut_down_when_resumed = False
        # The message being received (phase DATA):
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_big = False
        self._too_long = False
        self._lone_line_end = False
        self._discarding = False
        """Inside a line (command or data) too long to keep, whose rest is skipped."""

    # -- what the shell reads --------------------------------------------------------------

    @property
    def settings(self) -> SmtpServerSettings:
        """The settings the session was made with."""
        return self._settings

    @property
    def phase(self) -> Phase:
        """Where the session is. The shell reads input only in ``COMMAND`` and ``DATA``."""
        return self._phase

    @property
    def tls(self) -> bool:
        """Whether TLS is established on the connection."""
        return self._tls

    @property
    def held_bytes(self) -> int:
        """Bytes of the client's input the session holds: buffered input and the message
        data kept so far."""
        return len(self._buffer) + sum(map(len, self._chunks))

    # -- what the shell calls --------------------------------------------------------------

    def start(self) -> list[Output]:
        """Greet the client: ``220 <hostname> KumoMTA``. Called once, first."""
        self._require(Phase.NEW, "start")
        self._phase = Phase.COMMAND
        self._reply(Reply(220, f"{self._settings.hostname} {BANNER}"))
        return self._flush()

    def receive_data(self, data: bytes) -> list[Output]:
        """Feed what the client sent; ``b""`` means it closed its side (end of input).

        In ``COMMAND`` and ``DATA`` the input is handled at once. While paused
        (``AWAITING_DURABLE``) it is buffered and handled when the shell resumes the
        session; buffering more than :attr:`SmtpServerSettings.paused_input_limit`
        from reads made while paused, or an end of input, makes the session close once
        it has given the reply it owes. While ``AWAITING_TLS`` input is discarded (RFC
        3207: nothing may precede the handshake) and an end of input closes.
        """
        if self._phase is Phase.NEW:
            raise RuntimeError("receive_data() before start()")
        if self._phase is Phase.CLOSED:
            return []
        if self._phase is Phase.AWAITING_DURABLE:
            if self._close_when_resumed:
                return []
            if not data:
                self._close_when_resumed = True
            elif len(self._buffer) + len(data) > self._settings.paused_input_limit:
                # A client this far ahead of its replies is not pipelining but flooding.
                self._close_when_resumed = True
                self._buffer.clear()
            else:
                self._buffer += data
            return []
        if self._phase is Phase.AWAITING_TLS:
            if not data:
                self._close()
            return self._flush()
        if not data:
            self._close()
            return self._flush()
        self._buffer += data
        self._process()
        return self._flush()

    def messages_durable(self, ids: Sequence[str]) -> list[Output]:
        """Every message of the pending transaction is durable: reply ``250 OK ids=...``
        (the ids in the order given), then handle what the client pipelined meanwhile."""
        if self._resumable("messages_durable"):
            if not ids or any(not isinstance(i, str) or not i or i.split() != [i] for i in ids):
                raise ValueError(f"ids must be non-empty words, got {ids!r}")
            self._errors = 0
            self._resume(Reply(250, "OK ids=" + " ".join(ids)))
        return self._flush()

    def messages_failed(self, reply: Reply) -> list[Output]:
        """The pending transaction's messages could not be made durable: give ``reply``
        (a ``4xx``/``5xx``, such as ``451 4.4.5 spool write timed out`` or
        ``421 4.3.0 <hostname> technical difficulties``; a ``421`` closes), then go on as
        :meth:`messages_durable` does."""
        if self._resumable("messages_failed"):
            if reply.code < 400:
                raise ValueError(f"a failure needs a 4xx or 5xx reply, got {reply.code}")
            self._resume(reply)
        return self._flush()

    def tls_established(self) -> list[Output]:
        """The TLS handshake is done: the session starts afresh (RFC 3207 4.2), without
        a reply; the client speaks next, with EHLO."""
        if self._phase is not Phase.CLOSED:
            self._require(Phase.AWAITING_TLS, "tls_established")
            self._tls = True
            self._ehlo_name = ""
            self._reset_transaction()
            self._phase = Phase.COMMAND
        return self._flush()

    def timed_out(self) -> list[Output]:
        """A read waited longer than ``client_timeout``: ``421 4.3.2 <hostname> idle too
        long``, then :class:`Close` (a message being received is dropped)."""
        if self._phase is Phase.NEW:
            raise RuntimeError("timed_out() before start()")
        if self._phase is not Phase.CLOSED:
            self._reply(Reply(421, f"4.3.2 {self._settings.hostname} idle too long"))
        return self._flush()

    def shutting_down(self) -> list[Output]:
        """The server stops: ``421 4.3.2 <hostname> shutting down``, then :class:`Close`.

        Allowed instead of :meth:`start` (a refusal before the banner). While a
        transaction waits to be durable, the ``421`` follows its reply instead: call
        again :meth:`messages_durable` or :meth:`messages_failed` as usual.
        """
        if self._phase is Phase.AWAITING_DURABLE:
            self._shut_down_when_resumed = True
        elif self._phase is not Phase.CLOSED:
            self._reply(Reply(421, f"4.3.2 {self._settings.hostname} shutting down"))
        return self._flush()

    # -- the machinery ---------------------------------------------------------------------

    def _require(self, phase: Phase, call: str) -> None:
        if self._phase is not phase:
            raise RuntimeError(f"{call}() in phase {self._phase.name}")

    def _resumable(self, call: str) -> bool:
        if self._phase is Phase.CLOSED:
            return False
        self._require(Phase.AWAITING_DURABLE, call)
        return True

    def _flush(self) -> list[Output]:
        out, self._out = self._out, []
        return out

    def _reply(self, reply: Reply, command: str | None = None) -> None:
        if reply.code >= 400 and not (reply.code == 421 and reply.text.startswith("4.3.2 ")):
            self._out.append(
                Rejection(
                    reply,
                    command,
                    self._sender or "",
                    self._recipients[-1] if self._recipients else "",
                    self._ehlo_name,
                    self.peer,
                )
            )
        self._out.append(reply)
        if reply.closes:
            self._close()
        elif reply.code >= 400:
            self._errors += 1
            if self._errors >= self._settings.max_errors:
                self._reply(Reply(421, f"4.7.0 {self._settings.hostname} too many errors"))

    def _close(self) -> None:
        self._phase = Phase.CLOSED
        self._buffer = bytearray()
        self._reset_transaction()
        self._out.append(Close())

    def _reset_transaction(self) -> None:
        self._sender = None
        self._recipients = []
        self._chunks = []

    def _resume(self, reply: Reply) -> None:
        self._phase = Phase.COMMAND
        self._reply(reply, "DATA")
        self._reset_transaction()
        if self._phase is Phase.CLOSED:
            return
        if self._shut_down_when_resumed:
            self._reply(Reply(421, f"4.3.2 {self._settings.hostname} shutting down"))
            return
        self._process()
        if self._close_when_resumed and self._phase is not Phase.AWAITING_DURABLE:
            self._close()

    def _process(self) -> None:
        """Handle the buffered input until it runs out or the session pauses or closes."""
        buffer = self._buffer
        limit = self._settings.line_length_limit
        position = 0
        while True:
            if self._phase is Phase.COMMAND:
                end = buffer.find(_CRLF, position)
                if end < 0:
                    position = self._skip_long_line(buffer, position, limit + 1)
                    break
                line = bytes(buffer[position:end])
                position = end + 2
                if self._discarding or len(line) > limit:
                    self._discarding = False
                    self._reply(_LINE_TOO_LONG)
                else:
                    self._command(line)
            elif self._phase is Phase.DATA:
                position, done = self._data(buffer, position)
                if not done:
                    break
            else:
                break
        if self._phase is Phase.AWAITING_TLS:
            buffer.clear()  # plaintext sent after STARTTLS: RFC 3207 says discard it
        elif self._phase is not Phase.CLOSED:
            del buffer[:position]

    def _skip_long_line(self, buffer: bytearray, position: int, keep: int) -> int:
        """The buffer holds no CRLF after ``position``: if what is there is already too
        long to be a line (more than ``keep`` bytes), drop it but a final CR (which may
        start the CRLF), and remember to skip the rest of the line. Returns where the
        unhandled input now starts."""
        if len(buffer) - position <= keep:
            return position
        cut = len(buffer) - 1 if buffer.endswith(b"\r") else len(buffer)
        if self._phase is Phase.DATA:
            stuffing = 0 if self._discarding or buffer[position] != ord(".") else 1
            self._add_size(cut - position - stuffing)
            self._too_long = True
            self._chunks = []
        self._discarding = True
        return cut

    # -- commands ----------------------------------------------------------------------------

    def _command(self, raw: bytes) -> None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._reply(_INVALID_UTF8)
            return
        match = _command_line(line)
        if match is None:
            self._reply(_UNPARSEABLE, line)
            return
        verb, argument = match[1].upper(), match[2]
        if verb not in _KNOWN:
            self._reply(_UNIMPLEMENTED, line)
        elif argument is not None and (
            verb in _NO_ARGUMENT or (verb in _OPTIONAL_STRING and _string(argument) is None)
        ):
            self._reply(_SYNTAX_ERROR, line)
        elif verb == "EHLO" or verb == "HELO":
            self._hello(verb, argument, line)
        elif verb == "MAIL":
            self._mail(argument or "", line)
        elif verb == "RCPT":
            self._rcpt(argument or "", line)
        elif verb == "DATA":
            self._data_command(line)
        elif verb == "RSET":
            self._reset_transaction()
            self._reply(_RESET)
        elif verb == "NOOP":
            self._reply(_NOOP)
        elif verb == "QUIT":
            self._reply(_BYE)
            self._close()
        elif verb == "STARTTLS":
            self._starttls(line)
        else:  # HELP, VRFY, EXPN
            self._reply(_UNIMPLEMENTED, line)

    def _hello(self, verb: str, argument: str | None, line: str) -> None:
        if argument is None or not _domain_or_literal(argument) or not _valid_domain(argument):
            self._reply(_SYNTAX_ERROR, line)
            return
        self._reset_transaction()
        self._ehlo_name = argument
        if verb == "HELO":
            self._reply(Reply(250, f"Hello {argument}!"))
            return
        extensions = ["PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8"]
        if self._settings.starttls and not self._tls:
            extensions.append("STARTTLS")
        self._reply(
            Reply(250, "\n".join([f"{self._settings.hostname} Aloha {argument}", *extensions]))
        )

    def _mail(self, argument: str, line: str) -> None:
        address, problem = _path(argument, "FROM:", null="<>")
        if problem == "address":
            self._reply(_BAD_SENDER, line)
        elif problem or address is None:
            self._reply(_SYNTAX_ERROR, line)
        elif self._sender is not None:
            self._reply(_MAIL_TWICE, line)
        else:
            self._sender = address
            self._reply(Reply(250, f"OK <{address}>"))

    def _rcpt(self, argument: str, line: str) -> None:
        settings = self._settings
        address, problem = _path(argument, "TO:", null="<Postmaster>")
        if problem == "address":
            self._reply(_BAD_RECIPIENT, line)
        elif problem or address is None:
            self._reply(_SYNTAX_ERROR, line)
        elif self._sender is None:
            self._reply(_NO_MAIL, line)
        elif not self.peer.is_in(settings.relay_hosts):
            self._reply(Reply(550, f"5.7.1 relaying not permitted for {self.peer}"), line)
        elif len(self._recipients) >= settings.max_recipients_per_message:
            self._reply(_TOO_MANY_RECIPIENTS, line)
        elif self._connection_recipients >= settings.max_messages_per_connection:
            if self._recipients:
                self._reply(_TOO_MANY_ON_CONNECTION, line)
            else:
                text = f"4.5.3 {settings.hostname} too many recipients on this connection"
                self._reply(Reply(421, text), line)
        else:
            self._connection_recipients += 1
            self._recipients.append(address)
            self._reply(Reply(250, f"OK <{address}>"))

    def _data_command(self, line: str) -> None:
        if self._sender is None:
            self._reply(_NO_MAIL, line)
        elif not self._recipients:
            self._reply(_NO_RCPT, line)
        else:
            self._phase = Phase.DATA
            self._chunks = []
            self._size = 0
            self._too_big = self._too_long = self._lone_line_end = False
            self._reply(_SEND_DATA)

    def _starttls(self, line: str) -> None:
        if self._tls:
            self._reply(_TLS_ACTIVE, line)
        elif not self._settings.starttls:
            self._reply(_UNIMPLEMENTED, line)
        else:
            self._reply(_START_TLS)
            self._out.append(StartTls())
            self._phase = Phase.AWAITING_TLS

    # -- message data ------------------------------------------------------------------------

    def _data(self, buffer: bytearray, position: int) -> tuple[int, bool]:
        """Take the complete data lines after ``position``; return where the unhandled
        input starts and whether the final dot was among them."""
        if not self._discarding and buffer.startswith(b".\r\n", position):
            self._end_of_data()
            return position + 3, True
        end = buffer.find(b"\r\n.\r\n", position)
        if end >= 0:
            self._take_lines(bytes(buffer[position : end + 2]))
            self._end_of_data()
            return end + 5, True
        last = buffer.rfind(_CRLF, position)
        if last >= 0:
            self._take_lines(bytes(buffer[position : last + 2]))
            position = last + 2
        # One stuffing dot and the CR of the CRLF may come on top of a full-length line.
        return self._skip_long_line(buffer, position, self._settings.line_length_limit + 2), False

    def _take_lines(self, lines: bytes) -> None:
        """Account for complete data lines (each ending in CRLF), and keep them while
        the message can still be accepted."""
        if self._discarding:
            self._discarding = False  # the first line is the end of an over-long one
            unstuffed = lines.replace(b"\r\n.", _CRLF)
        elif lines.startswith(b"."):
            unstuffed = lines[1:].replace(b"\r\n.", _CRLF)
        else:
            unstuffed = lines.replace(b"\r\n.", _CRLF)
        self._add_size(len(unstuffed))
        limit = self._settings.line_length_limit
        if (
            not self._too_long
            and len(unstuffed) > limit + 2
            and max(map(len, unstuffed.split(_CRLF))) > limit
        ):
            self._too_long = True
        if not self._lone_line_end:
            crlf = lines.count(_CRLF)
            self._lone_line_end = lines.count(b"\r") != crlf or lines.count(b"\n") != crlf
        if self._too_big or self._too_long or self._lone_line_end:
            self._chunks = []
        else:
            self._chunks.append(unstuffed)

    def _add_size(self, size: int) -> None:
        self._size += size
        if self._size > self._settings.max_message_size:
            self._too_big = True

    def _end_of_data(self) -> None:
        self._phase = Phase.COMMAND
        if self._too_big:
            self._reply(_TOO_BIG, "DATA")
        elif self._too_long:
            self._reply(_LINE_TOO_LONG, "DATA")
        elif self._lone_line_end:
            self._reply(_LONE_LINE_END, "DATA")
        else:
            assert self._sender is not None
            self._out.append(
                MessagesReceived(
                    self._sender,
                    tuple(self._recipients),
                    b"".join(self._chunks),
                    self._ehlo_name,
                    self.peer,
                    self._tls,
                )
            )
            self._chunks = []
            self._phase = Phase.AWAITING_DURABLE
            return
        self._reset_transaction()

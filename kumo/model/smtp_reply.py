"""SMTP replies as a client reads them, and what a reply means for a message.

A reply is read the way KumoMTA's client (``rfc5321`` crate) reads it, because the
``response`` object of a ``Delivery``, ``TransientFailure`` or ``Bounce`` record must come
out the same (reference ``kumomta-mail-path.md`` sections 3.4 and 5.1):

* a line ends at CRLF only; it must be UTF-8 and at most :data:`MAX_LINE_LENGTH` bytes;
* a line is a three-digit code, then ``-`` (more lines follow) or a space, then text;
* an enhanced status code (``4.7.1 ``, class 2, 4 or 5) opening the first line is taken
  out of the text, and the same prefix is taken off the lines that follow;
* the text of a multi-line reply is its lines joined by ``\\n``; a log record flattens it
  to one line (:meth:`Response.to_json`).

:func:`classify_reply` is KumoMTA's table (reference 3.4) as a pure function.

Where kumo reads differently, on purpose: a bare code (``250`` with no text) is a final
line with empty text (RFC 5321 allows it; KumoMTA calls it malformed); a code must be
three ASCII digits (Rust would also take ``+25``); and a reply is at most
:data:`MAX_REPLY_LENGTH` bytes, so that a hostile server cannot make the client hold an
endless reply (it gets KumoMTA's "Response line is too long").
"""

from __future__ import annotations

import enum
import re
from typing import Any, Final

import attrs

__all__ = [
    "MAX_LINE_LENGTH",
    "MAX_REPLY_LENGTH",
    "Disposition",
    "EnhancedCode",
    "ReplyError",
    "ReplyReader",
    "Response",
    "TooManyRecipients",
    "classify_reply",
    "flatten_content",
    "too_many_recipients",
]

MAX_LINE_LENGTH: Final = 4096
"""Bytes of one reply line, CRLF not counted (KumoMTA's ``MAX_LINE_LEN``)."""
MAX_REPLY_LENGTH: Final = 65536
"""Bytes of one reply, all its lines and their CRLFs counted (kumo's own bound)."""

# Error texts of KumoMTA's ClientError, as they appear after "failed to send message: ".
NOT_UTF8: Final = "response is not UTF8"
LINE_TOO_LONG: Final = "Response line is too long"
MALFORMED: Final = "Malformed Response: "

_CRLF: Final = b"\r\n"
_code_match: Final = re.compile(r"[0-9]{3}").fullmatch
# Rust's integer parsing: ASCII digits with an optional leading "+", leading zeros allowed.
_enhanced_match: Final = re.compile(
    r"(\+?[0-9]+)\.(\+?[0-9]+)\.(\+?[0-9]+) (.*)", re.DOTALL
).fullmatch


class ReplyError(ValueError):
    """A server sent bytes that are not a reply; the message is KumoMTA's error text."""


def _in_range(low: int, high: int) -> Any:
    return [attrs.validators.instance_of(int), attrs.validators.ge(low), attrs.validators.le(high)]


@attrs.frozen
class EnhancedCode:
    """An RFC 3463 enhanced status code, ``class.subject.detail``."""

    class_: int = attrs.field(validator=attrs.validators.in_((2, 4, 5)))
    subject: int = attrs.field(validator=_in_range(0, 65535))
    detail: int = attrs.field(validator=_in_range(0, 65535))

    def __str__(self) -> str:
        return f"{self.class_}.{self.subject}.{self.detail}"

    def to_json(self) -> dict[str, int]:
        """The ``enhanced_code`` object of a log record."""
        return {"class": self.class_, "subject": self.subject, "detail": self.detail}


def flatten_content(content: str) -> str:
    """``content`` on one line, as log records carry it: each CRLF, LF or CR is one space."""
    return content.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


@attrs.frozen
class Response:
    """A reply, or a failure told as one (``KumoMTA internal: ...``).

    ``content`` keeps the line breaks of a multi-line reply (``\\n``); ``command`` is the
    command the reply answers, exactly as sent, CRLF included (``"RCPT TO:<a@b>\\r\\n"``),
    or ``None`` when there is none (a banner, a failure before any command).
    """

    code: int = attrs.field(validator=_in_range(0, 999))
    enhanced_code: EnhancedCode | None
    content: str = attrs.field(validator=attrs.validators.instance_of(str))
    command: str | None = None

    def to_single_line(self) -> str:
        """``code [enhanced ]content`` on one line, as KumoMTA writes a reply in a text."""
        enhanced = f"{self.enhanced_code} " if self.enhanced_code is not None else ""
        return f"{self.code} {enhanced}{flatten_content(self.content)}"

    def to_json(self) -> dict[str, Any]:
        """The ``response`` object of a log record (reference 5.1)."""
        return {
            "code": self.code,
            "enhanced_code": None if self.enhanced_code is None else self.enhanced_code.to_json(),
            "content": flatten_content(self.content),
            "command": self.command,
        }


class Disposition(enum.Enum):
    """What a reply does to a message: the log record type it gets."""

    DELIVERY = "Delivery"
    TRANSIENT_FAILURE = "TransientFailure"
    BOUNCE = "Bounce"


class TooManyRecipients(enum.Enum):
    """Whether a RCPT reply may mean "too many recipients in this transaction"."""

    YES = "Yes"
    NO = "No"
    MAYBE = "Maybe"


def too_many_recipients(response: Response) -> TooManyRecipients:
    """KumoMTA's reading: a RCPT reply with enhanced code 4.5.3 says so; a RCPT ``452`` or
    ``552`` without an enhanced code may (RFC 5321 4.5.3.1.10); anything else does not."""
    if response.command is None or not response.command.startswith("RCPT"):
        return TooManyRecipients.NO
    if response.enhanced_code is None and response.code in (452, 552):
        return TooManyRecipients.MAYBE
    if response.enhanced_code == EnhancedCode(4, 5, 3):
        return TooManyRecipients.YES
    return TooManyRecipients.NO


def classify_reply(response: Response) -> Disposition:
    """The record a message gets for ``response`` (reference 3.4, no bounce classifier).

    ``2xx`` is a Delivery; ``3xx``, ``4xx``, ``503`` (a protocol synchronisation problem)
    and a RCPT reply that may mean "too many recipients" are TransientFailures; every
    other code (``5xx``, and codes below 200 or above 599) is a Bounce.
    """
    code = response.code
    if (
        too_many_recipients(response) is not TooManyRecipients.NO
        or code == 503
        or 300 <= code < 500
    ):
        return Disposition.TRANSIENT_FAILURE
    if 200 <= code < 300:
        return Disposition.DELIVERY
    return Disposition.BOUNCE


def _parse_enhanced(text: str) -> tuple[EnhancedCode, str] | None:
    match = _enhanced_match(text)
    if match is None:
        return None
    klass, subject, detail = (int(match.group(n)) for n in (1, 2, 3))
    if klass not in (2, 4, 5) or subject > 65535 or detail > 65535:
        return None
    return EnhancedCode(klass, subject, detail), match.group(4)


class ReplyReader:
    """Turns the bytes a server sends into :class:`Response` values, one reply at a time.

    :meth:`feed` stores bytes; :meth:`next_reply` gives the next complete reply, ``None``
    while one is incomplete, or raises :class:`ReplyError`. The result does not depend on
    how the bytes were split between calls to :meth:`feed`. Once the stored bytes have
    been read, the reader holds at most one incomplete reply (at most
    :data:`MAX_REPLY_LENGTH` bytes): a longer line or reply raises as soon as it is known
    to be too long, without waiting for its end.
    """

    __slots__ = ("_buffer", "_lines", "_position", "_reply_bytes")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._position = 0
        self._lines: list[tuple[int, str]] = []
        self._reply_bytes = 0

    def feed(self, data: bytes) -> None:
        """Store ``data`` (bytes from the server) for :meth:`next_reply`."""
        self._buffer += data

    def clear(self) -> None:
        """Forget every byte stored and any incomplete reply."""
        self._buffer.clear()
        self._position = 0
        self._lines.clear()
        self._reply_bytes = 0

    @property
    def buffered(self) -> int:
        """Bytes stored and not yet read as part of a complete reply."""
        return len(self._buffer) - self._position + self._reply_bytes

    def next_reply(self) -> Response | None:
        """The next complete reply (``command`` is ``None``), or ``None`` if there is none yet.

        Raises :class:`ReplyError` with KumoMTA's text for bytes that are not a reply;
        the reader is then unusable until :meth:`clear`.
        """
        while True:
            line = self._next_line()
            if line is None:
                return None
            code, final, text = line
            if self._lines and code != self._lines[0][0]:
                raise ReplyError(MALFORMED + _original_line(code, final, text))
            self._lines.append((code, text))
            if final:
                return self._build()

    def _next_line(self) -> tuple[int, bool, str] | None:
        buffer = self._buffer
        end = buffer.find(_CRLF, self._position)
        if end < 0:
            pending = len(buffer) - self._position
            # One byte of slack: a trailing CR may be the first half of the line's CRLF.
            # Whether the line or the whole reply is too long, the text is the same, so that
            # the error does not depend on where the bytes were split.
            if pending > MAX_LINE_LENGTH + 1 or self._reply_bytes + pending > MAX_REPLY_LENGTH:
                raise ReplyError(LINE_TOO_LONG)
            if self._position:
                del buffer[: self._position]
                self._position = 0
            return None
        raw = bytes(buffer[self._position : end])
        self._position = end + 2
        self._reply_bytes += len(raw) + 2
        if len(raw) > MAX_LINE_LENGTH or self._reply_bytes > MAX_REPLY_LENGTH:
            raise ReplyError(LINE_TOO_LONG)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ReplyError(NOT_UTF8) from None
        code_text = line[:3]
        if _code_match(code_text) is None or (len(line) > 3 and line[3] not in " -"):
            raise ReplyError(MALFORMED + line)
        return int(code_text), len(line) == 3 or line[3] == " ", line[4:]

    def _build(self) -> Response:
        (code, first), *rest = self._lines
        self._lines = []
        self._reply_bytes = 0
        parsed = _parse_enhanced(first)
        enhanced, content = parsed if parsed is not None else (None, first)
        if rest:
            prefix = f"{enhanced} " if enhanced is not None else None
            texts = [content]
            for _, text in rest:
                if prefix is not None and text.startswith(prefix):
                    text = text[len(prefix) :]
                texts.append(text)
            content = "\n".join(texts)
        return Response(code, enhanced, content)


def _original_line(code: int, final: bool, text: str) -> str:
    # Rust prints the parsed number: "050" comes back as "50", as KumoMTA writes it.
    return f"{code}{' ' if final else '-'}{text}"

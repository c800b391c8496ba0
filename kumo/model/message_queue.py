"""The messages waiting in one scheduled queue, stored column by column.

A million queued messages as a million tuples cost about 150 bytes each beyond their
strings (the tuple, its pointer, a boxed sequence number, and the id as a 32-character
string). Here each field is a column: spool ids as 16 raw bytes in one ``bytearray``,
numbers in ``array`` columns, senders and recipients as lists of (shared) strings. A
:class:`~kumo.model.events.Message` is built only when a message leaves the queue.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator

from kumo.model.events import Message

_ID_BYTES = 16


def _raw_id(message_id: str) -> bytes | None:
    """The 16 bytes of a 32-lowercase-hex spool id, or None for any other id."""
    if len(message_id) != 2 * _ID_BYTES:
        return None
    try:
        raw = bytes.fromhex(message_id)
    except ValueError:
        return None
    return raw if raw.hex() == message_id else None


class MessageQueue:
    """An ordered collection of queued messages; iterating yields them in arrival order.

    Ids that are not kumo spool ids (32 lowercase hex digits) are kept as strings, so
    any id round-trips unchanged.
    """

    __slots__ = ("_ids", "_raw", "_recipients", "_senders", "_seqs", "_sizes", "_times")

    def __init__(self, messages: Iterable[Message] = ()) -> None:
        self._clear()
        for message in messages:
            self.append(message)

    def _clear(self) -> None:
        self._raw: bytearray | None = bytearray()
        self._ids: list[str] = []
        self._senders: list[str] = []
        self._recipients: list[str] = []
        self._sizes = array("q")
        self._times = array("q")
        self._seqs = array("q")

    def append(self, message: Message) -> None:
        if self._raw is not None:
            raw = _raw_id(message.id)
            if raw is None:
                # Fall back to strings for the whole queue, once.
                self._ids = [m.id for m in self]
                self._raw = None
            else:
                self._raw += raw
        if self._raw is None:
            self._ids.append(message.id)
        self._senders.append(message.sender)
        self._recipients.append(message.recipient)
        self._sizes.append(message.size)
        self._times.append(message.received_at)
        self._seqs.append(message.seq)

    def __len__(self) -> int:
        return len(self._seqs)

    def __bool__(self) -> bool:
        return len(self._seqs) > 0

    def _id_column(self) -> list[str]:
        raw = self._raw
        if raw is None:
            return self._ids
        return [raw[start : start + _ID_BYTES].hex() for start in range(0, len(raw), _ID_BYTES)]

    def __iter__(self) -> Iterator[Message]:
        return map(
            Message._make,
            zip(
                self._id_column(),
                self._senders,
                self._recipients,
                self._sizes,
                self._times,
                self._seqs,
                strict=True,
            ),
        )

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MessageQueue):
            return list(self) == list(other)
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MessageQueue({list(self)!r})"

    def take_all(self) -> tuple[Message, ...]:
        """Every message, in order; the queue is empty afterwards."""
        messages = tuple(self)
        self._clear()
        return messages

    def remove(self, ids: set[str]) -> None:
        """Drop the messages whose id is in ``ids`` (the rest keep their order)."""
        kept = [message for message in self if message.id not in ids]
        self._clear()
        for message in kept:
            self.append(message)

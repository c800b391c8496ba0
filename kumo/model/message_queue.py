"""The messages waiting in one scheduled queue, stored column by column.

A million queued messages as a million tuples cost about 150 bytes each beyond their
strings (the tuple, its pointer, a boxed sequence number, and the id as a 32-character
string), and a recipient string per message is a small long-lived object that pins
the allocator's pages. Here a queue holds no object per message: spool ids as 16 raw
bytes in one ``bytearray``, recipients as their UTF-8 bytes in another (each ended by a
NUL byte), each distinct sender once with a per-message index, and numbers in ``array``
columns. A :class:`~kumo.model.events.Message` is built only when a message leaves the
queue, and the columns are turned back into strings by a few C-level calls (``hex``,
``decode``, ``split``), not a Python loop per message.

The reception protocol rides on the sender index: a message that did not come over HTTP
indexes its ``(sender, protocol)`` pair in the same table, so that it costs no byte per
message, whichever way the messages came in.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from typing import NamedTuple, TypeAlias, cast, overload

from kumo.model.message import HTTP, Message

_ID_BYTES = 16
_TEXT = "surrogatepass"
"""Addresses are any Python strings (JSON can carry a lone surrogate); this error
handler round-trips every one of them through UTF-8."""


Origin: TypeAlias = str | tuple[str, str]
"""An entry of a queue's table of senders: the sender of messages injected over HTTP,
or ``(sender, protocol)`` for those that came in another way."""

Row: TypeAlias = tuple[str, str, str, int, int, int] | tuple[str, str, str, int, int, int, str]
"""A message as a plain tuple (:meth:`MessageQueue.rows`): its six fields, and a seventh,
its protocol, only when that is not HTTP."""


def raw_id(message_id: str) -> bytes | None:
    """The 16 bytes of a 32-lowercase-hex spool id, or None for any other id."""
    if len(message_id) != 2 * _ID_BYTES:
        return None
    try:
        raw = bytes.fromhex(message_id)
    except ValueError:
        return None
    return raw if raw.hex() == message_id else None


class QueueColumns(NamedTuple):
    """What :meth:`MessageQueue.columns` tells about a queue beside its columns' bytes."""

    messages: int
    raw_ids: bool
    """Ids as 16 raw bytes each (else a JSON list of strings)."""
    lengths: bool
    """A column of recipient lengths follows the recipients (else NUL-terminated)."""
    senders: list[str]
    """The distinct senders, in the order the sender index counts them."""
    protocols: list[str] | None = None
    """The reception protocol of each entry of ``senders`` (a sender may be there once
    per protocol), or None when every message came over HTTP (and in a snapshot written
    before queues kept the protocol)."""


class MessageQueue:
    """An ordered collection of queued messages; iterating yields them in arrival order.

    Ids that are not kumo spool ids (32 lowercase hex digits) are kept as strings, and
    recipients holding a NUL character switch the queue to a column of lengths, so any
    message round-trips unchanged.
    """

    __slots__ = (
        "_ids",
        "_lengths",
        "_raw",
        "_recipients",
        "_sender_index",
        "_senders",
        "_seqs",
        "_sizes",
        "_times",
    )

    def __init__(self, messages: Iterable[Message] = ()) -> None:
        self._clear()
        for message in messages:
            self.append(message)

    def _clear(self) -> None:
        self._raw: bytearray | None = bytearray()
        self._ids: list[str] = []
        self._recipients = bytearray()
        self._lengths: array[int] | None = None
        """None while every recipient is NUL-free and ended by a NUL in the blob."""
        self._senders: dict[Origin, int] = {}
        """Each distinct sender (HTTP) or ``(sender, protocol)`` (any other) -> its index."""
        self._sender_index = array("I")
        self._sizes = array("q")
        self._times = array("q")
        self._seqs = array("q")

    def append(self, message: Message) -> None:
        self.add(*message)

    def add(
        self,
        message_id: str,
        sender: str,
        recipient: str,
        size: int,
        received_at: int,
        seq: int,
        protocol: str = HTTP,
    ) -> None:
        """Append a message given as its fields (a replay need not build the tuple)."""
        if self._raw is not None:
            raw = raw_id(message_id)
            if raw is None:
                # Fall back to strings for the whole queue, once.
                self._ids = self._id_column()
                self._raw = None
            else:
                self._raw += raw
        if self._raw is None:
            self._ids.append(message_id)
        if self._lengths is None:
            if "\x00" in recipient:
                self._use_lengths()
            else:
                self._recipients += recipient.encode("utf-8", _TEXT)
                self._recipients.append(0)
        if self._lengths is not None:
            encoded = recipient.encode("utf-8", _TEXT)
            self._recipients += encoded
            self._lengths.append(len(encoded))
        senders = self._senders
        origin: Origin = sender if protocol == HTTP else (sender, protocol)
        self._sender_index.append(senders.setdefault(origin, len(senders)))
        self._sizes.append(size)
        self._times.append(received_at)
        self._seqs.append(seq)

    def _use_lengths(self) -> None:
        """A recipient holds a NUL: keep lengths instead of terminators from now on."""
        recipients = self._recipient_column()
        self._recipients = bytearray()
        self._lengths = array("I")
        for recipient in recipients:
            encoded = recipient.encode("utf-8", _TEXT)
            self._recipients += encoded
            self._lengths.append(len(encoded))

    def __len__(self) -> int:
        return len(self._seqs)

    def __bool__(self) -> bool:
        return len(self._seqs) > 0

    def _id_column(self) -> list[str]:
        raw = self._raw
        if raw is None:
            return self._ids
        if not raw:
            return []
        return raw.hex(" ", _ID_BYTES).split(" ")

    def _recipient_column(self) -> list[str]:
        blob = self._recipients
        if self._lengths is None:
            if not blob:
                return []
            return blob[:-1].decode("utf-8", _TEXT).split("\x00")
        out: list[str] = []
        start = 0
        for length in self._lengths:
            end = start + length
            out.append(blob[start:end].decode("utf-8", _TEXT))
            start = end
        return out

    def _sender_table(self) -> tuple[list[str], list[str] | None]:
        """The senders of the table's entries, in index order, and their protocols (None
        when every entry is an HTTP sender)."""
        origins = list(self._senders)
        if all(type(origin) is str for origin in origins):
            return cast(list[str], origins), None
        senders = [origin if type(origin) is str else origin[0] for origin in origins]
        protocols = [HTTP if type(origin) is str else origin[1] for origin in origins]
        return senders, protocols

    def _column(self, table: list[str]) -> list[str]:
        """``table`` (one entry per sender-table entry) spread over the messages."""
        if len(table) == 1:
            return table * len(self._sender_index)
        return list(map(table.__getitem__, self._sender_index))

    def _protocol_column(self, protocols: list[str] | None) -> Iterable[str]:
        if protocols is None:
            return repeat(HTTP, len(self._sender_index))
        return self._column(protocols)

    def __iter__(self) -> Iterator[Message]:
        senders, protocols = self._sender_table()
        return map(
            Message._make,
            zip(
                self._id_column(),
                self._column(senders),
                self._recipient_column(),
                self._sizes,
                self._times,
                self._seqs,
                self._protocol_column(protocols),
                strict=True,
            ),
        )

    def _zip(self, senders: list[str]) -> Iterator[tuple[str, str, str, int, int, int]]:
        return zip(
            self._id_column(),
            self._column(senders),
            self._recipient_column(),
            self._sizes,
            self._times,
            self._seqs,
            strict=True,
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

    def take_all(self) -> MessageBatch:
        """Every message, in order; the queue is empty afterwards."""
        head = MessageQueue()
        for column in self.__slots__:
            setattr(head, column, getattr(self, column))
        self._clear()
        return MessageBatch.adopt(head)

    def take(self, count: int) -> MessageBatch:
        """The first ``count`` messages, in order, removed from the queue.

        Costs what it takes plus a move of the rest's bytes, so that a large queue can be
        emptied in chunks without decoding the whole of it each time.
        """
        if count >= len(self._seqs):
            return self.take_all()
        head = self._head(count)
        if self._raw is not None:
            del self._raw[: count * _ID_BYTES]
        else:
            del self._ids[:count]
        if self._lengths is not None:
            del self._lengths[:count]
        del self._recipients[: len(head._recipients)]
        for column in self._numbers():
            del column[:count]
        return MessageBatch.adopt(head)

    def head(self, count: int) -> list[Message]:
        """The first ``count`` messages (all of them if fewer), in order; the queue is
        unchanged. Costs what it returns, whatever the length of the queue."""
        return list(self._head(min(count, len(self._seqs))))

    def _head(self, count: int) -> MessageQueue:
        """A new queue holding copies of the first ``count`` (at most ``len``) messages."""
        head = MessageQueue()
        if self._raw is not None:
            assert head._raw is not None
            head._raw += self._raw[: count * _ID_BYTES]
        else:
            head._raw = None
            head._ids = self._ids[:count]
        if self._lengths is None:
            cut = self._recipient_start(count)
        else:
            head._lengths = self._lengths[:count]
            cut = sum(head._lengths)
        head._recipients = self._recipients[:cut]
        # The table of senders only grows (a cleared queue starts a new one): the head
        # may share it.
        head._senders = self._senders
        for column in ("_sender_index", "_sizes", "_times", "_seqs"):
            setattr(head, column, getattr(self, column)[:count])
        return head

    def _recipient_start(self, index: int) -> int:
        """Where the ``index``-th recipient starts in the blob (its length, past the last)."""
        if self._lengths is not None:
            return sum(self._lengths[:index])
        end = -1
        for _ in range(index):
            end = self._recipients.index(0, end + 1)
        return end + 1

    def find(self, message_id: str) -> Message | None:
        """The queued message whose id is ``message_id``, if the queue holds it.

        The search runs over the id column in C; building the message then costs a walk
        over the recipients before it (they have no fixed width).
        """
        raw_column = self._raw
        if raw_column is None:
            try:
                index = self._ids.index(message_id)
            except ValueError:
                return None
        else:
            raw = raw_id(message_id)
            if raw is None:
                return None
            position = raw_column.find(raw)
            # A match that straddles two ids is not one of them: look further.
            while position > 0 and position % _ID_BYTES:
                position = raw_column.find(raw, position + 1)
            if position < 0:
                return None
            index = position // _ID_BYTES
        start = self._recipient_start(index)
        if self._lengths is None:
            end = self._recipients.index(0, start)
        else:
            end = start + self._lengths[index]
        origin = list(self._senders)[self._sender_index[index]]
        sender, protocol = (origin, HTTP) if isinstance(origin, str) else origin
        return Message(
            message_id,
            sender,
            self._recipients[start:end].decode("utf-8", _TEXT),
            self._sizes[index],
            self._times[index],
            self._seqs[index],
            protocol,
        )

    def last_received_at(self) -> int | None:
        """The ``received_at`` of the newest message, None for an empty queue."""
        return self._times[-1] if self._times else None

    def ids(self) -> list[str]:
        """The messages' ids, in order."""
        return self._id_column()

    def seqs(self) -> list[int]:
        """The seqs of the messages' ``MessageReceived``, in order."""
        return self._seqs.tolist()

    def rows(self) -> list[Row]:
        """The messages as plain tuples, in order (for an encoder): six fields each, and
        a seventh, the protocol, for a message that did not come over HTTP (so that an
        event of HTTP messages encodes as it did before messages kept their protocol)."""
        senders, protocols = self._sender_table()
        rows = self._zip(senders)
        if protocols is None:
            return list(rows)
        return [
            row if protocol == HTTP else (*row, protocol)
            for row, protocol in zip(rows, self._column(protocols), strict=True)
        ]

    def columns(self) -> tuple[QueueColumns, list[bytes]]:
        """The queue as plain data, for a snapshot: a small description and its columns'
        bytes (numbers in this machine's byte order). :meth:`from_columns` reverses it."""
        senders, protocols = self._sender_table()
        described = QueueColumns(
            messages=len(self._seqs),
            raw_ids=self._raw is not None,
            lengths=self._lengths is not None,
            senders=senders,
            protocols=protocols,
        )
        # Ids that are not spool ids are rare (logs of tests, of old versions): JSON
        # (ASCII, which carries any string) is fast enough for them.
        ids = bytes(self._raw) if self._raw is not None else json.dumps(self._ids).encode()
        blobs = [ids, bytes(self._recipients)]
        if self._lengths is not None:
            blobs.append(self._lengths.tobytes())
        blobs += [column.tobytes() for column in self._numbers()]
        return described, blobs

    @classmethod
    def from_columns(cls, described: QueueColumns, blobs: Sequence[bytes]) -> MessageQueue:
        """The queue :meth:`columns` described; ValueError if the parts do not fit."""
        queue = cls()
        blobs = list(blobs)
        expected = 6 + described.lengths
        if len(blobs) != expected:
            raise ValueError(f"{len(blobs)} columns, expected {expected}")
        count = described.messages
        ids, recipients = blobs[0], blobs[1]
        if described.raw_ids:
            if len(ids) != count * _ID_BYTES:
                raise ValueError("the id column does not hold one id per message")
            queue._raw = bytearray(ids)
        else:
            queue._raw = None
            queue._ids = json.loads(ids)
            if (
                not isinstance(queue._ids, list)
                or len(queue._ids) != count
                or not all(isinstance(item, str) for item in queue._ids)
            ):
                raise ValueError("the id column does not hold one id per message")
        queue._recipients = bytearray(recipients)
        numbers = blobs[2:]
        if described.lengths:
            queue._lengths = array("I")
            queue._lengths.frombytes(numbers.pop(0))
            if len(queue._lengths) != count or sum(queue._lengths) != len(recipients):
                raise ValueError("the recipient lengths do not fit the recipients")
        elif recipients.count(0) != count or (count and recipients[-1] != 0):
            raise ValueError("the recipient column does not hold one recipient per message")
        protocols = described.protocols
        if protocols is None:
            protocols = [HTTP] * len(described.senders)
        elif len(protocols) != len(described.senders) or not all(
            type(protocol) is str for protocol in protocols
        ):
            raise ValueError("the protocols do not fit the senders")
        pairs = zip(described.senders, protocols, strict=True)
        queue._senders = {
            sender if protocol == HTTP else (sender, protocol): index
            for index, (sender, protocol) in enumerate(pairs)
        }
        if len(queue._senders) != len(described.senders):
            raise ValueError("a sender is listed twice with the same protocol")
        for column, data in zip(queue._numbers(), numbers, strict=True):
            column.frombytes(data)
            if len(column) != count:
                raise ValueError("a column does not hold one value per message")
        if count and max(queue._sender_index) >= len(described.senders):
            raise ValueError("a sender index is out of range")
        return queue

    def _numbers(self) -> tuple[array[int], ...]:
        return (self._sender_index, self._sizes, self._times, self._seqs)

    def remove(self, ids: set[str]) -> None:
        """Drop the messages whose id is in ``ids`` (the rest keep their order)."""
        kept = [message for message in self if message.id not in ids]
        self._clear()
        for message in kept:
            self.append(message)


class MessageBatch(Sequence[Message]):
    """An immutable run of messages (a ``Bounced`` event's), stored like a queue.

    A :class:`Message` tuple stays tracked by the cyclic garbage collector for as long
    as it lives (named tuples are never untracked), so a sweep that kept one per
    bounced message would leave the collector a million objects to walk, in pauses of a
    hundred milliseconds. A batch is a handful of objects whatever its size; its
    messages are built when it is iterated, and dropped by whoever iterates.
    """

    __slots__ = ("_queue",)

    def __init__(self, messages: Iterable[Message] = ()) -> None:
        self._queue = MessageQueue(messages)

    @classmethod
    def adopt(cls, queue: MessageQueue) -> MessageBatch:
        """A batch of ``queue``'s messages; ``queue`` must not be changed afterwards."""
        batch = cls.__new__(cls)
        batch._queue = queue
        return batch

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Message]:
        return iter(self._queue)

    @overload
    def __getitem__(self, index: int) -> Message: ...

    @overload
    def __getitem__(self, index: slice) -> MessageBatch: ...

    def __getitem__(self, index: int | slice) -> Message | MessageBatch:
        messages = tuple(self._queue)
        if isinstance(index, slice):
            return MessageBatch(messages[index])
        return messages[index]

    def __add__(self, other: Iterable[Message]) -> MessageBatch:
        joined = MessageQueue(self)
        for message in other:
            joined.append(message)
        return MessageBatch.adopt(joined)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MessageBatch):
            return len(self) == len(other) and self.rows() == other.rows()
        if isinstance(other, tuple | list):
            return list(self) == list(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self.rows()))

    def __repr__(self) -> str:
        return f"MessageBatch({list(self)!r})"

    def ids(self) -> list[str]:
        """The messages' ids, in order."""
        return self._queue.ids()

    def seqs(self) -> list[int]:
        """The seqs of the messages' ``MessageReceived``, in order."""
        return self._queue.seqs()

    def rows(self) -> list[Row]:
        """The messages as plain tuples (which the collector can forget), in order, as
        :meth:`MessageQueue.rows` gives them."""
        return self._queue.rows()

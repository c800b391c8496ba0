"""Which scheduled queue holds a message, found from its spool id without asking every
queue (``GET /api/admin/inspect-message/v1``).

The queue actors hold the messages, each queue column by column
(:mod:`kumo.model.message_queue`); this index tells which of them to ask. It is sized for
a million queued messages, where every byte a message costs counts (docs/benchmarks.md):
a dict from id to queue would hold a string and a dict entry per message, about 130
bytes, a third more memory per message than the queues themselves. Here an entry is 16
bytes in a shared ``bytearray``: no object per message.

- The ids are split by their first 12 bits into 4096 buckets; an entry is the id's last
  8 bytes and the 8-byte number of its queue's *slot*. A lookup searches one bucket (a
  few hundred entries at a million messages) in C.
- An index entry is a hint, exact one way only: every message added and not discarded
  is found, with its queue, but an entry may outlive its message, and two ids may share
  the 76 bits kept. Whoever looks up must check the queue it names
  (:meth:`kumo.model.message_queue.MessageQueue.find`).
- Entries are forgotten a queue at a time: :meth:`retire` a queue once it is empty (a
  sweep always empties its queue) and every entry of its slot is dead at once, for one
  dict operation instead of one per message. A queue that fills again gets a new slot.
  The bytes of dead entries are reclaimed when their bucket next grows, so the index
  holds at most about twice what is live. A message that leaves a queue that stays
  non-empty (one delivered, once the mail path lands) is dropped with :meth:`discard`.

Pure: no trio, no I/O.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from itertools import count
from typing import Final

from kumo.model.message_queue import raw_id

_BUCKET_BITS: Final = 12
_BUCKETS: Final = 1 << _BUCKET_BITS
_KEY: Final = 8
"""Bytes of an id kept in its entry: its last eight (the bucket holds 12 bits of its first)."""
_ENTRY: Final = _KEY + 8
"""An entry: the key, then the slot as 8 little-endian bytes."""
_FIRST_LIMIT: Final = 16 * _ENTRY
"""Bytes a bucket may hold before its dead entries are first looked for."""


def _bucket(raw: bytes) -> int:
    return raw[0] << 4 | raw[1] >> 4


class MessageLocations:
    """Spool id -> the scheduled queue that holds the message; see the module docstring."""

    __slots__ = ("_buckets", "_limits", "_queues", "_retired", "_seen", "_slots", "_unused")

    def __init__(self) -> None:
        self._buckets = [bytearray() for _ in range(_BUCKETS)]
        self._limits = array("Q", [_FIRST_LIMIT]) * _BUCKETS
        """Per bucket, the size at which it is next compacted (or let grow)."""
        self._seen = array("Q", [0]) * _BUCKETS
        """Per bucket, how many slots were retired when it was last compacted: a bucket
        grows without a pass over it while no slot has died since."""
        self._retired = 0
        self._slots: dict[str, bytes] = {}
        """Queue name -> its live slot's 8 bytes."""
        self._queues: dict[bytes, str] = {}
        """Live slot's 8 bytes -> its queue's name."""
        self._unused = count()

    def __len__(self) -> int:
        """Entries held, live or dead but not yet reclaimed."""
        return sum(len(bucket) for bucket in self._buckets) // _ENTRY

    def add(self, message_id: str, queue: str) -> None:
        """``queue`` holds the message ``message_id`` (a spool id) from now on.

        Raises ValueError for an id that is not 32 hex digits (every id kumo queues is
        one: :class:`kumo.model.events.MessageReceived` refuses others).
        """
        self.add_many(((message_id, queue),))

    def add_many(self, located: Iterable[tuple[str, str]]) -> None:
        """:meth:`add` each ``(message_id, queue)`` of ``located``, in one call: this
        runs once per message received, and a call per message would cost as much as
        the rest of it."""
        buckets, limits, slots = self._buckets, self._limits, self._slots
        fromhex = bytes.fromhex
        for message_id, queue in located:
            # The id is checked only as far as the entry needs (16 bytes of hex);
            # MessageReceived has checked the rest.
            try:
                raw = fromhex(message_id)
            except ValueError:
                raw = b""
            if len(raw) != 16:
                raise ValueError(f"not a spool id: {message_id!r}")
            slot = slots.get(queue) or self._new_slot(queue)
            index = raw[0] << 4 | raw[1] >> 4
            bucket = buckets[index]
            if len(bucket) >= limits[index]:
                bucket = self._grow(index)
            bucket += raw[-_KEY:] + slot

    def _new_slot(self, queue: str) -> bytes:
        slot = self._slots[queue] = next(self._unused).to_bytes(8, "little")
        self._queues[slot] = queue
        return slot

    def queues_of(self, message_id: str) -> list[str]:
        """The queues that may hold ``message_id``: almost always one or none; check each
        (see the module docstring). Any text may be asked; a non-spool id is in none."""
        raw = raw_id(message_id)
        if raw is None:
            return []
        bucket = self._buckets[_bucket(raw)]
        key = raw[-_KEY:]
        found: list[str] = []
        position = bucket.find(key)
        while position >= 0:
            # A match that straddles two entries, or a slot's bytes, is no entry's key.
            if position % _ENTRY == 0:
                queue = self._queues.get(bytes(bucket[position + _KEY : position + _ENTRY]))
                if queue is not None and queue not in found:
                    found.append(queue)
            position = bucket.find(key, position + 1)
        return found

    def retire(self, queue: str) -> None:
        """``queue`` is empty: every entry of it is dead (nothing if it has none)."""
        slot = self._slots.pop(queue, None)
        if slot is not None:
            del self._queues[slot]
            self._retired += 1

    def discard(self, message_id: str, queue: str) -> None:
        """``message_id`` left ``queue``, which holds others still: drop its entry (no-op
        for an id not indexed there)."""
        raw = raw_id(message_id)
        slot = self._slots.get(queue)
        if raw is None or slot is None:
            return
        bucket = self._buckets[_bucket(raw)]
        entry = raw[-_KEY:] + slot
        position = bucket.find(entry)
        while position >= 0:
            if position % _ENTRY == 0:
                del bucket[position : position + _ENTRY]
                return
            position = bucket.find(entry, position + 1)

    def _grow(self, index: int) -> bytearray:
        """Bucket ``index`` reached its limit: drop its dead entries if a slot died since
        it was last looked at, then let it grow to twice what it keeps."""
        bucket = self._buckets[index]
        if self._seen[index] != self._retired:
            self._seen[index] = self._retired
            live = self._queues
            data = bytes(bucket)
            kept = bytearray()
            for start in range(0, len(data), _ENTRY):
                if data[start + _KEY : start + _ENTRY] in live:
                    kept += data[start : start + _ENTRY]
            bucket = self._buckets[index] = kept
        self._limits[index] = max(2 * len(bucket), _FIRST_LIMIT)
        return bucket

"""The event log's interface: what the runtime needs of a durable, ordered store.

Implementations are synchronous and not thread-safe: the runtime calls them from one
worker thread at a time (``trio.to_thread.run_sync``), batched, never once per message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol

from kumo.model.events import Committed, Event
from kumo.model.requests import Content


class LogCorruptError(Exception):
    """The stored log is not what kumo wrote: a gap, a broken hash chain, a bad body."""

    def __init__(self, seq: int, problem: str) -> None:
        super().__init__(f"event log corrupt at seq {seq}: {problem}")
        self.seq = seq
        self.problem = problem


class StoreDamagedError(Exception):
    """The store's files are damaged below the level of events (a page of a table or
    an index): it cannot be trusted for reading or writing. The message names the file,
    the first damage found, and what to do."""

    def __init__(self, where: str, damage: str, remedy: str) -> None:
        super().__init__(f"the event log {where} is damaged: {damage}; {remedy}")
        self.where = where
        self.damage = damage


class LogFullError(Exception):
    """The store's disk (or its size limit) is full: nothing of the transaction was
    written. Writes may succeed again once space is freed."""


class LogDamagedError(Exception):
    """A write met a damaged store (a malformed page, an I/O error, a file that is no
    longer a database or no longer writable): nothing of the transaction was written,
    and no later write should be tried until the store is checked
    (``kumo replay --verify``) and repaired. What was committed before stays committed."""


class EventStore(Protocol):
    @property
    def last_seq(self) -> int:
        """Sequence number of the last committed event (0 for an empty log)."""
        ...

    @property
    def last_time(self) -> int:
        """Commit time of the last committed event (0 for an empty log)."""
        ...

    def commit(
        self,
        events: Sequence[Event],
        *,
        time: int,
        bodies: Mapping[int, Content],
        durable: bool = True,
    ) -> list[Committed]:
        """Append ``events`` in one transaction, all stamped ``time``.

        ``bodies`` maps an index into ``events`` (a ``MessageReceived``) to the message's
        content, stored in the spool in the same transaction (a ``(head, body)`` pair is
        joined as its row is written, so that no more than one joined copy is held). An
        event that removes messages (``Bounced``, a departure) leaves their contents
        owed a purge (:meth:`purge_spool`). On an exception nothing was appended;
        :class:`LogFullError` when the disk is full.

        With ``durable`` (the default) it returns once the transaction, and every one
        before it, survives a power failure. Without, it returns once the transaction
        is committed and ordered: it survives the process being killed, and a power
        failure can undo it (with whatever followed it) until the next durable commit.
        """
        ...

    @property
    def owed(self) -> int:
        """How many contents of messages that left wait for :meth:`purge_spool`."""
        ...

    @property
    def owing(self) -> bool:
        """Whether the spool may hold contents of messages that left: some are owed a
        purge, or the store was opened after a process that left some owed."""
        ...

    def owe(self, seqs: Iterable[int]) -> None:
        """Owe a purge of the contents spooled at ``seqs`` too (what a crash left)."""
        ...

    def purge_spool(self, limit: int) -> int:
        """Delete up to ``limit`` owed contents, the oldest first, in a transaction of
        their own, not fsynced; return how many. :class:`LogFullError` when the disk is
        full (nothing was deleted)."""
        ...

    def spool_seqs(self, chunk: int = 100_000) -> Iterator[Sequence[int]]:
        """The seqs of the spooled contents, in order, in chunks."""
        ...

    def checkpoint(self) -> tuple[int, int]:
        """Copy what a write-ahead log holds back into the database, without making a
        writer on another connection wait; return ``(frames, copied)``, the log's size
        and how much of it is now copied (both 0 for a store without one). Called from
        a connection of its own beside the writer, whose commits then never do it."""
        ...

    def read(self, after_seq: int, limit: int) -> list[Committed]:
        """Up to ``limit`` committed events with ``seq > after_seq``, in order."""
        ...

    def scan(self, after_seq: int = 0, chunk: int = 10_000) -> Iterator[list[Committed]]:
        """Every committed event after ``after_seq``, in order, in chunks."""
        ...

    def scan_rows(
        self, after_seq: int = 0, chunk: int = 20_000
    ) -> Iterator[list[tuple[int, int, str, bytes]]]:
        """Raw ``(seq, time, type, body)`` rows after ``after_seq``, in order, in chunks,
        for readers that decode only what they need (a replay). Raises
        :class:`LogCorruptError` at the first gap in the sequence."""
        ...

    def chain_at(self, seq: int) -> bytes | None:
        """The hash chain's value at ``seq`` (the genesis value at 0), or None if the
        store holds no event ``seq``."""
        ...

    def spool_body(self, seq: int) -> bytes | None:
        """The content of the message received at ``seq``, if still spooled."""
        ...

    def spool_count(self) -> int:
        """How many messages the spool holds (received, not yet gone)."""
        ...

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def close(self) -> None: ...

"""The delivery-log writer: Reception and AdminBounce records as JSON lines, exactly once.

It follows the event log from its checkpoint, as far as the log is durable. Each round
it takes what has been committed since, encodes the records, appends them to the
current segment under ``<data-dir>/logs/`` with one write and one fsync, and then
records its checkpoint ``(seq, segment, offset)`` atomically (a temporary file renamed
over the old one).

On start it truncates the segment named by the checkpoint to the checkpoint's offset:
whatever a crash left after the last checkpoint (a record written twice, half a line)
is cut off and written again from the log. So a restart neither loses nor repeats a
record.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import attrs
import orjson
import trio

from kumo.model.events import Bounced, Committed, MessageReceived
from kumo.model.log_record import admin_bounce_lines, reception_lines
from kumo.model.state import RuleBook
from kumo.model.statistics import counter, gauge, info
from kumo.runtime.blocking import RunBlocking, in_thread
from kumo.runtime.log_writer import LogWriter
from kumo.runtime.watermark import Watermark
from kumo.store.layout import CHECKPOINT

SEGMENT_BYTES: Final = 256 * 1024 * 1024
"""A segment that grows past this is closed and the next record starts a new one."""
READ_LIMIT: Final = 20_000
ROUND_RECORDS: Final = 4_096
"""Records written (and fsynced) per round at most. Small rounds keep the disk's queue
short, so that the event log's own fsyncs (an admin request waits on one) do not queue
behind hundreds of megabytes of delivery log during a sweep."""
GATHER_COMMITS: Final = 8
"""Commits the writer lets pass, once it has caught up, while clients' events are
still being committed: under a steady stream of small injections it then writes (and
fsyncs, and checkpoints) once for several commits rather than once for each. It waits on
commits, not on a clock, so an idle log is written at once and virtual time in tests
does not move."""


@attrs.frozen
class Checkpoint:
    seq: int
    segment: str
    offset: int


@attrs.frozen
class DeliveryLogStatistics:
    """The delivery-log writer's progress."""

    position: int = gauge("Sequence number of the last event the delivery log covers.")
    records_written: int = counter("Delivery-log records written by this process.")
    bytes_written: int = counter("Delivery-log bytes written by this process.")
    writes: int = counter(
        "Delivery-log rounds (one write, one fdatasync, one checkpoint each) by this process."
    )
    segment: str = info("The delivery-log segment being written.")


def segment_name(first_seq: int) -> str:
    """Segments are named by the seq of the first event they hold, so they sort."""
    return f"{first_seq:020d}.jsonl"


class _Segments:
    """The files under ``logs/``; used from a worker thread only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.checkpoint_path = directory / CHECKPOINT
        self.fd: int | None = None
        self.segment = ""
        self.offset = 0

    def recover(self) -> int:
        """Open the checkpointed segment, cut it back to the checkpoint; return its seq."""
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            data = orjson.loads(self.checkpoint_path.read_bytes())
            checkpoint = Checkpoint(int(data["seq"]), str(data["segment"]), int(data["offset"]))
        except FileNotFoundError:
            return 0
        self.segment, self.offset = checkpoint.segment, checkpoint.offset
        self.fd = os.open(self.directory / self.segment, os.O_WRONLY | os.O_CREAT, 0o644)
        os.ftruncate(self.fd, self.offset)
        os.lseek(self.fd, self.offset, os.SEEK_SET)
        return checkpoint.seq

    def write(self, lines: list[bytes], first_seq: int, last_seq: int) -> int:
        if lines:
            if self.fd is None or self.offset >= SEGMENT_BYTES:
                self._rotate(first_seq)
            assert self.fd is not None
            data = b"".join(lines)
            view = memoryview(data)
            while view:
                written = os.write(self.fd, view)
                view = view[written:]
            os.fdatasync(self.fd)
            self.offset += len(data)
            written_bytes = len(data)
        else:
            written_bytes = 0
        if self.fd is not None:
            self._checkpoint(last_seq)
        return written_bytes

    def _rotate(self, first_seq: int) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.segment = segment_name(first_seq)
        self.fd = os.open(
            self.directory / self.segment, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644
        )
        self.offset = 0
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _checkpoint(self, seq: int) -> None:
        temporary = self.checkpoint_path.with_suffix(".tmp")
        temporary.write_bytes(
            orjson.dumps({"seq": seq, "segment": self.segment, "offset": self.offset})
        )
        os.replace(temporary, self.checkpoint_path)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def encode_records(
    batch: list[Committed], rules: Mapping[str, tuple[str, bool]], node_id: str
) -> list[bytes]:
    """The log lines a batch of committed events causes, in order.

    ``rules`` maps a rule id to its reason and whether it suppresses logging.
    """
    lines: list[bytes] = []
    received: list[MessageReceived] = []
    received_at = 0

    def flush_received() -> None:
        lines.extend(reception_lines(received, received_at=received_at, node_id=node_id))
        received.clear()

    for committed in batch:
        event = committed.event
        if isinstance(event, MessageReceived):
            # Arrivals of one commit share its time: encode them together.
            if received and committed.time != received_at:
                flush_received()
            received_at = committed.time
            received.append(event)
            continue
        if received:
            flush_received()
        if isinstance(event, Bounced):
            reason, suppressed = rules[event.rule_id]
            if not suppressed:
                lines.extend(
                    admin_bounce_lines(
                        event.messages,
                        queue=event.queue,
                        reason=reason,
                        bounced_at=committed.time,
                        node_id=node_id,
                    )
                )
    if received:
        flush_received()
    return lines


def _rounds(batch: list[Committed]) -> list[list[Committed]]:
    """Cut ``batch`` into runs of about :data:`ROUND_RECORDS` records each."""
    rounds: list[list[Committed]] = [[]]
    records = 0
    for committed in batch:
        event = committed.event
        weight = len(event.messages) if isinstance(event, Bounced) else 1
        if records and records + weight > ROUND_RECORDS:
            rounds.append([])
            records = 0
        rounds[-1].append(committed)
        records += weight
    return rounds


class DeliveryLogWriter:
    """Follows the log and writes its records; see the module docstring."""

    def __init__(
        self,
        log: LogWriter,
        directory: Path,
        rules: RuleBook,
        node_id: str,
        *,
        run_blocking: RunBlocking = in_thread,
    ) -> None:
        self._run_blocking = run_blocking
        self._log = log
        self._rules = rules
        self._node_id = node_id
        self._segments = _Segments(directory)
        self.position = Watermark(0)
        self._records = 0
        self._bytes = 0
        self._writes = 0

    def recover(self) -> int:
        """Blocking: cut the log files back to the checkpoint; returns its seq."""
        seq = self._segments.recover()
        self.position = Watermark(seq)
        return seq

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                # Only what the log has made durable: a record must never describe a
                # bounce that a power failure could still undo.
                durable = self._log.durable
                batch = await self._log.read_after(self.position.value, READ_LIMIT)
                if batch and batch[-1].seq > durable.value:
                    batch = [c for c in batch if c.seq <= durable.value]
                if not batch:
                    await durable.wait_for(self.position.value + 1)
                    await self._gather()
                    continue
                for round_ in _rounds(batch):
                    await self._write(round_)
        finally:
            self._segments.close()

    async def _gather(self) -> None:
        log = self._log
        # Let the tasks the same commit woke (clients about to append again) run first.
        await trio.lowlevel.checkpoint()
        for _ in range(GATHER_COMMITS):
            if (
                not log.clients_waiting()
                or log.durable.value - self.position.value >= ROUND_RECORDS
            ):
                return
            await log.durable.wait_for(log.durable.value + 1)

    async def _write(self, batch: list[Committed]) -> None:
        # Rules never change their reason or suppress flag: read them here, in the trio
        # thread, and hand the worker thread a plain mapping.
        rules = {
            c.event.rule_id: (rule.reason, rule.suppress_logging)
            for c in batch
            if isinstance(c.event, Bounced) and (rule := self._rules.rules.get(c.event.rule_id))
        }
        node_id = self._node_id
        segments = self._segments

        def encode_and_write() -> tuple[int, int]:
            lines = encode_records(batch, rules, node_id)
            return len(lines), segments.write(lines, batch[0].seq, batch[-1].seq)

        records, written = await self._run_blocking(encode_and_write)
        self._records += records
        self._bytes += written
        self._writes += 1
        self.position.advance(batch[-1].seq)

    def statistics(self) -> DeliveryLogStatistics:
        return DeliveryLogStatistics(
            position=self.position.value,
            records_written=self._records,
            bytes_written=self._bytes,
            writes=self._writes,
            segment=self._segments.segment,
        )

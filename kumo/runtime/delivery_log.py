"""The delivery-log writer: Reception, AdminBounce, AdminRebind, Rejection and the mail
path's records as JSON lines, exactly once.

It follows the event log from its checkpoint, as far as the log is durable. Each round
it takes what has been committed since, encodes the records, and hands them to
:class:`~kumo.store.delivery_files.DeliveryFiles`, which appends them to the current
segment under ``<data-dir>/logs/`` with one write and one fsync and then moves the
checkpoint atomically.

On start the files are cut back to the checkpoint: whatever a crash left after it (a
record written twice, half a line) is cut off and written again from the log. So a
restart neither loses nor repeats a record. When the files do not end a record at the
checkpoint (damaged, a line removed or repeated, the segment gone), or there is no
checkpoint to trust (deleted, unreadable), the tail after the last whole record the log
calls for is moved aside and the records after it are written again
(:mod:`kumo.runtime.delivery_repair`), in one line on stderr that says so. The files'
layout and format are :mod:`kumo.store.delivery_files`'s; this task only decides what
to write and when.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs
import trio

from kumo.model.events import (
    Bounced,
    Committed,
    MessageReceived,
    Outcome,
    Rebound,
    Rejected,
)
from kumo.model.log_record import (
    admin_bounce_lines,
    admin_rebind_lines,
    outcome_line,
    reception_lines,
    rejection_line,
)
from kumo.model.settings import EngineSettings
from kumo.model.state import RuleBook
from kumo.model.statistics import counter, gauge, info
from kumo.runtime.admin_gate import AdminGate
from kumo.runtime.blocking import RunBlocking, in_thread
from kumo.runtime.delivery_repair import RepairError, cut_damaged_tail
from kumo.runtime.log_writer import LogWriter
from kumo.runtime.watermark import Watermark
from kumo.store.archive import ArchiveCorruptError
from kumo.store.delivery_files import (
    CHECKPOINT,
    STALE_SUFFIX,
    CheckpointError,
    DeliveryFiles,
    TailDamagedError,
    read_checkpoint,
    segment_sizes,
)
from kumo.store.history import HistoryView
from kumo.store.layout import LOGS

logger = logging.getLogger("kumo.delivery_log")


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
        elif isinstance(event, Rebound):
            lines.extend(admin_rebind_lines(event, at=committed.time, node_id=node_id))
        elif isinstance(event, Rejected):
            lines.append(rejection_line(event, rejected_at=committed.time, node_id=node_id))
        elif isinstance(event, Outcome):
            lines.append(outcome_line(event, at=committed.time, node_id=node_id))
    if received:
        flush_received()
    return lines


def encode_slices(
    pieces: Sequence[list[Committed]],
    start: int,
    rules: Mapping[str, tuple[str, bool]],
    node_id: str,
    *,
    stop: Callable[[], bool],
) -> tuple[list[bytes], int]:
    """The lines of ``pieces[start:]`` (:func:`encode_records` of each), up to the first
    piece before which ``stop()`` says to hand back (never before the first); and the
    index of the first piece not encoded.

    The delivery-log writer runs it in a worker thread with ``stop`` reading the admin
    gate (without a lock: a stale read costs a slice more or less), so that an admin
    request that arrives mid-round waits for one slice, not the round."""
    lines: list[bytes] = []
    for index in range(start, len(pieces)):
        if index > start and stop():
            return lines, index
        lines += encode_records(pieces[index], rules, node_id)
    return lines, len(pieces)


def _rounds(batch: list[Committed], round_records: int) -> list[list[Committed]]:
    """Cut ``batch`` into runs of about ``round_records`` records each."""
    rounds: list[list[Committed]] = [[]]
    records = 0
    for committed in batch:
        event = committed.event
        weight = len(event.messages) if isinstance(event, Bounced | Rebound) else 1
        if records and records + weight > round_records:
            rounds.append([])
            records = 0
        rounds[-1].append(committed)
        records += weight
    return rounds


class DeliveryLogWriter:
    """Follows the log and writes its records to ``directory``; see the module docstring."""

    def __init__(
        self,
        log: LogWriter,
        directory: Path,
        rules: RuleBook,
        node_id: str,
        settings: EngineSettings,
        *,
        run_blocking: RunBlocking = in_thread,
        admin_gate: AdminGate | None = None,
    ) -> None:
        """``admin_gate``: waited on before a round is encoded and before it is written;
        the worker thread that encodes it hands back at the first slice boundary where
        it finds the gate closed (:func:`encode_slices`)."""
        self._run_blocking = run_blocking
        self._admin_gate = admin_gate or AdminGate.never_closed()
        self._settings = settings
        self._log = log
        self._rules = rules
        self._node_id = node_id
        self._files = DeliveryFiles(directory, segment_bytes=settings.segment_bytes)
        self.position = Watermark(0)
        self._records = 0
        self._bytes = 0
        self._writes = 0

    def recover(self) -> int:
        """Blocking: cut the log files back to the checkpoint; returns its seq.

        Damaged files, and a checkpoint that is missing beside segments or unreadable,
        are repaired from the event log (see the module docstring), and the line that
        says what was done is logged as a warning. A checkpoint beyond the end of the
        event log is returned as it is, the files untouched: the log lost events, and
        the engine refuses to start.
        """
        files = self._files
        directory = files.directory
        why = None
        try:
            checkpoint = read_checkpoint(directory)
        except CheckpointError as exc:
            aside = f"{CHECKPOINT}{STALE_SUFFIX}"
            os.replace(directory / CHECKPOINT, directory / aside)
            checkpoint = None
            why = f"{CHECKPOINT} is unreadable ({exc}; moved to {LOGS}/{aside})"
        segments = segment_sizes(directory)
        if why is not None and not segments:
            logger.warning("delivery log: %s/%s; no segment to rebuild it from", LOGS, why)
        if checkpoint is None and segments:
            why = why or f"{CHECKPOINT} is missing"
            last, size = list(segments.items())[-1]
            seq = self._repair(f"{LOGS}/{why}; rebuilt from the segments", last, size, None)
        else:
            try:
                seq = files.recover()
            except TailDamagedError as exc:
                checkpoint = exc.checkpoint
                if checkpoint.seq > self._log.last_seq:
                    return checkpoint.seq
                why = f"{LOGS}/{exc}"
                seq = self._repair(why, checkpoint.segment, checkpoint.offset, checkpoint.seq)
        self.position = Watermark(seq)
        return seq

    def _repair(self, why: str, segment: str, limit: int, through: int | None) -> int:
        """Cut ``segment`` back to its last whole record before byte ``limit`` that the
        log calls for, write the records after it again up to seq ``through`` (the
        log's end if ``None``), checkpoint there and return that seq. Raises
        :class:`RepairError` if the events needed cannot be read."""
        try:
            return self._repair_from_history(why, segment, limit, through)
        except ArchiveCorruptError as exc:
            raise RepairError(
                f"the delivery log cannot be repaired ({why}): {exc}; run `kumo replay "
                "--verify`, and restore the data directory from a backup"
            ) from None

    def _repair_from_history(self, why: str, segment: str, limit: int, through: int | None) -> int:
        files = self._files
        rules = self._rules.rules
        reasons = {rule.id: (rule.reason, rule.suppress_logging) for rule in rules.values()}

        def suppressed(rule_id: str) -> bool:
            return reasons.get(rule_id, ("", False))[1]

        # The logs directory is the data directory's (kumo.store.layout).
        with HistoryView(files.directory.parent) as history:
            end = history.last_seq if through is None else through
            resumption = cut_damaged_tail(
                files,
                history,
                segment=segment,
                limit=limit,
                through=end,
                suppressed=suppressed,
            )
            files.resume(resumption.segment, resumption.offset, resumption.last_line)
            skip = resumption.skip
            rewritten = 0
            batches = history.committed(after=resumption.first_seq - 1, through=end)
            for batch in batches:
                for round_ in _rounds(batch, self._settings.round_records):
                    lines = encode_records(round_, reasons, self._node_id)[skip:]
                    skip = 0
                    files.append(lines, round_[0].seq, round_[-1].seq)
                    rewritten += len(lines)
            files.append([], end, end)
        where = f"{LOGS}/{segment}"
        if resumption.moved is None and resumption.kept is not None:
            done = f"{where} ends with {resumption.kept}"
        elif resumption.kept is not None:
            done = f"{where} cut back to byte {resumption.offset:,}, after {resumption.kept}"
        else:
            done = f"{where} cut to nothing (no whole record in it that the log calls for)"
        if resumption.moved is not None:
            stale, size = resumption.moved
            done += f"; the {size:,} bytes after it moved to {LOGS}/{stale}"
        logger.warning(
            "delivery log: %s; %s; %s record(s) written again from the event log, up to seq %s",
            why,
            done,
            f"{rewritten:,}",
            f"{end:,}",
        )
        return end

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                # Only what the log has made durable: a record must never describe a
                # bounce that a power failure could still undo.
                durable = self._log.durable
                batch = await self._log.read_after(
                    self.position.value, self._settings.delivery_read_limit
                )
                if batch and batch[-1].seq > durable.value:
                    batch = [c for c in batch if c.seq <= durable.value]
                if not batch:
                    await durable.wait_for(self.position.value + 1)
                    await self._gather()
                    continue
                for round_ in _rounds(batch, self._settings.round_records):
                    await self._write(round_)
        finally:
            self._files.close()

    async def _gather(self) -> None:
        log = self._log
        # Let the tasks the same commit woke (clients about to append again) run first.
        await trio.lowlevel.checkpoint()
        for _ in range(self._settings.gather_commits):
            if (
                not log.clients_waiting()
                or log.durable.value - self.position.value >= self._settings.round_records
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
        gate = self._admin_gate
        pieces = _rounds(batch, self._settings.slice_records)
        lines: list[bytes] = []
        done = 0
        while done < len(pieces):
            await gate.turn()
            encoded, done = await self._run_blocking(
                functools.partial(
                    encode_slices,
                    pieces,
                    done,
                    rules,
                    self._node_id,
                    stop=lambda: gate.closed_hint,
                )
            )
            lines += encoded
        records = len(lines)
        await gate.turn()  # its fsync would share the disk with theirs
        written = await self._run_blocking(
            functools.partial(self._files.append, lines, batch[0].seq, batch[-1].seq)
        )
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
            segment=self._files.segment,
        )

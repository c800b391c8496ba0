"""``kumo replay --verify``: check a data directory against everything the log promises.

First the database's own structure (:func:`kumo.store.integrity.check_structure`,
SQLite's ``integrity_check``: every page of the events table, its id index, the spool
and the meta table). One pass over the stored rows then checks the log itself
(:class:`ChainCheck`: gapless sequence from 1, hash chain, commit times that never go
back, bodies that decode to the type their row names) and feeds the decoded events to
the model's :class:`~kumo.model.invariants.InvariantCheck` (conservation, attribution,
counters). The spool is compared with the fold (:func:`check_spool`: every queued
message has its content, and no content is left for a message that is gone). Then
every delivery-log record under ``logs/`` goes through
:class:`~kumo.model.invariants.DeliveryLogCheck`, every field of it, with the
checkpoint (or, without one, as far as the records go).

Nothing here writes: the log (archive segments and live store) is read through
:class:`~kumo.store.history.HistoryView`, the delivery log
through :mod:`kumo.store.delivery_files`. A truncated log keeps a valid chain, so
truncation is found from the outside: a delivery-log checkpoint past the log's end, or
records for messages the log no longer holds.

After retention deleted the oldest archive segments (:mod:`kumo.store.retention`), the
log begins at a cut, and every check starts there: the chain from the base's chain
value (which the first kept segment's ``chain_before`` must repeat), the sequence from
the seq after it, the invariants and the snapshot checks from the base's state
(:class:`~kumo.model.invariants.InvariantCheck`), the delivery log after the records of
the deleted events (counted, not compared). The base itself is checked as far as it
can be: its digest, and its chain against the kept log's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple

import attrs
import orjson

from kumo.model.events import Committed, EventDecodeError, decode_event, event_type
from kumo.model.invariants import DeliveryLogCheck, InvariantCheck, Violation, at_seq
from kumo.model.snapshot import SnapshotError, SnapshotPosition, decode_snapshot, state_differences
from kumo.model.state import State
from kumo.store.archive import ArchiveCorruptError, ArchiveSegment, HistoryCut
from kumo.store.delivery_files import (
    CHECKPOINT,
    CheckpointError,
    read_checkpoint,
    read_lines,
    segment_sizes,
)
from kumo.store.history import HistoryView
from kumo.store.integrity import check_structure
from kumo.store.layout import ARCHIVE, DATABASE, LOGS, SNAPSHOTS
from kumo.store.log_view import ChainedRow
from kumo.store.snapshots import snapshot_paths
from kumo.store.sqlite_log import GENESIS, chain_link

CHECKPOINT_WHERE: Final = f"{LOGS}/{CHECKPOINT}"
"""Where a violation about the delivery-log checkpoint is, for the report."""
SPOOL_WHERE: Final = f"{DATABASE}, the spool"
"""Where a violation about the spool as a whole is."""
Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: called as work advances, for a progress bar."""


def _no_progress(stage: str, done: int, total: int) -> None:
    pass


class ChainCheck:
    """Checks stored rows, in seq order, for gaps, a broken hash chain and time going back.

    Each fault is reported once, at the row where it shows: after a gap or a broken
    link the check resumes from the stored chain value, so one edited row gives one
    violation, not one per row after it.
    """

    def __init__(self, cut: HistoryCut | None = None) -> None:
        """``cut``: where a log that retention cut begins (the row after it first)."""
        self.violations: list[Violation] = []
        self.rows = 0
        self.expected_seq = 1 if cut is None else cut.seq + 1
        self._previous_chain = GENESIS if cut is None else cut.chain
        self._previous_time: int | None = None if cut is None else cut.time

    def _violate(self, check: str, seq: int, problem: str) -> None:
        self.violations.append(Violation(check, at_seq(seq), problem, seq))

    def apply(self, row: ChainedRow) -> None:
        seq, time, kind, body, chain = row
        self.rows += 1
        if isinstance(body, str):
            # An edit through SQL text functions turns the BLOB into TEXT.
            body = body.encode()
        if not (
            isinstance(time, int)
            and isinstance(kind, str)
            and isinstance(body, bytes)
            and isinstance(chain, bytes)
        ):
            self._violate("chain", seq, "a column of this row has the wrong type: it was edited")
            self.expected_seq = seq + 1
            self._previous_chain = chain if isinstance(chain, bytes) else b""
            return
        if seq != self.expected_seq:
            if seq > self.expected_seq:
                missing = (
                    f"event {self.expected_seq}"
                    if seq == self.expected_seq + 1
                    else f"events {self.expected_seq}..{seq - 1}"
                )
                self._violate("sequence", seq, f"{missing} missing: rows were removed")
            else:
                self._violate("sequence", seq, f"seq {seq} out of order")
        elif chain_link(self._previous_chain, seq, time, kind, body) != chain:
            self._violate(
                "chain",
                seq,
                f"the hash chain breaks at seq {seq}: this row's time, type or body was "
                "edited, or the row before it was rewritten",
            )
        if self._previous_time is not None and time < self._previous_time:
            self._violate("chain", seq, "commit time goes back from the row before")
        self.expected_seq = seq + 1
        self._previous_chain = bytes(chain)
        self._previous_time = time


class DeliveryRecord(NamedTuple):
    """The fields of one delivery-log line that verification compares (a tuple: there
    is one per line)."""

    kind: str
    message_id: str
    queue: str
    content: str | None
    where: str


def read_delivery_log(
    logs: Path, progress: Progress = _no_progress
) -> Iterator[DeliveryRecord | Violation]:
    """Every record of every segment under ``logs``, in log order.

    A line that is not a JSON object with ``type``, ``id`` and ``queue`` yields a
    :class:`Violation` naming its file and line, except an unterminated last line of
    the last segment, which a running server may be writing at this very moment.
    """
    for item in read_delivery_records(logs, progress):
        if isinstance(item, Violation):
            yield item
            continue
        record, where = item
        try:
            response = record["response"]
            content = response.get("content") if isinstance(response, dict) else None
            yield DeliveryRecord(
                str(record["type"]), str(record["id"]), str(record["queue"]), content, where
            )
        except (KeyError, TypeError, AttributeError):
            yield Violation("delivery-log", where, "not a delivery-log record")


def read_delivery_records(
    logs: Path, progress: Progress = _no_progress
) -> Iterator[tuple[dict[str, Any], str] | Violation]:
    """Every record of every segment under ``logs``, decoded, with where it is (its
    file and line), in log order.

    A line that is not a JSON object yields a :class:`Violation` naming its file and
    line, as does an unterminated line, except the last line of the last segment,
    which a running server may be writing at this very moment.
    """
    total = sum(segment_sizes(logs).values())
    done = 0
    current = None
    for segment, number, data, terminated, last_segment in read_lines(logs):
        if segment != current:
            if current is not None:
                progress("delivery log", done, total)
            current = segment
        done += len(data) + terminated
        where = f"{LOGS}/{segment} line {number}"
        if not terminated:
            if not last_segment:
                yield Violation("delivery-log", where, "unterminated line in an old segment")
            continue
        try:
            record = orjson.loads(data)
        except orjson.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            yield record, where
        else:
            yield Violation("delivery-log", where, "not a delivery-log record")
        if number % 65_536 == 0:
            progress("delivery log", done, total)
    if current is not None:
        progress("delivery log", done, total)


class SnapshotCheck:
    """Checks each snapshot under ``snapshots/`` against the fold of the log at its seq.

    Fed every event in order while snapshots remain to check (it folds a full state,
    messages included, only for as long as that); a damaged snapshot, one that differs
    from the log's fold or chain, or one beyond the log's end is a violation naming it.
    """

    def __init__(
        self, data_dir: Path, violations: list[Violation], base: State | None = None
    ) -> None:
        """``base``: the state at a retention cut, where the log begins (folded into:
        hand over a copy of your own). Snapshots at or before it are not checked."""
        self._violations = violations
        self.checked = 0
        self._waiting: list[tuple[str, State, SnapshotPosition]] = []
        cut = base.last_seq if base is not None else 0
        for path in reversed(snapshot_paths(data_dir / SNAPSHOTS)):
            where = f"{SNAPSHOTS}/{path.name}"
            try:
                state, position = decode_snapshot(path.read_bytes())
            except (OSError, SnapshotError) as exc:
                violations.append(Violation("snapshot", where, str(exc)))
                continue
            if position.seq > cut:
                self._waiting.append((where, state, position))
        self._fold = base if base is not None else State()

    @property
    def pending(self) -> bool:
        return bool(self._waiting)

    def apply(self, committed: Committed, chain: bytes) -> None:
        self._fold.apply(committed)
        while self._waiting and self._waiting[0][2].seq == committed.seq:
            where, state, position = self._waiting.pop(0)
            self.checked += 1
            problems = state_differences(self._fold, state)
            if position.chain != chain:
                problems.insert(0, "its chain differs from the log's")
            for problem in problems[:5]:
                self._violations.append(Violation("snapshot", where, problem, committed.seq))

    def finish(self, last_seq: int) -> None:
        for where, _, position in self._waiting:
            self._violations.append(
                Violation(
                    "snapshot",
                    where,
                    f"taken at seq {position.seq}, beyond the log's end at seq {last_seq}: "
                    "the log lost events",
                )
            )


SPOOL_NAMED: Final = 10
"""How many contents missing from the spool, and how many left in it, a report names
one by one (the rest are counted)."""


def check_spool(
    spooled: Iterable[list[int]], invariants: InvariantCheck, *, owed: bool = False
) -> tuple[int, list[Violation]]:
    """Compare the spool's seqs (in chunks) with a finished fold: every
    queued message must have its content (spooled at the seq of its
    ``MessageReceived``), and no content may be left for a message that is gone, or
    at a seq that received none. Returns the number of contents and the violations.

    ``owed``: the store says purges are owed (``spool_owed``), so the contents of
    messages that left may still be there, waiting for theirs: not a violation.
    """
    gone = invariants.bounced.keys() | invariants.departed.keys()
    # In seq order: a base at a retention cut lists its queued messages queue by queue.
    queued = iter(sorted((r.seq, mid) for mid, r in invariants.received.items() if mid not in gone))
    violations: list[Violation] = []
    missing = 0
    left: list[int] = []
    want = next(queued, None)
    gone_seqs = {r.seq for mid, r in invariants.received.items() if mid in gone} if owed else set()
    # Sorted here: a damaged page of the spool can hand its rows over out of order.
    seqs = sorted(seq for chunk in spooled for seq in chunk)
    count = len(seqs)
    for seq in seqs:
        while want is not None and want[0] < seq:
            missing += 1
            if missing <= SPOOL_NAMED:
                violations.append(_missing_content(*want))
            want = next(queued, None)
        if want is not None and want[0] == seq:
            want = next(queued, None)
        elif not owed or seq not in gone_seqs:
            left.append(seq)
    while want is not None:
        missing += 1
        if missing <= SPOOL_NAMED:
            violations.append(_missing_content(*want))
        want = next(queued, None)
    if missing > SPOOL_NAMED:
        violations.append(
            Violation(
                "spool",
                SPOOL_WHERE,
                f"and {missing - SPOOL_NAMED:,} more queued message(s) without content",
            )
        )
    if left:
        named = set(left[:SPOOL_NAMED])
        messages = {r.seq: mid for mid, r in invariants.received.items() if r.seq in named}
        for seq in left[:SPOOL_NAMED]:
            mid = messages.get(seq)
            if mid is None:
                problem = f"content spooled at seq {seq}, which received no message"
            elif mid in gone:
                problem = (
                    f"content of message {mid} is still spooled, but the message left: "
                    f"{invariants.gone(mid)}"
                )
            else:
                problem = f"content of message {mid} is spooled twice"
            violations.append(Violation("spool", at_seq(seq), problem, seq))
        if len(left) > SPOOL_NAMED:
            violations.append(
                Violation(
                    "spool",
                    SPOOL_WHERE,
                    f"and {len(left) - SPOOL_NAMED:,} more content(s) of no queued message",
                )
            )
    return count, violations


def _missing_content(seq: int, message_id: str) -> Violation:
    return Violation(
        "spool",
        at_seq(seq),
        f"message {message_id} is queued, but its content is not in the spool",
        seq,
    )


@attrs.frozen
class VerifyReport:
    """What ``kumo replay --verify`` checked, with counts, and every violation found."""

    events: int
    first_seq: int
    last_seq: int
    received: int
    bounced: int
    queued: int
    bounced_events: int
    rules: int
    counters: int
    """(rule, queue) counters compared with the ``Bounced`` events."""
    owed: dict[str, int]
    """Rule id -> queued messages it still owes a bounce (finished at the next start)."""
    checkpoint_seq: int | None
    segments: int
    records: dict[str, int]
    pending_records: int
    """Records for events after the checkpoint, not written yet (a running server)."""
    snapshots: int
    """Snapshots checked against the fold of the log."""
    violations: list[Violation]
    spooled: int = 0
    """Contents in the spool (each compared with the queued messages)."""
    records_due_through: int = 0
    """Every delivery-log record for an event up to this seq was required: the
    checkpoint's, or without one, the last event the records themselves are for."""
    log_read: bool = True
    """False when the events could not all be read (a damaged table): the spool and
    the delivery log were then not compared with them."""
    cut_seq: int = 0
    """The last seq deleted by retention: the checks began after it (0: at seq 1)."""
    cut_time: int | None = None
    """That event's commit time (``None``: no cut)."""
    base: str | None = None
    """The base the checks started from (a path in the data directory)."""
    records_before_cut: int = 0
    """Delivery-log records of events before the cut: counted, not compared."""
    queued_at_cut: int = 0
    """Messages queued at the cut, which the checks count as received (at their seqs)."""
    owed_rebinds: dict[str, int] = attrs.field(factory=dict)
    """Rebind id -> queued messages it still owes a move (finished at the next start)."""

    @property
    def ok(self) -> bool:
        return not self.violations


class LogUnreadableError(Exception):
    """The log cannot be read far enough to verify anything; the message says where."""


def _check_rows(
    batch: list[ChainedRow],
    chain: ChainCheck,
    invariants: InvariantCheck,
    snapshots: SnapshotCheck,
    violations: list[Violation],
) -> None:
    """Feed one batch of stored rows to every check of the log's pass."""
    for row in batch:
        chain.apply(row)
        seq, time, kind, body, stored_chain = row
        try:
            event = decode_event(body)
        except EventDecodeError as exc:
            violations.append(Violation("decode", at_seq(seq), str(exc), seq))
            continue
        if event_type(event) != kind:
            violations.append(
                Violation(
                    "decode",
                    at_seq(seq),
                    f"row type {kind} but its body is a {event_type(event)}",
                    seq,
                )
            )
        committed = Committed(seq, time, event)
        invariants.apply(committed)
        if snapshots.pending:
            snapshots.apply(committed, stored_chain)


def _name_segments(violations: list[Violation], segments: Sequence[ArchiveSegment]) -> None:
    """Prefix the place of each violation inside an archive segment with its file."""
    for index, violation in enumerate(violations):
        for segment in segments:
            if violation.seq is not None and segment.first_seq <= violation.seq <= segment.last_seq:
                where = f"{ARCHIVE}/{segment.path.name}, {violation.where}"
                violations[index] = attrs.evolve(violation, where=where)


def verify_data_dir(data_dir: Path, progress: Progress = _no_progress) -> VerifyReport:
    """Check ``data_dir`` (its database, event log, spool and delivery log) without
    writing anything.

    Raises ``FileNotFoundError`` if there is no event log, ``sqlite3.DatabaseError``
    if it is not a database at all, :class:`LogUnreadableError` if an archive segment
    cannot even be opened. Violations are listed in the order they were found: the
    database's structure first, then the log's rows and the spool (by seq; those inside
    an archive segment name it), then the delivery log.
    """
    structure = [
        Violation("structure", f"{DATABASE}, {damage.part}", finding)
        for damage in check_structure(data_dir / DATABASE, thorough=True)
        for finding in damage.findings
    ]
    violations: list[Violation] = []
    try:
        history = HistoryView(data_dir)
        base = history.base()
    except ArchiveCorruptError as exc:
        raise LogUnreadableError(f"{ARCHIVE}/{exc.path.name}: {exc.problem}") from None
    except sqlite3.DatabaseError as exc:
        if not structure:
            raise
        # The damage the structure check named keeps the log from being read at all.
        unreadable = Violation("structure", DATABASE, f"the log cannot be read: {exc}")
        return _unread_report([*structure, unreadable])
    cut = history.cut
    chain = ChainCheck(cut)
    # The invariants take what they need of the base now; the snapshot check then folds
    # into it.
    invariants = InvariantCheck(base)
    snapshots = SnapshotCheck(data_dir, violations, base)
    if cut is not None and history.segments and history.segments[0].chain_before != cut.chain:
        first = history.segments[0]
        violations.append(
            Violation(
                "chain",
                f"{ARCHIVE}/{first.path.name}",
                f"it follows chain value {first.chain_before.hex()}, but the base at the cut "
                f"({ARCHIVE}/{cut.path.name}) ends at {cut.chain.hex()}: one of them was edited",
                first.first_seq,
            )
        )
    log_read = True
    spooled = 0
    with history as view:
        last_seq = view.last_seq
        try:
            for batch in view.chained_rows():
                _check_rows(batch, chain, invariants, snapshots, violations)
                progress("event log", batch[-1][0], last_seq)
        except ArchiveCorruptError as exc:
            violations.append(Violation("archive", f"{ARCHIVE}/{exc.path.name}", exc.problem))
        except sqlite3.DatabaseError as exc:
            log_read = False
            violations.append(
                Violation(
                    "structure",
                    DATABASE,
                    f"the events after seq {chain.expected_seq - 1} cannot be read ({exc}): "
                    "the spool and the delivery log were not compared with the log",
                    chain.expected_seq,
                )
            )
        events, first_seq = view.event_count, view.first_seq
        _name_segments(chain.violations, view.segments)
        log_violations = invariants.finish()
        if log_read:
            try:
                spooled, spool_violations = check_spool(
                    view.live.spool_seqs(), invariants, owed=view.live.spool_owed()
                )
            except sqlite3.DatabaseError as exc:
                spool_violations = [
                    Violation("spool", SPOOL_WHERE, f"the spool cannot be read: {exc}")
                ]
            violations.extend(spool_violations)
    snapshots.finish(last_seq)
    violations = structure + sorted(
        [*chain.violations, *violations, *log_violations],
        key=lambda violation: violation.seq if violation.seq is not None else 2**63,
    )
    logs = data_dir / LOGS
    checkpoint = None
    try:
        checkpoint = read_checkpoint(logs)
    except CheckpointError as exc:
        violations.append(
            Violation(
                "checkpoint",
                CHECKPOINT_WHERE,
                f"unreadable checkpoint: {exc} (the next start rebuilds it from the segments)",
            )
        )
    if checkpoint is not None:
        segment = logs / checkpoint.segment
        if not segment.is_file():
            violations.append(
                Violation(
                    "checkpoint",
                    CHECKPOINT_WHERE,
                    f"names segment {checkpoint.segment}, which does not exist",
                )
            )
        elif segment.stat().st_size < checkpoint.offset:
            violations.append(
                Violation(
                    "checkpoint",
                    CHECKPOINT_WHERE,
                    f"segment {checkpoint.segment} holds {segment.stat().st_size} bytes, "
                    f"less than the checkpointed {checkpoint.offset}: it was truncated",
                )
            )
    checkpoint_seq = checkpoint.seq if checkpoint is not None else None
    delivery = DeliveryLogCheck(
        invariants,
        checkpoint_seq=checkpoint_seq,
        last_seq=last_seq,
        checkpoint_where=CHECKPOINT_WHERE,
    )
    segments = len(segment_sizes(logs))
    if logs.is_dir() and log_read:
        check = delivery.check
        for item in read_delivery_records(logs, progress):
            if isinstance(item, Violation):
                delivery.violations.append(item)
            else:
                check(*item)
    records = sum(delivery.seen.values())
    if records and not (logs / CHECKPOINT).exists():
        violations.append(
            Violation(
                "checkpoint",
                CHECKPOINT_WHERE,
                f"missing, but the segments hold {records:,} records (for events up to seq "
                f"{delivery.through:,}): every record up to there was checked; the next "
                "start rebuilds the checkpoint from the segments",
            )
        )
    if log_read:
        violations.extend(delivery.finish())
    queued = sum(len(ids) for ids in invariants.queues.values())
    return VerifyReport(
        events=events,
        first_seq=first_seq,
        last_seq=last_seq,
        received=len(invariants.received),
        bounced=len(invariants.bounced),
        queued=queued,
        bounced_events=invariants.bounced_events,
        rules=len(invariants.projection.rules.rules),
        counters=len(invariants.tally),
        owed=invariants.owed(),
        owed_rebinds=invariants.owed_rebinds(),
        checkpoint_seq=checkpoint_seq,
        segments=segments,
        records=dict(delivery.seen),
        pending_records=delivery.pending() if log_read else 0,
        snapshots=snapshots.checked,
        violations=violations,
        spooled=spooled,
        records_due_through=delivery.due_through,
        log_read=log_read,
        cut_seq=cut.seq if cut is not None else 0,
        cut_time=cut.time if cut is not None else None,
        base=f"{ARCHIVE}/{cut.path.name}" if cut is not None else None,
        records_before_cut=delivery.before_cut,
        queued_at_cut=sum(1 for r in invariants.received.values() if r.seq <= invariants.cut),
    )


def _unread_report(violations: list[Violation]) -> VerifyReport:
    """The report on a log that could not be opened for reading at all."""
    return VerifyReport(
        events=0,
        first_seq=0,
        last_seq=0,
        received=0,
        bounced=0,
        queued=0,
        bounced_events=0,
        rules=0,
        counters=0,
        owed={},
        checkpoint_seq=None,
        segments=0,
        records={},
        pending_records=0,
        snapshots=0,
        violations=violations,
        log_read=False,
    )

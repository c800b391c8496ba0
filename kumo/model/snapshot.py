"""A snapshot of the folded state: the whole :class:`~kumo.model.state.State` at one
sequence number, as bytes, so that a start loads it and folds only what follows.

The format (version 1)::

    b"KUMO-SNAPSHOT 1\\n"
    frame*            each: its length (8 bytes, little-endian), then its bytes
    digest            32 bytes: BLAKE2b-256 of everything before it

The first frame is a JSON header: the position (``seq``, ``time`` and the log's hash
``chain`` at ``seq``), the counters, every rule with its counters, and a description of
each queue; then, queue after queue, the columns of its messages
(:meth:`~kumo.model.message_queue.MessageQueue.columns`), as raw bytes. Reading the
columns back costs a copy, not a Python object per message, which is what makes a
start from a snapshot fast. The digest covers the position as well as the state, so
that a snapshot cannot be taken for the state of another log or another point of it.

Pure: bytes in, bytes out; the files are the store's (:mod:`kumo.store.snapshots`).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from typing import Any

import attrs
import orjson

from kumo.model.events import (
    RebindIssued,
    criteria_from_json,
    criteria_to_json,
    decode_event,
    encode_event,
)
from kumo.model.message_queue import MessageQueue, QueueColumns
from kumo.model.ready_suspension import ReadySuspension, ReadySuspensionBook
from kumo.model.state import Retry, Rule, RuleBook, SeenRebind, State

MAGIC = b"KUMO-SNAPSHOT 1\n"
_DIGEST_BYTES = 32
_LENGTH_BYTES = 8


class SnapshotError(ValueError):
    """Bytes that are not a whole, intact snapshot; the message says what is wrong."""


@attrs.frozen
class SnapshotPosition:
    """Where in the log a snapshot stands."""

    seq: int
    """The last event folded into it."""
    time: int
    """That event's commit time (ns)."""
    chain: bytes
    """The log's hash chain at ``seq`` (:func:`kumo.store.sqlite_log.chain_link`)."""


def encode_snapshot(state: State, chain: bytes) -> bytes:
    """The snapshot of ``state`` (which must hold its messages), ``chain`` being the
    log's chain value at ``state.last_seq``. The same state gives the same bytes."""
    if state.queues is None:
        raise ValueError("a snapshot needs a state that holds its messages")
    described: list[dict[str, Any]] = []
    columns: list[bytes] = []
    for name, queue in state.queues.items():
        info, blobs = queue.columns()
        entry = {"name": name, **info._asdict()}
        if info.protocols is None:
            # Every message came over HTTP: the description reads as it did before
            # queues kept their messages' protocol.
            del entry["protocols"]
        described.append(entry)
        columns += blobs
    header = {
        "byteorder": sys.byteorder,
        "seq": state.last_seq,
        "time": state.last_time,
        "chain": chain.hex(),
        "received_total": state.received_total,
        "bounced_total": state.bounced_total,
        "delivered_total": state.delivered_total,
        "failed_total": state.failed_total,
        "expired_total": state.expired_total,
        "transient_failures_total": state.transient_failures_total,
        "rebound_total": state.rebound_total,
        "schedule": {
            message_id: [
                retry.due,
                retry.attempts,
                retry.anchor_seq,
                retry.anchor_time,
                retry.held_by,
                retry.expiry,
            ]
            for message_id, retry in state.schedule.items()
        },
        "rules": [_rule_to_json(rule) for rule in state.rules.rules.values()],
        "suspends": [_rule_to_json(rule) for rule in state.suspends.rules.values()],
        "ready_suspends": [
            attrs.asdict(suspension) for suspension in state.ready_suspends.rules.values()
        ],
        # [seq, the event as the log stores it, the queues it moved out of]: fleet
        # mode takes each rebind once, and a restart finishes what it owes.
        "rebinds": [_rebind_to_json(seen) for seen in state.rebinds.values()],
        "queues": described,
    }
    out = bytearray(MAGIC)
    for frame in (orjson.dumps(header), *columns):
        out += len(frame).to_bytes(_LENGTH_BYTES, "little")
        out += frame
    out += hashlib.blake2b(out, digest_size=_DIGEST_BYTES).digest()
    return bytes(out)


def snapshot_position(data: bytes) -> SnapshotPosition:
    """The position of the snapshot ``data``, after checking its digest (but without
    decoding its state); :class:`SnapshotError` if it is damaged."""
    return _position(_header(_checked(data)))


def decode_snapshot(data: bytes) -> tuple[State, SnapshotPosition]:
    """The state and position of the snapshot ``data``; :class:`SnapshotError` (naming
    the problem) if it is damaged, truncated, or not a snapshot."""
    frames = _frames(_checked(data))
    header = _header_of(next(frames))
    try:
        if header["byteorder"] != sys.byteorder:
            raise SnapshotError(f"written on a {header['byteorder']}-endian machine")
        state = State()
        state.last_seq = header["seq"]
        state.last_time = header["time"]
        state.received_total = header["received_total"]
        state.bounced_total = header["bounced_total"]
        # Absent from snapshots written before the mail path: nothing had left by it.
        state.delivered_total = header.get("delivered_total", 0)
        state.failed_total = header.get("failed_total", 0)
        state.expired_total = header.get("expired_total", 0)
        state.transient_failures_total = header.get("transient_failures_total", 0)
        state.rebound_total = header.get("rebound_total", 0)
        state.schedule = {
            message_id: Retry(*entry) for message_id, entry in header.get("schedule", {}).items()
        }
        state.rules = RuleBook.restore(_rule_from_json(rule) for rule in header["rules"])
        state.suspends = RuleBook.restore(
            (_rule_from_json(rule) for rule in header.get("suspends", ())), "suspend"
        )
        # Absent from snapshots written before ready-queue suspensions.
        state.ready_suspends = ReadySuspensionBook.restore(
            ReadySuspension(**suspension) for suspension in header.get("ready_suspends", ())
        )
        # Absent from snapshots written before fleet rebinds.
        state.rebinds = {}
        for entry in header.get("rebinds", ()):
            seen = _rebind_from_json(entry)
            state.rebinds[seen.event.rebind_id] = seen
        queues: dict[str, MessageQueue] = {}
        for entry in header["queues"]:
            info = QueueColumns(
                messages=entry["messages"],
                raw_ids=entry["raw_ids"],
                lengths=entry["lengths"],
                senders=entry["senders"],
                # Absent when all came over HTTP, and from snapshots written before
                # queues kept the protocol (they had no other).
                protocols=entry.get("protocols"),
            )
            blobs = [next(frames) for _ in range(6 + info.lengths)]
            queue = MessageQueue.from_columns(info, blobs)
            if not queue:
                raise SnapshotError(f"queue {entry['name']!r} is empty")
            queues[entry["name"]] = queue
        position = _position(header)
    except StopIteration:
        raise SnapshotError("fewer columns than its queues need") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"not a valid state: {exc!r}") from None
    if next(frames, None) is not None:
        raise SnapshotError("more columns than its queues need")
    state.queues = queues
    state.queue_counts = {name: len(queue) for name, queue in queues.items()}
    return state, position


def state_differences(expected: State, actual: State) -> list[str]:
    """How ``actual`` differs from ``expected`` (both holding messages): empty if it
    does not. For checking a snapshot against a replay of the log."""
    problems: list[str] = []
    for field in (
        "last_seq",
        "last_time",
        "received_total",
        "bounced_total",
        "delivered_total",
        "failed_total",
        "expired_total",
        "transient_failures_total",
        "rebound_total",
    ):
        if getattr(expected, field) != getattr(actual, field):
            problems.append(
                f"{field}: {getattr(actual, field)} instead of {getattr(expected, field)}"
            )
    expected_rules = {
        rule.id: _rule_to_json(rule)
        for book in (expected.rules, expected.suspends)
        for rule in book.rules.values()
    }
    actual_rules = {
        rule.id: _rule_to_json(rule)
        for book in (actual.rules, actual.suspends)
        for rule in book.rules.values()
    }
    if _comparable(expected.rebinds, actual.rebinds) != actual.rebinds:
        problems.append(
            f"rebinds: {sorted(actual.rebinds)}, the log says {sorted(expected.rebinds)}"
        )
    expected_rules |= {s.id: attrs.asdict(s) for s in expected.ready_suspends.rules.values()}
    actual_rules |= {s.id: attrs.asdict(s) for s in actual.ready_suspends.rules.values()}
    for rule_id in sorted(expected_rules.keys() | actual_rules.keys()):
        if expected_rules.get(rule_id) != actual_rules.get(rule_id):
            problems.append(
                f"rule {rule_id}: {actual_rules.get(rule_id)}, the log says "
                f"{expected_rules.get(rule_id)}"
            )
    if expected.schedule != actual.schedule:
        differ = sum(
            expected.schedule.get(key) != actual.schedule.get(key)
            for key in expected.schedule.keys() | actual.schedule.keys()
        )
        problems.append(f"schedule: {differ} messages' retries differ from the log's")
    expected_queues, actual_queues = expected.queues or {}, actual.queues or {}
    for name in sorted(expected_queues.keys() | actual_queues.keys()):
        if expected_queues.get(name) != actual_queues.get(name):
            have = len(actual_queues.get(name) or ())
            want = len(expected_queues.get(name) or ())
            problems.append(f"queue {name!r}: {have} messages, the log says {want}")
    return problems


# -- the frames ----------------------------------------------------------------------


def _checked(data: bytes) -> memoryview:
    """``data`` without its magic and digest, once the digest matches."""
    if not data.startswith(MAGIC):
        raise SnapshotError("not a kumo snapshot (no magic line)")
    if len(data) < len(MAGIC) + _DIGEST_BYTES:
        raise SnapshotError("truncated")
    body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    if hashlib.blake2b(body, digest_size=_DIGEST_BYTES).digest() != digest:
        raise SnapshotError("its digest does not match its contents (damaged or truncated)")
    return memoryview(body)[len(MAGIC) :]


def _frames(body: memoryview) -> Iterator[bytes]:
    offset = 0
    while offset < len(body):
        end = offset + _LENGTH_BYTES
        if end > len(body):
            raise SnapshotError("a frame's length is cut off")
        length = int.from_bytes(body[offset:end], "little")
        if end + length > len(body):
            raise SnapshotError("a frame runs past the end")
        yield bytes(body[end : end + length])
        offset = end + length


def _header(body: memoryview) -> dict[str, Any]:
    first = next(_frames(body), None)
    if first is None:
        raise SnapshotError("no header")
    return _header_of(first)


def _header_of(frame: bytes) -> dict[str, Any]:
    try:
        header = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise SnapshotError(f"its header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise SnapshotError("its header is not a JSON object")
    return header


def _position(header: dict[str, Any]) -> SnapshotPosition:
    try:
        return SnapshotPosition(
            seq=int(header["seq"]), time=int(header["time"]), chain=bytes.fromhex(header["chain"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"its header has no valid position: {exc!r}") from None


def _rebind_to_json(seen: SeenRebind) -> list[Any]:
    entry: list[Any] = [seen.seq, encode_event(seen.event).decode()]
    if seen.moved_from is not None:
        entry.append(sorted(seen.moved_from))
    return entry


def _rebind_from_json(entry: list[Any]) -> SeenRebind:
    # [seq, body] in snapshots written before kumo kept the queues a rebind moved
    # out of: not known (None), and so owed nothing.
    seq, body, *moved = entry
    event = decode_event(body)
    if not isinstance(event, RebindIssued):
        raise SnapshotError(f"a rebind that is a {type(event).__name__}")
    return SeenRebind(seq, event, frozenset(moved[0]) if moved else None)


def _comparable(
    expected: dict[str, SeenRebind], actual: dict[str, SeenRebind]
) -> dict[str, SeenRebind]:
    """``expected`` with the queues moved out of left unknown where ``actual`` (a
    snapshot written before kumo kept them) does not know them."""
    return {
        rebind_id: attrs.evolve(seen, moved_from=None)
        if rebind_id in actual and actual[rebind_id].moved_from is None
        else seen
        for rebind_id, seen in expected.items()
    }


def _rule_to_json(rule: Rule) -> dict[str, Any]:
    data = attrs.asdict(rule, recurse=False)
    data["criteria"] = criteria_to_json(rule.criteria)
    return data


def _rule_from_json(data: dict[str, Any]) -> Rule:
    return Rule(**{**data, "criteria": criteria_from_json(data["criteria"])})

"""The events of the log, as frozen values, and their stable JSON codec.

Every change of state in kumo is one of these events. The event log stores each one
as ``(seq, event_id, type, time, body)``: the sequence number and the commit time are
the log's, not the event's, so the classes here carry neither; a committed event is
wrapped in :class:`Committed`.

The JSON body of every event carries ``"v"`` (:data:`SCHEMA_VERSION`). A decoder
refuses versions it does not know rather than guess. Times are integer nanoseconds
since the Unix epoch throughout, so that durations round-trip exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, TypeAlias

import attrs
import orjson

from kumo.model.criteria import Criteria
from kumo.model.message import Message as Message
from kumo.model.message_queue import MessageBatch

SCHEMA_VERSION: Final = 1


class EventDecodeError(ValueError):
    """A stored event body that this version of kumo cannot read."""


@attrs.frozen(slots=True)
class MessageReceived:
    """A message was accepted into the spool and its scheduled queue."""

    message_id: str
    queue: str
    sender: str
    recipient: str
    size: int
    protocol: str = "HTTP"


@attrs.frozen(slots=True)
class BounceIssued:
    """An administrator asked to bounce what matches ``criteria`` until ``expires_at``."""

    rule_id: str
    criteria: Criteria
    reason: str
    expires_at: int
    suppress_logging: bool = False
    issued_by: str = ""


@attrs.frozen(slots=True)
class BounceCancelled:
    """An administrator cancelled a live rule; what it bounced stays bounced."""

    rule_id: str
    cancelled_by: str = ""


@attrs.frozen(slots=True)
class BounceExpired:
    """The engine's clock passed a live rule's expiry."""

    rule_id: str


def _to_messages(messages: Iterable[Message]) -> MessageBatch:
    return messages if isinstance(messages, MessageBatch) else MessageBatch(messages)


@attrs.frozen(slots=True)
class Bounced:
    """``rule_id`` bounced ``messages`` out of ``queue``: they are gone for good.

    One event carries many messages, so that a sweep of a large queue costs a few
    events, not one per message. It carries what the AdminBounce log record needs, so
    that the delivery-log writer can (re)build the records from the log alone.
    """

    rule_id: str
    queue: str
    messages: MessageBatch = attrs.field(converter=_to_messages)
    """Column-wise, like a queue: a sweep of a million messages makes no million
    long-lived objects for the garbage collector to walk."""


Event: TypeAlias = MessageReceived | BounceIssued | BounceCancelled | BounceExpired | Bounced


@attrs.frozen(slots=True)
class Committed:
    """An event as the log committed it: durable, with its place and time."""

    seq: int
    time: int
    """Commit time, ns since the epoch; never decreases along the log."""
    event: Event


# -- codec ------------------------------------------------------------------------------


def criteria_to_json(criteria: Criteria) -> dict[str, Any]:
    """Criteria as stored in a ``BounceIssued`` body (and shown by audits)."""
    return {
        "campaign": criteria.campaign,
        "tenant": criteria.tenant,
        "domain": criteria.domain,
        "routing_domain": criteria.routing_domain,
        "queue_names": sorted(criteria.queue_names),
    }


def _criteria_from_json(data: dict[str, Any]) -> Criteria:
    return Criteria(
        campaign=data["campaign"],
        tenant=data["tenant"],
        domain=data["domain"],
        routing_domain=data["routing_domain"],
        queue_names=data["queue_names"],
    )


def _encode_body(event: Event) -> dict[str, Any]:
    match event:
        case MessageReceived():
            return {
                "message_id": event.message_id,
                "queue": event.queue,
                "sender": event.sender,
                "recipient": event.recipient,
                "size": event.size,
                "protocol": event.protocol,
            }
        case BounceIssued():
            return {
                "rule_id": event.rule_id,
                "criteria": criteria_to_json(event.criteria),
                "reason": event.reason,
                "expires_at": event.expires_at,
                "suppress_logging": event.suppress_logging,
                "issued_by": event.issued_by,
            }
        case BounceCancelled():
            return {"rule_id": event.rule_id, "cancelled_by": event.cancelled_by}
        case BounceExpired():
            return {"rule_id": event.rule_id}
        case Bounced():
            return {
                "rule_id": event.rule_id,
                "queue": event.queue,
                # Positional rows keep a sweep's events small: they are most of the log.
                "messages": event.messages.rows(),
            }


def _decode_bounced(data: dict[str, Any]) -> Bounced:
    return Bounced(
        rule_id=data["rule_id"],
        queue=data["queue"],
        messages=[Message(*row) for row in data["messages"]],
    )


_DECODERS: Final[dict[str, Callable[[dict[str, Any]], Event]]] = {
    "MessageReceived": lambda d: MessageReceived(
        message_id=d["message_id"],
        queue=d["queue"],
        sender=d["sender"],
        recipient=d["recipient"],
        size=d["size"],
        protocol=d["protocol"],
    ),
    "BounceIssued": lambda d: BounceIssued(
        rule_id=d["rule_id"],
        criteria=_criteria_from_json(d["criteria"]),
        reason=d["reason"],
        expires_at=d["expires_at"],
        suppress_logging=d["suppress_logging"],
        issued_by=d["issued_by"],
    ),
    "BounceCancelled": lambda d: BounceCancelled(
        rule_id=d["rule_id"], cancelled_by=d["cancelled_by"]
    ),
    "BounceExpired": lambda d: BounceExpired(rule_id=d["rule_id"]),
    "Bounced": _decode_bounced,
}

EVENT_TYPES: Final = tuple(_DECODERS)


def event_type(event: Event) -> str:
    """The stable type name stored beside the body."""
    return type(event).__name__


def encode_event(event: Event) -> bytes:
    """The event's JSON body: ``{"v": SCHEMA_VERSION, "type": ..., ...fields}``."""
    body = _encode_body(event)
    return orjson.dumps({"v": SCHEMA_VERSION, "type": event_type(event), **body})


def decode_received(body: bytes, senders: dict[str, str]) -> tuple[str, str, str, str, int]:
    """``(queue, message_id, sender, recipient, size)`` of a stored ``MessageReceived``.

    A fast path for replaying a large log: it skips building the event itself, and
    shares equal sender strings through ``senders`` (bulk mail repeats them).
    Raises :class:`EventDecodeError` like :func:`decode_event`.
    """
    try:
        data = orjson.loads(body)
        if data["v"] != SCHEMA_VERSION or data["type"] != "MessageReceived":
            raise ValueError("not a MessageReceived of this schema")
        sender = data["sender"]
        sender = senders.setdefault(sender, sender)
        return data["queue"], data["message_id"], sender, data["recipient"], data["size"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise EventDecodeError(f"malformed MessageReceived event: {exc!r}") from None


def decode_event(body: bytes | str) -> Event:
    """Inverse of :func:`encode_event`.

    Raises :class:`EventDecodeError` naming what is wrong for a body that is not JSON,
    has an unknown type or schema version, or lacks a field.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise EventDecodeError(f"event body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EventDecodeError("event body is not a JSON object")
    version = data.get("v")
    if version != SCHEMA_VERSION:
        raise EventDecodeError(f"unknown event schema version {version!r}")
    kind = data.get("type")
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise EventDecodeError(f"unknown event type {kind!r}")
    try:
        return decoder(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise EventDecodeError(f"malformed {kind} event: {exc!r}") from None

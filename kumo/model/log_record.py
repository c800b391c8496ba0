"""The delivery-log records, ``Reception``, ``AdminBounce``, ``AdminRebind``,
``Rejection`` and the mail path's ``Delivery``, ``TransientFailure``, ``Bounce`` and
``Expiration``, in KumoMTA's format.

The fields and two examples are in docs/operations.md, "The delivery log".

Records are built as JSON lines (bytes, newline included) because the delivery-log
writer emits one per message and a sweep emits a million: the constant parts of an
``AdminBounce`` record are encoded once per bounce batch, not once per message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.events import (
    Attempt,
    Bounced,
    Delivered,
    Event,
    Expired,
    Message,
    MessageReceived,
    Outcome,
    PeerAddress,
    PermanentlyFailed,
    Rebound,
    Rejected,
    Suspended,
    TransientlyFailed,
)
from kumo.model.rfc3339 import format_rfc3339
from kumo.model.smtp_reply import flatten_content
from kumo.model.smtp_server import Reply

ADMIN_BOUNCE_CODE = 551


SUSPENDED_PREFIX: Final = "KumoMTA internal: scheduled queue is suspended: "
"""How the ``TransientFailure`` record of a message a suspension holds begins."""


def suspended_content(reason: str) -> str:
    """The reply text of the record of a message a suspension with ``reason`` holds."""
    return SUSPENDED_PREFIX + reason


def bounce_content(reason: str) -> str:
    """The response text of an AdminBounce: each CRLF, LF or CR becomes one space."""
    flat = reason.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    return f"Administrator bounced with reason: {flat}"


def _record(
    *,
    kind: str,
    message_id: str,
    sender: str,
    recipient: str,
    queue: str,
    site: str,
    size: int,
    response: dict[str, Any],
    event_time: int,
    created: int,
    node_id: str,
    protocol: str | None,
) -> dict[str, Any]:
    """A record with the fields every type shares; ``protocol`` is the message's
    ``reception_protocol`` (kept with the message from its reception on, as KumoMTA
    keeps it in the message's meta)."""
    return {
        "type": kind,
        "id": message_id,
        "sender": sender,
        "recipient": recipient,
        "queue": queue,
        "site": site,
        "size": size,
        "response": response,
        "peer_address": None,
        "timestamp": event_time // NANOS_PER_SECOND,
        "event_time": format_rfc3339(event_time),
        "created": created // NANOS_PER_SECOND,
        "created_time": format_rfc3339(created),
        "num_attempts": 0,
        "bounce_classification": "Uncategorized",
        "egress_pool": None,
        "egress_source": None,
        "source_address": None,
        "feedback_report": None,
        "meta": {},
        "headers": {},
        "delivery_protocol": None,
        "reception_protocol": protocol,
        "nodeid": node_id,
    }


def peer_address(peer: PeerAddress | None) -> dict[str, str] | None:
    """The ``peer_address`` of a record: ``{"name": <EHLO name>, "addr": <IP>}`` or null."""
    return None if peer is None else {"name": peer.name, "addr": peer.addr}


def reception_record(event: MessageReceived, *, received_at: int, node_id: str) -> dict[str, Any]:
    """The ``Reception`` record of a received message (``peer_address`` null over HTTP)."""
    record = _record(
        kind="Reception",
        message_id=event.message_id,
        sender=event.sender,
        recipient=event.recipient,
        queue=event.queue,
        site="",
        size=event.size,
        response={"code": 250, "enhanced_code": None, "content": "", "command": None},
        event_time=received_at,
        created=received_at,
        node_id=node_id,
        protocol=event.protocol,
    )
    record["peer_address"] = peer_address(event.peer)
    return record


def rejection_record(event: Rejected, *, rejected_at: int, node_id: str) -> dict[str, Any]:
    """The ``Rejection`` record of a ``4xx``/``5xx`` reply to an SMTP client (reference
    4.5): no message (``id``, ``queue`` and ``site`` empty, ``size`` 0), created when
    rejected, the reply's enhanced code taken out of its text, and the client's command
    without CRLF. KumoMTA also sets ``session_id``; kumo has no session ids, so the
    record leaves it out, as KumoMTA does when it is unset."""
    reply = Reply(event.code, event.text)
    enhanced = reply.enhanced_code
    record = _record(
        kind="Rejection",
        message_id="",
        sender=event.sender,
        recipient=event.recipient,
        queue="",
        site="",
        size=0,
        response={
            "code": event.code,
            "enhanced_code": None
            if enhanced is None
            else {"class": enhanced[0], "subject": enhanced[1], "detail": enhanced[2]},
            "content": flatten_content(reply.content),
            "command": event.command,
        },
        event_time=rejected_at,
        created=rejected_at,
        node_id=node_id,
        protocol=None,
    )
    record["peer_address"] = peer_address(event.peer)
    return record


def rejection_line(event: Rejected, *, rejected_at: int, node_id: str) -> bytes:
    """One JSON line (newline included) for a rejection."""
    return orjson.dumps(
        rejection_record(event, rejected_at=rejected_at, node_id=node_id),
        option=orjson.OPT_APPEND_NEWLINE,
    )


def admin_bounce_record(
    message: Message, *, queue: str, reason: str, bounced_at: int, node_id: str
) -> dict[str, Any]:
    """The ``AdminBounce`` record of one bounced message."""
    return _record(
        kind="AdminBounce",
        message_id=message.id,
        sender=message.sender,
        recipient=message.recipient,
        queue=queue,
        site="localhost",
        size=message.size,
        response={
            "code": ADMIN_BOUNCE_CODE,
            "enhanced_code": {"class": 5, "subject": 7, "detail": 1},
            "content": bounce_content(reason),
            "command": None,
        },
        event_time=bounced_at,
        created=message.received_at,
        node_id=node_id,
        protocol=message.protocol,
    )


def rebind_content(old_queue: str, new_queue: str, reason: str) -> str:
    """The response text of an AdminRebind (line breaks become spaces, as in every
    record's content)."""
    return flatten_content(f"Rebound from {old_queue} to {new_queue}: {reason}")


def admin_rebind_records(event: Rebound, *, at: int, node_id: str) -> list[dict[str, Any]]:
    """The ``AdminRebind`` records of a ``Rebound`` committed at ``at``, one per message
    in its order (none when it suppresses logging): reference 5.2 and 7, code 250 with
    no enhanced code, ``site`` empty, ``queue`` the new queue, ``num_attempts`` the
    message's attempts so far."""
    if event.suppress_logging:
        return []
    content = rebind_content(event.queue, event.to_queue, event.reason)
    return [
        _record(
            kind="AdminRebind",
            message_id=message.id,
            sender=message.sender,
            recipient=message.recipient,
            queue=event.to_queue,
            site="",
            size=message.size,
            response={"code": 250, "enhanced_code": None, "content": content, "command": None},
            event_time=at,
            created=message.received_at,
            node_id=node_id,
            protocol=message.protocol,
        )
        | {"num_attempts": attempts}
        for message, attempts in zip(event.messages, event.attempts, strict=True)
    ]


def admin_rebind_lines(event: Rebound, *, at: int, node_id: str) -> list[bytes]:
    """JSON lines (newline included) of :func:`admin_rebind_records` (rebinds are rare
    and small next to sweeps: each record is encoded whole)."""
    dumps = orjson.dumps
    return [
        dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        for record in admin_rebind_records(event, at=at, node_id=node_id)
    ]


EGRESS_SOURCE = "unspecified"
"""The egress source and pool of every delivery: kumo has no pools (KumoMTA's default
pool ``unspecified`` with its one source ``unspecified``)."""

OUTCOME_KINDS: dict[type[Outcome], str] = {
    Delivered: "Delivery",
    PermanentlyFailed: "Bounce",
    TransientlyFailed: "TransientFailure",
    Expired: "Expiration",
    Suspended: "TransientFailure",
}
"""The record type each mail-path event calls for."""


def _enhanced_json(code: tuple[int, int, int] | None) -> dict[str, int] | None:
    return None if code is None else {"class": code[0], "subject": code[1], "detail": code[2]}


def outcome_record(event: Outcome, *, at: int, node_id: str) -> dict[str, Any]:
    """The record of a mail-path event (reference 5.1, 5.2): ``Delivery``, ``Bounce``
    and ``TransientFailure`` with the attempt's reply, peer and session, ``num_attempts``
    the attempts before it; ``Expiration`` with ``551 5.4.7``, ``num_attempts`` all of
    them, no peer."""
    message = event.message
    if isinstance(event, Expired):
        return _internal_record(
            event, "Expiration", event.site, (551, (5, 4, 7), event.content), at, node_id
        )
    if isinstance(event, Suspended) and event.ready_queue is not None:
        # KumoMTA's record of a promotion no egress source may take, its one source's
        # ready queue being suspended (reference 2.2, 5.2, 6.4): no site, the pool,
        # no source, the attempts so far.
        content = (
            f"KumoMTA internal: no sources for {event.queue} pool=`{EGRESS_SOURCE}` "
            "are eligible for selection at this time"
        )
        return _internal_record(
            event, "TransientFailure", "", (451, (4, 4, 4), content), at, node_id
        ) | {"egress_pool": EGRESS_SOURCE}
    if isinstance(event, Suspended):
        # KumoMTA's record of a message its suspended scheduled queue keeps (reference
        # 5.2): the queue as the site, no peer, no protocol, the attempts so far.
        content = suspended_content(event.reason)
        return _internal_record(
            event, "TransientFailure", event.queue, (451, (4, 4, 4), content), at, node_id
        )
    attempt: Attempt = event.attempt
    record = _record(
        kind=OUTCOME_KINDS[type(event)],
        message_id=message.id,
        sender=message.sender,
        recipient=message.recipient,
        queue=event.queue,
        site=attempt.site,
        size=message.size,
        response={
            "code": attempt.code,
            "enhanced_code": _enhanced_json(attempt.enhanced_code),
            "content": attempt.content,
            "command": attempt.command,
        },
        event_time=at,
        created=message.received_at,
        node_id=node_id,
        protocol=message.protocol,
    )
    record["peer_address"] = peer_address(attempt.peer)
    record["num_attempts"] = event.attempts
    if attempt.protocol is not None:
        record["egress_pool"] = EGRESS_SOURCE
        record["egress_source"] = EGRESS_SOURCE
        record["delivery_protocol"] = attempt.protocol
    if attempt.source_address is not None:
        record["source_address"] = {"address": attempt.source_address}
    if attempt.tls_cipher is not None:
        record["tls_cipher"] = attempt.tls_cipher
    if attempt.tls_protocol_version is not None:
        record["tls_protocol_version"] = attempt.tls_protocol_version
    if attempt.session_id is not None:
        record["session_id"] = attempt.session_id
    return record


def _internal_record(
    event: Expired | Suspended,
    kind: str,
    site: str,
    reply: tuple[int, tuple[int, int, int], str],
    at: int,
    node_id: str,
) -> dict[str, Any]:
    """A record of kumo's own decision about a queued message (no peer, no command,
    no protocol): ``reply`` is its code, enhanced code and text."""
    message = event.message
    code, enhanced, content = reply
    return _record(
        kind=kind,
        message_id=message.id,
        sender=message.sender,
        recipient=message.recipient,
        queue=event.queue,
        site=site,
        size=message.size,
        response={
            "code": code,
            "enhanced_code": _enhanced_json(enhanced),
            "content": flatten_content(content),
            "command": None,
        },
        event_time=at,
        created=message.received_at,
        node_id=node_id,
        protocol=message.protocol,
    ) | {"num_attempts": event.attempts}


def outcome_line(event: Outcome, *, at: int, node_id: str) -> bytes:
    """One JSON line (newline included) for a mail-path event."""
    return orjson.dumps(
        outcome_record(event, at=at, node_id=node_id), option=orjson.OPT_APPEND_NEWLINE
    )


def reception_line(event: MessageReceived, *, received_at: int, node_id: str) -> bytes:
    """One JSON line (newline included) for a received message."""
    return orjson.dumps(
        reception_record(event, received_at=received_at, node_id=node_id),
        option=orjson.OPT_APPEND_NEWLINE,
    )


def reception_lines(
    events: Sequence[MessageReceived], *, received_at: int, node_id: str
) -> list[bytes]:
    """JSON lines (newline included) for messages received together (one commit time).

    Equal to :func:`reception_line` per event, key order included; only the
    per-message fields are encoded per message.
    """
    if not events:
        return []
    probe = reception_record(events[0], received_at=received_at, node_id=node_id)
    dumps = orjson.dumps
    keys = list(probe)
    # Everything from "response" up to "reception_protocol" is the same for the batch,
    # but for "peer_address", which is each SMTP client's own.
    peer_at = keys.index("peer_address")
    response = dumps({k: probe[k] for k in keys[keys.index("response") : peer_at]})
    response = b"," + response[1:-1] + b',"peer_address":'
    shared = dumps({k: probe[k] for k in keys[peer_at + 1 : -2]})
    shared = b"," + shared[1:-1] + b',"reception_protocol":'
    tail = b',"nodeid":' + dumps(node_id) + b"}\n"
    join = b"".join
    lines: list[bytes] = []
    append = lines.append
    # Messages of one transaction share their peer: encode it once per run.
    last_peer: PeerAddress | None = None
    peer = b"null"
    for event in events:
        if event.peer is not last_peer:
            last_peer = event.peer
            peer = dumps(peer_address(event.peer))
        append(
            join(
                (
                    b'{"type":"Reception","id":',
                    dumps(event.message_id),
                    b',"sender":',
                    dumps(event.sender),
                    b',"recipient":',
                    dumps(event.recipient),
                    b',"queue":',
                    dumps(event.queue),
                    b',"site":"","size":',
                    str(event.size).encode(),
                    response,
                    peer,
                    shared,
                    dumps(event.protocol),
                    tail,
                )
            )
        )
    return lines


def admin_bounce_lines(
    messages: Sequence[Message], *, queue: str, reason: str, bounced_at: int, node_id: str
) -> list[bytes]:
    """JSON lines (newline included) for messages bounced together by one rule.

    Equal to encoding :func:`admin_bounce_record` per message, key order included;
    only the per-message fields are encoded per message.
    """
    first = next(iter(messages), None)
    if first is None:
        return []
    probe = admin_bounce_record(
        first, queue=queue, reason=reason, bounced_at=bounced_at, node_id=node_id
    )
    # The record's layout: a per-message head (type, id, sender, recipient), the shared
    # queue/site, size, shared response/peer/timestamp/event_time, then created fields,
    # a shared run, the message's protocol and the node. Encode each shared run once.
    dumps = orjson.dumps
    middle = b',"queue":' + dumps(queue) + b',"site":"localhost","size":'
    shared = (
        b',"response":'
        + dumps(probe["response"])
        + b',"peer_address":null,"timestamp":'
        + dumps(probe["timestamp"])
        + b',"event_time":'
        + dumps(probe["event_time"])
        + b',"created":'
    )
    keys = list(probe)
    tail = dumps({k: probe[k] for k in keys[keys.index("num_attempts") : -2]})
    tail = b"," + tail[1:-1] + b',"reception_protocol":'
    end = b',"nodeid":' + dumps(node_id) + b"}\n"
    lines: list[bytes] = []
    append = lines.append
    join = b"".join
    head = b'{"type":"AdminBounce","id":'
    last_created = -1
    last_sender = last_protocol = None
    protocol_part = b""
    sender_part = after_created = b""
    for message_id, sender, recipient, size, received_at, _, protocol in messages:
        if received_at != last_created:
            last_created = received_at
            after_created = join(
                (
                    shared,
                    dumps(received_at // NANOS_PER_SECOND),
                    b',"created_time":',
                    dumps(format_rfc3339(received_at)),
                    tail,
                )
            )
        if sender is not last_sender:
            last_sender = sender
            sender_part = b',"sender":' + dumps(sender) + b',"recipient":'
        if protocol is not last_protocol:
            # A batch's protocols come from its table of senders: runs of one object.
            last_protocol = protocol
            protocol_part = dumps(protocol) + end
        append(
            join(
                (
                    head,
                    dumps(message_id),
                    sender_part,
                    dumps(recipient),
                    middle,
                    str(size).encode(),
                    after_created,
                    protocol_part,
                )
            )
        )
    return lines


def record_position(event: Event, kind: str, message_id: str, *, suppressed: bool) -> int | None:
    """Where the ``kind`` record of ``message_id`` falls among the records ``event``
    calls for, in the order they are written (0: first), or ``None`` if it calls for no
    such record. ``suppressed``: whether the rule of a ``Bounced`` event suppresses
    logging. A ``MessageReceived`` calls for one record, a ``Bounced`` for one per
    message in its order (none if suppressed), a ``Rebound`` for one ``AdminRebind`` per
    message unless it suppresses logging, a ``Rejected`` for one, and each
    mail-path event for one (:data:`OUTCOME_KINDS`)."""
    if kind == "Reception":
        if isinstance(event, MessageReceived) and event.message_id == message_id:
            return 0
    elif (kind == "AdminBounce" and isinstance(event, Bounced) and not suppressed) or (
        kind == "AdminRebind" and isinstance(event, Rebound) and not event.suppress_logging
    ):
        for index, message in enumerate(event.messages):
            if message.id == message_id:
                return index
    elif (
        isinstance(event, Delivered | PermanentlyFailed | TransientlyFailed | Expired | Suspended)
        and OUTCOME_KINDS[type(event)] == kind
        and event.message.id == message_id
    ):
        return 0
    return None

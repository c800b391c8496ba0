"""The events of the log, as frozen values, and their stable JSON codec.

Every change of state in kumo is one of these events. The event log stores each one
as ``(seq, event_id, type, time, body)``: the sequence number and the commit time are
the log's, not the event's, so the classes here carry neither; a committed event is
wrapped in :class:`Committed`.

The JSON body of every event carries ``"v"`` (:data:`SCHEMA_VERSION`). A decoder
refuses versions it does not know rather than guess. Times are integer nanoseconds
since the Unix epoch throughout, so that durations round-trip exactly.

An event is valid by construction: its fields have their declared types (``bool`` is
not taken for ``int``), message ids are 32 lowercase hex digits, sizes, sequence
numbers and commit times are not negative, and every integer fits the signed 64 bits
that the store and the JSON codec hold. A constructor raises :class:`TypeError` or
:class:`ValueError` otherwise, and so decoding a stored body whose fields break these
rules raises :class:`EventDecodeError`. A rule's ``expires_at`` may be before 1970 (the
API takes any RFC 3339 time from year 1677 on): such a rule is born expired.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, TypeAlias

import attrs
import orjson
from attrs.validators import instance_of

from kumo.model.criteria import Criteria
from kumo.model.message import HTTP
from kumo.model.message import Message as Message
from kumo.model.message_queue import MessageBatch

SCHEMA_VERSION: Final = 1


INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
_message_id_match: Final = re.compile(r"[0-9a-f]{32}").fullmatch


class EventDecodeError(ValueError):
    """A stored event body that this version of kumo cannot read."""


def is_message_id(value: object) -> bool:
    """Whether ``value`` is a spool id: 32 lowercase hex digits."""
    return type(value) is str and _message_id_match(value) is not None


def _check_int(name: str, value: object, low: int) -> None:
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, got {value!r}")
    if not low <= value <= INT64_MAX:
        raise ValueError(f"{name} must be between {low} and {INT64_MAX}, got {value}")


def _int64(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    _check_int(attribute.name, value, INT64_MIN)


_text = instance_of(str)


ArrivedEnded: TypeAlias = Literal["cancelled", "expired"]
"""How a rule another node issued had ended before this node heard of it."""


def _arrived_ended(_: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and value not in ("cancelled", "expired"):
        raise ValueError(f"{attribute.name} must be 'cancelled', 'expired' or None, got {value!r}")


_flag = instance_of(bool)


@attrs.frozen(slots=True)
class PeerAddress:
    """Who sent a message or a command over SMTP, as the delivery log shows it
    (``peer_address``): the name the client gave in EHLO or HELO (``""`` before one)
    and its IP address as text."""

    name: str = attrs.field(validator=_text)
    addr: str = attrs.field(validator=_text)


@attrs.frozen(slots=True)
class MessageReceived:
    """A message was accepted into the spool and its scheduled queue.

    ``message_id`` is 32 lowercase hex digits, ``size`` (bytes) is not negative.
    ``protocol`` is ``"HTTP"`` or ``"ESMTP"``; ``peer`` is the SMTP client (``None``
    for HTTP, and in logs written before SMTP reception existed).
    """

    message_id: str
    queue: str
    sender: str
    recipient: str
    size: int
    protocol: str = "HTTP"
    peer: PeerAddress | None = None

    def __attrs_post_init__(self) -> None:
        # One inline test rather than a validator a field: one of these is built per
        # message injected, and six validator calls would triple the cost of building
        # it. Only a failure pays for finding what is wrong.
        message_id, size = self.message_id, self.size
        if (
            type(message_id) is not str
            or _message_id_match(message_id) is None
            or type(size) is not int
            or not 0 <= size <= INT64_MAX
            or not type(self.queue) is type(self.sender) is type(self.recipient) is str
            or type(self.protocol) is not str
            or (self.peer is not None and type(self.peer) is not PeerAddress)
        ):
            self._refuse()

    def _refuse(self) -> None:
        if not is_message_id(self.message_id):
            raise ValueError(f"message_id must be 32 lowercase hex digits: {self.message_id!r}")
        for name in ("queue", "sender", "recipient", "protocol"):
            if type(getattr(self, name)) is not str:
                raise TypeError(f"{name} must be a string, got {getattr(self, name)!r}")
        _check_int("size", self.size, 0)
        if self.peer is not None and type(self.peer) is not PeerAddress:
            raise TypeError(f"peer must be a PeerAddress or None, got {self.peer!r}")


@attrs.frozen(slots=True)
class BounceIssued:
    """An administrator asked to bounce what matches ``criteria`` until ``expires_at``.

    ``reason`` is a string (it may be empty, as the API allows); there is no rule
    without one. ``issued_at`` is the engine clock's reading the expiry was computed
    from (``expires_at`` is exactly ``issued_at`` plus the requested duration); logs
    written before it existed lack it, and the rule was then issued at its commit time
    (:func:`issue_time`).
    """

    rule_id: str = attrs.field(validator=_text)
    criteria: Criteria = attrs.field(validator=instance_of(Criteria))
    reason: str = attrs.field(validator=_text)
    expires_at: int = attrs.field(validator=_int64)
    suppress_logging: bool = attrs.field(default=False, validator=_flag)
    issued_by: str = attrs.field(default="", validator=_text)
    issued_at: int | None = attrs.field(default=None, validator=attrs.validators.optional(_int64))
    origin: str = attrs.field(default="", validator=_text)
    """The node (its ``node_id``) the rule was issued on, when fleet mode brought it
    from another node; ``""`` for a rule issued here (docs/fleet.md)."""
    arrived_ended: ArrivedEnded | None = attrs.field(default=None, validator=_arrived_ended)
    """Set only on a rule fleet mode brought from another node after it had ended
    there (``"cancelled"``, or ``"expired"`` by the time it was read): it is recorded
    ended, bounces (holds) nothing here, and takes its place in the fleet's order of
    equal rules (docs/fleet.md, "Equal rules issued at once")."""


@attrs.frozen(slots=True)
class BounceCancelled:
    """An administrator cancelled a live rule; what it bounced stays bounced."""

    rule_id: str = attrs.field(validator=_text)
    cancelled_by: str = attrs.field(default="", validator=_text)
    origin: str = attrs.field(default="", validator=_text)
    """The node the cancel was asked on, when fleet mode brought it from another node;
    ``""`` for a cancel asked here."""


@attrs.frozen(slots=True)
class BounceExpired:
    """The engine's clock passed a live rule's expiry."""

    rule_id: str = attrs.field(validator=_text)


@attrs.frozen(slots=True)
class SuspendIssued:
    """An administrator suspended delivery from the scheduled queues that ``criteria``
    match until ``expires_at`` (``/api/admin/suspend/v1``): their due messages wait, each
    logged once as a ``TransientFailure``, without an attempt counted."""

    rule_id: str = attrs.field(validator=_text)
    criteria: Criteria = attrs.field(validator=instance_of(Criteria))
    reason: str = attrs.field(validator=_text)
    expires_at: int = attrs.field(validator=_int64)
    issued_by: str = attrs.field(default="", validator=_text)
    issued_at: int | None = attrs.field(default=None, validator=attrs.validators.optional(_int64))
    origin: str = attrs.field(default="", validator=_text)
    """The node the suspension was issued on, when fleet mode brought it from another
    node; ``""`` for one issued here (as :attr:`BounceIssued.origin`)."""
    arrived_ended: ArrivedEnded | None = attrs.field(default=None, validator=_arrived_ended)
    """As :attr:`BounceIssued.arrived_ended`."""


@attrs.frozen(slots=True)
class SuspendCancelled:
    """An administrator lifted a live suspension: its messages are due at once."""

    rule_id: str = attrs.field(validator=_text)
    cancelled_by: str = attrs.field(default="", validator=_text)
    origin: str = attrs.field(default="", validator=_text)
    """The node the lift was asked on, when fleet mode brought it from another node;
    ``""`` for one asked here."""


@attrs.frozen(slots=True)
class SuspendExpired:
    """The engine's clock passed a live suspension's expiry."""

    rule_id: str = attrs.field(validator=_text)


@attrs.frozen(slots=True)
class ReadySuspendIssued:
    """An administrator suspended the ready queue ``name`` (exact, as KumoMTA names it:
    ``unspecified->mx.example.com@smtp_client``) until ``expires_at``
    (``/api/admin/suspend-ready-q/v1``): its connections finish the transaction under
    way and close, and the messages that would go to it wait in their scheduled queues,
    each logged once as a ``TransientFailure``, without an attempt counted. A later
    suspension of the same name replaces it."""

    rule_id: str = attrs.field(validator=_text)
    name: str = attrs.field(validator=_text)
    reason: str = attrs.field(validator=_text)
    expires_at: int = attrs.field(validator=_int64)
    issued_by: str = attrs.field(default="", validator=_text)
    issued_at: int | None = attrs.field(default=None, validator=attrs.validators.optional(_int64))
    origin: str = attrs.field(default="", validator=_text)
    """The node the suspension was issued on, when fleet mode brought it from another
    node; ``""`` for one issued here (as :attr:`BounceIssued.origin`)."""
    arrived_ended: ArrivedEnded | None = attrs.field(default=None, validator=_arrived_ended)
    """As :attr:`BounceIssued.arrived_ended`."""


@attrs.frozen(slots=True)
class ReadySuspendCancelled:
    """An administrator lifted a live ready-queue suspension: what it held is due at once."""

    rule_id: str = attrs.field(validator=_text)
    cancelled_by: str = attrs.field(default="", validator=_text)
    origin: str = attrs.field(default="", validator=_text)
    """The node the lift was asked on, when fleet mode brought it from another node;
    ``""`` for one asked here."""


@attrs.frozen(slots=True)
class ReadySuspendExpired:
    """The engine's clock passed a live ready-queue suspension's expiry."""

    rule_id: str = attrs.field(validator=_text)


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

    def __attrs_post_init__(self) -> None:
        # Inline rather than two validators: an arrival that a rule takes makes one.
        if not type(self.rule_id) is type(self.queue) is str:
            raise TypeError(f"rule_id and queue must be strings: {self.rule_id!r}, {self.queue!r}")


def _reply_code(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or not 400 <= value <= 599:
        raise ValueError(f"{attribute.name} must be a 4xx or 5xx reply code, got {value!r}")


def _reply_text(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    if type(value) is not str:
        raise TypeError(f"{attribute.name} must be a string, got {value!r}")
    if "\r" in value:
        # A CR would break the reply it came from into lines no client read.
        raise ValueError(f"{attribute.name} must hold no CR, got {value!r}")


@attrs.frozen(slots=True)
class Rejected:
    """The SMTP listener gave a client a ``4xx``/``5xx`` reply (a ``Rejection`` record).

    It changes no state: it is in the log so that the delivery-log writer writes its
    record exactly once, as it does every other record, and so that a replay shows it.
    """

    code: int = attrs.field(validator=_reply_code)
    text: str = attrs.field(validator=_reply_text)
    """The reply's text after the code, enhanced status code included, lines joined by
    ``\\n`` (``5.7.1 relaying not permitted for 10.0.0.5:51234``)."""
    command: str | None = attrs.field(validator=attrs.validators.optional(_text))
    """The client's line without its CRLF, ``"DATA"`` for a reply after the message
    data, ``None`` when there is no line to show (too long, not UTF-8)."""
    sender: str = attrs.field(validator=_text)
    """The transaction's sender, ``""`` outside a transaction."""
    recipient: str = attrs.field(validator=_text)
    """The last recipient accepted in the transaction (not the refused one), or ``""``."""
    peer: PeerAddress = attrs.field(validator=instance_of(PeerAddress))


def _optional_text(_: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and type(value) is not str:
        raise TypeError(f"{attribute.name} must be a string or None, got {value!r}")


def _enhanced(
    _: object,
    attribute: attrs.Attribute[tuple[int, int, int] | None],
    value: tuple[int, int, int] | None,
) -> None:
    if value is None:
        return
    if (
        type(value) is not tuple
        or len(value) != 3
        or not all(type(part) is int and 0 <= part <= 999 for part in value)
    ):
        raise ValueError(f"{attribute.name} must be None or three ints, got {value!r}")


def _attempt_code(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or not 0 <= value <= 999:
        raise ValueError(f"{attribute.name} must be a reply code from 0 to 999, got {value!r}")


@attrs.frozen(slots=True)
class Attempt:
    """One delivery attempt as its log record tells it (reference 5.1, 5.2): the reply
    that decided it, or an internal failure told as one, and where it went."""

    site: str = attrs.field(validator=_text)
    """The ready queue (``unspecified->mx.example.com@smtp_client``), or ``""`` when
    the message never reached one (its destination could not be resolved)."""
    code: int = attrs.field(validator=_attempt_code)
    enhanced_code: tuple[int, int, int] | None = attrs.field(validator=_enhanced)
    content: str = attrs.field(validator=_text)
    """The reply's text after the code (and enhanced code), flattened to one line."""
    command: str | None = attrs.field(validator=_optional_text)
    """The command the reply answered, as sent (CRLF included); None for none."""
    peer: PeerAddress | None = attrs.field(
        default=None, validator=attrs.validators.optional(instance_of(PeerAddress))
    )
    """``{name: MX host, addr: IP}``; None when no host was reached."""
    source_address: str | None = attrs.field(default=None, validator=_optional_text)
    session_id: str | None = attrs.field(default=None, validator=_optional_text)
    protocol: str | None = attrs.field(default=None, validator=_optional_text)
    """``"ESMTP"`` for an SMTP transaction; None for a failure before any connection."""
    tls_cipher: str | None = attrs.field(default=None, validator=_optional_text)
    tls_protocol_version: str | None = attrs.field(default=None, validator=_optional_text)


def _message(_: object, attribute: attrs.Attribute[Message], value: Message) -> None:
    if type(value) is not Message:
        raise TypeError(f"{attribute.name} must be a Message, got {value!r}")


def _count(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    _check_int(attribute.name, value, 0)


def _optional_time(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None:
        _check_int(attribute.name, value, INT64_MIN)


@attrs.frozen(slots=True)
class Delivered:
    """The destination accepted ``message`` (a ``Delivery`` record); it left ``queue``.

    ``attempts`` counts the attempts before this one (the record's ``num_attempts``).
    """

    queue: str = attrs.field(validator=_text)
    message: Message = attrs.field(validator=_message)
    attempts: int = attrs.field(validator=_count)
    attempt: Attempt = attrs.field(validator=instance_of(Attempt))


@attrs.frozen(slots=True)
class PermanentlyFailed:
    """The destination refused ``message`` for good, or kumo may not deliver it there
    (a ``Bounce`` record); it left ``queue``."""

    queue: str = attrs.field(validator=_text)
    message: Message = attrs.field(validator=_message)
    attempts: int = attrs.field(validator=_count)
    attempt: Attempt = attrs.field(validator=instance_of(Attempt))


@attrs.frozen(slots=True)
class TransientlyFailed:
    """An attempt to deliver ``message`` failed transiently (a ``TransientFailure``
    record). It goes back to ``queue`` with ``attempts + 1`` attempts, which decides
    when it applies this event, in log order, as it decides an arrival: the message
    expires if ``expiry`` is set (the ``Expiration`` text: its next attempt, the
    retry schedule says, would fall past ``max_age``), else a rule live and matching
    at this event's commit bounces it, else it waits until ``due``.
    """

    queue: str = attrs.field(validator=_text)
    message: Message = attrs.field(validator=_message)
    attempts: int = attrs.field(validator=_count)
    attempt: Attempt = attrs.field(validator=instance_of(Attempt))
    due: int | None = attrs.field(validator=_optional_time)
    """When it is due again; None when it expires."""
    expiry: str | None = attrs.field(default=None, validator=_optional_text)


@attrs.frozen(slots=True)
class Expired:
    """``message`` left ``queue`` unsent: its next attempt would fall past ``max_age``
    (an ``Expiration`` record, ``551 5.4.7 <content>``). ``attempts`` counts every
    attempt made, the last one included (KumoMTA's ``num_attempts`` here)."""

    queue: str = attrs.field(validator=_text)
    message: Message = attrs.field(validator=_message)
    attempts: int = attrs.field(validator=_count)
    content: str = attrs.field(validator=_text)
    site: str = attrs.field(default="", validator=_text)


@attrs.frozen(slots=True)
class Suspended:
    """Suspension ``rule_id`` holds ``message`` of ``queue``, due now: it waits until the
    suspension ends, its attempts unchanged (a ``TransientFailure`` record ``451 4.4.4
    KumoMTA internal: scheduled queue is suspended: <reason>``, site the queue).

    With ``ready_queue`` set, ``rule_id`` is a ready-queue suspension of that name, the
    ready queue the message's destination resolved to when its queue held it (a
    ``TransientFailure`` ``451 4.4.4 KumoMTA internal: no sources for <queue>
    pool=`unspecified` are eligible for selection at this time``, site ``""``). One
    event for both kinds: a held message is held the same way whichever suspension
    holds it (:class:`~kumo.model.state.Retry`, inspection, conservation); only the
    rule's book and the record's text differ.
    """

    rule_id: str = attrs.field(validator=_text)
    queue: str = attrs.field(validator=_text)
    message: Message = attrs.field(validator=_message)
    attempts: int = attrs.field(validator=_count)
    reason: str = attrs.field(validator=_text)
    ready_queue: str | None = attrs.field(default=None, validator=_optional_text)


def _to_data(data: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    pairs = data.items() if isinstance(data, Mapping) else data
    return tuple(sorted((key, value) for key, value in pairs))


def _check_data(
    _: object,
    attribute: attrs.Attribute[tuple[tuple[str, str], ...]],
    value: tuple[tuple[str, str], ...],
) -> None:
    keys = [key for key, _ in value]
    if not all(type(key) is str and type(item) is str for key, item in value):
        raise TypeError(f"{attribute.name} must map strings to strings, got {value!r}")
    if len(set(keys)) != len(keys):
        raise ValueError(f"{attribute.name} names a key twice: {keys!r}")


@attrs.frozen(slots=True)
class RebindIssued:
    """An administrator asked to merge ``data`` into the metadata of the scheduled
    messages of every queue ``criteria`` match, and move each to the queue its new
    metadata names (``/api/admin/rebind/v1``): a one-shot action, not a rule.

    ``data`` is sorted ``(key, value)`` pairs (a mapping is taken and sorted), each key
    one of :data:`kumo.model.queue_name.REBINDABLE_KEYS` (the API refuses the others).
    ``always_flush``: messages whose queue does not change are due at once.
    ``suppress_logging``: no ``AdminRebind`` records.
    """

    rebind_id: str = attrs.field(validator=_text)
    criteria: Criteria = attrs.field(validator=instance_of(Criteria))
    data: tuple[tuple[str, str], ...] = attrs.field(converter=_to_data, validator=_check_data)
    reason: str = attrs.field(validator=_text)
    always_flush: bool = attrs.field(default=False, validator=_flag)
    suppress_logging: bool = attrs.field(default=False, validator=_flag)
    issued_by: str = attrs.field(default="", validator=_text)
    issued_at: int | None = attrs.field(default=None, validator=attrs.validators.optional(_int64))
    origin: str = attrs.field(default="", validator=_text)
    """The node the rebind was asked on, when fleet mode brought it from another node;
    ``""`` for one asked here. A node moves what matches on it when it reads the rebind."""

    @property
    def data_map(self) -> dict[str, str]:
        return dict(self.data)


def _attempt_counts(counts: Iterable[int]) -> tuple[int, ...]:
    return tuple(counts)


@attrs.frozen(slots=True)
class Rebound:
    """Rebind ``rebind_id`` moved ``messages`` from ``queue`` to ``to_queue`` (one
    ``AdminRebind`` record each, unless ``suppress_logging``): a batch, like
    ``Bounced``. ``attempts[i]`` is the attempts made so far of ``messages[i]``, which
    it keeps. ``to_queue`` receives them as arrivals at this event's commit (a rule live
    and matching then bounces them; otherwise they are due at once), their
    ``received_at`` (the expiry clock) unchanged."""

    rebind_id: str = attrs.field(validator=_text)
    queue: str = attrs.field(validator=_text)
    to_queue: str = attrs.field(validator=_text)
    messages: MessageBatch = attrs.field(converter=_to_messages)
    attempts: tuple[int, ...] = attrs.field(converter=_attempt_counts)
    reason: str = attrs.field(validator=_text)
    suppress_logging: bool = attrs.field(default=False, validator=_flag)

    def __attrs_post_init__(self) -> None:
        if len(self.attempts) != len(self.messages):
            raise ValueError(
                f"{len(self.attempts)} attempt counts for {len(self.messages)} messages"
            )
        for count in self.attempts:
            _check_int("attempts", count, 0)
        if self.queue == self.to_queue:
            raise ValueError(f"a rebind moves messages to another queue, not {self.queue!r}")


Outcome: TypeAlias = Delivered | PermanentlyFailed | TransientlyFailed | Expired | Suspended
"""The events of the mail path: what became of a message handed to a destination."""

DEPARTURES: Final = (Delivered, PermanentlyFailed, Expired)
"""The mail-path events that take their message out of its queue for good."""


Event: TypeAlias = (
    MessageReceived
    | BounceIssued
    | BounceCancelled
    | BounceExpired
    | Bounced
    | Rejected
    | Delivered
    | PermanentlyFailed
    | TransientlyFailed
    | Expired
    | SuspendIssued
    | SuspendCancelled
    | SuspendExpired
    | Suspended
    | RebindIssued
    | Rebound
    | ReadySuspendIssued
    | ReadySuspendCancelled
    | ReadySuspendExpired
)


_EVENT_CLASSES: Final = frozenset(
    {
        MessageReceived,
        BounceIssued,
        BounceCancelled,
        BounceExpired,
        Bounced,
        Rejected,
        Delivered,
        PermanentlyFailed,
        TransientlyFailed,
        Expired,
        SuspendIssued,
        SuspendCancelled,
        SuspendExpired,
        Suspended,
        RebindIssued,
        Rebound,
        ReadySuspendIssued,
        ReadySuspendCancelled,
        ReadySuspendExpired,
    }
)


@attrs.frozen(slots=True)
class Committed:
    """An event as the log committed it: durable, with its place and time."""

    seq: int
    time: int
    """Commit time, ns since the epoch; never decreases along the log."""
    event: Event

    def __attrs_post_init__(self) -> None:
        # One inline test rather than three validators: one of these is built per event.
        seq, time = self.seq, self.time
        if (
            type(seq) is not int
            or type(time) is not int
            or not 0 <= seq <= INT64_MAX
            or not 0 <= time <= INT64_MAX
            or type(self.event) not in _EVENT_CLASSES
        ):
            _check_int("seq", self.seq, 0)
            _check_int("time", self.time, 0)
            raise TypeError(f"not an event: {self.event!r}")


def issue_time(committed: Committed) -> int:
    """When the rule of a committed ``BounceIssued`` (or ``SuspendIssued``,
    ``ReadySuspendIssued``) was issued: the clock reading it carries, or (for a log
    written before events carried one) its commit time."""
    event = committed.event
    assert isinstance(event, BounceIssued | SuspendIssued | ReadySuspendIssued)
    return committed.time if event.issued_at is None else event.issued_at


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


def criteria_from_json(data: dict[str, Any]) -> Criteria:
    """The inverse of :func:`criteria_to_json`."""
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
            } | ({} if event.peer is None else {"peer": _peer_to_json(event.peer)})
        case BounceIssued():
            return {
                "rule_id": event.rule_id,
                "criteria": criteria_to_json(event.criteria),
                "reason": event.reason,
                "expires_at": event.expires_at,
                "suppress_logging": event.suppress_logging,
                "issued_by": event.issued_by,
            } | _optional(
                issued_at=event.issued_at, origin=event.origin, arrived_ended=event.arrived_ended
            )
        case BounceCancelled():
            return {"rule_id": event.rule_id, "cancelled_by": event.cancelled_by} | _optional(
                origin=event.origin
            )
        case BounceExpired():
            return {"rule_id": event.rule_id}
        case Bounced():
            return {
                "rule_id": event.rule_id,
                "queue": event.queue,
                # Positional rows keep a sweep's events small: they are most of the log.
                "messages": event.messages.rows(),
            }
        case Delivered() | PermanentlyFailed():
            return {
                "queue": event.queue,
                "message": _message_to_json(event.message),
                "attempts": event.attempts,
                "attempt": _attempt_to_json(event.attempt),
            }
        case TransientlyFailed():
            return {
                "queue": event.queue,
                "message": _message_to_json(event.message),
                "attempts": event.attempts,
                "attempt": _attempt_to_json(event.attempt),
                "due": event.due,
            } | ({} if event.expiry is None else {"expiry": event.expiry})
        case SuspendIssued():
            return {
                "rule_id": event.rule_id,
                "criteria": criteria_to_json(event.criteria),
                "reason": event.reason,
                "expires_at": event.expires_at,
                "issued_by": event.issued_by,
            } | _optional(
                issued_at=event.issued_at, origin=event.origin, arrived_ended=event.arrived_ended
            )
        case SuspendCancelled():
            return {"rule_id": event.rule_id, "cancelled_by": event.cancelled_by} | _optional(
                origin=event.origin
            )
        case SuspendExpired():
            return {"rule_id": event.rule_id}
        case Suspended():
            return {
                "rule_id": event.rule_id,
                "queue": event.queue,
                "message": _message_to_json(event.message),
                "attempts": event.attempts,
                "reason": event.reason,
            } | ({} if event.ready_queue is None else {"ready_queue": event.ready_queue})
        case RebindIssued():
            return {
                "rebind_id": event.rebind_id,
                "criteria": criteria_to_json(event.criteria),
                "data": event.data_map,
                "reason": event.reason,
                "always_flush": event.always_flush,
                "suppress_logging": event.suppress_logging,
                "issued_by": event.issued_by,
            } | _optional(issued_at=event.issued_at, origin=event.origin)
        case Rebound():
            return {
                "rebind_id": event.rebind_id,
                "queue": event.queue,
                "to_queue": event.to_queue,
                "messages": event.messages.rows(),
                "attempts": list(event.attempts),
                "reason": event.reason,
                "suppress_logging": event.suppress_logging,
            }
        case ReadySuspendIssued():
            return {
                "rule_id": event.rule_id,
                "name": event.name,
                "reason": event.reason,
                "expires_at": event.expires_at,
                "issued_by": event.issued_by,
            } | _optional(
                issued_at=event.issued_at, origin=event.origin, arrived_ended=event.arrived_ended
            )
        case ReadySuspendCancelled():
            return {"rule_id": event.rule_id, "cancelled_by": event.cancelled_by} | _optional(
                origin=event.origin
            )
        case ReadySuspendExpired():
            return {"rule_id": event.rule_id}
        case Expired():
            return {
                "queue": event.queue,
                "message": _message_to_json(event.message),
                "attempts": event.attempts,
                "content": event.content,
                "site": event.site,
            }
        case Rejected():
            return {
                "code": event.code,
                "text": event.text,
                "command": event.command,
                "sender": event.sender,
                "recipient": event.recipient,
                "peer": _peer_to_json(event.peer),
            }


def _attempt_to_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "site": attempt.site,
        "code": attempt.code,
        "enhanced_code": None if attempt.enhanced_code is None else list(attempt.enhanced_code),
        "content": attempt.content,
        "command": attempt.command,
        "peer": None if attempt.peer is None else _peer_to_json(attempt.peer),
        "source_address": attempt.source_address,
        "session_id": attempt.session_id,
        "protocol": attempt.protocol,
        "tls_cipher": attempt.tls_cipher,
        "tls_protocol_version": attempt.tls_protocol_version,
    }


def _attempt_from_json(data: object) -> Attempt:
    if not isinstance(data, dict):
        raise TypeError(f"attempt must be an object, got {data!r}")
    enhanced = data["enhanced_code"]
    return Attempt(
        site=data["site"],
        code=data["code"],
        enhanced_code=None if enhanced is None else tuple(enhanced),
        content=data["content"],
        command=data["command"],
        peer=None if data["peer"] is None else _peer_from_json(data["peer"]),
        source_address=data["source_address"],
        session_id=data["session_id"],
        protocol=data["protocol"],
        tls_cipher=data["tls_cipher"],
        tls_protocol_version=data["tls_protocol_version"],
    )


def _message_to_json(message: Message) -> list[object]:
    """A message as a positional list: its six fields, and its protocol only when that
    is not HTTP, so that an event of an HTTP message is the bytes it was before
    messages kept their protocol (and those bytes still decode to HTTP)."""
    if message.protocol == HTTP:
        return list(message[:6])
    return list(message)


def _message_from_json(data: object) -> Message:
    if not isinstance(data, list) or len(data) not in (6, 7):
        raise TypeError(f"message must be a list of 6 or 7 fields, got {data!r}")
    message = Message(*data)
    if not (
        type(message.id) is str
        and type(message.sender) is str
        and type(message.recipient) is str
        and all(type(part) is int for part in message[3:6])
        and type(message.protocol) is str
    ):
        raise ValueError(f"not a queued message: {data!r}")
    return message


def _messages_from_rows(rows: object) -> list[Message]:
    """The messages of a batch's positional rows (:meth:`MessageQueue.rows`)."""
    if not isinstance(rows, list):
        raise TypeError(f"messages must be a list, got {rows!r}")
    messages = [Message(*row) for row in rows]
    for message in messages:
        if type(message.protocol) is not str:
            raise TypeError(f"a message's protocol must be a string: {message!r}")
    return messages


def _optional(**fields: object) -> dict[str, Any]:
    """The fields that differ from their defaults (``None``, ``""``): a body written
    before a field existed, and one written since without it, are the same bytes."""
    return {name: value for name, value in fields.items() if value is not None and value != ""}


def _peer_to_json(peer: PeerAddress) -> dict[str, str]:
    return {"name": peer.name, "addr": peer.addr}


def _peer_from_json(data: object) -> PeerAddress:
    if not isinstance(data, dict):
        raise TypeError(f"peer must be an object, got {data!r}")
    return PeerAddress(name=data["name"], addr=data["addr"])


def _data_from_json(data: object) -> dict[str, str]:
    if not isinstance(data, dict):
        raise TypeError(f"data must be an object, got {data!r}")
    return data


def _decode_bounced(data: dict[str, Any]) -> Bounced:
    return Bounced(
        rule_id=data["rule_id"],
        queue=data["queue"],
        messages=_messages_from_rows(data["messages"]),
    )


_DECODERS: Final[dict[str, Callable[[dict[str, Any]], Event]]] = {
    "MessageReceived": lambda d: MessageReceived(
        message_id=d["message_id"],
        queue=d["queue"],
        sender=d["sender"],
        recipient=d["recipient"],
        size=d["size"],
        protocol=d["protocol"],
        # Absent from HTTP arrivals and from logs older than SMTP reception.
        peer=None if d.get("peer") is None else _peer_from_json(d["peer"]),
    ),
    "BounceIssued": lambda d: BounceIssued(
        rule_id=d["rule_id"],
        criteria=criteria_from_json(d["criteria"]),
        reason=d["reason"],
        expires_at=d["expires_at"],
        suppress_logging=d["suppress_logging"],
        issued_by=d["issued_by"],
        issued_at=d.get("issued_at"),
        # Both absent from local events and from logs older than fleet mode.
        origin=d.get("origin", ""),
        arrived_ended=d.get("arrived_ended"),
    ),
    "BounceCancelled": lambda d: BounceCancelled(
        rule_id=d["rule_id"], cancelled_by=d["cancelled_by"], origin=d.get("origin", "")
    ),
    "BounceExpired": lambda d: BounceExpired(rule_id=d["rule_id"]),
    "Bounced": _decode_bounced,
    "Delivered": lambda d: Delivered(
        queue=d["queue"],
        message=_message_from_json(d["message"]),
        attempts=d["attempts"],
        attempt=_attempt_from_json(d["attempt"]),
    ),
    "PermanentlyFailed": lambda d: PermanentlyFailed(
        queue=d["queue"],
        message=_message_from_json(d["message"]),
        attempts=d["attempts"],
        attempt=_attempt_from_json(d["attempt"]),
    ),
    "TransientlyFailed": lambda d: TransientlyFailed(
        queue=d["queue"],
        message=_message_from_json(d["message"]),
        attempts=d["attempts"],
        attempt=_attempt_from_json(d["attempt"]),
        due=d["due"],
        expiry=d.get("expiry"),
    ),
    "Expired": lambda d: Expired(
        queue=d["queue"],
        message=_message_from_json(d["message"]),
        attempts=d["attempts"],
        content=d["content"],
        site=d["site"],
    ),
    "SuspendIssued": lambda d: SuspendIssued(
        rule_id=d["rule_id"],
        criteria=criteria_from_json(d["criteria"]),
        reason=d["reason"],
        expires_at=d["expires_at"],
        issued_by=d["issued_by"],
        issued_at=d.get("issued_at"),
        # Both absent from local events and from logs older than fleet suspensions.
        origin=d.get("origin", ""),
        arrived_ended=d.get("arrived_ended"),
    ),
    "SuspendCancelled": lambda d: SuspendCancelled(
        rule_id=d["rule_id"], cancelled_by=d["cancelled_by"], origin=d.get("origin", "")
    ),
    "SuspendExpired": lambda d: SuspendExpired(rule_id=d["rule_id"]),
    "Suspended": lambda d: Suspended(
        rule_id=d["rule_id"],
        queue=d["queue"],
        message=_message_from_json(d["message"]),
        attempts=d["attempts"],
        reason=d["reason"],
        # Absent for a scheduled-queue suspension, and from logs older than ready ones.
        ready_queue=d.get("ready_queue"),
    ),
    "RebindIssued": lambda d: RebindIssued(
        rebind_id=d["rebind_id"],
        criteria=criteria_from_json(d["criteria"]),
        data=_data_from_json(d["data"]),
        reason=d["reason"],
        always_flush=d["always_flush"],
        suppress_logging=d["suppress_logging"],
        issued_by=d["issued_by"],
        issued_at=d.get("issued_at"),
        # Absent from local rebinds and from logs older than fleet rebinds.
        origin=d.get("origin", ""),
    ),
    "Rebound": lambda d: Rebound(
        rebind_id=d["rebind_id"],
        queue=d["queue"],
        to_queue=d["to_queue"],
        messages=_messages_from_rows(d["messages"]),
        attempts=d["attempts"],
        reason=d["reason"],
        suppress_logging=d["suppress_logging"],
    ),
    "ReadySuspendIssued": lambda d: ReadySuspendIssued(
        rule_id=d["rule_id"],
        name=d["name"],
        reason=d["reason"],
        expires_at=d["expires_at"],
        issued_by=d["issued_by"],
        issued_at=d.get("issued_at"),
        # Absent from local events and from logs older than fleet ready-queue suspensions.
        origin=d.get("origin", ""),
        arrived_ended=d.get("arrived_ended"),
    ),
    "ReadySuspendCancelled": lambda d: ReadySuspendCancelled(
        rule_id=d["rule_id"], cancelled_by=d["cancelled_by"], origin=d.get("origin", "")
    ),
    "ReadySuspendExpired": lambda d: ReadySuspendExpired(rule_id=d["rule_id"]),
    "Rejected": lambda d: Rejected(
        code=d["code"],
        text=d["text"],
        command=d["command"],
        sender=d["sender"],
        recipient=d["recipient"],
        peer=_peer_from_json(d["peer"]),
    ),
}

EVENT_TYPES: Final = tuple(_DECODERS)


def event_type(event: Event) -> str:
    """The stable type name stored beside the body."""
    return type(event).__name__


def encode_event(event: Event) -> bytes:
    """The event's JSON body: ``{"v": SCHEMA_VERSION, "type": ..., ...fields}``."""
    body = _encode_body(event)
    return orjson.dumps({"v": SCHEMA_VERSION, "type": event_type(event), **body})


def decode_received(body: bytes, senders: dict[str, str]) -> tuple[str, str, str, str, int, str]:
    """``(queue, message_id, sender, recipient, size, protocol)`` of a stored
    ``MessageReceived``.

    A fast path for replaying a large log: it skips building the event itself, and
    shares equal sender strings through ``senders`` (bulk mail repeats them).
    Raises :class:`EventDecodeError` like :func:`decode_event`, though it checks only
    that ``size`` is a non-negative int and ``message_id`` 32 long: the rest of what
    the event's constructor checks (the id's digits, the strings' types) would add
    about a fifth to the replay of each message.
    """
    try:
        data = orjson.loads(body)
        if data["v"] != SCHEMA_VERSION or data["type"] != "MessageReceived":
            raise ValueError("not a MessageReceived of this schema")
        sender = data["sender"]
        sender = senders.setdefault(sender, sender)
        message_id, size, protocol = data["message_id"], data["size"], data["protocol"]
        # The cheap part of MessageReceived's checks: this runs once per stored message.
        if type(size) is not int or size < 0 or len(message_id) != 32:
            raise ValueError(f"bad size {size!r} or message_id {message_id!r}")
        if type(protocol) is not str:
            raise ValueError(f"bad protocol {protocol!r}")
        return data["queue"], message_id, sender, data["recipient"], size, protocol
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

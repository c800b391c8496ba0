"""Fleet mode's decisions: what a node owes the fleet's stream, what it takes from it.

Several kumo nodes share their admin actions through one Redis stream (docs/fleet.md).
Each node's own event log stays the truth for that node; the stream only carries the
actions. Everything here is a function of plain values (the node's
:class:`~kumo.model.state.State`: its rule book of each kind; the entries read): no
trio, no I/O, no Redis. The runtime shell (:mod:`kumo.runtime.fleet`) carries out what
these functions decide.

The actions are a rule's issue and its cancel, for every kind of rule in
:data:`ADMIN_KINDS` (bounce rules: ``BounceIssued``, ``BounceCancelled``; suspensions:
``SuspendIssued``, ``SuspendCancelled``; ready-queue suspensions: ``ReadySuspendIssued``,
``ReadySuspendCancelled``), and rebinds (``RebindIssued``). Expiries are not carried:
every node ends a rule at the same ``expires_at`` by itself. Every function below
handles each kind of rule the same way, through its :class:`AdminKind` entry: a new
kind of admin action (one folded into a book of its own, keyed by id) joins the fleet
with one entry.

A rebind is a one-shot action, not a rule: it is published once by the node it was
asked on, and taken once by every other node, whenever that node reads it (it then
moves what matches on that node at that moment). The fold keeps the rebinds the log
holds (:attr:`~kumo.model.state.State.rebinds`), which is what the outbox and the
dedupe look at. A stream Redis lost is not given old rebinds again: they were done.

- **Fleet event id.** An action is named fleet-wide by :func:`fleet_event_id`:
  ``<rule id>:issued`` or ``<rule id>:cancelled`` (``<rebind id>:issued``). Rule (and
  rebind) ids are uuid4s made once, by the node the action was taken on, and kept on
  every node, so the name is the same wherever the action is read, published again,
  or republished after Redis lost the stream.
- **The outbox** (:func:`owed_entries`): the actions this node took (issued or cancelled
  here, ``origin == ""``) whose events the log committed after the position the node
  has published up to. It is read from the rule books, which snapshots keep, so an
  outbox survives a restart and a compaction of the log however long Redis was away.
- **Applying** (:func:`plan_follow`): an entry read from the stream becomes a local
  event (its ``origin`` the node it came from) unless it came from this node, or its
  action is already in this node's log: the rule is known (its issue) or no longer live
  (a cancel). That check is against the rule books, which the log rebuilds, so an action
  is applied once per node however often the stream holds it (at least once publishing,
  republishing, a restart between an append and storing the stream position).
- **Republishing** (:func:`standing_entries`): when Redis comes back empty, each node
  publishes again every action that still matters, its own and the others', so that a
  node that missed them still converges.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, Protocol, TypeAlias

import attrs
import orjson

from kumo.model.connection_lease import LeaseSettings
from kumo.model.events import (
    BounceCancelled,
    BounceIssued,
    EventDecodeError,
    ReadySuspendCancelled,
    ReadySuspendIssued,
    RebindIssued,
    SuspendCancelled,
    SuspendIssued,
    decode_event,
    encode_event,
)
from kumo.model.ready_suspension import ReadySuspension
from kumo.model.state import Rule, RuleBook, RuleView, State

IssueAction: TypeAlias = BounceIssued | SuspendIssued | ReadySuspendIssued
"""An action that starts a rule (of any kind fleet mode carries)."""
CancelAction: TypeAlias = BounceCancelled | SuspendCancelled | ReadySuspendCancelled
"""An action that ends a rule early."""
FleetAction: TypeAlias = IssueAction | CancelAction | RebindIssued
"""An admin action that fleet mode carries from node to node."""

DEFAULT_STREAM: Final = "kumo:admin"
ISSUED: Final = "issued"
CANCELLED: Final = "cancelled"


class FleetEntryError(ValueError):
    """A stream entry that is not a fleet action this version of kumo can apply."""


class RedisUrlError(ValueError):
    """A ``[fleet] redis`` value that is not a Redis URL; the message says why."""


def _positive(_: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, got {value!r}")


def check_redis_url(url: str) -> str:
    """``url`` if it is ``redis://[[user]:password@]host[:port][/db]`` (or ``rediss://``,
    over TLS); :class:`RedisUrlError` naming the problem otherwise."""
    if not isinstance(url, str):
        raise RedisUrlError(f"a Redis URL must be a string, got {url!r}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise RedisUrlError(f"{url!r} is not a redis:// (or rediss://) URL")
    try:
        port = parts.port
    except ValueError:
        raise RedisUrlError(f"{url!r} has a port that is not a number up to 65535") from None
    if not parts.hostname:
        raise RedisUrlError(f"{url!r} names no host")
    if port == 0:
        raise RedisUrlError(f"{url!r} has port 0")
    db = parts.path.lstrip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise RedisUrlError(f"{url!r}: the database after the / must be a number")
    if parts.query or parts.fragment:
        raise RedisUrlError(f"{url!r}: options after ? or # are not taken")
    return url


def _redis_url(_: object, __: attrs.Attribute[str], value: str) -> None:
    check_redis_url(value)


def _stream_name(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value or value != value.strip():
        raise ValueError(f"stream must be a non-empty name without surrounding spaces: {value!r}")


@attrs.frozen
class FleetSettings:
    """``[fleet]``: the Redis server and stream a node shares its admin actions through,
    and how the node's fleet tasks pace themselves. Every field but ``redis`` has a
    default; the tuning fields are not in the configuration file."""

    redis: str = attrs.field(validator=_redis_url)
    """``redis://HOST:PORT/DB``: the fleet's Redis server (the same for every node)."""
    stream: str = attrs.field(default=DEFAULT_STREAM, validator=_stream_name)
    """The stream's key; the key ``<stream>:epoch`` beside it names the stream's
    incarnation (see :func:`epoch_key`)."""
    block: float = attrs.field(default=1.0, converter=float, validator=_positive, kw_only=True)
    """Seconds a follower's ``XREAD BLOCK`` waits before it looks at the epoch again
    (and the publisher's longest wait between two looks at it)."""
    read_count: int = attrs.field(default=256, validator=_positive, kw_only=True)
    """Entries a follower reads (and appends, in one transaction) at a time at most."""
    retry_initial: float = attrs.field(
        default=0.1, converter=float, validator=_positive, kw_only=True
    )
    """Seconds before the first new try after Redis failed; doubled at each failure."""
    retry_max: float = attrs.field(default=5.0, converter=float, validator=_positive, kw_only=True)
    """The longest wait between two tries while Redis stays unreachable."""
    counters_interval: float = attrs.field(
        default=1.0, converter=float, validator=_positive, kw_only=True
    )
    """Seconds between two looks at this node's rule counters: they are published
    (for ``?scope=fleet``) at most this often, and only when they changed."""
    counters_ttl: float = attrs.field(
        default=30.0, converter=float, validator=_positive, kw_only=True
    )
    """Seconds a node's published counters live in Redis unless published again: a
    node that stopped stops counting in the fleet's figures after this long. A node
    whose counters did not change publishes them again after a third of it."""
    counters_wait: float = attrs.field(
        default=0.5, converter=float, validator=_positive, kw_only=True
    )
    """Seconds a ``?scope=fleet`` GET waits for Redis before it answers with this
    node's figures alone."""
    leases: LeaseSettings = attrs.field(factory=LeaseSettings, kw_only=True)
    """How the connection leases of ``[egress] fleet_limits`` live and are kept
    (:mod:`kumo.model.connection_lease`)."""


def epoch_key(stream: str) -> str:
    """The key that names the current incarnation of ``stream``. The first node to find
    it missing sets it (``SET NX``) to a fresh id; a node that finds another id than the
    one it followed knows that Redis lost the stream (restarted empty, flushed, or a
    new server): it reads the stream again from its start and republishes."""
    return f"{stream}:epoch"


def counters_key(stream: str, node_id: str) -> str:
    """The key holding node ``node_id``'s rule counters (:func:`encode_counters`), with
    a time to live (:attr:`FleetSettings.counters_ttl`)."""
    return f"{stream}:counters:{node_id}"


def counter_nodes_key(stream: str) -> str:
    """The set of the node ids that have published counters (some may have aged out)."""
    return f"{stream}:counters"


def retry_delay(failures: int, settings: FleetSettings) -> float:
    """Seconds to wait after ``failures`` failures in a row (1 or more): exponential
    from :attr:`~FleetSettings.retry_initial`, capped at :attr:`~FleetSettings.retry_max`."""
    doublings = min(max(failures - 1, 0), 30)
    return float(min(settings.retry_max, settings.retry_initial * 2.0**doublings))


# -- entries ----------------------------------------------------------------------------


def fleet_event_id(event: FleetAction) -> str:
    """The fleet-wide name of an action: ``<rule id>:issued`` or ``<rule id>:cancelled``;
    ``<rebind id>:issued`` for a rebind.

    A rule is issued once; two nodes that cancel it at the same moment take the same
    action, and each node applies the first copy it reads. Rule ids are uuid4s, so the
    name does not need the kind of the rule (the event in the entry tells it)."""
    if isinstance(event, RebindIssued):
        return f"{event.rebind_id}:{ISSUED}"
    kind = ISSUED if isinstance(event, IssueAction) else CANCELLED
    return f"{event.rule_id}:{kind}"


def _origin(instance: StreamEntry, _: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"an entry's origin must be a node id, got {value!r}")


@attrs.frozen
class StreamEntry:
    """One admin action as the fleet's stream carries it.

    ``event`` carries ``origin`` in its own ``origin`` field, so that it is the very
    event a node that takes it appends; ``fleet_id`` is :func:`fleet_event_id` of it.
    """

    fleet_id: str
    origin: str = attrs.field(validator=_origin)
    event: FleetAction = attrs.field(validator=lambda _, __, value: _check_action(value))

    def __attrs_post_init__(self) -> None:
        if self.event.origin != self.origin:
            raise ValueError(f"event origin {self.event.origin!r} is not {self.origin!r}")
        if self.fleet_id != fleet_event_id(self.event):
            raise ValueError(f"fleet id {self.fleet_id!r} does not name {self.event!r}")

    @classmethod
    def of(cls, event: FleetAction, origin: str) -> StreamEntry:
        """``event`` as published by node ``origin`` (``event.origin`` set to it)."""
        event = attrs.evolve(event, origin=origin)
        return cls(fleet_event_id(event), origin, event)


def encode_entry(entry: StreamEntry) -> dict[str, bytes]:
    """The fields of the stream entry (``XADD``): ``id``, ``origin`` and ``event``, the
    event's JSON as the log stores it (:func:`~kumo.model.events.encode_event`)."""
    return {
        "id": entry.fleet_id.encode(),
        "origin": entry.origin.encode(),
        "event": encode_event(entry.event),
    }


def decode_entry(fields: Mapping[bytes, bytes] | Mapping[str, bytes]) -> StreamEntry:
    """The inverse of :func:`encode_entry`. Raises :class:`FleetEntryError`, naming what
    is wrong, for fields that are not a fleet action (another writer on the stream, a
    newer kumo's event type): the follower skips such an entry and counts it."""
    values = {
        (k.decode(errors="replace") if isinstance(k, bytes) else k): v for k, v in fields.items()
    }
    try:
        fleet_id = _text(values["id"])
        origin = _text(values["origin"])
        body = values["event"]
    except KeyError as exc:
        raise FleetEntryError(f"entry without the field {exc.args[0]!r}") from None
    except UnicodeDecodeError:
        raise FleetEntryError("entry whose id or origin is not UTF-8") from None
    try:
        event = decode_event(body if isinstance(body, bytes) else str(body).encode())
    except EventDecodeError as exc:
        raise FleetEntryError(f"entry {fleet_id!r}: {exc}") from None
    if not isinstance(event, FleetAction) or not _carried(event):
        raise FleetEntryError(f"entry {fleet_id!r} carries a {type(event).__name__}")
    try:
        return StreamEntry(fleet_id, origin, event)
    except ValueError as exc:
        raise FleetEntryError(f"entry {fleet_id!r}: {exc}") from None


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise FleetEntryError(f"not a string: {value!r}")


# -- the kinds of admin action --------------------------------------------------------


def _bounce_issued(rule: Rule) -> BounceIssued:
    return BounceIssued(
        rule_id=rule.id,
        criteria=rule.criteria,
        reason=rule.reason,
        expires_at=rule.expires_at,
        suppress_logging=rule.suppress_logging,
        issued_by=rule.issued_by,
        issued_at=rule.issued_at,
        origin=rule.origin,
    )


def _suspend_issued(rule: Rule) -> SuspendIssued:
    return SuspendIssued(
        rule_id=rule.id,
        criteria=rule.criteria,
        reason=rule.reason,
        expires_at=rule.expires_at,
        issued_by=rule.issued_by,
        issued_at=rule.issued_at,
        origin=rule.origin,
    )


def _ready_suspend_issued(suspension: ReadySuspension) -> ReadySuspendIssued:
    return ReadySuspendIssued(
        rule_id=suspension.id,
        name=suspension.name,
        reason=suspension.reason,
        expires_at=suspension.expires_at,
        issued_by=suspension.issued_by,
        issued_at=suspension.issued_at,
        origin=suspension.origin,
    )


class AdminRecord(Protocol):
    """What fleet mode reads of a rule as its book keeps it (a
    :class:`~kumo.model.state.Rule`, a :class:`~kumo.model.ready_suspension.ReadySuspension`)."""

    @property
    def id(self) -> str: ...
    @property
    def origin(self) -> str: ...
    @property
    def issued_seq(self) -> int: ...
    @property
    def expires_at(self) -> int: ...
    @property
    def issued_expired(self) -> bool: ...
    @property
    def end(self) -> str | None: ...
    @property
    def ended_seq(self) -> int | None: ...
    @property
    def ended_by(self) -> str | None: ...
    @property
    def ended_origin(self) -> str: ...


class AdminBook(Protocol):
    """A book of rules keyed by id, every one ever issued (a
    :class:`~kumo.model.state.RuleBook`, a
    :class:`~kumo.model.ready_suspension.ReadySuspensionBook`)."""

    @property
    def rules(self) -> Mapping[str, AdminRecord]: ...


@attrs.frozen
class AdminKind:
    """One kind of admin action that fleet mode carries: a kind of rule, folded into a
    book of its own (``book``), with the events that issue and cancel it. Both events
    carry ``rule_id`` and ``origin`` (the node they were taken on; ``""`` on that node
    itself); the cancel also ``cancelled_by``."""

    kind: str
    issued: type[IssueAction]
    cancelled: type[CancelAction]
    issued_event: Callable[[Any], IssueAction]
    """The issue event of a rule (a record of ``book``), rebuilt from what its book
    keeps of it (the outbox and a republish are read from the books, which snapshots
    keep)."""
    book: Callable[[State], AdminBook]
    """The book of this kind in a state."""

    def cancelled_event(self, rule: AdminRecord) -> CancelAction:
        """The cancel that ended ``rule`` (which must have been cancelled)."""
        if rule.end != "cancelled":
            raise ValueError(f"rule {rule.id} was not cancelled")
        return self.cancelled(
            rule_id=rule.id, cancelled_by=rule.ended_by or "", origin=rule.ended_origin
        )


def _bounce_book(state: State) -> AdminBook:
    return state.rules


def _suspend_book(state: State) -> AdminBook:
    return state.suspends


def _ready_suspend_book(state: State) -> AdminBook:
    return state.ready_suspends


ADMIN_KINDS: Final[tuple[AdminKind, ...]] = (
    AdminKind("bounce", BounceIssued, BounceCancelled, _bounce_issued, _bounce_book),
    AdminKind("suspend", SuspendIssued, SuspendCancelled, _suspend_issued, _suspend_book),
    AdminKind(
        "ready-suspend",
        ReadySuspendIssued,
        ReadySuspendCancelled,
        _ready_suspend_issued,
        _ready_suspend_book,
    ),
)
"""Every kind of rule fleet mode carries. A new kind joins with one entry here and its
events in :data:`IssueAction` and :data:`CancelAction`. (Rebinds are not rules: see the
module docstring.)"""

_KIND_OF: Final[dict[type, AdminKind]] = {
    event: kind for kind in ADMIN_KINDS for event in (kind.issued, kind.cancelled)
}


def _carried(event: object) -> bool:
    return type(event) in _KIND_OF or type(event) is RebindIssued


def kind_of(event: IssueAction | CancelAction) -> AdminKind:
    """The :class:`AdminKind` of ``event`` (a rule's issue or cancel)."""
    return _KIND_OF[type(event)]


def _check_action(value: object) -> None:
    if not _carried(value):
        raise TypeError(f"not an admin action fleet mode carries: {value!r}")


# -- what a node owes the stream ------------------------------------------------------


@attrs.frozen
class Owed:
    """An action of this node that the stream may not hold yet, at its log position."""

    seq: int
    entry: StreamEntry


def owed_entries(state: State, node_id: str, *, after_seq: int, through_seq: int) -> list[Owed]:
    """The actions taken on this node (``node_id``) and committed at a seq in
    ``(after_seq, through_seq]``, of every kind, in log order: what the publisher owes
    the stream once it has published everything up to ``after_seq``.

    Actions that came from other nodes are never owed: they are in the stream already
    (a stream that lost them is :func:`standing_entries`' business). Rebinds asked here
    are owed as the rest.
    """
    owed: list[Owed] = [
        Owed(seen.seq, StreamEntry.of(seen.event, node_id))
        for seen in state.rebinds.values()
        if not seen.event.origin and after_seq < seen.seq <= through_seq
    ]
    for kind in ADMIN_KINDS:
        for rule in kind.book(state).rules.values():
            if not rule.origin and after_seq < rule.issued_seq <= through_seq:
                owed.append(Owed(rule.issued_seq, StreamEntry.of(kind.issued_event(rule), node_id)))
            ended = rule.ended_seq
            if (
                rule.end == "cancelled"
                and not rule.ended_origin
                and ended is not None
                and after_seq < ended <= through_seq
            ):
                owed.append(Owed(ended, StreamEntry.of(kind.cancelled_event(rule), node_id)))
    owed.sort(key=lambda item: item.seq)
    return owed


def standing_entries(
    state: State, node_id: str, now: int, *, rebinds_after: int | None = None
) -> list[StreamEntry]:
    """Every action that still matters at ``now``, whoever took it, for a stream that
    lost what it held: the issue of each rule (of every kind) whose expiry is after
    ``now`` and that no equal rule replaced, each followed by its cancel if it was
    cancelled (a node that missed both still learns that the rule is over). In log
    order of the issues.

    A rule expired by ``now`` is over on every node whatever the stream says, so its
    actions no longer matter. Rebinds are not given again: each was done, once, where
    it was read; a node that never read one does not move its mail later. Except, with
    ``rebinds_after`` (the seq this node had published up to), this node's rebinds
    committed after it: the stream was lost before they were published, they are still
    owed.
    """
    standing: list[tuple[int, list[StreamEntry]]] = []
    for kind in ADMIN_KINDS:
        for rule in kind.book(state).rules.values():
            if rule.expires_at <= now or rule.issued_expired or rule.end in ("replaced", "expired"):
                continue
            entries = [StreamEntry.of(kind.issued_event(rule), rule.origin or node_id)]
            if rule.end == "cancelled":
                entries.append(
                    StreamEntry.of(kind.cancelled_event(rule), rule.ended_origin or node_id)
                )
            standing.append((rule.issued_seq, entries))
    if rebinds_after is not None:
        standing += [
            (seen.seq, [StreamEntry.of(seen.event, node_id)])
            for seen in state.rebinds.values()
            if not seen.event.origin and seen.seq > rebinds_after
        ]
    standing.sort(key=lambda item: item[0])
    return [entry for _, entries in standing for entry in entries]


# -- what a node takes from the stream ------------------------------------------------


@attrs.frozen
class FollowPlan:
    """What a batch of stream entries means for one node."""

    events: tuple[FleetAction, ...]
    """The events to append, in stream order, each with its ``origin``."""
    own: int
    """Entries this node published itself (its log holds them)."""
    applied_before: int
    """Entries whose action this node's log already holds, or that no longer apply (a
    cancel of a rule already ended here)."""
    ended: int
    """Entries of a rule unknown here that ended before this node read them (expired
    by ``now``, or cancelled by an entry of the same batch): its issue is taken marked
    ``arrived_ended`` (it bounces nothing), its cancel is not."""
    unknown: int
    """Cancels of a rule this node has never heard of (its issue is not in the stream
    the node read): nothing to cancel."""


def plan_follow(entries: Iterable[StreamEntry], state: State, node_id: str, now: int) -> FollowPlan:
    """Which of ``entries`` (read in stream order at ``now``) this node appends.

    An entry is taken once per node: never one from ``node_id`` itself; an issue only
    of a rule the node does not know; a cancel only of a rule live here (not ended by
    any event). Entries of one batch are checked against each other too, so a batch
    may hold the same action twice, or a rule's issue and then its cancel.

    A rebind is taken once: unless this node's log holds it
    (:attr:`~kumo.model.state.State.rebinds`), however late it is read.

    A rule that ended before this node heard of it bounces nothing here: if it expired
    by ``now`` (a rule issued already expired excepted: it sweeps once, on every node)
    or the same batch cancels it, its issue is taken marked ``arrived_ended``, and its
    cancel is not taken. A bounce cannot be undone, and the node's queues may hold mail
    that arrived after the rule ended (the node was down, or cut off from Redis, while
    the rule lived). Its issue is still taken so that it has its place in the fleet's
    order of equal rules here as everywhere: the equal rule it replaced elsewhere ends
    here too, and an equal rule that it outranks, read later, loses on arrival.
    """
    batch = list(entries)
    cancelled_in_batch = {
        entry.event.rule_id
        for entry in batch
        if isinstance(entry.event, CancelAction) and entry.origin != node_id
    }
    events: list[FleetAction] = []
    taken: set[str] = set()
    issued_now: set[str] = set()
    passed_over: set[str] = set()
    own = applied_before = ended = unknown = 0
    for entry in batch:
        event = entry.event
        if entry.origin == node_id:
            own += 1
            continue
        if entry.fleet_id in taken:
            applied_before += 1
            continue
        if isinstance(event, RebindIssued):
            if event.rebind_id in state.rebinds:
                applied_before += 1
                continue
            taken.add(entry.fleet_id)
            events.append(event)
            continue
        rules = kind_of(event).book(state)
        if isinstance(event, IssueAction):
            if event.rule_id in rules.rules:
                applied_before += 1
                continue
            born_expired = event.issued_at is not None and event.expires_at <= event.issued_at
            if event.rule_id in cancelled_in_batch:
                event = attrs.evolve(event, arrived_ended="cancelled")
            elif event.expires_at <= now and not born_expired:
                event = attrs.evolve(event, arrived_ended="expired")
            if event.arrived_ended is not None:
                ended += 1
                passed_over.add(event.rule_id)
            else:
                issued_now.add(event.rule_id)
        else:
            rule = rules.rules.get(event.rule_id)
            if event.rule_id in passed_over:
                ended += 1
                continue
            if rule is None and event.rule_id not in issued_now:
                unknown += 1
                continue
            if rule is not None and rule.end is not None:
                applied_before += 1
                continue
        taken.add(entry.fleet_id)
        events.append(event)
    return FollowPlan(tuple(events), own, applied_before, ended, unknown)


# -- the fleet's figures (GET ?scope=fleet) --------------------------------------------


@attrs.frozen
class RuleCounters:
    """What one node bounced under one rule: per queue, and in all."""

    bounced: Mapping[str, int]
    total_bounced: int


def rule_counters(rules: RuleBook, now: int) -> dict[str, RuleCounters]:
    """Rule id -> this node's counters, for the rules live at ``now`` (what GET lists)."""
    return {
        view.id: RuleCounters(dict(view.bounced), view.total_bounced) for view in rules.views(now)
    }


def encode_counters(counters: Mapping[str, RuleCounters]) -> bytes:
    """``counters`` as the JSON a node publishes: ``{rule id: {"bounced": {queue:
    count}, "total_bounced": n}}``."""
    return orjson.dumps(
        {
            rule_id: {"bounced": dict(figures.bounced), "total_bounced": figures.total_bounced}
            for rule_id, figures in counters.items()
        }
    )


def decode_counters(data: bytes) -> dict[str, RuleCounters]:
    """The inverse of :func:`encode_counters`; :class:`FleetEntryError` for anything
    else (the reader leaves that node out)."""
    try:
        raw = orjson.loads(data)
        if not isinstance(raw, dict):
            raise TypeError("not an object")
        counters: dict[str, RuleCounters] = {}
        for rule_id, figures in raw.items():
            bounced = figures["bounced"]
            total = figures["total_bounced"]
            if not isinstance(bounced, dict) or type(total) is not int:
                raise TypeError(f"rule {rule_id}: not counters")
            if not all(type(count) is int for count in bounced.values()):
                raise TypeError(f"rule {rule_id}: a count is not an integer")
            counters[rule_id] = RuleCounters(bounced, total)
    except (orjson.JSONDecodeError, TypeError, KeyError) as exc:
        raise FleetEntryError(f"counters that cannot be read: {exc}") from None
    return counters


@attrs.frozen
class FleetFigures:
    """What ``GET /api/admin/bounce/v1?scope=fleet`` answers."""

    views: list[RuleView]
    """The live rules, their counters summed over :attr:`nodes` nodes."""
    scope: Literal["fleet", "unavailable", "off"]
    """``fleet``: summed over the nodes that published their counters; ``unavailable``:
    Redis did not answer in time, the figures are this node's; ``off``: the node is in
    no fleet, its figures are the fleet's."""
    nodes: int
    """The nodes whose figures are summed, this one included."""


def fleet_views(
    views: Iterable[RuleView], others: Iterable[Mapping[str, RuleCounters]]
) -> list[RuleView]:
    """``views`` (this node's, as GET lists them) with each rule's ``bounced`` and
    ``total_bounced`` summed over this node and ``others`` (the counters the other
    nodes published). A rule another node does not count (yet) adds nothing."""
    others = list(others)
    summed: list[RuleView] = []
    for view in views:
        bounced = dict(view.bounced)
        total = view.total_bounced
        for counters in others:
            figures = counters.get(view.id)
            if figures is None:
                continue
            for queue, count in figures.bounced.items():
                bounced[queue] = bounced.get(queue, 0) + count
            total += figures.total_bounced
        summed.append(view._replace(bounced=bounced, total_bounced=total))
    return summed

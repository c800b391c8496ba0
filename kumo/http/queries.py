"""Query strings of the GET routes into request values, refusing what KumoMTA refuses.

KumoMTA reads a query string with axum's ``Query`` extractor and serde: a parameter that
is missing, given twice or not of its type is a 400 ``Failed to deserialize query
string: <why>`` (:func:`~kumo.http.errors.query_error`); a parameter it does not know is
ignored. The functions here take the decoded parameters (name -> every value given, as
the app's request holds them) and raise :class:`~kumo.http.errors.RequestRefused` and
nothing else, whatever the input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

import attrs

from kumo.http.bodies import parse_uuid
from kumo.http.errors import query_error

Query = Mapping[str, Sequence[str]]
"""Parameter name -> the values given for it, in order."""

_USIZE_MAX: Final = 2**64 - 1
_DIGITS: Final = re.compile(r"\+?[0-9]+")


@attrs.frozen(slots=True)
class InspectMessageQuery:
    """``GET /api/admin/inspect-message/v1?id=<id>[&want_body=true]``."""

    message_id: str
    """32 lowercase hex digits, however the client spelled the id."""
    want_body: bool = False


@attrs.frozen(slots=True)
class InspectQueueQuery:
    """``GET /api/admin/inspect-sched-q/v1?queue_name=<q>[&want_body=true][&limit=N]``."""

    queue_name: str
    want_body: bool = False
    limit: int | None = None
    """Messages to show at most; None: all of them."""


def _one(query: Query, name: str) -> str | None:
    values = query.get(name, ())
    if len(values) > 1:
        raise query_error(f"duplicate field `{name}`")
    return values[0] if values else None


def _required(query: Query, name: str) -> str:
    value = _one(query, name)
    if value is None:
        raise query_error(f"missing field `{name}`")
    return value


def _flag(query: Query, name: str) -> bool:
    value = _one(query, name)
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise query_error(f"{name}: provided string was not `true` or `false`")


def _count(query: Query, name: str) -> int | None:
    """An unsigned 64-bit integer, as Rust's ``usize`` parses one (a ``+`` allowed)."""
    value = _one(query, name)
    if value is None:
        return None
    if not value:
        raise query_error(f"{name}: cannot parse integer from empty string")
    if not _DIGITS.fullmatch(value):
        raise query_error(f"{name}: invalid digit found in string")
    number = int(value)
    if number > _USIZE_MAX:
        raise query_error(f"{name}: number too large to fit in target type")
    return number


def parse_inspect_message(query: Query) -> InspectMessageQuery:
    """The parameters of an inspect-message request. ``id`` is a spool id in any
    spelling of a UUID (KumoMTA's ``SpoolId``), kept as kumo writes spool ids."""
    text = _required(query, "id")
    try:
        message_id = parse_uuid(text).replace("-", "")
    except ValueError as exc:
        raise query_error(f"id: {exc}") from None
    return InspectMessageQuery(message_id, _flag(query, "want_body"))


def parse_inspect_queue(query: Query) -> InspectQueueQuery:
    """The parameters of an inspect-sched-q request."""
    queue_name = _required(query, "queue_name")
    return InspectQueueQuery(queue_name, _flag(query, "want_body"), _count(query, "limit"))


def parse_bounce_list_query(query: Query) -> bool:
    """``GET /api/admin/bounce/v1[?scope=fleet]``: whether the fleet's figures are asked
    for (a kumo extension, docs/fleet.md). ``scope`` takes ``fleet`` only: another value,
    or ``scope`` twice, is a 400 as KumoMTA words it; other parameters are ignored."""
    scope = _one(query, "scope")
    if scope is None:
        return False
    if scope != "fleet":
        raise query_error(f"scope: unknown variant `{scope}`, expected `fleet`")
    return True


def parse_ready_q_states_query(query: Query) -> tuple[str, ...] | None:
    """``GET /api/admin/ready-q-states/v1[?queues=<ready queue>]...``: the ready queues
    whose states are asked for, each named by one ``queues`` parameter (given as often
    as there are names, duplicates kept once), or None for all of them (no ``queues``).
    A name is a ready queue's exact name: an empty one is a 400; other parameters are
    ignored."""
    names = query.get("queues", ())
    if not names:
        return None
    if any(not name for name in names):
        raise query_error("queues: a ready queue name cannot be empty")
    return tuple(dict.fromkeys(names))

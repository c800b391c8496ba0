"""JSON request bodies into request values, refusing what KumoMTA refuses, as it does.

KumoMTA reads bodies with axum's ``Json`` extractor and serde: a body must be declared
JSON (else 415), parse as JSON (else 400) and have the right shape (else 422, with a
text that names the field and what is wrong, in serde's words). The functions here
reproduce those checks in that order over plain values, so the HTTP handlers only
pass bytes in and request values out. They raise :class:`~kumo.http.errors.RequestRefused`
and nothing else, whatever the input.

Fields are checked in document order and the first problem is the one reported, as
serde does; a missing field is reported after every present field passed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any, Final

import attrs
import orjson

from kumo.http.errors import (
    RequestRefused,
    json_shape_error,
    json_syntax_error,
    unsupported_media_type,
)
from kumo.model.criteria import Criteria
from kumo.model.duration import NANOS_PER_SECOND, NANOS_PER_YEAR, DurationError, parse_duration
from kumo.model.queue_name import REBINDABLE_KEYS
from kumo.model.requests import MAX_LIFETIME, BounceRequest, ReadySuspendRequest, RebindRequest
from kumo.model.rfc3339 import TimestampError, parse_rfc3339

# -- 415 and 400 ------------------------------------------------------------------------


def is_json_content_type(content_type: str | None) -> bool:
    """Whether ``Content-Type`` declares JSON: ``application/json`` or ``application/*+json``.

    Parameters (``; charset=utf-8``) are allowed; case does not matter (as axum).
    """
    if not content_type:
        return False
    essence = content_type.split(";", 1)[0].strip().lower()
    kind, slash, subtype = essence.partition("/")
    if not slash or kind != "application":
        return False
    return subtype == "json" or subtype.endswith("+json")


def decode_json(content_type: str | None, body: bytes) -> Any:
    """The JSON value of ``body``; 415 unless declared JSON, 400 unless it parses.

    Parsing is serde_json's: UTF-8 only, no ``NaN``, no lone surrogates, nothing after
    the value, integers beyond 64 bits read as floats.
    """
    if not is_json_content_type(content_type):
        raise unsupported_media_type()
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise json_syntax_error(str(exc)) from None


def _first_duplicate_key(body: bytes) -> str | None:
    """The first key that the top-level object of ``body`` repeats, if any.

    orjson keeps the last of repeated keys silently; serde refuses a repeated field.
    Only called on bodies that orjson parsed into an object.
    """
    duplicates: list[str | None] = []

    def note(pairs: list[tuple[str, object]]) -> None:
        seen: set[str] = set()
        duplicate = None
        for key, _ in pairs:
            if key in seen and duplicate is None:
                duplicate = key
            seen.add(key)
        duplicates.append(duplicate)

    try:
        json.loads(body, object_pairs_hook=note)
    except (ValueError, RecursionError):
        return None
    # Objects close innermost first, so the top-level object is the last one noted.
    return duplicates[-1] if duplicates else None


# -- 422: serde's words -----------------------------------------------------------------


def _unexpected(value: object) -> str:
    """How serde_json names a JSON value it did not expect."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value!r}`"
    if isinstance(value, str):
        return "string " + orjson.dumps(value).decode()
    if isinstance(value, list):
        return "sequence"
    return "map"


def _refuse(path: str, why: str) -> RequestRefused:
    return json_shape_error(f"{path}: {why}" if path else why)


def _invalid_type(path: str, value: object, expected: str) -> RequestRefused:
    return _refuse(path, f"invalid type: {_unexpected(value)}, expected {expected}")


def _missing(path: str, field: str) -> RequestRefused:
    return _refuse(path, f"missing field `{field}`")


def _join(path: str, field: str | int) -> str:
    if isinstance(field, int):
        return f"{path}[{field}]"
    return f"{path}.{field}" if path else field


def _struct(path: str, value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid_type(path, value, f"struct {name}")
    return value


def _string(path: str, value: object) -> str:
    if not isinstance(value, str):
        raise _invalid_type(path, value, "a string")
    return value


def _optional_string(path: str, value: object) -> str | None:
    return None if value is None else _string(path, value)


def _boolean(path: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _invalid_type(path, value, "a boolean")
    return value


def _string_list(path: str, value: object) -> list[str]:
    if not isinstance(value, list):
        raise _invalid_type(path, value, "a sequence")
    return [_string(_join(path, index), item) for index, item in enumerate(value)]


def _map(path: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid_type(path, value, "a map")
    return value


def _fields(
    path: str,
    obj: Mapping[str, Any],
    readers: Mapping[str, Callable[[str, Any], object]],
    *,
    required: tuple[str, ...] = (),
    deny_unknown: str | None = None,
) -> dict[str, object]:
    """Read ``obj``'s fields with ``readers``, in document order, as serde does.

    ``deny_unknown`` is the list of expected fields for the refusal of an unknown one;
    None ignores unknown fields.
    """
    values: dict[str, object] = {}
    for key, item in obj.items():
        reader = readers.get(key)
        if reader is None:
            if deny_unknown is not None:
                raise _refuse(path, f"unknown field `{key}`, expected one of {deny_unknown}")
            continue
        values[key] = reader(_join(path, key), item)
    for name in required:
        if name not in values:
            raise _missing(path, name)
    return values


def _expected_list(names: tuple[str, ...]) -> str:
    return ", ".join(f"`{name}`" for name in names)


# -- POST /api/admin/bounce/v1 ----------------------------------------------------------

_MAX_YEARS: Final = MAX_LIFETIME // NANOS_PER_YEAR


def _lifetime(path: str, nanos: int, spelled: str) -> int:
    if nanos > MAX_LIFETIME:
        raise _refuse(path, f"{spelled} is over the maximum of {_MAX_YEARS} years")
    return nanos


def _duration(path: str, value: object) -> int | None:
    """``duration``: a humantime string, non-negative seconds (integer or float), or null."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            nanos = parse_duration(value)
        except DurationError as exc:
            raise _refuse(path, str(exc)) from None
        return _lifetime(path, nanos, repr(value))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid_type(path, value, "a duration string or a non-negative number of seconds")
    if value < 0 or (isinstance(value, float) and not math.isfinite(value)):
        raise _refuse(
            path,
            f"invalid value: {_unexpected(value)}, expected a non-negative number of seconds",
        )
    if isinstance(value, int):
        return _lifetime(path, value * NANOS_PER_SECOND, f"{value} seconds")
    return _lifetime(path, round(Fraction(value) * NANOS_PER_SECOND), f"{value!r} seconds")


def _expires(path: str, value: object) -> int | None:
    """``expires``: an RFC 3339 date-time string or null, as ns since the epoch."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid_type(path, value, "an RFC 3339 formatted date and time string")
    try:
        return parse_rfc3339(value)
    except TimestampError as exc:
        raise _refuse(path, str(exc)) from None


_BOUNCE_READERS: Final[Mapping[str, Callable[[str, Any], object]]] = {
    "campaign": _optional_string,
    "tenant": _optional_string,
    "domain": _optional_string,
    "routing_domain": _optional_string,
    "queue_names": _string_list,
    "reason": _string,
    "duration": _duration,
    "expires": _expires,
    "suppress_logging": _boolean,
    "dry_run": _boolean,
}
_BOUNCE_FIELDS: Final = _expected_list(tuple(_BOUNCE_READERS))


def _refuse_duplicates(body: bytes) -> None:
    duplicate = _first_duplicate_key(body)
    if duplicate is not None:
        raise _refuse("", f"duplicate field `{duplicate}`")


def parse_bounce_request(content_type: str | None, body: bytes) -> BounceRequest:
    """The body of POST /api/admin/bounce/v1 as a :class:`BounceRequest`.

    Unknown fields are refused; ``reason`` is required; ``expires`` wins over
    ``duration`` (both are checked). ``dry_run`` (a kumo extension, a boolean) asks
    what the request would match, and nothing is issued.
    """
    obj = _struct("", decode_json(content_type, body), "BounceV1Request")
    _refuse_duplicates(body)
    fields = _fields("", obj, _BOUNCE_READERS, required=("reason",), deny_unknown=_BOUNCE_FIELDS)
    criteria = Criteria(
        campaign=_get(fields, "campaign", str | None, None),
        tenant=_get(fields, "tenant", str | None, None),
        domain=_get(fields, "domain", str | None, None),
        routing_domain=_get(fields, "routing_domain", str | None, None),
        queue_names=_get(fields, "queue_names", list, []),
    )
    return BounceRequest(
        criteria=criteria,
        reason=_get(fields, "reason", str, ""),
        duration=_get(fields, "duration", int | None, None),
        expires_at=_get(fields, "expires", int | None, None),
        suppress_logging=_get(fields, "suppress_logging", bool, False),
        dry_run=_get(fields, "dry_run", bool, False),
    )


_SUSPEND_READERS: Final = {
    name: reader for name, reader in _BOUNCE_READERS.items() if name != "suppress_logging"
}
_SUSPEND_FIELDS: Final = _expected_list(tuple(_SUSPEND_READERS))


def parse_suspend_request(content_type: str | None, body: bytes) -> BounceRequest:
    """The body of POST /api/admin/suspend/v1: the fields of a bounce but
    ``suppress_logging``. Unknown fields are refused (KumoMTA ignores them, so that a
    misspelt criterion suspends everything); ``routing_domain`` is honoured."""
    obj = _struct("", decode_json(content_type, body), "SuspendV1Request")
    _refuse_duplicates(body)
    fields = _fields("", obj, _SUSPEND_READERS, required=("reason",), deny_unknown=_SUSPEND_FIELDS)
    return BounceRequest(
        criteria=Criteria(
            campaign=_get(fields, "campaign", str | None, None),
            tenant=_get(fields, "tenant", str | None, None),
            domain=_get(fields, "domain", str | None, None),
            routing_domain=_get(fields, "routing_domain", str | None, None),
            queue_names=_get(fields, "queue_names", list, []),
        ),
        reason=_get(fields, "reason", str, ""),
        duration=_get(fields, "duration", int | None, None),
        expires_at=_get(fields, "expires", int | None, None),
        dry_run=_get(fields, "dry_run", bool, False),
    )


def _rebind_data(path: str, value: object) -> dict[str, str]:
    """``data``: a map of strings whose keys name what kumo can rebind."""
    data = {key: _string(_join(path, key), item) for key, item in _map(path, value).items()}
    for key in data:
        if key not in REBINDABLE_KEYS:
            raise _refuse(
                _join(path, key),
                f"kumo cannot rebind `{key}`: it keeps no metadata of a message but what "
                f"names its queue, so `data` may set only {_expected_list(REBINDABLE_KEYS)}",
            )
    return data


_REBIND_READERS: Final[Mapping[str, Callable[[str, Any], object]]] = {
    "campaign": _optional_string,
    "tenant": _optional_string,
    "domain": _optional_string,
    "routing_domain": _optional_string,
    "reason": _string,
    "suppress_logging": _boolean,
    "data": _rebind_data,
    "trigger_rebind_event": _boolean,
    "always_flush": _boolean,
    "dry_run": _boolean,
}
_REBIND_FIELDS: Final = _expected_list(tuple(_REBIND_READERS))


def parse_rebind_request(content_type: str | None, body: bytes) -> RebindRequest:
    """The body of POST /api/admin/rebind/v1 as a :class:`RebindRequest`.

    ``reason`` and ``data`` are required (``data`` may be ``{}``), as in KumoMTA; unlike
    KumoMTA, unknown fields are refused (a misspelt criterion would rebind every queue),
    and so are ``data`` keys kumo cannot rebind (:data:`REBINDABLE_KEYS`). ``dry_run``
    (a kumo extension, a boolean) asks what the rebind would move, and nothing is issued.
    """
    obj = _struct("", decode_json(content_type, body), "RebindV1Request")
    _refuse_duplicates(body)
    fields = _fields(
        "", obj, _REBIND_READERS, required=("reason", "data"), deny_unknown=_REBIND_FIELDS
    )
    return RebindRequest(
        criteria=Criteria(
            campaign=_get(fields, "campaign", str | None, None),
            tenant=_get(fields, "tenant", str | None, None),
            domain=_get(fields, "domain", str | None, None),
            routing_domain=_get(fields, "routing_domain", str | None, None),
        ),
        reason=_get(fields, "reason", str, ""),
        data=_get(fields, "data", dict, {}),
        always_flush=_get(fields, "always_flush", bool, False),
        suppress_logging=_get(fields, "suppress_logging", bool, False),
        trigger_rebind_event=_get(fields, "trigger_rebind_event", bool, False),
        dry_run=_get(fields, "dry_run", bool, False),
    )


_READY_SUSPEND_READERS: Final[Mapping[str, Callable[[str, Any], object]]] = {
    "name": _string,
    "reason": _string,
    "duration": _duration,
    "expires": _expires,
}
_READY_SUSPEND_FIELDS: Final = _expected_list(tuple(_READY_SUSPEND_READERS))


def parse_ready_suspend_request(content_type: str | None, body: bytes) -> ReadySuspendRequest:
    """The body of POST /api/admin/suspend-ready-q/v1: ``name`` (the ready queue's
    exact name) and ``reason`` required, ``duration`` or ``expires`` as for a bounce.
    Unknown fields are refused (KumoMTA ignores them)."""
    obj = _struct("", decode_json(content_type, body), "SuspendReadyQueueV1Request")
    _refuse_duplicates(body)
    fields = _fields(
        "",
        obj,
        _READY_SUSPEND_READERS,
        required=("name", "reason"),
        deny_unknown=_READY_SUSPEND_FIELDS,
    )
    return ReadySuspendRequest(
        name=_get(fields, "name", str, ""),
        reason=_get(fields, "reason", str, ""),
        duration=_get(fields, "duration", int | None, None),
        expires_at=_get(fields, "expires", int | None, None),
    )


def _get(fields: Mapping[str, object], name: str, kind: Any, default: Any) -> Any:
    value = fields.get(name, default)
    assert isinstance(value, kind), (name, value)
    return value


# -- DELETE /api/admin/bounce/v1 --------------------------------------------------------

_HEX: Final = frozenset("0123456789abcdefABCDEF")
_HYPHENATED: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def parse_uuid(text: str) -> str:
    """The canonical (lower-case, hyphenated) form of a UUID in any form the Rust
    ``uuid`` crate reads: simple, hyphenated, ``{braced}`` or ``urn:uuid:``.

    Raises ValueError with a text in the crate's words.
    """
    body = text
    if body.startswith("urn:uuid:"):
        body = body[len("urn:uuid:") :]
    elif body.startswith("{") and body.endswith("}") and len(body) >= 2:
        body = body[1:-1]
    for index, char in enumerate(body):
        if char not in _HEX and char != "-":
            raise ValueError(
                "invalid character: expected an optional prefix of `urn:uuid:` followed by "
                f"[0-9a-fA-F-], found `{char}` at {index + 1}"
            )
    if len(body) == 32 and "-" not in body:
        digits = body
    elif len(body) == 36 and _HYPHENATED.fullmatch(body):
        digits = body.replace("-", "")
    elif "-" in body:
        raise ValueError(f"invalid group count or length in `{text}`")
    else:
        raise ValueError(f"invalid length: expected length 32 for simple format, found {len(body)}")
    digits = digits.lower()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _uuid(path: str, value: object) -> str:
    if not isinstance(value, str):
        raise _invalid_type(path, value, "a UUID string")
    try:
        return parse_uuid(value)
    except ValueError as exc:
        raise _refuse(path, f"UUID parsing failed: {exc}") from None


def parse_cancel_request(
    content_type: str | None, body: bytes, *, struct: str = "BounceV1CancelRequest"
) -> str:
    """The rule id that a DELETE /api/admin/bounce/v1 (or suspend/v1,
    suspend-ready-q/v1) body names, canonical form.

    Unknown fields are ignored, as KumoMTA does.
    """
    obj = _struct("", decode_json(content_type, body), struct)
    _refuse_duplicates(body)
    fields = _fields("", obj, {"id": _uuid}, required=("id",))
    rule_id: str = _get(fields, "id", str, "")
    return rule_id


# -- POST /api/inject/v1 ----------------------------------------------------------------

_HEADER_NAME: Final = re.compile(r"[!-9;-~]+")
"""RFC 5322 field names: printable ASCII except ``:``."""


@attrs.frozen(slots=True)
class Mailbox:
    """An address with an optional display name: ``from`` and ``reply_to`` of content."""

    email: str
    name: str | None = None


@attrs.frozen(slots=True)
class BuiltContent:
    """The object form of inject ``content``, from which kumo renders a message."""

    text_body: str | None = None
    html_body: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    from_: Mailbox | None = None
    subject: str | None = None
    reply_to: Mailbox | None = None


@attrs.frozen(slots=True)
class InjectRecipient:
    """One recipient of an inject request: one message is made for each."""

    email: str
    name: str | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(slots=True)
class InjectRequest:
    """A POST /api/inject/v1 body: the content is an RFC 5322 text or a built message."""

    envelope_sender: str
    recipients: tuple[InjectRecipient, ...]
    content: str | BuiltContent


def _single_line(path: str, value: object) -> str:
    text = _string(path, value)
    if "\r" in text or "\n" in text:
        raise _refuse(path, "invalid value: a header value may not contain a line break")
    return text


def _optional_single_line(path: str, value: object) -> str | None:
    return None if value is None else _single_line(path, value)


def _mailbox(path: str, value: object) -> Mailbox | None:
    if value is None:
        return None
    if isinstance(value, str):
        return Mailbox(_single_line(path, value))
    obj = _struct(path, value, "FromHeader")
    fields = _fields(
        path, obj, {"email": _single_line, "name": _optional_single_line}, required=("email",)
    )
    return Mailbox(_get(fields, "email", str, ""), _get(fields, "name", str | None, None))


def _headers(path: str, value: object) -> tuple[tuple[str, str], ...]:
    headers = []
    for name, item in _map(path, value).items():
        if not _HEADER_NAME.fullmatch(name):
            raise _refuse(path, f"invalid header name {orjson.dumps(name).decode()}")
        headers.append((name, _single_line(_join(path, name), item)))
    return tuple(headers)


_CONTENT_READERS: Final[Mapping[str, Callable[[str, Any], object]]] = {
    "text_body": _optional_string,
    "html_body": _optional_string,
    "headers": _headers,
    "from": _mailbox,
    "subject": _optional_single_line,
    "reply_to": _mailbox,
}


def _content(path: str, value: object) -> str | BuiltContent:
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise _refuse(path, "data did not match any variant of untagged enum Content")
    fields = _fields(path, value, _CONTENT_READERS)
    return BuiltContent(
        text_body=_get(fields, "text_body", str | None, None),
        html_body=_get(fields, "html_body", str | None, None),
        headers=_get(fields, "headers", tuple, ()),
        from_=_get(fields, "from", Mailbox | None, None),
        subject=_get(fields, "subject", str | None, None),
        reply_to=_get(fields, "reply_to", Mailbox | None, None),
    )


def _recipient(path: str, value: object) -> InjectRecipient:
    obj = _struct(path, value, "Recipient")
    fields = _fields(
        path,
        obj,
        {"email": _string, "name": _optional_single_line, "substitutions": _map, "metadata": _map},
        required=("email",),
    )
    return InjectRecipient(
        email=_get(fields, "email", str, ""),
        name=_get(fields, "name", str | None, None),
        metadata=_get(fields, "metadata", dict, {}),
    )


def _recipients(path: str, value: object) -> tuple[InjectRecipient, ...]:
    if not isinstance(value, list):
        raise _invalid_type(path, value, "a sequence")
    return tuple(_recipient(_join(path, index), item) for index, item in enumerate(value))


_INJECT_READERS: Final[Mapping[str, Callable[[str, Any], object]]] = {
    "envelope_sender": _string,
    "recipients": _recipients,
    "content": _content,
    "substitutions": _map,
}


def parse_inject_request(content_type: str | None, body: bytes) -> InjectRequest:
    """The body of POST /api/inject/v1 as an :class:`InjectRequest`.

    Unknown fields are ignored (KumoMTA has more options than kumo needs); a bad
    recipient *address* is not a shape error: the injection reports it per recipient.
    """
    obj = _struct("", decode_json(content_type, body), "InjectV1Request")
    fields = _fields(
        "", obj, _INJECT_READERS, required=("envelope_sender", "recipients", "content")
    )
    return InjectRequest(
        envelope_sender=_get(fields, "envelope_sender", str, ""),
        recipients=_get(fields, "recipients", tuple, ()),
        content=_get(fields, "content", str | BuiltContent, ""),
    )

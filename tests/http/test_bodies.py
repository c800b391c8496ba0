"""Request bodies into request values, and the exact refusals of KumoMTA's bad-input texts."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kumo.http.bodies import (
    BuiltContent,
    InjectRecipient,
    Mailbox,
    decode_json,
    is_json_content_type,
    parse_bounce_request,
    parse_cancel_request,
    parse_inject_request,
    parse_rebind_request,
    parse_uuid,
)
from kumo.http.errors import (
    JSON_SHAPE_PREFIX,
    JSON_SYNTAX_PREFIX,
    UNSUPPORTED_MEDIA_TYPE,
    RequestRefused,
)
from kumo.model.criteria import Criteria
from kumo.model.requests import MAX_LIFETIME, BounceRequest, RebindRequest

JSON = "application/json"
SECOND = 1_000_000_000


def bounce(body: Any, content_type: str | None = JSON) -> BounceRequest:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_bounce_request(content_type, raw)


def refusal(call: Any, *args: Any) -> RequestRefused:
    with pytest.raises(RequestRefused) as caught:
        call(*args)
    return caught.value


def shape_refusal(body: Any) -> str:
    """The text after the 422 prefix for a bounce body."""
    error = refusal(bounce, body)
    assert error.status == 422
    assert error.text.startswith(JSON_SHAPE_PREFIX)
    return error.text[len(JSON_SHAPE_PREFIX) :]


# -- 415 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.api+json",
        "application/problem+json; charset=UTF-8",
    ],
)
def test_json_content_types_are_accepted(content_type: str) -> None:
    assert is_json_content_type(content_type)
    assert bounce({"reason": "r"}, content_type).reason == "r"


@pytest.mark.parametrize(
    "content_type",
    [None, "", "text/plain", "application/x-www-form-urlencoded", "json", "text/json", "app/json"],
)
def test_other_content_types_are_415(content_type: str | None) -> None:
    error = refusal(bounce, {"reason": "r"}, content_type)
    assert (error.status, error.text) == (415, UNSUPPORTED_MEDIA_TYPE)


def test_content_type_is_checked_before_syntax() -> None:
    assert refusal(decode_json, "text/plain", b"{").status == 415


# -- 400 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b" ",
        b"{",
        b"{'reason': 'r'}",
        b'{"reason": "r"} x',
        b"NaN",
        b"\xff\xfe",
        b'["\\ud800"]',
    ],
)
def test_bodies_that_are_not_json_are_400(body: bytes) -> None:
    error = refusal(bounce, body)
    assert error.status == 400
    assert error.text.startswith(JSON_SYNTAX_PREFIX)
    assert len(error.text) > len(JSON_SYNTAX_PREFIX)  # and says why


# -- bounce: values ---------------------------------------------------------------------


def test_minimal_bounce_has_the_defaults() -> None:
    request = bounce({"reason": "maintenance"})
    assert request == BounceRequest(Criteria(), "maintenance")
    assert request.criteria.everything
    assert request.expiry(0) == 5 * 60 * SECOND


def test_full_bounce() -> None:
    request = bounce(
        {
            "campaign": "c",
            "tenant": "t",
            "domain": "Example.com",
            "routing_domain": "r",
            "reason": "why\nnot",
            "duration": "1h 30m",
            "suppress_logging": True,
        }
    )
    assert request.criteria == Criteria("c", "t", "Example.com", "r")
    assert request.reason == "why\nnot"
    assert request.duration == 90 * 60 * SECOND
    assert request.suppress_logging


def test_nulls_are_defaults() -> None:
    request = bounce(
        {"campaign": None, "tenant": None, "domain": None, "routing_domain": None}
        | {"reason": "r", "duration": None, "expires": None}
    )
    assert request == BounceRequest(Criteria(), "r")


def test_queue_names_are_a_set() -> None:
    request = bounce({"reason": "r", "queue_names": ["b", "a", "b"]})
    assert request.criteria.queue_names == frozenset({"a", "b"})


@pytest.mark.parametrize(
    ("duration", "nanos"),
    [
        ("0", 0),
        (0, 0),
        (90, 90 * SECOND),
        (1.5, 1_500_000_000),
        (0.000000001, 1),
        ("5m", 300 * SECOND),
        ("100years", MAX_LIFETIME),
        (3_155_760_000, MAX_LIFETIME),
    ],
)
def test_durations(duration: object, nanos: int) -> None:
    assert bounce({"reason": "r", "duration": duration}).duration == nanos


@pytest.mark.parametrize(
    ("expires", "nanos"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2030-01-02T03:04:05.5+01:00", 1893549845 * SECOND + SECOND // 2),
        ("2030-01-02t02:04:05.500000000000z", 1893549845 * SECOND + SECOND // 2),
    ],
)
def test_expires(expires: str, nanos: int) -> None:
    request = bounce({"reason": "r", "expires": expires, "duration": "1h"})
    assert request.expires_at == nanos
    assert request.expiry(0) == nanos  # expires wins over duration


# -- bounce: 422 naming the field -------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({}, "missing field `reason`"),
        ({"domain": "d"}, "missing field `reason`"),
        ({"reason": 5}, "reason: invalid type: integer `5`, expected a string"),
        ({"reason": None}, "reason: invalid type: null, expected a string"),
        (
            {"reason": "r", "domain": 1.5},
            "domain: invalid type: floating point `1.5`, expected a string",
        ),
        (
            {"reason": "r", "campaign": True},
            "campaign: invalid type: boolean `true`, expected a string",
        ),
        ({"reason": "r", "tenant": []}, "tenant: invalid type: sequence, expected a string"),
        (
            {"reason": "r", "routing_domain": {}},
            "routing_domain: invalid type: map, expected a string",
        ),
        (
            {"reason": "r", "queue_names": "q"},
            'queue_names: invalid type: string "q", expected a sequence',
        ),
        (
            {"reason": "r", "queue_names": None},
            "queue_names: invalid type: null, expected a sequence",
        ),
        (
            {"reason": "r", "queue_names": ["a", 1]},
            "queue_names[1]: invalid type: integer `1`, expected a string",
        ),
        (
            {"reason": "r", "suppress_logging": "yes"},
            'suppress_logging: invalid type: string "yes", expected a boolean',
        ),
        (
            {"reason": "r", "suppress_logging": None},
            "suppress_logging: invalid type: null, expected a boolean",
        ),
        ({"reason": "r", "duration": "5"}, "duration: time unit needed, for example 5sec or 5ms"),
        ({"reason": "r", "duration": "5 parsecs"}, "duration: unknown time unit"),
        ({"reason": "r", "duration": ""}, "duration: value was empty"),
        ({"reason": "r", "duration": -1}, "duration: invalid value: integer `-1`"),
        ({"reason": "r", "duration": -0.5}, "duration: invalid value: floating point `-0.5`"),
        ({"reason": "r", "duration": True}, "duration: invalid type: boolean `true`"),
        ({"reason": "r", "duration": [1]}, "duration: invalid type: sequence"),
        ({"reason": "r", "duration": "101y"}, "duration: '101y' is over the maximum of 100 years"),
        (
            {"reason": "r", "duration": 3_155_760_001},
            "duration: 3155760001 seconds is over the maximum",
        ),
        ({"reason": "r", "duration": 1e300}, "duration: 1e+300 seconds is over the maximum"),
        ({"reason": "r", "expires": "tomorrow"}, "expires: input contains invalid characters"),
        ({"reason": "r", "expires": "2030-01-01"}, "expires: premature end of input"),
        ({"reason": "r", "expires": "2030-01-01T00:00:00Zjunk"}, "expires: trailing input"),
        ({"reason": "r", "expires": "2030-13-01T00:00:00Z"}, "expires: input is out of range"),
        ({"reason": "r", "expires": "9999-01-01T00:00:00Z"}, "expires: input is out of range"),
        ({"reason": "r", "expires": 1700000000}, "expires: invalid type: integer `1700000000`"),
        (
            {"reason": "r", "foo": 1},
            "unknown field `foo`, expected one of `campaign`, `tenant`, `domain`",
        ),
        ([], "invalid type: sequence, expected struct BounceV1Request"),
        ("r", 'invalid type: string "r", expected struct BounceV1Request'),
        (None, "invalid type: null, expected struct BounceV1Request"),
    ],
)
def test_wrong_shapes_are_422_naming_the_field(body: object, why: str) -> None:
    assert shape_refusal(body).startswith(why)


def test_first_problem_in_document_order_is_reported() -> None:
    assert shape_refusal({"foo": 1, "reason": 5}).startswith("unknown field `foo`")
    assert shape_refusal({"reason": 5, "foo": 1}).startswith("reason: invalid type")
    # A missing field comes after every present field passed.
    assert shape_refusal({"duration": "x"}).startswith("duration: ")


def test_duplicate_field_is_422() -> None:
    assert shape_refusal(b'{"reason": "a", "reason": "b"}') == "duplicate field `reason`"


def test_nested_duplicates_do_not_count() -> None:
    assert bounce(b'{"reason": "a", "queue_names": []}').reason == "a"


# -- DELETE -----------------------------------------------------------------------------

RULE = "8d2b1f7e-3c4a-4b5d-9e6f-0a1b2c3d4e5f"


@pytest.mark.parametrize(
    "text",
    [
        RULE,
        RULE.upper(),
        RULE.replace("-", ""),
        "{" + RULE + "}",
        "urn:uuid:" + RULE,
    ],
)
def test_uuid_forms(text: str) -> None:
    assert parse_uuid(text) == RULE
    assert parse_cancel_request(JSON, orjson.dumps({"id": text})) == RULE


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({}, "missing field `id`"),
        ({"id": None}, "id: invalid type: null, expected a UUID string"),
        ({"id": 5}, "id: invalid type: integer `5`, expected a UUID string"),
        ({"id": "nope"}, "id: UUID parsing failed: invalid character"),
        ({"id": "1234"}, "id: UUID parsing failed: invalid length"),
        ({"id": RULE + "0"}, "id: UUID parsing failed: "),
        ({"id": "8d2b1f7e3c4a-4b5d-9e6f-0a1b-2c3d4e5f"}, "id: UUID parsing failed: "),
        ([RULE], "invalid type: sequence, expected struct BounceV1CancelRequest"),
    ],
)
def test_bad_cancel_bodies_are_422(body: object, why: str) -> None:
    error = refusal(parse_cancel_request, JSON, orjson.dumps(body))
    assert error.status == 422
    assert error.text.startswith(JSON_SHAPE_PREFIX + why)


def test_cancel_ignores_unknown_fields() -> None:
    assert parse_cancel_request(JSON, orjson.dumps({"id": RULE, "extra": [1]})) == RULE


def test_cancel_refusal_order() -> None:
    assert refusal(parse_cancel_request, "text/plain", b"{").status == 415
    assert refusal(parse_cancel_request, JSON, b"{").status == 400


# -- inject -----------------------------------------------------------------------------


def inject(body: Any) -> Any:
    return parse_inject_request(JSON, orjson.dumps(body))


def test_inject_with_text_content() -> None:
    request = inject(
        {
            "envelope_sender": "s@example.com",
            "recipients": [
                {"email": "a@example.com"},
                {"email": "b@example.com", "name": "B", "metadata": {"campaign": "c"}},
            ],
            "content": "Subject: hi\r\n\r\nhello",
            "template_dialect": "Jinja",  # KumoMTA options kumo ignores
        }
    )
    assert request.envelope_sender == "s@example.com"
    assert request.recipients == (
        InjectRecipient("a@example.com"),
        InjectRecipient("b@example.com", "B", {"campaign": "c"}),
    )
    assert request.content == "Subject: hi\r\n\r\nhello"


def test_inject_with_built_content() -> None:
    request = inject(
        {
            "envelope_sender": "s@example.com",
            "recipients": [{"email": "a@example.com"}],
            "content": {
                "text_body": "hello",
                "html_body": "<p>hello</p>",
                "from": {"email": "s@example.com", "name": "S"},
                "reply_to": "r@example.com",
                "subject": "hi",
                "headers": {"X-Campaign": "spring"},
                "attachments": [],
            },
        }
    )
    assert request.content == BuiltContent(
        text_body="hello",
        html_body="<p>hello</p>",
        headers=(("X-Campaign", "spring"),),
        from_=Mailbox("s@example.com", "S"),
        subject="hi",
        reply_to=Mailbox("r@example.com"),
    )


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"recipients": [], "content": "x"}, "missing field `envelope_sender`"),
        ({"envelope_sender": "s", "content": "x"}, "missing field `recipients`"),
        ({"envelope_sender": "s", "recipients": []}, "missing field `content`"),
        ({"envelope_sender": 1, "recipients": [], "content": "x"}, "envelope_sender: invalid type"),
        (
            {"envelope_sender": "s", "recipients": {}, "content": "x"},
            "recipients: invalid type: map",
        ),
        (
            {"envelope_sender": "s", "recipients": [{}], "content": "x"},
            "recipients[0]: missing field `email`",
        ),
        (
            {
                "envelope_sender": "s",
                "recipients": [{"email": "a@b", "metadata": []}],
                "content": "x",
            },
            "recipients[0].metadata: invalid type: sequence, expected a map",
        ),
        (
            {"envelope_sender": "s", "recipients": [], "content": 5},
            "content: data did not match any variant of untagged enum Content",
        ),
        (
            {"envelope_sender": "s", "recipients": [], "content": {"subject": "a\r\nBcc: x"}},
            "content.subject: invalid value: a header value may not contain a line break",
        ),
        (
            {"envelope_sender": "s", "recipients": [], "content": {"headers": {"A B": "x"}}},
            'content.headers: invalid header name "A B"',
        ),
        (
            {"envelope_sender": "s", "recipients": [], "content": {"headers": {"X": 1}}},
            "content.headers.X: invalid type: integer `1`, expected a string",
        ),
        (
            {"envelope_sender": "s", "recipients": [], "content": {"from": {"name": "n"}}},
            "content.from: missing field `email`",
        ),
    ],
)
def test_bad_inject_bodies_are_422(body: object, why: str) -> None:
    error = refusal(inject, body)
    assert error.status == 422
    assert error.text.startswith(JSON_SHAPE_PREFIX + why)


# -- fuzz: garbage in may only give the declared refusals ---------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _dumps(value: object) -> bytes:
    # The standard library writes what orjson refuses to: big integers, infinities,
    # lone surrogates (escaped). All are inputs a client may send.
    return json.dumps(value).encode()


_field_names = st.sampled_from(
    [
        "reason",
        "duration",
        "expires",
        "domain",
        "queue_names",
        "suppress_logging",
        "id",
        "x",
        "data",
        "always_flush",
    ]
)
_bodies = st.one_of(
    st.binary(max_size=64),
    _json_values.map(_dumps),
    st.dictionaries(_field_names, _json_values, max_size=5).map(_dumps),
)


@settings(max_examples=400, deadline=None)
@given(body=_bodies, content_type=st.sampled_from([JSON, "text/plain", None]))
def test_any_body_gives_a_value_or_a_declared_refusal(
    body: bytes, content_type: str | None
) -> None:
    prefixes = {415: UNSUPPORTED_MEDIA_TYPE, 400: JSON_SYNTAX_PREFIX, 422: JSON_SHAPE_PREFIX}
    for parse in (
        parse_bounce_request,
        parse_cancel_request,
        parse_inject_request,
        parse_rebind_request,
    ):
        outcome: object
        try:
            outcome = parse(content_type, body)
        except RequestRefused as error:
            outcome = error
        if isinstance(outcome, RequestRefused):
            assert outcome.text.startswith(prefixes[outcome.status])


# -- POST /api/admin/rebind/v1 ----------------------------------------------------------


def rebind(body: Any) -> RebindRequest:
    return parse_rebind_request(JSON, orjson.dumps(body))


def test_minimal_rebind_has_the_defaults() -> None:
    assert rebind({"reason": "r", "data": {}}) == RebindRequest(Criteria(), "r", {})


def test_full_rebind() -> None:
    request = rebind(
        {
            "campaign": "c",
            "tenant": "t",
            "domain": "d.example",
            "routing_domain": "r.example",
            "reason": "move",
            "data": {"routing_domain": "other.example", "queue": ""},
            "suppress_logging": True,
            "always_flush": True,
            "trigger_rebind_event": True,
        }
    )
    assert request == RebindRequest(
        Criteria(campaign="c", tenant="t", domain="d.example", routing_domain="r.example"),
        "move",
        {"routing_domain": "other.example", "queue": ""},
        always_flush=True,
        suppress_logging=True,
        trigger_rebind_event=True,
    )


def rebind_refusal(body: Any) -> str:
    error = refusal(rebind, body)
    assert error.status == 422
    assert error.text.startswith(JSON_SHAPE_PREFIX)
    return error.text[len(JSON_SHAPE_PREFIX) :]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"reason": "r"}, "missing field `data`"),
        ({"data": {}}, "missing field `reason`"),
        ({"reason": "r", "data": []}, "data: invalid type: sequence, expected a map"),
        ({"reason": "r", "data": {"campaign": 1}}, "data.campaign: invalid type: integer `1`"),
        (
            {"reason": "r", "data": {"campaing": "x"}},
            "data.campaing: kumo cannot rebind `campaing`: it keeps no metadata of a message "
            "but what names its queue, so `data` may set only `campaign`, `tenant`, "
            "`routing_domain`, `queue`",
        ),
        ({"reason": "r", "data": {}, "always_flush": "yes"}, "always_flush: invalid type"),
        (
            {"reason": "r", "data": {}, "queue_names": ["q"]},
            "unknown field `queue_names`, expected one of `campaign`",
        ),
        ({"domian": "d", "reason": "r", "data": {}}, "unknown field `domian`"),
        ([], "invalid type: sequence, expected struct RebindV1Request"),
    ],
)
def test_wrong_rebind_bodies_are_422_naming_the_field(body: object, why: str) -> None:
    assert rebind_refusal(body).startswith(why)


def test_a_repeated_rebind_field_is_422() -> None:
    error = refusal(parse_rebind_request, JSON, b'{"reason": "r", "data": {}, "reason": "s"}')
    assert "duplicate field `reason`" in error.text

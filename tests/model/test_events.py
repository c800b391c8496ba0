"""The event codec: stable, versioned, round-tripping, refusing what it cannot read."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import attrs
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.criteria import Criteria
from kumo.model.events import (
    SCHEMA_VERSION,
    ArrivedEnded,
    Attempt,
    BounceCancelled,
    Bounced,
    BounceExpired,
    BounceIssued,
    Committed,
    Delivered,
    Event,
    EventDecodeError,
    Expired,
    Message,
    MessageReceived,
    PeerAddress,
    PermanentlyFailed,
    ReadySuspendCancelled,
    ReadySuspendExpired,
    ReadySuspendIssued,
    RebindIssued,
    Rebound,
    Rejected,
    Suspended,
    SuspendIssued,
    TransientlyFailed,
    criteria_to_json,
    decode_event,
    decode_received,
    encode_event,
    is_message_id,
    issue_time,
)

text = st.text(max_size=20)
maybe = st.none() | text
nanos = st.integers(0, 2**62)
ids = st.binary(min_size=16, max_size=16).map(bytes.hex)
int64 = st.integers(-(2**63), 2**63 - 1)
criteria = st.builds(
    Criteria,
    campaign=maybe,
    tenant=maybe,
    domain=maybe,
    routing_domain=maybe,
    queue_names=st.frozensets(text, max_size=3),
)
messages = st.builds(
    Message,
    text,
    text,
    text,
    st.integers(0, 10**9),
    nanos,
    st.integers(1, 10**9),
    st.sampled_from(["HTTP", "ESMTP"]) | text,
)
peers = st.builds(PeerAddress, text, text)
reply_texts = st.text(max_size=20).filter(lambda t: "\r" not in t)
attempts = st.builds(
    Attempt,
    text,
    st.integers(0, 999),
    st.none() | st.tuples(st.integers(0, 999), st.integers(0, 999), st.integers(0, 999)),
    text,
    maybe,
    st.none() | peers,
    maybe,
    maybe,
    maybe,
    maybe,
    maybe,
)
events: st.SearchStrategy[Event] = st.one_of(
    st.builds(MessageReceived, ids, text, text, text, st.integers(0, 10**9), text),
    st.builds(MessageReceived, ids, text, text, text, st.integers(0, 10**9), text, peers),
    st.builds(Rejected, st.integers(400, 599), reply_texts, maybe, text, text, peers),
    st.builds(
        BounceIssued,
        text,
        criteria,
        text,
        st.integers(-(2**63), 2**63 - 1),
        st.booleans(),
        text,
        st.none() | st.integers(-(2**63), 2**63 - 1),
    ),
    st.builds(BounceCancelled, text, text),
    st.builds(BounceExpired, text),
    st.builds(Bounced, text, text, st.lists(messages, max_size=4)),
    st.builds(Delivered, text, messages, st.integers(0, 100), attempts),
    st.builds(PermanentlyFailed, text, messages, st.integers(0, 100), attempts),
    st.builds(TransientlyFailed, text, messages, st.integers(0, 100), attempts, st.none() | nanos),
    st.builds(Expired, text, messages, st.integers(0, 100), text, text),
    st.builds(ReadySuspendIssued, text, text, text, int64, text, st.none() | int64),
    st.builds(ReadySuspendCancelled, text, text),
    st.builds(ReadySuspendExpired, text),
    st.builds(Suspended, text, text, messages, st.integers(0, 100), text, maybe),
)

rebind_data = st.dictionaries(
    st.sampled_from(["campaign", "tenant", "routing_domain", "queue"]), text, max_size=4
)


@st.composite
def _rebounds(draw: st.DrawFn) -> Rebound:
    moved = draw(st.lists(messages, max_size=4))
    queue = draw(text)
    return Rebound(
        draw(text),
        queue,
        draw(text.filter(lambda name: name != queue)),
        moved,
        draw(st.lists(st.integers(0, 100), min_size=len(moved), max_size=len(moved))),
        draw(text),
        draw(st.booleans()),
    )


events = (
    events
    | st.builds(
        RebindIssued,
        text,
        criteria,
        rebind_data,
        text,
        st.booleans(),
        st.booleans(),
        text,
        st.none() | int64,
    )
    | _rebounds()
)


@given(events)
def test_round_trip(event: Event) -> None:
    assert decode_event(encode_event(event)) == event


def test_a_rule_without_its_issue_reading_was_issued_at_its_commit() -> None:
    """Logs written before BounceIssued carried ``issued_at`` still read, byte for byte."""
    old = BounceIssued("r", Criteria(), "why", 99, False, "ops")
    assert b"issued_at" not in encode_event(old)
    assert issue_time(Committed(3, 50, decode_event(encode_event(old)))) == 50
    new = attrs.evolve(old, issued_at=40)
    assert issue_time(Committed(3, 50, decode_event(encode_event(new)))) == 40


def test_body_is_versioned_and_typed() -> None:
    body = orjson.loads(encode_event(BounceExpired("r")))
    assert body == {"v": SCHEMA_VERSION, "type": "BounceExpired", "rule_id": "r"}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"v": 99, "type": "BounceExpired", "rule_id": "r"}', "schema version 99"),
        (b'{"v": 1, "type": "Nope"}', "unknown event type 'Nope'"),
        (b'{"v": 1, "type": "BounceExpired"}', "malformed BounceExpired"),
    ],
)
def test_refuses_what_it_cannot_read(body: bytes, problem: str) -> None:
    with pytest.raises(EventDecodeError, match=problem):
        decode_event(body)


@given(st.binary(max_size=64))
def test_garbage_only_raises_the_declared_error(body: bytes) -> None:
    with contextlib.suppress(EventDecodeError):
        decode_event(body)


# -- valid by construction --------------------------------------------------------------

anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    text,
    ids,
    st.binary(max_size=8),
    st.lists(text, max_size=2),
    criteria,
)
"""Values of every type a field might be handed, right or wrong."""


def _any_of(*right: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.one_of(*right, anything)


constructions: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        MessageReceived,
        _any_of(ids),
        _any_of(text),
        _any_of(text),
        _any_of(text),
        _any_of(st.integers(0, 2**63 - 1)),
        _any_of(text),
    ),
    st.builds(
        BounceIssued,
        _any_of(text),
        _any_of(criteria),
        _any_of(text),
        _any_of(int64),
        _any_of(st.booleans()),
        _any_of(text),
    ),
    st.builds(BounceCancelled, _any_of(text), _any_of(text)),
    st.builds(BounceExpired, _any_of(text)),
    st.builds(Bounced, _any_of(text), _any_of(text), st.lists(messages, max_size=3)),
    st.builds(
        MessageReceived,
        ids,
        text,
        text,
        text,
        st.integers(0, 10),
        text,
        _any_of(peers, st.builds(PeerAddress, _any_of(text), _any_of(text))),
    ),
    st.builds(
        Rejected,
        _any_of(st.integers(400, 599)),
        _any_of(reply_texts),
        _any_of(maybe),
        _any_of(text),
        _any_of(text),
        _any_of(peers),
    ),
)


@given(st.data())
def test_any_construction_is_valid_and_round_trips_or_raises(data: st.DataObject) -> None:
    try:
        event = data.draw(constructions)
    except (TypeError, ValueError):
        return  # refused at construction: no such event exists
    assert decode_event(encode_event(event)) == event


@pytest.mark.parametrize(
    "make",
    [
        lambda: MessageReceived("m1", "q", "s", "r", 1),
        lambda: MessageReceived("AB" * 16, "q", "s", "r", 1),
        lambda: MessageReceived("ab" * 16, "q", "s", "r", -1),
        lambda: MessageReceived("ab" * 16, "q", "s", "r", True),
        lambda: MessageReceived("ab" * 16, "q", "s", "r", 1.0),  # type: ignore[arg-type]
        lambda: MessageReceived("ab" * 16, "q", "s", "r", 2**63),
        lambda: MessageReceived("ab" * 16, None, "s", "r", 1),  # type: ignore[arg-type]
        lambda: BounceIssued("r", Criteria(), None, 0),  # type: ignore[arg-type]
        lambda: BounceIssued("r", Criteria(), 5, 0),  # type: ignore[arg-type]
        lambda: BounceIssued("r", {"domain": "d"}, "why", 0),  # type: ignore[arg-type]
        lambda: BounceIssued("r", Criteria(), "why", 2**63),
        lambda: BounceIssued("r", Criteria(), "why", 1.5),  # type: ignore[arg-type]
        lambda: BounceIssued("r", Criteria(), "why", 0, suppress_logging=1),  # type: ignore[arg-type]
        lambda: BounceCancelled(None),  # type: ignore[arg-type]
        lambda: BounceExpired(7),  # type: ignore[arg-type]
        lambda: Bounced("r", None, []),  # type: ignore[arg-type]
        lambda: MessageReceived("ab" * 16, "q", "s", "r", 1, "ESMTP", ("n", "a")),  # type: ignore[arg-type]
        lambda: PeerAddress("n", None),  # type: ignore[arg-type]
        lambda: Rejected(250, "OK", None, "", "", PeerAddress("", "::1")),
        lambda: Rejected(500, "a\r\nb", None, "", "", PeerAddress("", "::1")),
        lambda: Rejected(500, "x", 5, "", "", PeerAddress("", "::1")),  # type: ignore[arg-type]
        lambda: Rejected(500, "x", None, "", "", {"name": "", "addr": ""}),  # type: ignore[arg-type]
        lambda: Committed(-1, 0, BounceExpired("r")),
        lambda: Committed(1, -1, BounceExpired("r")),
        lambda: Committed(1, 0, "BounceExpired"),  # type: ignore[arg-type]
        lambda: Criteria(domain=5),  # type: ignore[arg-type]
        lambda: Criteria(queue_names="abc"),
        lambda: Criteria(queue_names=[1]),  # type: ignore[list-item]
    ],
)
def test_invalid_events_cannot_exist(make: Callable[[], object]) -> None:
    with pytest.raises((TypeError, ValueError)):
        make()


def test_what_the_api_may_send_is_valid() -> None:
    """An empty reason and an expiry before 1970 (the API takes both) are events."""
    event = BounceIssued("r", Criteria(), "", -(10**18))
    assert decode_event(encode_event(event)) == event
    assert is_message_id("0123456789abcdef" * 2)
    assert not is_message_id("0123456789abcdef" * 2 + "0")


def _body(event: Event, **changes: object) -> bytes:
    body = orjson.loads(encode_event(event))
    body.update(changes)
    return orjson.dumps(body)


RECEIVED = MessageReceived("ab" * 16, "q", "s@x", "r@y", 10)
SMTP_RECEIVED = MessageReceived(
    "cd" * 16, "q", "s@x", "r@y", 10, "ESMTP", PeerAddress("client.example", "10.0.0.5")
)
REJECTED = Rejected(
    550, "5.7.1 relaying not permitted", "RCPT TO:<a@b>", "s@x", "", PeerAddress("", "10.0.0.5")
)
ISSUED = BounceIssued("r", Criteria(domain="d"), "why", 10**18)


@pytest.mark.parametrize(
    "body",
    [
        _body(RECEIVED, size=-1),
        _body(RECEIVED, size=True),
        _body(RECEIVED, message_id="m1"),
        _body(RECEIVED, queue=None),
        _body(ISSUED, reason=None),
        _body(ISSUED, expires_at="soon"),
        _body(ISSUED, criteria={**criteria_to_json(Criteria()), "domain": 5}),
        _body(ISSUED, suppress_logging="yes"),
        _body(BounceCancelled("r"), rule_id=7),
        _body(Bounced("r", "q", []), queue=[]),
        _body(SMTP_RECEIVED, peer="10.0.0.5"),
        _body(SMTP_RECEIVED, peer={"name": "c"}),
        _body(REJECTED, code=250),
        _body(REJECTED, peer=None),
        _body(REJECTED, text="a\r\nb"),
    ],
)
def test_stored_bodies_that_break_a_validator_are_decode_errors(body: bytes) -> None:
    with pytest.raises(EventDecodeError):
        decode_event(body)


DELIVERED = Delivered(
    "a.com",
    Message("0" * 32, "s@x", "r@a.com", 5, 7, 1),
    0,
    Attempt("unspecified->mx@smtp_client", 250, (2, 0, 0), "ok", ".\r\n"),
)
RETRIED = TransientlyFailed(
    "a.com",
    Message("0" * 32, "s@x", "r@a.com", 5, 7, 1),
    2,
    Attempt("", 451, (4, 4, 4), "failed to resolve queue a.com: NXDOMAIN", None),
    10**18,
)


@given(
    st.sampled_from(
        [
            RECEIVED,
            SMTP_RECEIVED,
            REJECTED,
            ISSUED,
            BounceCancelled("r", "ops"),
            DELIVERED,
            RETRIED,
        ]
    ),
    st.data(),
)
def test_a_stored_field_replaced_by_anything_decodes_or_is_a_decode_error(
    event: Event, data: st.DataObject
) -> None:
    body = orjson.loads(encode_event(event))
    field = data.draw(st.sampled_from(sorted(set(body) - {"v", "type"})))
    body[field] = data.draw(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | text
    )
    try:
        decoded = decode_event(orjson.dumps(body))
    except EventDecodeError:
        return
    assert decode_event(encode_event(decoded)) == decoded


@pytest.mark.parametrize(
    "body",
    [
        _body(RECEIVED, size=-1),
        _body(RECEIVED, size=True),
        _body(RECEIVED, size=1.5),
        _body(RECEIVED, message_id="m1"),
        _body(RECEIVED, message_id=None),
    ],
)
def test_the_replay_fast_path_checks_sizes_and_ids(body: bytes) -> None:
    with pytest.raises(EventDecodeError):
        decode_received(body, {})


def test_the_replay_fast_path_reads_what_it_checks() -> None:
    assert decode_received(encode_event(RECEIVED), {}) == (
        "q",
        "ab" * 16,
        "s@x",
        "r@y",
        10,
        "HTTP",
    )
    assert decode_received(encode_event(SMTP_RECEIVED), {})[5] == "ESMTP"


def test_a_peer_is_stored_only_when_there_is_one() -> None:
    """An HTTP arrival's body is what it was before SMTP existed, so old logs decode."""
    assert "peer" not in orjson.loads(encode_event(RECEIVED))
    old_body = (
        b'{"v":1,"type":"MessageReceived","message_id":"'
        + b"ab" * 16
        + (b'","queue":"q","sender":"s@x","recipient":"r@y","size":10,"protocol":"HTTP"}')
    )
    assert decode_event(old_body) == RECEIVED
    assert orjson.loads(encode_event(SMTP_RECEIVED))["peer"] == {
        "name": "client.example",
        "addr": "10.0.0.5",
    }
    assert decode_event(encode_event(SMTP_RECEIVED)) == SMTP_RECEIVED
    assert decode_received(encode_event(SMTP_RECEIVED), {})[1] == "cd" * 16
    assert decode_event(encode_event(REJECTED)) == REJECTED


@given(
    st.builds(
        BounceIssued,
        text,
        criteria,
        text,
        int64,
        st.booleans(),
        text,
        st.none() | int64,
        origin=text,
    )
    | st.builds(BounceCancelled, text, text, origin=text)
)
def test_an_origin_round_trips_and_is_stored_only_when_there_is_one(
    event: BounceIssued | BounceCancelled,
) -> None:
    body = encode_event(event)
    assert decode_event(body) == event
    # A local event's body is the one kumo wrote before fleet mode existed, byte for byte.
    assert ("origin" in orjson.loads(body)) == (event.origin != "")


def test_bodies_written_before_fleet_mode_decode_as_local_events() -> None:
    issued = decode_event(
        b'{"v":1,"type":"BounceIssued","rule_id":"r","criteria":{"campaign":null,'
        b'"tenant":null,"domain":"example.com","routing_domain":null,"queue_names":[]},'
        b'"reason":"x","expires_at":5,"suppress_logging":false,"issued_by":"ops"}'
    )
    cancelled = decode_event(b'{"v":1,"type":"BounceCancelled","rule_id":"r","cancelled_by":"o"}')
    assert isinstance(issued, BounceIssued)
    assert isinstance(cancelled, BounceCancelled)
    assert issued.origin == cancelled.origin == ""
    with pytest.raises(TypeError):
        BounceCancelled("r", origin=None)  # type: ignore[arg-type]


def test_a_rebind_keeps_its_data_sorted_and_a_move_its_counts_beside_its_messages() -> None:
    issued = RebindIssued("b", Criteria(), {"tenant": "t", "campaign": "c"}, "why")
    assert issued.data == (("campaign", "c"), ("tenant", "t"))
    assert orjson.loads(encode_event(issued))["data"] == {"campaign": "c", "tenant": "t"}
    one = Message("0" * 32, "s", "r", 1, 2, 3)
    with pytest.raises(ValueError, match="1 attempt counts for 2 messages"):
        Rebound("b", "a", "b", [one, one], [0], "why")
    with pytest.raises(ValueError, match="another queue"):
        Rebound("b", "a", "a", [one], [0], "why")
    with pytest.raises(TypeError):
        Rebound("b", "a", "b", [one], [True], "why")


SMTP_MESSAGE = Message("0" * 32, "s@x", "r@a.com", 5, 7, 1, "ESMTP")
HTTP_MESSAGE = SMTP_MESSAGE._replace(protocol="HTTP")
SMTP_ATTEMPT = Attempt("unspecified->mx@smtp_client", 250, (2, 0, 0), "ok", ".\r\n")


def _carrying(message: Message) -> list[Event]:
    """One event of each kind that carries a message, carrying ``message``."""
    return [
        Bounced("r", "a.com", [message]),
        Delivered("a.com", message, 0, SMTP_ATTEMPT),
        PermanentlyFailed("a.com", message, 0, SMTP_ATTEMPT),
        TransientlyFailed("a.com", message, 1, SMTP_ATTEMPT, 10**18),
        Expired("a.com", message, 3, "Next delivery time would be ..."),
        Suspended(rule_id="s", queue="a.com", message=message, attempts=0, reason="why"),
        Rebound("b", "a.com", "b.com", [message], [2], "why"),
    ]


@pytest.mark.parametrize("event", _carrying(SMTP_MESSAGE))
def test_an_smtp_received_message_keeps_its_protocol_in_every_event(event: Event) -> None:
    body = orjson.loads(encode_event(event))
    rows = body["messages"] if "messages" in body else [body["message"]]
    assert rows == [["0" * 32, "s@x", "r@a.com", 5, 7, 1, "ESMTP"]]
    decoded = decode_event(encode_event(event))
    assert decoded == event
    assert decoded != _carrying(HTTP_MESSAGE)[_carrying(SMTP_MESSAGE).index(event)]


@pytest.mark.parametrize("event", _carrying(HTTP_MESSAGE))
def test_an_http_message_is_stored_as_before_messages_kept_their_protocol(event: Event) -> None:
    """Six fields: a body written before decodes to HTTP, and the same event written now
    is the same bytes."""
    body = orjson.loads(encode_event(event))
    rows = body["messages"] if "messages" in body else [body["message"]]
    assert rows == [["0" * 32, "s@x", "r@a.com", 5, 7, 1]]
    decoded = decode_event(encode_event(event))
    assert decoded == event
    assert encode_event(decoded) == encode_event(event)
    if isinstance(decoded, Bounced | Rebound):
        assert [m.protocol for m in decoded.messages] == ["HTTP"]
    else:
        assert isinstance(
            decoded, Delivered | PermanentlyFailed | TransientlyFailed | Expired | Suspended
        )
        assert decoded.message.protocol == "HTTP"


@pytest.mark.parametrize(
    "body",
    [
        _body(DELIVERED, message=["0" * 32, "s@x", "r@a.com", 5, 7, 1, 5]),
        _body(DELIVERED, message=["0" * 32, "s@x", "r@a.com", 5, 7, 1, None]),
        _body(DELIVERED, message=["0" * 32, "s@x", "r@a.com", 5, 7, 1, "ESMTP", "x"]),
        _body(Bounced("r", "q", [SMTP_MESSAGE]), messages=[["0" * 32, "s", "r", 5, 7, 1, 5]]),
        _body(Bounced("r", "q", [SMTP_MESSAGE]), messages=[["0" * 32, "s", "r", 5, 7, 1, "E", 1]]),
        _body(Bounced("r", "q", [SMTP_MESSAGE]), messages={"a": 1}),
        _body(RECEIVED, protocol=None),
    ],
)
def test_a_protocol_that_is_not_a_string_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(EventDecodeError):
        decode_event(body)


def test_the_replay_fast_path_refuses_a_protocol_that_is_not_a_string() -> None:
    with pytest.raises(EventDecodeError):
        decode_received(_body(RECEIVED, protocol=5), {})


@pytest.mark.parametrize(
    "event",
    [
        BounceIssued("r", Criteria(domain="a.com"), "x", 5, issued_at=1, origin="b"),
        SuspendIssued("s", Criteria(domain="a.com"), "x", 5, issued_at=1, origin="b"),
        ReadySuspendIssued("q", "unspecified->mx.a.com@smtp_client", "x", 5, origin="b"),
    ],
)
@pytest.mark.parametrize("end", [None, "cancelled", "expired"])
def test_a_rule_that_arrived_ended_says_how_and_only_then(
    event: BounceIssued | SuspendIssued | ReadySuspendIssued, end: ArrivedEnded | None
) -> None:
    marked = attrs.evolve(event, arrived_ended=end)
    body = encode_event(marked)
    assert decode_event(body) == marked
    # An issue that arrived live is the same bytes as before the field existed.
    assert orjson.loads(body).get("arrived_ended") == end
    assert body == encode_event(event) or end is not None
    with pytest.raises(ValueError, match="arrived_ended"):
        attrs.evolve(event, arrived_ended="replaced")  # type: ignore[arg-type]

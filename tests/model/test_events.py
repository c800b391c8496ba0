"""The event codec: stable, versioned, round-tripping, refusing what it cannot read."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.criteria import Criteria
from kumo.model.events import (
    SCHEMA_VERSION,
    BounceCancelled,
    Bounced,
    BounceExpired,
    BounceIssued,
    Event,
    EventDecodeError,
    Message,
    MessageReceived,
    decode_event,
    encode_event,
)

text = st.text(max_size=20)
maybe = st.none() | text
nanos = st.integers(0, 2**62)
criteria = st.builds(
    Criteria,
    campaign=maybe,
    tenant=maybe,
    domain=maybe,
    routing_domain=maybe,
    queue_names=st.frozensets(text, max_size=3),
)
messages = st.builds(Message, text, text, text, st.integers(0, 10**9), nanos, st.integers(1, 10**9))
events: st.SearchStrategy[Event] = st.one_of(
    st.builds(MessageReceived, text, text, text, text, st.integers(0, 10**9), text),
    st.builds(BounceIssued, text, criteria, text, nanos, st.booleans(), text),
    st.builds(BounceCancelled, text, text),
    st.builds(BounceExpired, text),
    st.builds(Bounced, text, text, st.lists(messages, max_size=4)),
)


@given(events)
def test_round_trip(event: Event) -> None:
    assert decode_event(encode_event(event)) == event


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

"""Requests are valid by construction, and take everything the HTTP API accepts."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.criteria import Criteria
from kumo.model.duration import NANOS_PER_YEAR
from kumo.model.events import BounceIssued, decode_event, encode_event
from kumo.model.requests import DEFAULT_LIFETIME, MAX_LIFETIME, BounceRequest, NewMessage

NOW = 1_764_000_000 * 10**9


@pytest.mark.parametrize(
    "make",
    [
        lambda: BounceRequest(Criteria(), None),  # type: ignore[arg-type]
        lambda: BounceRequest(Criteria(), 3),  # type: ignore[arg-type]
        lambda: BounceRequest({"domain": "d"}, "why"),  # type: ignore[arg-type]
        lambda: BounceRequest(Criteria(), "why", duration=-1),
        lambda: BounceRequest(Criteria(), "why", duration=MAX_LIFETIME + 1),
        lambda: BounceRequest(Criteria(), "why", duration=1.5),  # type: ignore[arg-type]
        lambda: BounceRequest(Criteria(), "why", expires_at="tomorrow"),  # type: ignore[arg-type]
        lambda: BounceRequest(Criteria(), "why", expires_at=2**63),
        lambda: BounceRequest(Criteria(), "why", suppress_logging=None),  # type: ignore[arg-type]
        lambda: NewMessage("s@x", "r@y", "q", "text"),  # type: ignore[arg-type]
        lambda: NewMessage("s@x", None, "q", b""),  # type: ignore[arg-type]
    ],
)
def test_invalid_requests_cannot_exist(make: Callable[[], object]) -> None:
    with pytest.raises((TypeError, ValueError)):
        make()


def test_what_the_api_accepts() -> None:
    """An empty reason, no lifetime, an expiry before 1970: all are requests."""
    assert BounceRequest(Criteria(), "").expiry(NOW) == NOW + DEFAULT_LIFETIME
    assert BounceRequest(Criteria(), "r", expires_at=-(10**18)).expiry(NOW) == -(10**18)
    assert NewMessage("", "r@y", "y", b"").body == b""


parts = st.none() | st.text(max_size=10)
requests = st.builds(
    BounceRequest,
    criteria=st.builds(
        Criteria,
        campaign=parts,
        tenant=parts,
        domain=parts,
        routing_domain=parts,
        queue_names=st.lists(st.text(max_size=10), max_size=3),
    ),
    reason=st.text(max_size=20),
    duration=st.none() | st.integers(0, 100 * NANOS_PER_YEAR),
    expires_at=st.none() | st.integers(-(2**63), 2**63 - 1),
    suppress_logging=st.booleans(),
)


@given(requests, st.integers(0, 2**62))
def test_a_request_makes_a_valid_event(request: BounceRequest, now: int) -> None:
    """What the engine builds from any request is an event that round-trips."""
    event = BounceIssued(
        "8d2b1f7e-3c4a-4b5d-9e6f-0a1b2c3d4e5f",
        request.criteria,
        request.reason,
        request.expiry(now),
        request.suppress_logging,
        "ops",
    )
    assert decode_event(encode_event(event)) == event


def test_a_new_message_is_its_head_then_its_body() -> None:
    plain = NewMessage("s@x", "r@y", "y", b"body")
    assert (plain.size, plain.content) == (4, b"body")
    split = NewMessage("s@x", "r@y", "y", b"body", b"To: r@y\r\n")
    assert (split.size, split.content) == (13, (b"To: r@y\r\n", b"body"))
    with pytest.raises(TypeError):
        NewMessage("s@x", "r@y", "y", b"body", "To: r@y\r\n")  # type: ignore[arg-type]

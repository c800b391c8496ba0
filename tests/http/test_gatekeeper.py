"""Limits on failed authentication attempts: per peer, per user name, and checks at once."""

from __future__ import annotations

import base64

import pytest

from kumo.http.access import (
    AccessPolicy,
    Denied,
    Granted,
    PasswordCheck,
    hash_password,
    hash_token,
    parse_network,
)
from kumo.http.gatekeeper import AttemptLimits, Gatekeeper, Throttled, peer_key

ALICE = hash_password("wonderland")
LIMITS = AttemptLimits(burst=3, refill=5.0, max_keys=100, max_checks=4)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def policy() -> AccessPolicy:
    return AccessPolicy(
        trusted_hosts=(parse_network("127.0.0.1"),),
        users={"alice": ALICE},
        tokens={"ci": hash_token("tok")},
    )


def fail(gate: Gatekeeper, peer: str, user: str = "alice", *, now: float = 0.0) -> object:
    """One wrong password (without scrypt: the verification's outcome is given)."""
    decision = gate.admit(peer, basic(user, "guess"), now=now)
    if isinstance(decision, PasswordCheck):
        return gate.conclude(decision, False, now=now)
    return decision


def test_a_peer_is_throttled_after_its_burst_until_a_failure_leaks_away(
    policy: AccessPolicy,
) -> None:
    gate = Gatekeeper(policy, LIMITS)
    for _ in range(3):
        assert isinstance(fail(gate, "192.0.2.1"), Denied)
    throttled = fail(gate, "192.0.2.1", "bob", now=1.0)  # another user: the peer is full
    assert throttled == Throttled(
        "Too many failed authentication attempts from 192.0.2.1; retry in 4 s", 4
    )
    assert isinstance(fail(gate, "192.0.2.1", "bob", now=4.9), Throttled)
    assert isinstance(fail(gate, "192.0.2.1", "bob", now=5.0), Denied)  # one leaked away
    assert isinstance(fail(gate, "192.0.2.1", "carol", now=5.0), Throttled)
    assert gate.checks == 0


def test_a_user_name_is_throttled_whichever_peers_guess(policy: AccessPolicy) -> None:
    gate = Gatekeeper(policy, LIMITS)
    for index in range(3):
        assert isinstance(fail(gate, f"192.0.2.{index}"), Denied)
    throttled = fail(gate, "198.51.100.9")
    assert isinstance(throttled, Throttled)
    assert throttled.why == "Too many failed authentication attempts for user 'alice'; retry in 5 s"
    assert isinstance(fail(gate, "198.51.100.9", "bob"), Denied)  # that peer is not full


def test_unknown_user_names_count_as_known_ones_do(policy: AccessPolicy) -> None:
    gate = Gatekeeper(policy, LIMITS)
    for index in range(3):
        assert isinstance(fail(gate, f"192.0.2.{index}", "nobody"), Denied)
    assert isinstance(fail(gate, "198.51.100.9", "nobody"), Throttled)


def test_guesses_under_way_count_before_they_fail(policy: AccessPolicy) -> None:
    gate = Gatekeeper(policy, LIMITS)
    checks = [gate.admit("192.0.2.1", basic("alice", f"g{i}"), now=0.0) for i in range(3)]
    assert all(isinstance(check, PasswordCheck) for check in checks)
    assert isinstance(gate.admit("192.0.2.1", basic("alice", "g3"), now=0.0), Throttled)
    assert gate.checks == 3


def test_a_right_password_is_forgiven(policy: AccessPolicy) -> None:
    gate = Gatekeeper(policy, LIMITS)
    for _ in range(2):
        fail(gate, "192.0.2.1")
    check = gate.admit("192.0.2.1", basic("alice", "wonderland"), now=0.0)
    assert isinstance(check, PasswordCheck)
    assert gate.conclude(check, True, now=0.0) == Granted("alice")
    assert isinstance(fail(gate, "192.0.2.1"), Denied)  # 3 failures, not 4: one was forgiven


def test_a_verified_password_a_token_and_a_trusted_peer_are_never_throttled(
    policy: AccessPolicy,
) -> None:
    gate = Gatekeeper(policy, LIMITS)
    check = gate.admit("203.0.113.5", basic("alice", "wonderland"), now=0.0)
    assert isinstance(check, PasswordCheck)
    assert gate.conclude(check, policy.verify(check), now=0.0) == Granted("alice")
    for _ in range(5):
        fail(gate, "192.0.2.1")  # the peer, and alice, are now full
    assert isinstance(fail(gate, "192.0.2.1"), Throttled)
    assert gate.admit("192.0.2.1", basic("alice", "wonderland"), now=0.0) == Granted("alice")
    assert gate.admit("192.0.2.1", "Bearer tok", now=0.0) == Granted("ci")
    assert gate.admit("192.0.2.1", None, now=0.0) == Denied(
        "Missing Authorization header: 192.0.2.1 is not a trusted host; "
        "send Basic or Bearer credentials"
    )
    trusted = gate.admit("127.0.0.1", basic("alice", "guess"), now=0.0)
    assert isinstance(trusted, PasswordCheck)  # checked, for a better name, not limited
    assert gate.conclude(trusted, False, now=0.0) == Granted("127.0.0.1")


def test_wrong_bearer_tokens_count_against_the_peer(policy: AccessPolicy) -> None:
    gate = Gatekeeper(policy, LIMITS)
    for _ in range(3):
        assert isinstance(gate.admit("192.0.2.1", "Bearer nope", now=0.0), Denied)
    assert isinstance(gate.admit("192.0.2.1", "Bearer nope", now=0.0), Throttled)
    # Unreadable headers are no guess: refused, not counted.
    assert isinstance(gate.admit("192.0.2.2", "Digest x", now=0.0), Denied)
    assert isinstance(fail(gate, "192.0.2.2"), Denied)


def test_password_checks_at_once_are_bounded(policy: AccessPolicy) -> None:
    gate = Gatekeeper(policy, LIMITS)
    checks = [gate.admit(f"192.0.2.{i}", basic(f"u{i}", "g"), now=0.0) for i in range(4)]
    assert gate.checks == 4
    assert gate.admit("192.0.2.9", basic("u9", "g"), now=0.0) == Throttled(
        "Too many password checks under way; retry in 1 s", 1
    )
    first = checks[0]
    assert isinstance(first, PasswordCheck)
    gate.abandon(first)  # its request was cancelled: it stays counted as a failure
    assert isinstance(gate.admit("192.0.2.9", basic("u9", "g"), now=0.0), PasswordCheck)


def test_peer_keys() -> None:
    assert peer_key("192.0.2.1") == "192.0.2.1"
    assert peer_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert (
        peer_key("2001:db8:1:2:3:4:5:6")
        == peer_key("2001:db8:1:2:ffff::1")
        == ("2001:db8:1:2::/64")
    )
    assert peer_key("fe80::1%eth0") == "fe80::/64"
    assert peer_key(None) == "-"
    assert peer_key("not an address") == "not an address"


def test_memory_is_bounded_by_max_keys(policy: AccessPolicy) -> None:
    gate = Gatekeeper(policy, AttemptLimits(burst=1, refill=60.0, max_keys=2))
    assert isinstance(fail(gate, "192.0.2.1", "a"), Denied)
    assert isinstance(fail(gate, "192.0.2.1", "b"), Throttled)
    fail(gate, "192.0.2.2", "c")
    fail(gate, "192.0.2.3", "d")  # 192.0.2.1 is forgotten, the oldest of three
    assert isinstance(fail(gate, "192.0.2.1", "e"), Denied)

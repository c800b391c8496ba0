"""Access decisions: trusted hosts, Basic users, Bearer tokens, and hashed secrets."""

from __future__ import annotations

import base64
import statistics
import time

import pytest

from kumo.http.access import (
    AccessPolicy,
    Denied,
    Granted,
    PasswordCheck,
    check_password_hash,
    check_token_hash,
    hash_password,
    hash_token,
    parse_network,
    verify_password,
)

ALICE_HASH = hash_password("wonderland")
TOKEN = "s3cret-token"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def policy() -> AccessPolicy:
    return AccessPolicy(
        trusted_hosts=(parse_network("127.0.0.1"), parse_network("10.0.0.0/8")),
        users={"alice": ALICE_HASH},
        tokens={"deploy": hash_token(TOKEN)},
    )


def test_password_hashes_are_salted_and_verify() -> None:
    assert hash_password("wonderland") != ALICE_HASH
    assert ALICE_HASH.startswith("scrypt$16384$8$1$")
    assert "wonderland" not in ALICE_HASH
    assert verify_password("wonderland", ALICE_HASH)
    assert not verify_password("Wonderland", ALICE_HASH)
    assert hash_password("x", salt=b"0123456789abcdef") == hash_password(
        "x", salt=b"0123456789abcdef"
    )


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain",
        "scrypt$16384$8$1$c2FsdA",
        "scrypt$16383$8$1$c2FsdA$" + "A" * 43,
        "scrypt$2097152$8$1$c2FsdA$" + "A" * 43,
        "scrypt$16384$8$1$$" + "A" * 43,
        "scrypt$16384$8$1$c2FsdA$QUJD",
        "scrypt$x$8$1$c2FsdA$" + "A" * 43,
        "scrypt$16384$8$1$not*base64$" + "A" * 43,
        "pbkdf2$1$2$3$4$5",
    ],
)
def test_malformed_password_hashes_are_refused(encoded: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        check_password_hash(encoded)


def test_token_hashes() -> None:
    check_token_hash(hash_token(TOKEN))
    for bad in ("", TOKEN, "sha256$abc", "sha256$" + "G" * 64, "md5$" + "0" * 64):
        with pytest.raises(ValueError, match="sha256"):
            check_token_hash(bad)


def test_policy_refuses_bad_hashes_at_construction() -> None:
    with pytest.raises(ValueError, match="user 'bob'"):
        AccessPolicy(users={"bob": "plain-text-password"})
    with pytest.raises(ValueError, match="token 'ci'"):
        AccessPolicy(tokens={"ci": TOKEN})


@pytest.mark.parametrize(
    ("peer", "trusted"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("::ffff:10.1.2.3", True),
        ("127.0.0.2", False),
        ("::1", False),
        ("192.0.2.1", False),
        (None, False),
        ("<local>", False),
        ("fe80::1%eth0", False),
    ],
)
def test_trusted_hosts(policy: AccessPolicy, peer: str | None, trusted: bool) -> None:
    assert policy.is_trusted(peer) is trusted


def test_default_policy_trusts_loopback_only() -> None:
    default = AccessPolicy()
    assert default.is_trusted("127.0.0.1")
    assert default.is_trusted("::1")
    assert not default.is_trusted("127.0.0.2")
    assert isinstance(default.authorize("192.0.2.1", None), Denied)


def test_trusted_peer_is_its_own_principal(policy: AccessPolicy) -> None:
    assert policy.authorize("127.0.0.1", None) == Granted("127.0.0.1")


def test_untrusted_peer_without_credentials_is_denied(policy: AccessPolicy) -> None:
    decision = policy.authorize("192.0.2.1", None)
    assert isinstance(decision, Denied)
    assert "Missing Authorization header" in decision.why
    assert "192.0.2.1 is not a trusted host" in decision.why


def test_basic_user_is_the_principal(policy: AccessPolicy) -> None:
    assert policy.authorize("192.0.2.1", basic("alice", "wonderland")) == Granted("alice")
    # Case-insensitive scheme; a cached verification gives the same answer.
    assert policy.authorize("192.0.2.1", "basic " + basic("alice", "wonderland")[6:]) == Granted(
        "alice"
    )
    # A trusted peer with valid credentials is named by them.
    assert policy.authorize("127.0.0.1", basic("alice", "wonderland")) == Granted("alice")


def test_bearer_token_name_is_the_principal(policy: AccessPolicy) -> None:
    assert policy.authorize("192.0.2.1", f"Bearer {TOKEN}") == Granted("deploy")


@pytest.mark.parametrize(
    ("authorization", "why"),
    [
        (basic("alice", "wrong"), "Invalid Authorization"),
        (basic("mallory", "wonderland"), "Invalid Authorization"),
        ("Basic !!!", "Malformed Authorization header"),
        ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), "Malformed Authorization header"),
        ("Bearer nope", "Invalid Authorization: unknown bearer token"),
        ("Bearer", "Malformed Authorization header"),
        ("Digest abc", "Unsupported Authorization scheme"),
        ("", "Malformed Authorization header"),
    ],
)
def test_bad_credentials_from_untrusted_peer(
    policy: AccessPolicy, authorization: str, why: str
) -> None:
    decision = policy.authorize("192.0.2.1", authorization)
    assert isinstance(decision, Denied)
    assert decision.why.startswith(why)
    assert "wonderland" not in decision.why


def test_trusted_peer_is_never_refused(policy: AccessPolicy) -> None:
    # As in KumoMTA: bad credentials from a trusted host are ignored.
    assert policy.authorize("127.0.0.1", basic("alice", "wrong")) == Granted("127.0.0.1")
    assert policy.authorize("127.0.0.1", "Digest x") == Granted("127.0.0.1")


def test_wrong_password_is_not_cached(policy: AccessPolicy) -> None:
    assert isinstance(policy.authorize("192.0.2.1", basic("alice", "nope")), Denied)
    assert isinstance(policy.authorize("192.0.2.1", basic("alice", "nope")), Denied)


def test_an_unknown_user_takes_as_long_as_a_wrong_password(policy: AccessPolicy) -> None:
    # Once 69 ms against 4 ms: user names could be found by timing.
    def seconds(user: str) -> float:
        check = policy.decide("192.0.2.1", basic(user, "guess"))
        assert isinstance(check, PasswordCheck)
        started = time.perf_counter()
        assert not policy.verify(check)
        return time.perf_counter() - started

    known, unknown = [], []
    for _ in range(5):
        known.append(seconds("alice"))
        unknown.append(seconds("mallory"))
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.5 < ratio < 2, (known, unknown)


def test_the_dummy_hash_costs_what_the_users_hashes_cost() -> None:
    cheap = "scrypt$1024$8$1$" + "c2FsdHNhbHRzYWx0c2FsdA" + "$" + "A" * 43
    policy = AccessPolicy(users={"a": cheap, "b": cheap, "c": ALICE_HASH})
    timings = []
    for user in ("a", "mallory"):
        check = policy.decide(None, basic(user, "guess"))
        assert isinstance(check, PasswordCheck)
        started = time.perf_counter()
        policy.verify(check)
        timings.append(time.perf_counter() - started)
    # Both at n=1024 (the most common), well below the 16x dearer n=16384 of c's hash.
    assert timings[1] < 4 * timings[0] + 0.005


def test_decide_grants_a_verified_password_without_scrypt() -> None:
    policy = AccessPolicy(users={"alice": ALICE_HASH})
    check = policy.decide("192.0.2.1", basic("alice", "wonderland"))
    assert isinstance(check, PasswordCheck)
    assert policy.conclude(check, policy.verify(check)) == Granted("alice")
    assert policy.decide("192.0.2.1", basic("alice", "wonderland")) == Granted("alice")
    assert isinstance(policy.decide("192.0.2.1", basic("bob", "wonderland")), PasswordCheck)

"""Admission of protected requests: the access policy, with limits on failed attempts.

Credentials that fail are counted against the peer that sent them (an IPv6 peer by its
/64, which one host usually holds whole) and, for Basic credentials, against the user
name they named, known or not (counting only known names would tell which exist). Each
count is a leaky bucket: a failure adds one, and one leaks away every
``AttemptLimits.refill`` seconds. A peer or a user name whose bucket is full is
:class:`Throttled` (429 with ``Retry-After``) before any password is checked, so a
guesser costs a dictionary lookup, not scrypt. An attempt is counted when its check
starts and forgiven if the password was right, so that a burst of concurrent guesses
cannot all slip in before the first of them fails.

What the limits never slow down: a trusted peer (as in KumoMTA it is never refused),
a valid Bearer token, and a password already verified for its user (the policy
remembers those: no scrypt, so nothing to protect). Only the checks that need scrypt
are limited, and at most ``AttemptLimits.max_checks`` of them wait or run at once;
the app runs them in a worker thread behind a capacity limiter, off the event loop.

Plain Python with no I/O: time is passed in (``now``, seconds on any monotonic clock:
the app passes Trio's, so a test can move it with ``MockClock``).
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from typing import Final

import attrs

from kumo.http.access import AccessPolicy, Denied, Granted, PasswordCheck

_IPV6_PREFIX: Final = 64


@attrs.frozen
class AttemptLimits:
    """How many failed attempts a peer or a user name may make, and how fast."""

    burst: int = 10
    """Failures in a row before the next attempt is refused."""
    refill: float = 6.0
    """Seconds for one failure to be forgiven: past the burst, one attempt per 6 s."""
    max_keys: int = 10_000
    """Peers, and user names, remembered at most each (the oldest ones are forgotten)."""
    max_checks: int = 8
    """Password checks waiting for scrypt or running at once; more are refused (429)."""


@attrs.frozen(slots=True)
class Throttled:
    """Refuse with 429: ``why`` is the reply's text, ``retry_after`` whole seconds."""

    why: str
    retry_after: int


class _Buckets:
    """A leaky bucket of failures per key, for at most ``max_keys`` keys."""

    def __init__(self, limits: AttemptLimits) -> None:
        self._limits = limits
        self._levels: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def level(self, key: str, now: float) -> float:
        level, at = self._levels.get(key, (0.0, now))
        return max(0.0, level - (now - at) / self._limits.refill)

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may try again (0: it may now)."""
        over = self.level(key, now) + 1 - self._limits.burst
        return max(0.0, over * self._limits.refill)

    def add(self, key: str, now: float, amount: float) -> None:
        level = max(0.0, self.level(key, now) + amount)
        self._levels[key] = (level, now)
        self._levels.move_to_end(key)
        while len(self._levels) > self._limits.max_keys:
            self._levels.popitem(last=False)


def peer_key(peer: str | None) -> str:
    """The key a peer's failures count under: its address, or the /64 of an IPv6 one."""
    if peer is None:
        return "-"
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{_IPV6_PREFIX}", strict=False))
    return str(address)


class Gatekeeper:
    """Admits protected requests: :meth:`admit`, and for a :class:`PasswordCheck`
    :meth:`conclude` (or :meth:`abandon`) once the policy has verified it."""

    def __init__(self, policy: AccessPolicy, limits: AttemptLimits | None = None) -> None:
        self.policy = policy
        self.limits = limits or AttemptLimits()
        self._peers = _Buckets(self.limits)
        self._users = _Buckets(self.limits)
        self._checks = 0

    @property
    def checks(self) -> int:
        """Password checks admitted and not yet concluded or abandoned."""
        return self._checks

    def admit(
        self, peer: str | None, authorization: str | None, *, now: float
    ) -> Granted | Denied | Throttled | PasswordCheck:
        """The decision for a request, unless it takes scrypt: then the
        :class:`PasswordCheck` to verify (counted as a failure until it passes)."""
        decision = self.policy.decide(peer, authorization)
        if isinstance(decision, Granted):
            return decision
        if isinstance(decision, Denied):
            if not decision.attempt:
                return decision  # no credentials, or unreadable ones: nothing was guessed
            throttled = self._throttled(peer, None, now)
            if throttled is not None:
                return throttled
            self._peers.add(peer_key(peer), now, 1)
            return decision
        if decision.trusted:
            self._checks += 1
            return decision
        throttled = self._throttled(peer, decision.user, now)
        if throttled is not None:
            return throttled
        if self._checks >= self.limits.max_checks:
            return Throttled("Too many password checks under way; retry in 1 s", 1)
        self._peers.add(peer_key(peer), now, 1)
        self._users.add(decision.user, now, 1)
        self._checks += 1
        return decision

    def conclude(self, check: PasswordCheck, verified: bool, *, now: float) -> Granted | Denied:
        """The decision once the policy verified ``check``; forgives it if it passed."""
        self._checks -= 1
        if verified and not check.trusted:
            self._peers.add(peer_key(check.peer), now, -1)
            self._users.add(check.user, now, -1)
        return self.policy.conclude(check, verified)

    def abandon(self, check: PasswordCheck) -> None:
        """``check`` will not be concluded (its request was cancelled); it stays counted
        as a failure."""
        assert self._checks > 0, check
        self._checks -= 1

    def _throttled(self, peer: str | None, user: str | None, now: float) -> Throttled | None:
        waits = [(self._peers.wait(peer_key(peer), now), f"from {peer or 'this peer'}")]
        if user is not None:
            waits.append((self._users.wait(user, now), f"for user {user!r}"))
        wait, whose = max(waits)
        if wait <= 0:
            return None
        seconds = max(1, math.ceil(wait))
        return Throttled(
            f"Too many failed authentication attempts {whose}; retry in {seconds} s", seconds
        )

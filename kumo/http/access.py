"""Who may use the admin and inject endpoints, and under which name.

A request is served when its peer address is in ``trusted_hosts`` (IPs or CIDRs) or
when it carries valid credentials: HTTP Basic with a configured user, or a Bearer
token. As in KumoMTA, a trusted peer is never refused; its credentials, when valid,
only give the request a better name. The *principal* is the name the engine records
as ``issued_by`` / ``cancelled_by``: the user name, the token's configured name, or the
peer address; never a password or a token.

Secrets are stored hashed: passwords with scrypt and a random salt, tokens (random
and long, so a salt adds nothing) with SHA-256. A password is checked in the same time
whether its user exists or not: an unknown user's password is checked against a dummy
hash with the parameters of the configured ones, so that user names cannot be found by
timing. Everything here is plain Python with no I/O; scrypt takes tens of milliseconds,
so :meth:`AccessPolicy.decide` leaves it to :meth:`AccessPolicy.verify`, which the app
calls from a worker thread (:mod:`kumo.http.gatekeeper` bounds how many, and how often).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Final, TypeAlias

import attrs

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_TRUSTED_HOSTS: Final[tuple[IPNetwork, ...]] = (
    ipaddress.ip_network("127.0.0.1"),
    ipaddress.ip_network("::1"),
)

_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
# The largest n, r, p that a stored hash may ask for: a typo must not cost gigabytes.
_SCRYPT_MAX_N: Final = 2**20
_SCRYPT_MAX_R: Final = 32
_SCRYPT_MAX_P: Final = 16
_CACHE_SIZE: Final = 1024


# -- secrets ----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=size, maxmem=129 * r * (n + p) + 2**20
    )


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """An encoded scrypt hash of ``password``: ``scrypt$n$r$p$salt$digest`` (base64).

    A fresh random salt is drawn unless ``salt`` is given (tests).
    """
    salt = os.urandom(16) if salt is None else salt
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P, 32)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


@attrs.frozen(slots=True)
class _ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, encoded: str) -> _ScryptHash:
        parts = encoded.split("$")
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError("a password hash reads scrypt$n$r$p$salt$digest")
        try:
            n, r, p = (int(part) for part in parts[1:4])
            salt, digest = _unb64(parts[4]), _unb64(parts[5])
        except (ValueError, binascii.Error):
            raise ValueError("a hash has integer n, r, p and base64 salt and digest") from None
        if n < 2 or n & (n - 1) or r < 1 or p < 1:
            raise ValueError("scrypt n must be a power of two above 1; r and p at least 1")
        if n > _SCRYPT_MAX_N or r > _SCRYPT_MAX_R or p > _SCRYPT_MAX_P:
            raise ValueError("scrypt parameters over n=2**20, r=32, p=16 are refused")
        if not salt or len(digest) < 16:
            raise ValueError("a password hash needs a salt and a digest of at least 16 bytes")
        return cls(n, r, p, salt, digest)

    def verify(self, password: str) -> bool:
        candidate = _scrypt(password, self.salt, self.n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(candidate, self.digest)

    @classmethod
    def dummy_like(cls, hashes: Iterable[_ScryptHash]) -> _ScryptHash:
        """A hash no password matches, as costly to check as the most common of
        ``hashes`` (the default parameters if there are none)."""
        shapes = Counter((h.n, h.r, h.p, len(h.salt), len(h.digest)) for h in hashes)
        n, r, p, salt, digest = (
            shapes.most_common(1)[0][0] if shapes else (_SCRYPT_N, _SCRYPT_R, _SCRYPT_P, 16, 32)
        )
        return cls(n, r, p, os.urandom(salt), os.urandom(digest))


def check_password_hash(encoded: str) -> None:
    """Raise ValueError saying why, unless ``encoded`` is a hash :func:`hash_password` makes."""
    _ScryptHash.parse(encoded)


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` is the one ``encoded`` was made from (constant-time compare)."""
    return _ScryptHash.parse(encoded).verify(password)


def hash_token(token: str) -> str:
    """An encoded hash of a bearer token: ``sha256$<hex>``."""
    return "sha256$" + hashlib.sha256(token.encode()).hexdigest()


def check_token_hash(encoded: str) -> None:
    """Raise ValueError saying why, unless ``encoded`` is a hash :func:`hash_token` makes."""
    scheme, _, digest = encoded.partition("$")
    if scheme != "sha256" or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise ValueError("a token hash reads sha256$ followed by 64 lower-case hex digits")


# -- decisions --------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Granted:
    """Serve the request; ``principal`` names who asked."""

    principal: str


@attrs.frozen(slots=True)
class Denied:
    """Refuse with 401; ``why`` is the reply's text. ``attempt`` says whether the
    request presented credentials that failed (a guess, for the attempt limits), as
    opposed to none or a header that could not be read."""

    why: str
    attempt: bool = False


@attrs.frozen(slots=True)
class PasswordCheck:
    """Basic credentials that only scrypt can decide: give it to
    :meth:`AccessPolicy.verify` (slow), then the outcome to :meth:`AccessPolicy.conclude`.

    ``peer`` is the request's peer address and ``trusted`` whether it is trusted.
    """

    peer: str | None
    trusted: bool
    user: str
    password: str = attrs.field(repr=False)


_WRONG_PASSWORD: Final = "Invalid Authorization: unknown user or wrong password"


def parse_network(text: str) -> IPNetwork:
    """An IP address or CIDR as a network; raises ValueError for anything else."""
    return ipaddress.ip_network(text.strip(), strict=False)


def _peer_ip(peer: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if peer is None:
        return None
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            # A dual-stack listener shows IPv4 peers as ::ffff:a.b.c.d.
            return address.ipv4_mapped
        if address.scope_id:
            return ipaddress.IPv6Address(str(address).split("%", 1)[0])
    return address


def _credentials(authorization: str) -> tuple[str, str] | None:
    """``(scheme, rest)`` of an Authorization header, scheme lower-cased."""
    scheme, space, rest = authorization.strip().partition(" ")
    if not space or not rest.strip():
        return None
    return scheme.lower(), rest.strip()


@attrs.frozen(slots=True)
class AccessPolicy:
    """Trusted hosts and credentials; decides every protected request.

    ``users`` maps user names to password hashes (:func:`hash_password`), ``tokens``
    maps token names to token hashes (:func:`hash_token`). Both are checked when the
    policy is made.
    """

    trusted_hosts: tuple[IPNetwork, ...] = DEFAULT_TRUSTED_HOSTS
    users: Mapping[str, str] = attrs.field(factory=dict)
    tokens: Mapping[str, str] = attrs.field(factory=dict)
    _verified: dict[tuple[str, bytes], None] = attrs.field(
        factory=dict, init=False, eq=False, repr=False
    )
    """(user, SHA-256 of password) pairs that passed scrypt: a client that sends
    Basic credentials with every request pays scrypt once, not each time."""
    _hashes: dict[str, _ScryptHash] = attrs.field(factory=dict, init=False, eq=False, repr=False)
    _dummy: _ScryptHash = attrs.field(init=False, eq=False, repr=False)
    """The hash an unknown user's password is checked against."""

    def __attrs_post_init__(self) -> None:
        for name, encoded in self.users.items():
            try:
                self._hashes[name] = _ScryptHash.parse(encoded)
            except ValueError as exc:
                raise ValueError(f"user {name!r}: {exc}") from None
        # attrs' way to set a field of a frozen instance in its own initialisation.
        object.__setattr__(self, "_dummy", _ScryptHash.dummy_like(self._hashes.values()))
        for name, encoded in self.tokens.items():
            try:
                check_token_hash(encoded)
            except ValueError as exc:
                raise ValueError(f"token {name!r}: {exc}") from None

    def is_trusted(self, peer: str | None) -> bool:
        """Whether the peer address ``peer`` is in a trusted network."""
        address = _peer_ip(peer)
        return address is not None and any(address in network for network in self.trusted_hosts)

    def authorize(self, peer: str | None, authorization: str | None) -> Granted | Denied:
        """Decide a request from ``peer`` with the ``Authorization`` header given:
        :meth:`decide`, then :meth:`verify` and :meth:`conclude` if it takes scrypt.

        May run scrypt (tens of ms, once per user and password): call it from a worker
        thread when ``authorization`` holds Basic credentials.
        """
        decision = self.decide(peer, authorization)
        if isinstance(decision, PasswordCheck):
            return self.conclude(decision, self.verify(decision))
        return decision

    def decide(
        self, peer: str | None, authorization: str | None
    ) -> Granted | Denied | PasswordCheck:
        """Decide what can be decided without scrypt (quick: no thread needed).

        A password already verified for its user is granted here; any other Basic
        credentials (known user or not, alike) are a :class:`PasswordCheck`.
        """
        trusted = self.is_trusted(peer)
        if authorization is None:
            if trusted:
                return Granted(str(peer))
            return Denied(
                f"Missing Authorization header: {peer or 'this peer'} is not a trusted host; "
                "send Basic or Bearer credentials"
            )
        principal, why, attempt = self._authenticate(peer, trusted, authorization)
        if isinstance(principal, PasswordCheck):
            return principal
        if principal is not None:
            return Granted(principal)
        if trusted:
            return Granted(str(peer))
        return Denied(why, attempt=attempt)

    def verify(self, check: PasswordCheck) -> bool:
        """Whether the password of ``check`` is its user's: runs scrypt (tens of ms,
        thread-safe), against a dummy hash for an unknown user so that it takes as long.
        A password that passes is remembered (:meth:`decide` grants it at once)."""
        stored = self._hashes.get(check.user)
        matches = (stored or self._dummy).verify(check.password)
        if not (matches and stored is not None):
            return False
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.clear()
        self._verified[_cache_key(check.user, check.password)] = None
        return True

    def conclude(self, check: PasswordCheck, verified: bool) -> Granted | Denied:
        """The decision once :meth:`verify` has said whether the password is right."""
        if verified:
            return Granted(check.user)
        if check.trusted:
            return Granted(str(check.peer))
        return Denied(_WRONG_PASSWORD, attempt=True)

    def _authenticate(
        self, peer: str | None, trusted: bool, authorization: str
    ) -> tuple[str | PasswordCheck | None, str, bool]:
        """(principal or the check to run, why not, whether credentials were tried)."""
        parsed = _credentials(authorization)
        if parsed is None:
            why = "Malformed Authorization header: expected `Basic` or `Bearer` credentials"
            return None, why, False
        scheme, rest = parsed
        if scheme == "basic":
            try:
                decoded = base64.b64decode(rest, validate=True).decode()
            except (binascii.Error, ValueError):
                why = "Malformed Authorization header: Basic credentials are not base64 UTF-8"
                return None, why, False
            user, _, password = decoded.partition(":")
            if user in self._hashes and _cache_key(user, password) in self._verified:
                return user, "", True
            return PasswordCheck(peer, trusted, user, password), "", True
        if scheme == "bearer":
            presented = hash_token(rest)
            for name, stored in self.tokens.items():
                if hmac.compare_digest(presented, stored):
                    return name, "", True
            return None, "Invalid Authorization: unknown bearer token", True
        return None, "Unsupported Authorization scheme: expected `Basic` or `Bearer`", False


def _cache_key(user: str, password: str) -> tuple[str, bytes]:
    return user, hashlib.sha256(password.encode()).digest()

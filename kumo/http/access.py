"""Who may use the admin and inject endpoints, and under which name.

A request is served when its peer address is in ``trusted_hosts`` (IPs or CIDRs) or
when it carries valid credentials: HTTP Basic with a configured user, or a Bearer
token. As in KumoMTA, a trusted peer is never refused; its credentials, when valid,
only give the request a better name. The *principal* is the name the engine records
as ``issued_by`` / ``cancelled_by``: the user name, the token's configured name, or the
peer address; never a password or a token.

Secrets are stored hashed: passwords with scrypt and a random salt, tokens (random
and long, so a salt adds nothing) with SHA-256. Everything here is plain Python with
no I/O; :meth:`AccessPolicy.authorize` may spend tens of milliseconds on scrypt, so
the app calls it from a worker thread when a request carries Basic credentials.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
from collections.abc import Mapping
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
    """Refuse with 401; ``why`` is the reply's text."""

    why: str


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

    def __attrs_post_init__(self) -> None:
        for name, encoded in self.users.items():
            try:
                check_password_hash(encoded)
            except ValueError as exc:
                raise ValueError(f"user {name!r}: {exc}") from None
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
        """Decide a request from ``peer`` with the ``Authorization`` header given.

        May run scrypt (tens of ms, once per user and password): call it from a worker
        thread when ``authorization`` holds Basic credentials.
        """
        trusted = self.is_trusted(peer)
        if authorization is None:
            if trusted:
                return Granted(str(peer))
            return Denied(
                f"Missing Authorization header: {peer or 'this peer'} is not a trusted host; "
                "send Basic or Bearer credentials"
            )
        principal, why = self._authenticate(authorization)
        if principal is not None:
            return Granted(principal)
        if trusted:
            return Granted(str(peer))
        return Denied(why)

    def _authenticate(self, authorization: str) -> tuple[str | None, str]:
        parsed = _credentials(authorization)
        if parsed is None:
            return None, "Malformed Authorization header: expected `Basic` or `Bearer` credentials"
        scheme, rest = parsed
        if scheme == "basic":
            return self._basic(rest)
        if scheme == "bearer":
            return self._bearer(rest)
        return None, "Unsupported Authorization scheme: expected `Basic` or `Bearer`"

    def _basic(self, encoded: str) -> tuple[str | None, str]:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, ValueError):
            return None, "Malformed Authorization header: Basic credentials are not base64 UTF-8"
        user, _, password = decoded.partition(":")
        stored = self.users.get(user)
        if stored is None:
            return None, "Invalid Authorization: unknown user or wrong password"
        key = (user, hashlib.sha256(password.encode()).digest())
        if key in self._verified:
            return user, ""
        if not verify_password(password, stored):
            return None, "Invalid Authorization: unknown user or wrong password"
        if len(self._verified) >= _CACHE_SIZE:
            self._verified.clear()
        self._verified[key] = None
        return user, ""

    def _bearer(self, token: str) -> tuple[str | None, str]:
        presented = hash_token(token)
        for name, stored in self.tokens.items():
            if hmac.compare_digest(presented, stored):
                return name, ""
        return None, "Invalid Authorization: unknown bearer token"

"""kumo's configuration: a TOML file read into a frozen value.

Every key is optional::

    listen = "127.0.0.1:8000"          # HOST:PORT; [::1]:8000 for IPv6; port 0 picks one
    data_dir = "kumo-data"             # relative to the config file's directory
    node_id = "0b9e...-uuid"           # the nodeid of log records; default: the engine's
    body_limit = 2097152               # request body limit in bytes (2 MiB)
    trusted_hosts = ["127.0.0.1", "::1", "10.0.0.0/8"]

    [users]                            # HTTP Basic: name = scrypt hash
    alice = "scrypt$16384$8$1$...$..."

    [tokens]                           # Bearer: name = token hash; the name is recorded
    deploy = "sha256$..."

The mail path has five tables more, named after KumoMTA's Lua parameters so that its
operators recognise them (each field's docstring below gives its default and meaning)::

    [smtp_listener]                    # SmtpListenerSettings: KumoMTA start_esmtp_listener
    [queue]                            # QueueSettings: make_queue_config, every queue
    [egress]                           # EgressSettings: make_egress_path, every destination
    [domains."example.com"]            # any [queue] or [egress] key, and mx_list
    [dns]                              # DnsSettings: nameservers

Fleet mode (docs/fleet.md) is off unless ``[fleet]`` names the fleet's Redis::

    [fleet]
    redis = "redis://127.0.0.1:6379/0"  # required in the table
    stream = "kumo:admin"               # the default

Durations are duration strings (``"20m"``, ``"7days"``) or numbers of seconds.

Unknown keys are refused, so that a typo does not silently leave a default in place.
Secrets are never stored in clear: ``python -m kumo.config hash-password`` and
``python -m kumo.config hash-token`` print the values to paste.
"""

from __future__ import annotations

import enum
import getpass
import ipaddress
import math
import secrets
import socket
import string
import sys
import tomllib
import uuid
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Final, overload

import attrs

from kumo.http.access import (
    DEFAULT_TRUSTED_HOSTS,
    AccessPolicy,
    IPNetwork,
    hash_password,
    hash_token,
    parse_network,
)
from kumo.http.errors import DEFAULT_BODY_LIMIT
from kumo.model.cidr_set import DEFAULT_PROHIBITED_HOSTS, DEFAULT_RELAY_HOSTS, CidrError, CidrSet
from kumo.model.duration import (
    MAX_NANOS,
    NANOS_PER_MILLISECOND,
    NANOS_PER_SECOND,
    DurationError,
    parse_duration,
)
from kumo.model.fleet import DEFAULT_STREAM, FleetSettings, RedisUrlError, check_redis_url
from kumo.model.retry import RetryPolicy
from kumo.model.settings import EngineSettings
from kumo.model.smtp_client import ClientSettings, ClientTimeouts, TlsMode
from kumo.model.throttle import ThrottleSpec, ThrottleSpecError

DEFAULT_LISTEN: Final = "127.0.0.1:8000"
DEFAULT_DATA_DIR: Final = Path("kumo-data")


class ConfigError(ValueError):
    """A configuration that kumo cannot run with; the message names the key and why."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``; ConfigError if not."""
    host, colon, port_text = text.rpartition(":")
    if not colon or not host or not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(f"listen address {text!r} is not HOST:PORT")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"listen port {port} is over 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"listen address {text!r}: write an IPv6 host in brackets, [::1]:8000")
    return host, port


def _check_listen(_: object, __: object, value: str) -> None:
    parse_listen(value)


def _check_body_limit(_: object, __: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"body_limit must be a positive number of bytes, got {value!r}")


def _check_admin_hold(_: object, __: object, value: int) -> None:
    if type(value) is not int or not 0 <= value <= NANOS_PER_SECOND:
        raise ConfigError(f"admin_hold must be a duration from 0 to 1s, got {value!r} ns")


# -- the mail path: [smtp_listener], [queue], [egress], [domains."..."], [dns] -----------
#
# Each key of these tables is a field of a frozen record below, declared with
# `_setting`: its default, the check of its value (run when a record is built, and by
# the parser with the key's full name, so that an error names `egress.max_ready`), and
# how a TOML value becomes the field's value. The defaults are KumoMTA's.

_CHECK: Final = "kumo.config.check"
_PARSE: Final = "kumo.config.parse"

_Check = Callable[[str, Any], None]
_Parse = Callable[[str, object, Path], Any]

_SECOND: Final = NANOS_PER_SECOND
_MINUTE: Final = 60 * NANOS_PER_SECOND


def _machine_hostname() -> str:
    """This machine's host name, or ``localhost`` when it has none (as KumoMTA)."""
    return socket.gethostname() or "localhost"


def _setting(
    *, check: _Check, parse: _Parse, default: Any = attrs.NOTHING, factory: Any = None
) -> Any:
    def validator(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        check(attribute.name, value)

    return attrs.field(
        default=default,
        factory=factory,
        validator=validator,
        metadata={_CHECK: check, _PARSE: parse},
        kw_only=True,
    )


def _got(value: object) -> str:
    return f"got {value!r}"


def _check_count(name: str, value: Any) -> None:
    if type(value) is not int or value < 1:
        raise ConfigError(f"{name} must be a positive integer, {_got(value)}")


def _check_count_or_zero(name: str, value: Any) -> None:
    if type(value) is not int or value < 0:
        raise ConfigError(f"{name} must be a whole number, 0 or more, {_got(value)}")


def _check_port(name: str, value: Any) -> None:
    if type(value) is not int or not 1 <= value <= 65535:
        raise ConfigError(f"{name} must be a port number from 1 to 65535, {_got(value)}")


def _check_timeout(name: str, value: Any) -> None:
    if type(value) is not int or not 0 < value <= MAX_NANOS:
        raise ConfigError(f"{name} must be a positive duration, {_got(value)}")


def _check_optional_timeout(name: str, value: Any) -> None:
    if value is not None:
        _check_timeout(name, value)


def _check_interval(name: str, value: Any) -> None:
    # KumoMTA counts retry intervals in whole seconds: under one second every retry
    # would be due at once, and a failing destination would be retried in a loop.
    if type(value) is not int or not NANOS_PER_SECOND <= value <= MAX_NANOS:
        raise ConfigError(f"{name} must be a duration of at least 1s, {_got(value)}")


def _check_optional_interval(name: str, value: Any) -> None:
    if value is not None:
        _check_interval(name, value)


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value or value != value.strip():
        raise ConfigError(
            f"{name} must be a non-empty string without surrounding spaces, {_got(value)}"
        )


def _check_type(kind: type) -> _Check:
    def check(name: str, value: Any) -> None:
        if not isinstance(value, kind):
            raise ConfigError(f"{name} must be a {kind.__name__}, {_got(value)}")

    return check


def _check_flag(name: str, value: Any) -> None:
    if type(value) is not bool:
        raise ConfigError(f"{name} must be true or false, {_got(value)}")


def _check_optional_path(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, Path):
        raise ConfigError(f"{name} must be a path or None, {_got(value)}")


def _check_listen_or_off(name: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigError(f'{name} must be HOST:PORT or "off", {_got(value)}')
    try:
        parse_listen(value)
    except ConfigError as exc:
        raise ConfigError(f'{name}: {exc} (or "off")') from None


def _check_names(name: str, value: Any) -> None:
    if not isinstance(value, tuple):
        raise ConfigError(f"{name} must be a tuple of strings, {_got(value)}")
    for item in value:
        _check_text(name, item)


def _check_optional_rate(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, ThrottleSpec):
        raise ConfigError(f"{name} must be a message rate or None, {_got(value)}")


def _parse_rate(name: str, value: object, _: Path) -> ThrottleSpec:
    text = _string(name, value)
    try:
        return ThrottleSpec.parse(text)
    except ThrottleSpecError as exc:
        raise ConfigError(f"{name}: {text!r} is not a message rate: {exc}") from None


def _parse_integer(name: str, value: object, _: Path) -> object:
    if type(value) is not int:
        raise ConfigError(f"{name} must be an integer, {_got(value)}")
    return value


def _parse_text(name: str, value: object, _: Path) -> str:
    return _string(name, value)


def _parse_duration(name: str, value: object, _: Path) -> int:
    """A duration string, or a number of seconds (KumoMTA reads both), as nanoseconds."""
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except DurationError as exc:
            raise ConfigError(f"{name}: {value!r} is not a duration: {exc}") from None
    if type(value) is int and value >= 0:
        return value * NANOS_PER_SECOND
    if type(value) is float and math.isfinite(value) and value >= 0:
        # Rust's Duration::from_secs_f64 rounds to the nearest nanosecond, ties to even;
        # round() of the exact fraction does the same.
        return round(Fraction(value) * NANOS_PER_SECOND)
    raise ConfigError(
        f'{name} must be a duration string ("20m") or a number of seconds, {_got(value)}'
    )


def _parse_cidrs(name: str, value: object, _: Path) -> CidrSet:
    if not isinstance(value, list):
        raise ConfigError(f"{name} must be a list of IP addresses or CIDRs, {_got(value)}")
    try:
        return CidrSet.parse(_string(name, item) for item in value)
    except CidrError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _parse_flag(name: str, value: object, _: Path) -> object:
    _check_flag(name, value)
    return value


def _parse_names(name: str, value: object, _: Path) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{name} must be a list of strings, {_got(value)}")
    return tuple(_string(name, item) for item in value)


def _parse_path(name: str, value: object, base_dir: Path) -> Path:
    return base_dir / _string(name, value)


def _parse_listen_or_off(name: str, value: object, _: Path) -> str | None:
    text = _string(name, value)
    return None if text == "off" else text


def _parse_choice(kind: type[enum.Enum]) -> _Parse:
    def parse(name: str, value: object, _: Path) -> enum.Enum:
        for member in kind:
            if member.value == value:
                return member
        expected = ", ".join(str(member.value) for member in kind)
        raise ConfigError(f"{name} must be one of {expected}, {_got(value)}")

    return parse


class TlsPolicy(enum.Enum):
    """``enable_tls``: whether and how the SMTP client uses STARTTLS (KumoMTA's names)."""

    OPPORTUNISTIC = "Opportunistic"
    """STARTTLS when offered, certificate verified; a failed handshake fails the host."""
    OPPORTUNISTIC_INSECURE = "OpportunisticInsecure"
    """STARTTLS when offered, not verified; a failed handshake continues in clear."""
    REQUIRED = "Required"
    """STARTTLS always, verified; a host that does not offer it fails."""
    REQUIRED_INSECURE = "RequiredInsecure"
    """STARTTLS always, not verified."""
    DISABLED = "Disabled"
    """Never STARTTLS."""


class LineEndings(enum.Enum):
    """``invalid_line_endings``: what the listener does with a bare CR or LF in DATA."""

    DENY = "Deny"
    """Refuse the message: ``552 5.6.0 message data must use CRLF for line endings``."""
    ALLOW = "Allow"
    """Keep the bytes as they came."""
    FIX = "Fix"
    """Make every line end in CRLF."""


@attrs.frozen(slots=True)
class SmtpListenerSettings:
    """``[smtp_listener]``: the ESMTP listener (KumoMTA's ``start_esmtp_listener``)."""

    listen: str | None = _setting(
        default="127.0.0.1:2025", check=_check_listen_or_off, parse=_parse_listen_or_off
    )
    """HOST:PORT to listen on; ``"off"`` (None): no SMTP listener."""
    hostname: str = _setting(factory=_machine_hostname, check=_check_text, parse=_parse_text)
    """The name in the banner (``220 <hostname> KumoMTA``) and in 421 replies; default:
    this machine's host name."""
    relay_hosts: CidrSet = _setting(
        default=DEFAULT_RELAY_HOSTS, check=_check_type(CidrSet), parse=_parse_cidrs
    )
    """Peers (IP addresses or CIDRs) allowed to relay; others get ``550 5.7.1 relaying
    not permitted``. Default: ``["127.0.0.1", "::1"]``."""
    max_message_size: int = _setting(
        default=20 * 1024 * 1024, check=_check_count, parse=_parse_integer
    )
    """Bytes of DATA at most (20 MiB); over it: ``552 5.3.4 message too big``."""
    max_recipients_per_message: int = _setting(
        default=1024, check=_check_count, parse=_parse_integer
    )
    """RCPTs per transaction at most; over it: ``452 4.5.3 too many recipients``."""
    max_messages_per_connection: int = _setting(
        default=10_000, check=_check_count, parse=_parse_integer
    )
    """Accepted RCPTs per connection at most (KumoMTA counts recipients, not MAILs)."""
    max_connections: int = _setting(default=32_768, check=_check_count, parse=_parse_integer)
    """Concurrent sessions at most; over it: ``421 4.3.2 <hostname> too many concurrent
    sessions. Try later``."""
    client_timeout: int = _setting(
        default=60 * _SECOND, check=_check_timeout, parse=_parse_duration
    )
    """How long each read from the client may wait (ns; 60s); then ``421 4.3.2
    <hostname> idle too long``."""
    data_processing_timeout: int = _setting(
        default=5 * _MINUTE, check=_check_timeout, parse=_parse_duration
    )
    """How long the end of DATA may take to make the messages durable (ns; 5m)."""
    line_length_hard_limit: int = _setting(default=998, check=_check_count, parse=_parse_integer)
    """Octets per command or data line at most, CRLF excluded; over it: ``500 5.2.3
    line too long``."""
    max_errors: int = _setting(default=20, check=_check_count, parse=_parse_integer)
    """Refused commands a session may earn since its last accepted message; then ``421
    4.7.0 <hostname> too many errors`` (beyond KumoMTA: each refusal is a record)."""
    invalid_line_endings: LineEndings = _setting(
        default=LineEndings.DENY,
        check=_check_type(LineEndings),
        parse=_parse_choice(LineEndings),
    )
    """What a bare CR or LF in DATA does: ``"Deny"``, ``"Allow"`` or ``"Fix"``."""
    tls_certificate: Path | None = _setting(
        default=None, check=_check_optional_path, parse=_parse_path
    )
    """PEM certificate (relative to the config file); with :attr:`tls_private_key`,
    STARTTLS is offered. Default: none, no STARTTLS."""
    tls_private_key: Path | None = _setting(
        default=None, check=_check_optional_path, parse=_parse_path
    )
    """PEM private key of :attr:`tls_certificate`."""

    def __attrs_post_init__(self) -> None:
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise ConfigError(
                "smtp_listener.tls_certificate and smtp_listener.tls_private_key go "
                "together: set both or neither"
            )


@attrs.frozen(slots=True)
class QueueSettings:
    """``[queue]``: every scheduled queue's settings (KumoMTA's ``make_queue_config``);
    ``[domains."..."]`` overrides them per destination domain."""

    retry_interval: int = _setting(
        default=20 * _MINUTE, check=_check_interval, parse=_parse_duration
    )
    """Base of the exponential backoff (ns; 20m; whole seconds count, at least 1s)."""
    max_retry_interval: int | None = _setting(
        default=None, check=_check_optional_interval, parse=_parse_duration
    )
    """Cap on each backoff before jitter (ns); default: no cap."""
    max_age: int = _setting(
        default=7 * 86_400 * _SECOND, check=_check_timeout, parse=_parse_duration
    )
    """How long after its reception a message may still be due (ns; 7days); a message
    whose next retry would fall later expires at that failure."""
    mx_list: tuple[str, ...] = _setting(default=(), check=_check_names, parse=_parse_names)
    """Only in ``[domains."..."]``: deliver to these hosts (``host``, ``host:port``,
    ``[ip]``) in this order, without an MX lookup; empty: look up the MX."""

    @property
    def retry_policy(self) -> RetryPolicy:
        """The settings :mod:`kumo.model.retry` decides with."""
        return RetryPolicy(self.retry_interval, self.max_retry_interval, self.max_age)


def _timeout(seconds: int) -> Any:
    return _setting(default=seconds * _SECOND, check=_check_timeout, parse=_parse_duration)


@attrs.frozen(slots=True)
class EgressSettings:
    """``[egress]``: how kumo delivers to every destination (KumoMTA's
    ``make_egress_path``); ``[domains."..."]`` overrides them per destination domain.
    Time-outs are in ns; their defaults are KumoMTA's code defaults (its docs differ
    for ``idle_timeout`` and ``data_dot_timeout``)."""

    connection_limit: int = _setting(default=32, check=_check_count, parse=_parse_integer)
    """Connections per ready queue at most (on this node; fleet-wide with ``fleet_limits``)."""
    fleet_limits: bool = _setting(default=False, check=_check_flag, parse=_parse_flag)
    """``true``: ``connection_limit`` holds across the fleet, the connections of every
    node to one ready queue summed (leases in the fleet's Redis, docs/fleet.md), and so
    does ``max_message_rate`` unless its spec says ``local:``; needs ``[fleet]``.
    Default ``false``: each node keeps the limits on its own."""
    max_message_rate: ThrottleSpec | None = _setting(
        default=None, check=_check_optional_rate, parse=_parse_rate
    )
    """Messages a ready queue sends at most, as KumoMTA's throttle spec
    (``"100/s"``, ``"1,000/h,max_burst=50"``, ``"local:10/s"``;
    :class:`~kumo.model.throttle.ThrottleSpec`); checked before each message is sent.
    Default: none (no limit)."""
    max_deliveries_per_connection: int = _setting(
        default=1024, check=_check_count, parse=_parse_integer
    )
    """Messages per connection, then QUIT and a new connection."""
    max_ready: int = _setting(default=1024, check=_check_count, parse=_parse_integer)
    """Messages a ready queue holds at most; due messages beyond it wait."""
    enable_tls: TlsPolicy = _setting(
        default=TlsPolicy.OPPORTUNISTIC,
        check=_check_type(TlsPolicy),
        parse=_parse_choice(TlsPolicy),
    )
    """STARTTLS policy: ``"Opportunistic"`` (default), ``"OpportunisticInsecure"``,
    ``"Required"``, ``"RequiredInsecure"``, ``"Disabled"``."""
    smtp_port: int = _setting(default=25, check=_check_port, parse=_parse_integer)
    """Port of MX hosts; an ``mx_list`` entry's ``:port`` wins."""
    prohibited_hosts: CidrSet = _setting(
        default=DEFAULT_PROHIBITED_HOSTS, check=_check_type(CidrSet), parse=_parse_cidrs
    )
    """Addresses never connected to: a plan that holds one bounces (``550 5.4.4``).
    Default: ``["127.0.0.0/8", "::1", "0.0.0.0", "::"]``; ``[]`` to deliver to loopback."""
    ehlo_domain: str = _setting(factory=_machine_hostname, check=_check_text, parse=_parse_text)
    """The name sent with EHLO; default: this machine's host name."""
    connect_timeout: int = _timeout(60)
    """TCP connect."""
    banner_timeout: int = _timeout(60)
    """The 220 banner."""
    ehlo_timeout: int = _timeout(300)
    """The reply to EHLO."""
    mail_from_timeout: int = _timeout(300)
    """The reply to MAIL FROM."""
    rcpt_to_timeout: int = _timeout(300)
    """The reply to RCPT TO."""
    data_timeout: int = _timeout(300)
    """The reply to DATA (354)."""
    data_dot_timeout: int = _timeout(300)
    """The reply after the final dot."""
    rset_timeout: int = _timeout(5)
    """The reply to RSET."""
    idle_timeout: int = _timeout(5)
    """How long an idle connection waits for the next message; also QUIT."""
    starttls_timeout: int = _timeout(5)
    """The reply to STARTTLS."""

    @property
    def client_settings(self) -> ClientSettings:
        """What :class:`kumo.model.smtp_client.SmtpClient` decides with, from these keys."""
        return ClientSettings(
            self.ehlo_domain,
            enable_tls=TlsMode(self.enable_tls.value),
            max_deliveries_per_connection=self.max_deliveries_per_connection,
            timeouts=ClientTimeouts(
                connect=self.connect_timeout,
                banner=self.banner_timeout,
                ehlo=self.ehlo_timeout,
                starttls=self.starttls_timeout,
                rset=self.rset_timeout,
                mail_from=self.mail_from_timeout,
                rcpt_to=self.rcpt_to_timeout,
                data=self.data_timeout,
                data_dot=self.data_dot_timeout,
                idle=self.idle_timeout,
            ),
        )


def _check_nameserver_address(_: object, __: object, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"a nameserver must be an IP address, got {value!r}") from None


def _check_nameserver_port(_: object, __: object, value: int) -> None:
    _check_port("nameserver port", value)


@attrs.frozen(slots=True)
class Nameserver:
    """A DNS server: an IP address and a port."""

    address: str = attrs.field(validator=_check_nameserver_address)
    port: int = attrs.field(default=53, validator=_check_nameserver_port)

    @classmethod
    def parse(cls, text: str) -> Nameserver:
        """``IP``, ``IP:PORT`` or ``[IPv6]:PORT``; ConfigError if it is none of these."""
        try:
            return cls(str(ipaddress.ip_address(text)))
        except ValueError:
            pass
        try:
            host, port = parse_listen(text)
            return cls(str(ipaddress.ip_address(host)), port)
        except ValueError:
            raise ConfigError(
                f"{text!r} is not IP, IP:PORT or [IPv6]:PORT with a port from 1 to 65535"
            ) from None


def _parse_nameservers(name: str, value: object, _: Path) -> tuple[Nameserver, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{name} must be a list of IP or IP:PORT, {_got(value)}")
    try:
        return tuple(Nameserver.parse(_string(name, item)) for item in value)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _check_nameservers(name: str, value: Any) -> None:
    if not isinstance(value, tuple) or not all(isinstance(i, Nameserver) for i in value):
        raise ConfigError(f"{name} must be a tuple of Nameserver, {_got(value)}")


@attrs.frozen(slots=True)
class DnsSettings:
    """``[dns]``: how MX and address lookups are made."""

    nameservers: tuple[Nameserver, ...] = _setting(
        default=(), check=_check_nameservers, parse=_parse_nameservers
    )
    """The servers to ask (``"127.0.0.1:5353"``); default: the system's resolver."""

    @property
    def servers(self) -> tuple[tuple[str, int], ...]:
        """(IP, port) of each nameserver, in order, as :class:`kumo.runtime.mx.MxResolver`
        takes them; empty: the system's resolver."""
        return tuple((server.address, server.port) for server in self.nameservers)


@attrs.frozen(slots=True)
class LogSettings:
    """``[log]``: the event log over time (docs/operations.md, "Compaction")."""

    snapshot_every: int = _setting(
        default=100_000, check=_check_count_or_zero, parse=_parse_integer
    )
    """Durable events between two compactions while serving (a snapshot of the state,
    then an archive pass); 0: none while serving (``kumo compact`` still works)."""
    archive_retention: int | None = _setting(
        default=None, check=_check_optional_timeout, parse=_parse_duration
    )
    """How long the history is kept (ns; ``"90days"``); default: forever. Each
    compaction deletes the archive segments whose newest event is older than that;
    audits and ``kumo replay --verify`` then start from the state at the first event
    kept (docs/operations.md, "Compaction")."""

    def engine_settings(self) -> EngineSettings:
        """The engine's settings under this table (the rest at their defaults)."""
        return EngineSettings(
            snapshot_every=self.snapshot_every, archive_retention=self.archive_retention
        )


def _settings_fields(*records: type[Any]) -> dict[str, attrs.Attribute[Any]]:
    """The fields of ``records`` that a TOML table may set, by key."""
    return {
        field.name: field
        for record in records
        for field in attrs.fields(record)
        if _PARSE in field.metadata
    }


_SMTP_LISTENER_FIELDS: Final = _settings_fields(SmtpListenerSettings)
# mx_list names the hosts of one destination: only [domains."..."] takes it.
_QUEUE_FIELDS: Final = {
    key: field for key, field in _settings_fields(QueueSettings).items() if key != "mx_list"
}
_EGRESS_FIELDS: Final = _settings_fields(EgressSettings)
_DOMAIN_FIELDS: Final = _settings_fields(QueueSettings, EgressSettings)
_DNS_FIELDS: Final = _settings_fields(DnsSettings)
_LOG_FIELDS: Final = _settings_fields(LogSettings)
# A [domains] key must say which record it sets.
assert len(_DOMAIN_FIELDS) == len(_QUEUE_FIELDS) + 1 + len(_EGRESS_FIELDS)


def _parse_table(
    fields: Mapping[str, attrs.Attribute[Any]], table: object, path: str, base_dir: Path
) -> dict[str, Any]:
    """The values TOML ``table`` gives ``fields``, each converted and checked;
    ConfigError naming the first key that is unknown or wrong (as ``path.key``)."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{path}] must be a table")
    values: dict[str, Any] = {}
    for key, raw in table.items():
        field = fields.get(key)
        if field is None:
            expected = ", ".join(fields)
            raise ConfigError(f"unknown key {key!r} in [{path}]; expected one of {expected}")
        name = f"{path}.{key}"
        value = field.metadata[_PARSE](name, raw, base_dir)
        field.metadata[_CHECK](name, value)
        values[key] = value
    return values


_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _ascii_lower(text: str) -> str:
    # Domain names compare case-insensitively in ASCII only; str.lower() folds more.
    return text.translate(_ASCII_LOWER)


@attrs.frozen(slots=True, hash=False)
class DomainOverrides:
    """``[domains."..."]``: the keys one destination domain sets, over the defaults.

    ``queue`` holds :class:`QueueSettings` fields, ``egress`` :class:`EgressSettings`
    fields, each already converted (durations in ns, CIDR lists as :class:`CidrSet`).
    """

    queue: Mapping[str, Any] = attrs.field(factory=dict)
    egress: Mapping[str, Any] = attrs.field(factory=dict)


def _parse_domains(table: object, base_dir: Path) -> dict[str, DomainOverrides]:
    if not isinstance(table, dict):
        raise ConfigError("[domains] must be a table of domain = table of settings")
    domains: dict[str, DomainOverrides] = {}
    for domain, settings in table.items():
        path = f"domains.{_quoted_key(domain)}"
        name = _ascii_lower(domain)
        if not name:
            raise ConfigError("[domains] has an empty domain name")
        if name in domains:
            raise ConfigError(f"[domains] names {name!r} twice (domain names ignore case)")
        values = _parse_table(_DOMAIN_FIELDS, settings, path, base_dir)
        queue_keys = attrs.fields_dict(QueueSettings)
        domains[name] = DomainOverrides(
            queue={k: v for k, v in values.items() if k in queue_keys},
            egress={k: v for k, v in values.items() if k not in queue_keys},
        )
    return domains


def _quoted_key(key: str) -> str:
    """``key`` as TOML writes it in a dotted key: bare when it may be, else quoted."""
    if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key):
        return key
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


@attrs.frozen(slots=True, hash=False)
class Config:
    """Everything ``kumo serve`` needs besides the command line, with its defaults.

    docs/operations.md, "Configuration file", lists each top-level key and its default;
    the mail path's records document their own fields.
    """

    listen: str = attrs.field(default=DEFAULT_LISTEN, validator=_check_listen)
    data_dir: Path = DEFAULT_DATA_DIR
    trusted_hosts: tuple[IPNetwork, ...] = DEFAULT_TRUSTED_HOSTS
    users: Mapping[str, str] = attrs.field(factory=dict)
    """User name -> scrypt password hash."""
    tokens: Mapping[str, str] = attrs.field(factory=dict)
    """Token name -> SHA-256 token hash."""
    body_limit: int = attrs.field(default=DEFAULT_BODY_LIMIT, validator=_check_body_limit)
    admin_hold: int = attrs.field(default=100 * NANOS_PER_MILLISECOND, validator=_check_admin_hold)
    """How long at most (ns) the mail path's sessions wait, at a time, while admin
    requests are answered (``"100ms"``; ``0``: they never wait): docs/operations.md,
    "Admin requests first"."""
    deliver: bool = True
    """Deliver due messages over SMTP (``[queue]``, ``[egress]``, ``[domains]``, ``[dns]``);
    ``false`` holds every message in its scheduled queue until a rule bounces it (a
    staging node, a test)."""
    node_id: str | None = None
    smtp_listener: SmtpListenerSettings = attrs.field(factory=SmtpListenerSettings)
    queue: QueueSettings = attrs.field(factory=QueueSettings)
    """Every scheduled queue's settings; :meth:`queue_settings` applies a domain's."""
    egress: EgressSettings = attrs.field(factory=EgressSettings)
    """Every destination's settings; :meth:`egress_settings` applies a domain's."""
    domains: Mapping[str, DomainOverrides] = attrs.field(factory=dict)
    """Lower-case destination domain -> the settings it overrides."""
    dns: DnsSettings = attrs.field(factory=DnsSettings)
    log: LogSettings = attrs.field(factory=LogSettings)
    fleet: FleetSettings | None = None
    """``[fleet]``: the fleet this node joins; None (the default): it runs alone."""
    _by_domain: dict[str, tuple[QueueSettings, EgressSettings]] = attrs.field(
        init=False, factory=dict, eq=False, repr=False
    )
    """Each domain's merged settings, made once here so that a lookup is a dict read."""

    def __attrs_post_init__(self) -> None:
        for domain, overrides in self.domains.items():
            if domain != _ascii_lower(domain):
                raise ConfigError(f"domains: {domain!r} must be written in lower case")
            self._by_domain[domain] = (
                _evolve(self.queue, overrides.queue, domain),
                _evolve(self.egress, overrides.egress, domain),
            )
        if self.fleet is None:
            # Leases live in the fleet's Redis: without one the limit could only be
            # this node's, which is not what the key asks for.
            if self.egress.fleet_limits:
                raise ConfigError(
                    "egress.fleet_limits = true needs [fleet] (the fleet's Redis keeps "
                    'the connection leases): add [fleet] redis = "redis://HOST:PORT/DB"'
                )
            for domain, overrides in self.domains.items():
                if overrides.egress.get("fleet_limits"):
                    raise ConfigError(
                        f"domains.{_quoted_key(domain)}.fleet_limits = true needs [fleet] "
                        "(the fleet's Redis keeps the connection leases): add [fleet] "
                        'redis = "redis://HOST:PORT/DB"'
                    )

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]

    def engine_settings(self) -> EngineSettings:
        """The engine's settings under this config: ``[log]``'s and ``admin_hold``."""
        return attrs.evolve(
            self.log.engine_settings(), admin_hold=self.admin_hold / NANOS_PER_SECOND
        )

    def access_policy(self) -> AccessPolicy:
        """The access decisions this configuration asks for."""
        return AccessPolicy(self.trusted_hosts, self.users, self.tokens)

    def queue_settings(self, domain: str) -> QueueSettings:
        """The scheduled-queue settings for mail to ``domain`` (any case): ``[queue]``
        with the keys ``[domains."<domain>"]`` sets in their place. Pure and cheap
        (a dict read); :attr:`queue` itself for a domain that sets none of them."""
        merged = self._by_domain.get(_ascii_lower(domain))
        return self.queue if merged is None else merged[0]

    def egress_settings(self, domain: str) -> EgressSettings:
        """The delivery settings for mail to ``domain`` (any case): ``[egress]`` with
        the keys ``[domains."<domain>"]`` sets in their place, as :meth:`queue_settings`."""
        merged = self._by_domain.get(_ascii_lower(domain))
        return self.egress if merged is None else merged[1]


@overload
def _evolve(record: QueueSettings, overrides: Mapping[str, Any], domain: str) -> QueueSettings: ...
@overload
def _evolve(
    record: EgressSettings, overrides: Mapping[str, Any], domain: str
) -> EgressSettings: ...
def _evolve(
    record: QueueSettings | EgressSettings, overrides: Mapping[str, Any], domain: str
) -> QueueSettings | EgressSettings:
    if not overrides:
        return record
    try:
        return attrs.evolve(record, **overrides)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"domains.{_quoted_key(domain)}: {exc}") from None


_KEYS: Final = (
    "listen",
    "data_dir",
    "admin_hold",
    "deliver",
    "node_id",
    "body_limit",
    "trusted_hosts",
    "users",
    "tokens",
    "smtp_listener",
    "queue",
    "egress",
    "domains",
    "dns",
    "log",
    "fleet",
)


def _string(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def _secrets(key: str, value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table of name = hash")
    return {name: _string(f"{key}.{name}", item) for name, item in value.items()}


def _networks(value: object) -> tuple[IPNetwork, ...]:
    if not isinstance(value, list):
        raise ConfigError("trusted_hosts must be a list of IP addresses or CIDRs")
    networks = []
    for item in value:
        try:
            networks.append(parse_network(_string("trusted_hosts", item)))
        except ValueError as exc:
            raise ConfigError(f"trusted_hosts: {exc}") from None
    return tuple(networks)


def _node_id(value: object) -> str:
    try:
        return str(uuid.UUID(_string("node_id", value)))
    except ValueError:
        raise ConfigError(f"node_id must be a UUID, got {value!r}") from None


_FLEET_KEYS: Final = ("redis", "stream")


def _fleet(table: object) -> FleetSettings:
    """``[fleet]``: ``redis`` (required) and ``stream``; ConfigError naming the key."""
    if not isinstance(table, dict):
        raise ConfigError("[fleet] must be a table")
    for key in table:
        if key not in _FLEET_KEYS:
            raise ConfigError(
                f"unknown key {key!r} in [fleet]; expected one of {', '.join(_FLEET_KEYS)}"
            )
    if "redis" not in table:
        raise ConfigError('[fleet] needs redis = "redis://HOST:PORT/DB"')
    redis = _string("fleet.redis", table["redis"])
    try:
        check_redis_url(redis)
    except RedisUrlError as exc:
        raise ConfigError(f"fleet.redis: {exc}") from None
    stream = _string("fleet.stream", table.get("stream", DEFAULT_STREAM))
    try:
        return FleetSettings(redis, stream)
    except ValueError as exc:
        raise ConfigError(f"fleet.stream: {exc}") from None


def parse_config(text: str, *, base_dir: Path) -> Config:
    """The configuration in TOML ``text``; relative paths are relative to ``base_dir``.

    Raises :class:`ConfigError` naming the first key that is wrong.
    """
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not TOML: {exc}") from None
    return parse_config_data(data, base_dir=base_dir)


def parse_config_data(data: Mapping[str, Any], *, base_dir: Path) -> Config:
    """The configuration of ``data``, a TOML document already read (a scenario's
    ``[config]`` table is one); otherwise as :func:`parse_config`."""
    for key in data:
        if key not in _KEYS:
            expected = ", ".join(_KEYS)
            raise ConfigError(f"unknown key {key!r} in config; expected one of {expected}")
    values: dict[str, Any] = {}
    if "listen" in data:
        values["listen"] = _string("listen", data["listen"])
    if "data_dir" in data:
        values["data_dir"] = base_dir / _string("data_dir", data["data_dir"])
    if "node_id" in data:
        values["node_id"] = _node_id(data["node_id"])
    if "body_limit" in data:
        values["body_limit"] = data["body_limit"]
    if "admin_hold" in data:
        values["admin_hold"] = _parse_duration("admin_hold", data["admin_hold"], base_dir)
    if "deliver" in data:
        if type(data["deliver"]) is not bool:
            raise ConfigError(f"deliver must be true or false, got {data['deliver']!r}")
        values["deliver"] = data["deliver"]
    if "trusted_hosts" in data:
        values["trusted_hosts"] = _networks(data["trusted_hosts"])
    for key in ("users", "tokens"):
        if key in data:
            values[key] = _secrets(key, data[key])
    tables = (
        ("smtp_listener", SmtpListenerSettings, _SMTP_LISTENER_FIELDS),
        ("queue", QueueSettings, _QUEUE_FIELDS),
        ("egress", EgressSettings, _EGRESS_FIELDS),
        ("dns", DnsSettings, _DNS_FIELDS),
        ("log", LogSettings, _LOG_FIELDS),
    )
    for key, record, fields in tables:
        if key in data:
            values[key] = record(**_parse_table(fields, data[key], key, base_dir))
    if "domains" in data:
        values["domains"] = _parse_domains(data["domains"], base_dir)
    if "fleet" in data:
        values["fleet"] = _fleet(data["fleet"])
    config = Config(**values)
    try:
        config.access_policy()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return config


def load_config(path: Path) -> Config:
    """The configuration in the TOML file at ``path``; ConfigError if it is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return parse_config(text, base_dir=path.parent)


_USAGE: Final = """\
usage: python -m kumo.config hash-password [NAME]   read a password, print a [users] line
       python -m kumo.config hash-token [NAME]      make a token, print it and a [tokens] line
"""


def main(argv: Sequence[str] | None = None) -> int:
    """``hash-password``: read a password (twice, without echo; or one line from a pipe)
    and print ``NAME = "<hash>"``. ``hash-token``: draw a random token, print it once
    (give it to the client) and the line for ``[tokens]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("hash-password", "hash-token") or len(args) > 2:
        sys.stderr.write(_USAGE)
        return 2
    command, name = args[0], (args[1] if len(args) > 1 else "name")
    if command == "hash-token":
        token = secrets.token_urlsafe(32)
        print(f"token: {token}")
        print(f'{name} = "{hash_token(token)}"')
        return 0
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            sys.stderr.write("the passwords differ\n")
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        sys.stderr.write("an empty password is refused\n")
        return 1
    print(f'{name} = "{hash_password(password)}"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

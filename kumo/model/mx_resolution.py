"""What a destination domain resolves to: its hosts, their addresses, its site name, or why not.

The DNS lookups are the runtime's (:mod:`kumo.runtime.mx`); this module turns their answers
into the values the rest of the mail path decides with, the way KumoMTA does (reference
``kumomta-mail-path.md`` sections 2.1, 3.1 and 1.6; ``mailexchanger`` in its source):

* MX records give the hosts, ordered by :func:`~kumo.model.ready_queue.order_mx_records`
  and named as DNS wrote them (lower-case, with the trailing dot); no MX record (NODATA)
  makes the domain its own host, the implicit MX; a domain literal (``[10.0.0.1]``) is its
  own address and site;
* an ``mx_list`` (a domain's configured smarthosts) replaces the MX lookup: its entries
  are tried in the order written, each with its own ``:port`` if it has one;
* each host's A and AAAA addresses become the :class:`~kumo.model.ready_queue.ResolvedAddress`
  candidates of :func:`~kumo.model.ready_queue.connection_plan`; a host whose addresses
  cannot be looked up contributes none (KumoMTA logs it and goes on), so that a
  destination whose every host failed has an empty plan, ``451 4.4.4 MX didn't resolve
  to any hosts``;
* a failed MX lookup (NXDOMAIN, SERVFAIL, a time-out) is a :class:`ResolutionFailure`:
  transient, ``451 4.4.4 failed to resolve queue <queue>: <error>``, until the message
  expires. Only a null MX (:attr:`Destination.null_mx`) bounces, ``556 5.1.10``.

Everything here is a function of values; nothing raises for what DNS says.
"""

from __future__ import annotations

import enum
import ipaddress
import random
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, TypeAlias

import attrs

from kumo.model.cidr_set import CidrSet, IPAddress, rust_ip_text
from kumo.model.ready_queue import (
    NULL_MX,
    PlanFailure,
    ResolvedAddress,
    check_plan,
    connection_plan,
    is_null_mx,
    mx_list_site_name,
    mx_site_name,
    order_mx_records,
    ready_queue_name,
)
from kumo.model.smtp_client import format_rust_duration

__all__ = [
    "IMPLICIT_MX_PREFERENCE",
    "Destination",
    "DnsErrorKind",
    "HostSource",
    "MxHost",
    "Resolution",
    "ResolutionFailure",
    "destination",
    "host_and_port",
    "implicit_mx_host",
    "literal_address",
    "literal_destination",
    "mx_hosts",
    "mx_list_failure",
    "mx_list_hosts",
    "mx_lookup_failure",
]

IMPLICIT_MX_PREFERENCE: Final = 1
"""The preference KumoMTA gives the implicit MX (and a domain literal)."""

_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


class HostSource(enum.Enum):
    """Where a destination's hosts came from."""

    MX = "mx"
    """MX records."""
    IMPLICIT_MX = "implicit_mx"
    """No MX record: the domain itself (RFC 5321 5.1)."""
    DOMAIN_LITERAL = "domain_literal"
    """The domain is an address in brackets; no lookup."""
    MX_LIST = "mx_list"
    """The domain's configured ``mx_list``; no MX lookup."""


def _check_preference(_: object, __: object, value: int) -> None:
    if type(value) is not int or not 0 <= value <= 65535:
        raise ValueError(f"preference must be an int in 0..65535, got {value!r}")


def _check_optional_port(_: object, __: object, value: int | None) -> None:
    if value is not None and (type(value) is not int or not 0 <= value <= 65535):
        raise ValueError(f"port must be None or an int in 0..65535, got {value!r}")


@attrs.frozen(slots=True)
class MxHost:
    """One host a destination may be delivered to, before its addresses are known."""

    preference: int = attrs.field(validator=_check_preference)
    """Lowest first; an ``mx_list`` entry's is its position in the list."""
    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    """As DNS wrote it, lower-case with its trailing dot (``mx1.example.com.``); ``.``
    for a null MX; an ``mx_list`` entry's host part as written (``localhost``,
    ``[10.0.0.1]``)."""
    port: int | None = attrs.field(default=None, validator=_check_optional_port)
    """An ``mx_list`` entry's ``:port``; otherwise None (``smtp_port`` applies)."""

    @property
    def address(self) -> IPAddress | None:
        """The address the name itself is (an IP, or a literal in brackets), which
        needs no lookup; None for a name to look up (and for a null MX)."""
        return literal_address(self.name)


@attrs.frozen(slots=True)
class Destination:
    """Where mail for a domain goes: its hosts, their addresses and its site name."""

    domain: str
    """The destination (routing) domain as asked, or the ``mx_list`` site's domain."""
    source: HostSource
    site_name: str
    """Names the ready queue (:attr:`ready_queue`): the factored MX host names, the
    literal's IP, or ``mx_list:<entries>``."""
    hosts: tuple[MxHost, ...]
    """In the order KumoMTA reads them (preference, then name; an ``mx_list`` as written)."""
    addresses: tuple[tuple[int, ResolvedAddress], ...]
    """Each address with its host's preference, hosts in :attr:`hosts` order and each
    host's addresses in the order DNS gave them (A before AAAA): the input of
    :meth:`plan`. An ``mx_list``'s addresses are numbered 0, 1, 2... instead, so that
    the plan keeps them exactly in that order."""
    unresolved: tuple[str, ...] = ()
    """``<host>: <error>`` for each host whose addresses could not be looked up (it
    contributes none)."""

    @property
    def null_mx(self) -> bool:
        """Whether the domain publishes a null MX (RFC 7505): it accepts no mail."""
        return is_null_mx(host.name for host in self.hosts)

    @property
    def ready_queue(self) -> str:
        """The name of the ready queue its mail waits in (``unspecified-><site>@smtp_client``)."""
        return ready_queue_name(self.site_name)

    def plan(self, rng: random.Random) -> tuple[ResolvedAddress, ...]:
        """The addresses one connection tries, in order: lowest preference first,
        shuffled within a preference with ``rng``."""
        return connection_plan(self.addresses, rng)

    def check(
        self, plan: Sequence[ResolvedAddress], prohibited_hosts: CidrSet
    ) -> PlanFailure | None:
        """Why no connection may be made for ``plan`` (from :meth:`plan`), or None.

        A null MX bounces (``556 5.1.10``) whatever else; then
        :func:`~kumo.model.ready_queue.check_plan`: an empty plan is transient, an
        address on ``prohibited_hosts`` bounces.
        """
        if self.null_mx:
            return NULL_MX
        return check_plan(plan, prohibited_hosts)


class DnsErrorKind(enum.Enum):
    """Why a lookup failed."""

    NXDOMAIN = "NXDOMAIN"
    """The name does not exist."""
    SERVFAIL = "SERVFAIL"
    """The server could not answer (a broken or unreachable authority, DNSSEC)."""
    REFUSED = "REFUSED"
    """The server would not answer."""
    TIMEOUT = "timeout"
    """No answer in time."""
    OTHER = "other"
    """Anything else: a name that cannot be a DNS name, no usable server, a network error."""


@attrs.frozen(slots=True)
class ResolutionFailure:
    """A destination whose hosts could not be found: every message for it fails
    transiently (:meth:`response`) and waits for its next retry."""

    domain: str
    kind: DnsErrorKind
    error: str
    """KumoMTA's shape: ``MX lookup for example.com failed after 12ms: NXDOMAIN``."""
    site_name: str
    """``NXDOMAIN:<domain>`` or ``DNSFAIL:<domain>`` (KumoMTA's name for the site of a
    scheduled queue whose MX lookup failed), or the ``mx_list`` site."""

    @property
    def permanent(self) -> bool:
        """Always False: a DNS failure never bounces (reference section 0, point 9)."""
        return False

    def response(self, queue: str) -> PlanFailure:
        """The TransientFailure a message of scheduled queue ``queue`` gets:
        ``451 4.4.4 failed to resolve queue <queue>: <error>`` (no ``KumoMTA internal``)."""
        return PlanFailure(451, (4, 4, 4), f"failed to resolve queue {queue}: {self.error}")


Resolution: TypeAlias = Destination | ResolutionFailure
"""What resolving a destination gives: where to connect, or why not (never an exception)."""


# -- names ---------------------------------------------------------------------------------


def _ascii_lower(text: str) -> str:
    # DNS names fold case in ASCII only.
    return text.translate(_ASCII_LOWER)


def literal_address(name: str) -> IPAddress | None:
    """The address ``name`` is without a lookup, or None.

    ``[10.0.0.1]``, ``[IPv6:::1]`` (RFC 5321 address literals, any case), a bare
    ``[::1]`` and a bare IP (as KumoMTA also takes them).
    """
    text = name
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
        if _ascii_lower(text[:5]) == "ipv6:":
            text = text[5:]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def host_and_port(entry: str) -> tuple[str, int | None]:
    """An ``mx_list`` entry as (host, port): ``mx.example.com:2525``,
    ``127.0.0.1:2600``, ``[::1]:25``; an entry without a port, or whose part after the
    last colon is not a port (a bare IPv6 address), is all host."""
    host, colon, port_text = entry.rpartition(":")
    if not colon or not host or not (port_text.isascii() and port_text.isdigit()):
        return entry, None
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return entry, None  # a bare IPv6 address: its last group is not a port
    port = int(port_text)
    if port > 65535:
        return entry, None
    return host, port


def implicit_mx_host(domain: str) -> MxHost:
    """The host of a domain without MX records: itself, lower-case and absolute."""
    name = _ascii_lower(domain)
    return MxHost(IMPLICIT_MX_PREFERENCE, name if name.endswith(".") else name + ".")


def mx_hosts(
    domain: str, records: Iterable[tuple[int, str]]
) -> tuple[HostSource, tuple[MxHost, ...]]:
    """The hosts of ``domain`` given its MX ``records`` (preference, exchange as DNS
    wrote it): sorted as KumoMTA sorts them, or the implicit MX when there are none."""
    ordered = order_mx_records(records)
    if not ordered:
        return HostSource.IMPLICIT_MX, (implicit_mx_host(domain),)
    return HostSource.MX, tuple(MxHost(preference, name) for preference, name in ordered)


def mx_list_hosts(entries: Sequence[str]) -> tuple[MxHost, ...]:
    """The hosts of an ``mx_list``, each preferred in the order written (so that
    :func:`~kumo.model.ready_queue.connection_plan` keeps that order)."""
    hosts = []
    for position, entry in enumerate(entries):
        host, port = host_and_port(entry)
        hosts.append(MxHost(min(position, 65535), host, port))
    return tuple(hosts)


def _site_name(
    source: HostSource, domain: str, hosts: Sequence[MxHost], entries: Sequence[str]
) -> str:
    if source is HostSource.MX_LIST:
        return mx_list_site_name(entries)
    if source is HostSource.DOMAIN_LITERAL:
        address = literal_address(domain)
        assert address is not None
        return rust_ip_text(address)
    return mx_site_name(host.name for host in hosts)


def destination(
    domain: str,
    source: HostSource,
    hosts: Sequence[MxHost],
    addresses: Mapping[str, Sequence[IPAddress]],
    *,
    unresolved: Sequence[str] = (),
    mx_list: Sequence[str] = (),
) -> Destination:
    """The destination whose ``hosts`` have ``addresses`` (host name -> its looked-up
    addresses; a host that is an address needs no entry, a host with none has none).

    ``mx_list`` is the configured list for :attr:`HostSource.MX_LIST` (its site name is
    made of the entries as written).
    """
    candidates: list[tuple[int, ResolvedAddress]] = []
    for host in hosts:
        if host.name == ".":
            continue
        own = host.address
        found: Sequence[IPAddress] = (own,) if own is not None else addresses.get(host.name, ())
        for address in found:
            # An mx_list is tried exactly as written, each name's addresses in the order
            # DNS gave them: one preference per address, so that none is shuffled.
            preference = len(candidates) if source is HostSource.MX_LIST else host.preference
            candidates.append((preference, ResolvedAddress(host.name, address, host.port)))
    return Destination(
        domain=domain,
        source=source,
        site_name=_site_name(source, domain, hosts, mx_list),
        hosts=tuple(hosts),
        addresses=tuple(candidates),
        unresolved=tuple(unresolved),
    )


def literal_destination(domain: str) -> Destination | None:
    """The destination of a domain literal (``[10.0.0.1]``): its address, its IP as the
    site name; None if ``domain`` is not one."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    address = literal_address(domain)
    if address is None:
        return None
    host = MxHost(IMPLICIT_MX_PREFERENCE, domain)
    return destination(domain, HostSource.DOMAIN_LITERAL, (host,), {})


def _failure_site(kind: DnsErrorKind, domain: str) -> str:
    label = "NXDOMAIN" if kind is DnsErrorKind.NXDOMAIN else "DNSFAIL"
    return f"{label}:{_ascii_lower(domain).removesuffix('.')}"


def mx_lookup_failure(
    domain: str, kind: DnsErrorKind, detail: str, elapsed_nanos: int
) -> ResolutionFailure:
    """The MX lookup of ``domain`` failed after ``elapsed_nanos`` for ``detail``:
    ``MX lookup for <domain> failed after <elapsed>: <detail>``, as KumoMTA words it."""
    elapsed = format_rust_duration(max(0, elapsed_nanos))
    return ResolutionFailure(
        domain=domain,
        kind=kind,
        error=f"MX lookup for {domain} failed after {elapsed}: {detail}",
        site_name=_failure_site(kind, domain),
    )


def mx_list_failure(
    domain: str, entries: Sequence[str], entry: str, kind: DnsErrorKind, detail: str
) -> ResolutionFailure:
    """An ``mx_list`` entry's name could not be looked up: KumoMTA then gives up the
    whole list (``resolving mx_list entry <entry>: <detail>``)."""
    return ResolutionFailure(
        domain=domain,
        kind=kind,
        error=f"resolving mx_list entry {entry}: {detail}",
        site_name=mx_list_site_name(entries),
    )

"""MX resolution under Trio: dnspython's async resolver, its answers as model values.

:meth:`MxResolver.resolve` asks DNS what :mod:`kumo.model.mx_resolution` needs to
know of a destination, and returns what that module makes of it: a
:class:`~kumo.model.mx_resolution.Destination` (hosts, addresses, site name; the input of
the connection plan) or a :class:`~kumo.model.mx_resolution.ResolutionFailure`. What DNS
says never raises: NXDOMAIN, SERVFAIL, REFUSED, a time-out, a name that cannot be a DNS
name all come back as a failure, which is transient (reference section 0, point 9); a
null MX comes back as a destination whose ``null_mx`` is true, which bounces.

dnspython runs under Trio: its ``dns.asyncresolver`` picks its backend with sniffio, and
its Trio backend does every wait with ``trio`` primitives (so a lookup is cancellable
like any other Trio call). Each lookup is also bounded here by ``timeout`` on Trio's
clock, since dnspython's own lifetime is measured on the wall clock.

How a destination is looked up, as KumoMTA does:

* a domain literal (``[10.0.0.1]``): no lookup;
* an ``mx_list``: no MX lookup; each entry that is a name is looked up (A and AAAA), and
  an entry whose lookup fails fails the whole list;
* otherwise MX; no MX record (NODATA) means the domain itself (implicit MX); then A and
  AAAA of every host at once, A addresses first. A host whose lookups both fail
  contributes no address and is named in ``unresolved``.

There is no cache here: each call asks the servers (KumoMTA caches by TTL; whoever calls
this decides how often to ask).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Final

import attrs
import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rdtypes.ANY.MX
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver
import trio

from kumo.model.cidr_set import IPAddress
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.mx_resolution import (
    DnsErrorKind,
    HostSource,
    MxHost,
    Resolution,
    destination,
    literal_destination,
    mx_hosts,
    mx_list_failure,
    mx_list_hosts,
    mx_lookup_failure,
)
from kumo.model.statistics import counter

__all__ = ["DEFAULT_TIMEOUT", "MxResolver", "MxResolverStatistics"]

DEFAULT_TIMEOUT: Final = 5 * NANOS_PER_SECOND
"""How long one lookup may take (KumoMTA's MX time-out)."""

TIMED_OUT: Final = "deadline has elapsed"
"""The detail of a lookup that took too long (the text KumoMTA's time-out prints)."""

_PER_SERVER_TIMEOUT: Final = 2.0
"""Seconds dnspython waits for one server before it asks the next (its default)."""


@attrs.frozen
class _Failed:
    kind: DnsErrorKind
    detail: str


@attrs.frozen
class MxResolverStatistics:
    """What the resolver has asked."""

    lookups: int = counter("DNS queries made for MX resolution (MX, A and AAAA).")
    failures: int = counter("DNS queries that failed (not NODATA): NXDOMAIN, errors, time-outs.")


def _failure_of(error: Exception) -> _Failed:
    """What a dnspython exception means, as data."""
    if isinstance(error, dns.resolver.NXDOMAIN):
        return _Failed(DnsErrorKind.NXDOMAIN, "NXDOMAIN")
    if isinstance(error, dns.resolver.LifetimeTimeout | dns.exception.Timeout):
        return _Failed(DnsErrorKind.TIMEOUT, TIMED_OUT)
    if isinstance(error, dns.resolver.NoNameservers):
        rcodes = set()
        attempts = error.kwargs.get("errors") or ()
        for attempt in attempts:
            response = attempt[-1]
            if isinstance(response, dns.message.Message):
                rcodes.add(response.rcode())
        if attempts and all(isinstance(a[3], dns.exception.Timeout) for a in attempts):
            return _Failed(DnsErrorKind.TIMEOUT, TIMED_OUT)
        if dns.rcode.SERVFAIL in rcodes:
            return _Failed(DnsErrorKind.SERVFAIL, str(error))
        if dns.rcode.REFUSED in rcodes:
            return _Failed(DnsErrorKind.REFUSED, str(error))
        return _Failed(DnsErrorKind.OTHER, str(error))
    return _Failed(DnsErrorKind.OTHER, str(error) or type(error).__name__)


class MxResolver:
    """Resolves destinations; see the module docstring. Safe to share between tasks."""

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] = (),
        *,
        timeout: int = DEFAULT_TIMEOUT,
    ) -> None:
        """``nameservers``: (IP, port) of the servers to ask, in order (``[dns]``); empty:
        the system's, read from ``/etc/resolv.conf`` here (a blocking read, once, at
        start). ``timeout``: ns one lookup may take."""
        if type(timeout) is not int or timeout <= 0:
            raise ValueError(f"timeout must be a positive int of nanoseconds, got {timeout!r}")
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(address, port) for address, port in nameservers
            ]
        else:
            resolver = dns.asyncresolver.Resolver()
        seconds = timeout / NANOS_PER_SECOND
        resolver.lifetime = seconds
        resolver.timeout = min(seconds, _PER_SERVER_TIMEOUT)
        resolver.cache = None
        self._resolver = resolver
        self._timeout = seconds
        self._lookups = 0
        self._failures = 0

    def statistics(self) -> MxResolverStatistics:
        return MxResolverStatistics(lookups=self._lookups, failures=self._failures)

    async def resolve(self, domain: str, *, mx_list: Sequence[str] = ()) -> Resolution:
        """Where mail for ``domain`` goes, or why that cannot be known now.

        ``mx_list``: the domain's configured hosts (``host``, ``host:port``,
        ``[ip]``), used instead of its MX records. Never raises for what DNS answers;
        cancellable (nothing is left behind).
        """
        if mx_list:
            return await self._resolve_mx_list(domain, mx_list)
        literal = literal_destination(domain)
        if literal is not None:
            return literal
        started = trio.current_time()
        try:
            name = dns.name.from_text(domain)
        except dns.exception.DNSException as error:
            return mx_lookup_failure(domain, DnsErrorKind.OTHER, str(error), 0)
        answer = await self._query(name, dns.rdatatype.MX)
        if isinstance(answer, _Failed):
            elapsed = round((trio.current_time() - started) * NANOS_PER_SECOND)
            return mx_lookup_failure(domain, answer.kind, answer.detail, elapsed)
        source, hosts = mx_hosts(name.to_text(), _mx_records(answer))
        found, failed = await self._addresses(hosts)
        unresolved = [f"{host}: {failure.detail}" for host, failure in failed.items()]
        return destination(domain, source, hosts, found, unresolved=unresolved)

    async def _resolve_mx_list(self, domain: str, entries: Sequence[str]) -> Resolution:
        hosts = mx_list_hosts(entries)
        found, failed = await self._addresses(hosts)
        for host in hosts:
            failure = failed.get(host.name)
            if failure is not None:
                entry = entries[hosts.index(host)]
                return mx_list_failure(domain, entries, entry, failure.kind, failure.detail)
        return destination(domain, HostSource.MX_LIST, hosts, found, mx_list=entries)

    async def _addresses(
        self, hosts: Iterable[MxHost]
    ) -> tuple[dict[str, tuple[IPAddress, ...]], dict[str, _Failed]]:
        """A and AAAA of every host that is a name, all at once: the addresses of each
        name, and why each name that has none could not be looked up."""
        names = list(dict.fromkeys(h.name for h in hosts if h.name != "." and h.address is None))
        found: dict[str, tuple[IPAddress, ...]] = {}
        failed: dict[str, _Failed] = {}

        async def look_up(text: str) -> None:
            try:
                name = dns.name.from_text(text)
            except dns.exception.DNSException as error:
                failed[text] = _Failed(DnsErrorKind.OTHER, str(error))
                return
            answers: dict[dns.rdatatype.RdataType, list[IPAddress] | _Failed] = {}

            async def query(rdtype: dns.rdatatype.RdataType) -> None:
                answer = await self._query(name, rdtype)
                if isinstance(answer, _Failed):
                    answers[rdtype] = answer
                else:
                    answers[rdtype] = _addresses_of(answer)

            async with trio.open_nursery() as both:
                both.start_soon(query, dns.rdatatype.A)
                both.start_soon(query, dns.rdatatype.AAAA)
            v4, v6 = answers[dns.rdatatype.A], answers[dns.rdatatype.AAAA]
            if isinstance(v4, _Failed) and isinstance(v6, _Failed):
                failed[text] = v4
                return
            found[text] = tuple(
                (v4 if isinstance(v4, list) else []) + (v6 if isinstance(v6, list) else [])
            )

        async with trio.open_nursery() as lookups:
            for text in names:
                lookups.start_soon(look_up, text)
        return found, failed

    async def _query(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> list[dns.rdata.Rdata] | _Failed:
        """The records of one query (``[]`` for NODATA), or why there are none."""
        self._lookups += 1
        result: list[dns.rdata.Rdata] | _Failed = _Failed(DnsErrorKind.TIMEOUT, TIMED_OUT)
        with trio.move_on_after(self._timeout):
            try:
                answer = await self._resolver.resolve(
                    name, rdtype, raise_on_no_answer=False, search=False
                )
            except (dns.exception.DNSException, OSError) as error:
                result = _failure_of(error)
            else:
                result = list(answer.rrset or ())
        if isinstance(result, _Failed):
            self._failures += 1
        return result


def _mx_records(records: Iterable[dns.rdata.Rdata]) -> list[tuple[int, str]]:
    return [
        (rdata.preference, rdata.exchange.to_text())
        for rdata in records
        if isinstance(rdata, dns.rdtypes.ANY.MX.MX)
    ]


def _addresses_of(records: Iterable[dns.rdata.Rdata]) -> list[IPAddress]:
    return [
        ipaddress.ip_address(rdata.address)
        for rdata in records
        if isinstance(rdata, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA)
    ]

"""Tests for kumo.model.mx_resolution: what DNS answers become, without DNS."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.cidr_set import DEFAULT_PROHIBITED_HOSTS
from kumo.model.mx_resolution import (
    DnsErrorKind,
    HostSource,
    MxHost,
    destination,
    host_and_port,
    implicit_mx_host,
    literal_address,
    literal_destination,
    mx_hosts,
    mx_list_failure,
    mx_list_hosts,
    mx_lookup_failure,
)
from kumo.model.ready_queue import MX_RESOLVED_TO_NO_HOSTS, NULL_MX, PlanFailure, ResolvedAddress


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("mx.example.com", ("mx.example.com", None)),
        ("mx.example.com:2525", ("mx.example.com", 2525)),
        ("127.0.0.1:2600", ("127.0.0.1", 2600)),
        ("[::1]:25", ("[::1]", 25)),
        ("::1", ("::1", None)),
        ("2001:db8::25", ("2001:db8::25", None)),
        ("host:99999", ("host:99999", None)),
        ("host:", ("host:", None)),
        (":25", (":25", None)),
        ("host:２５", ("host:２５", None)),
    ],
)
def test_host_and_port(entry: str, expected: tuple[str, int | None]) -> None:
    assert host_and_port(entry) == expected


@given(st.text())
def test_host_and_port_never_raises_and_keeps_the_entry(entry: str) -> None:
    host, port = host_and_port(entry)
    assert (host if port is None else f"{host}:{port}") == entry or (
        port is not None and entry.startswith(host + ":")
    )
    assert port is None or 0 <= port <= 65535


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("[10.0.0.1]", "10.0.0.1"),
        ("[IPv6:2001:db8::1]", "2001:db8::1"),
        ("[ipv6:::1]", "::1"),
        ("[::1]", "::1"),
        ("10.0.0.1", "10.0.0.1"),
        ("mx.example.com.", None),
        ("[mx.example.com]", None),
        (".", None),
        ("", None),
    ],
)
def test_literal_address(name: str, expected: str | None) -> None:
    assert literal_address(name) == (None if expected is None else ip(expected))


def test_mx_hosts_are_sorted_lower_case_and_an_empty_answer_is_the_implicit_mx() -> None:
    source, hosts = mx_hosts(
        "example.com.", [(20, "B.example.com."), (10, "mx2.example.com."), (10, "MX1.example.com.")]
    )
    assert source is HostSource.MX
    assert hosts == (
        MxHost(10, "mx1.example.com."),
        MxHost(10, "mx2.example.com."),
        MxHost(20, "b.example.com."),
    )
    assert mx_hosts("Example.COM.", []) == (HostSource.IMPLICIT_MX, (MxHost(1, "example.com."),))
    assert implicit_mx_host("example.com") == MxHost(1, "example.com.")


def test_a_destination_from_mx_hosts() -> None:
    source, hosts = mx_hosts(
        "example.com.", [(10, "mx1.example.com."), (10, "mx2.example.com."), (20, "10.9.9.9")]
    )
    result = destination(
        "example.com",
        source,
        hosts,
        {"mx1.example.com.": [ip("10.0.0.1"), ip("2001:db8::1")], "mx2.example.com.": []},
        unresolved=["mx2.example.com.: SERVFAIL"],
    )
    # An MX that is an address (RFC 5321 forbids it; it happens) needs no lookup.
    assert result.addresses == (
        (10, ResolvedAddress("mx1.example.com.", ip("10.0.0.1"))),
        (10, ResolvedAddress("mx1.example.com.", ip("2001:db8::1"))),
        (20, ResolvedAddress("10.9.9.9", ip("10.9.9.9"))),
    )
    assert result.unresolved == ("mx2.example.com.: SERVFAIL",)
    assert not result.null_mx
    plan = result.plan(random.Random(1))
    assert plan[-1].address == ip("10.9.9.9")
    assert result.check(plan, DEFAULT_PROHIBITED_HOSTS) is None


def test_the_site_name_factors_the_mx_host_names() -> None:
    source, hosts = mx_hosts(
        "gmail.com.",
        [(5, "gmail-smtp-in.l.google.com.")]
        + [(10 * n, f"alt{n}.gmail-smtp-in.l.google.com.") for n in range(1, 5)],
    )
    result = destination("gmail.com", source, hosts, {})
    assert result.site_name == "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"
    assert result.ready_queue == (
        "unspecified->(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com@smtp_client"
    )


def test_a_null_mx_bounces_before_any_other_check() -> None:
    source, hosts = mx_hosts("example.com.", [(0, ".")])
    result = destination("example.com", source, hosts, {})
    assert result.null_mx
    assert result.addresses == ()
    assert result.check((), DEFAULT_PROHIBITED_HOSTS) == NULL_MX


def test_no_address_at_all_is_transient() -> None:
    source, hosts = mx_hosts("example.com.", [(10, "mx.example.com.")])
    result = destination("example.com", source, hosts, {})
    assert result.check(result.plan(random.Random(0)), DEFAULT_PROHIBITED_HOSTS) == (
        MX_RESOLVED_TO_NO_HOSTS
    )


def test_an_mx_list_keeps_its_order_address_by_address() -> None:
    entries = ["smart.example.net:2525", "[10.0.0.9]", "10.0.0.10"]
    hosts = mx_list_hosts(entries)
    assert hosts == (
        MxHost(0, "smart.example.net", 2525),
        MxHost(1, "[10.0.0.9]"),
        MxHost(2, "10.0.0.10"),
    )
    result = destination(
        "example.com",
        HostSource.MX_LIST,
        hosts,
        {"smart.example.net": [ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")]},
        mx_list=entries,
    )
    assert result.site_name == "mx_list:smart.example.net:2525,[10.0.0.9],10.0.0.10"
    expected = (
        ResolvedAddress("smart.example.net", ip("10.0.0.1"), 2525),
        ResolvedAddress("smart.example.net", ip("10.0.0.2"), 2525),
        ResolvedAddress("smart.example.net", ip("10.0.0.3"), 2525),
        ResolvedAddress("[10.0.0.9]", ip("10.0.0.9")),
        ResolvedAddress("10.0.0.10", ip("10.0.0.10")),
    )
    for seed in range(20):
        assert result.plan(random.Random(seed)) == expected


def test_a_domain_literal() -> None:
    result = literal_destination("[IPv6:2001:db8::7]")
    assert result is not None
    assert result.source is HostSource.DOMAIN_LITERAL
    assert result.site_name == "2001:db8::7"
    assert result.addresses == ((1, ResolvedAddress("[IPv6:2001:db8::7]", ip("2001:db8::7"))),)
    assert literal_destination("example.com") is None
    assert literal_destination("[example.com]") is None


@pytest.mark.parametrize(
    ("kind", "site"),
    [
        (DnsErrorKind.NXDOMAIN, "NXDOMAIN:example.com"),
        (DnsErrorKind.SERVFAIL, "DNSFAIL:example.com"),
        (DnsErrorKind.REFUSED, "DNSFAIL:example.com"),
        (DnsErrorKind.TIMEOUT, "DNSFAIL:example.com"),
        (DnsErrorKind.OTHER, "DNSFAIL:example.com"),
    ],
)
def test_an_mx_lookup_failure_is_transient(kind: DnsErrorKind, site: str) -> None:
    failure = mx_lookup_failure("Example.com", kind, "detail", 1_500_000)
    assert failure.error == "MX lookup for Example.com failed after 1.5ms: detail"
    assert failure.site_name == site
    assert not failure.permanent
    assert failure.response("example.com") == PlanFailure(
        451, (4, 4, 4), f"failed to resolve queue example.com: {failure.error}"
    )
    assert not failure.response("example.com").permanent


def test_an_mx_list_failure_names_the_entry_and_keeps_the_site() -> None:
    failure = mx_list_failure(
        "example.com",
        ["a.example.net", "b.example.net:25"],
        "b.example.net:25",
        DnsErrorKind.NXDOMAIN,
        "NXDOMAIN",
    )
    assert failure.error == "resolving mx_list entry b.example.net:25: NXDOMAIN"
    assert failure.site_name == "mx_list:a.example.net,b.example.net:25"


def test_records_are_validated() -> None:
    with pytest.raises(ValueError, match="preference"):
        MxHost(-1, "mx.example.com.")
    with pytest.raises(ValueError, match="port"):
        MxHost(1, "mx.example.com.", 70000)

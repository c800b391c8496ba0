"""Tests for kumo.model.cidr_set: KumoMTA's CIDR sets, their parsing and their text."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.cidr_set import (
    DEFAULT_PROHIBITED_HOSTS,
    DEFAULT_RELAY_HOSTS,
    CidrError,
    CidrSet,
    IPAddress,
    IPNetwork,
    rust_ip_text,
)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def test_default_lists() -> None:
    # KumoMTA's tree merges the siblings :: and ::1 into ::/127 when it inserts them,
    # so that is how the default list reads in a bounce.
    assert DEFAULT_PROHIBITED_HOSTS.text() == '{"0.0.0.0", "127.0.0.0/8", "::/127"}'
    assert DEFAULT_RELAY_HOSTS.text() == '{"127.0.0.1", "::1"}'
    for address in ("127.0.0.1", "127.255.0.9", "0.0.0.0", "::", "::1"):
        assert ip(address) in DEFAULT_PROHIBITED_HOSTS
    for address in ("10.0.0.1", "128.0.0.1", "::2", "::ffff:127.0.0.1", "0.0.0.1"):
        assert ip(address) not in DEFAULT_PROHIBITED_HOSTS


def test_entries_are_normalised_as_kumomta_s_tree() -> None:
    merged = CidrSet.parse(["10.0.0.128/25", "2001:db8::/32", "10.0.0.0/25", "10.0.0.7", "1.2.3.4"])
    assert merged.entries() == ("1.2.3.4", "10.0.0.0/24", "2001:db8::/32")
    assert merged == CidrSet.parse(["1.2.3.4", "10.0.0.0/24", "2001:db8::/32"])
    assert CidrSet.parse(["any", "10.0.0.0/8"]).text() == '{"any"}'
    assert CidrSet.parse(["0.0.0.0/0", "::/0"]).entries() == ("any",)
    assert CidrSet.parse(["0.0.0.0/0"]).entries() == ("0.0.0.0/0",)
    assert CidrSet.parse([]).text() == "{}"
    assert CidrSet.parse(["::ffff:10.0.0.1"]).text() == '{"::ffff:10.0.0.1"}'


def test_any_holds_every_address() -> None:
    everything = CidrSet.parse(["any"])
    assert ip("192.0.2.1") in everything
    assert ip("2001:db8::1") in everything
    assert "192.0.2.1" not in everything  # addresses, not texts


def test_families_do_not_mix() -> None:
    mapped = CidrSet.parse(["::ffff:0:0/96"])
    assert ip("::ffff:10.0.0.1") in mapped
    assert ip("10.0.0.1") not in mapped


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("10.0.0.1/8", "host bits are set; did you mean 10.0.0.0/8?"),
        ("2001:db8::1/32", "did you mean 2001:db8::/32?"),
        ("localhost", "not an IP address"),
        ("", "not an IP address"),
        ("10.0.0.0/33", "the prefix length 33 is over 32"),
        ("10.0.0.0/255.0.0.0", "is not a number of bits"),
        ("10.0.0.0/", "is not a number of bits"),
        ("fe80::1%eth0", "zone ids are not allowed"),
        ("010.0.0.1", "not an IP address"),
        (" 10.0.0.1", "not an IP address"),
    ],
)
def test_bad_entries_are_refused(entry: str, why: str) -> None:
    with pytest.raises(CidrError) as caught:
        CidrSet.parse([entry])
    assert str(caught.value).startswith(f"{entry!r} is not a valid CIDR: ")
    assert why in str(caught.value)


def test_every_bad_entry_is_named() -> None:
    with pytest.raises(CidrError) as caught:
        CidrSet.parse(["x", "10.0.0.0/8", "y"])
    assert str(caught.value) == (
        "'x' is not a valid CIDR: not an IP address, 'y' is not a valid CIDR: not an IP address"
    )


def test_rust_ip_text() -> None:
    assert rust_ip_text(ip("::ffff:192.0.2.1")) == "::ffff:192.0.2.1"
    assert rust_ip_text(ip("2001:db8:0:0:1:0:0:1")) == "2001:db8::1:0:0:1"
    assert rust_ip_text(ip("2001:db8:0:1:1:1:1:1")) == "2001:db8:0:1:1:1:1:1"
    assert rust_ip_text(ip("10.0.0.1")) == "10.0.0.1"


# -- properties ----------------------------------------------------------------------

v4_networks = st.builds(
    lambda address, length: ipaddress.IPv4Network((address, length), strict=False),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=0, max_value=32),
)
v6_networks = st.builds(
    lambda address, length: ipaddress.IPv6Network((address, length), strict=False),
    st.integers(min_value=0, max_value=2**128 - 1) | st.integers(0, 2**16),
    st.integers(min_value=0, max_value=128) | st.integers(min_value=120, max_value=128),
)
networks = st.lists(v4_networks | v6_networks, max_size=8)
addresses = st.builds(ipaddress.IPv4Address, st.integers(0, 2**32 - 1)) | st.builds(
    ipaddress.IPv6Address, st.integers(0, 2**128 - 1) | st.integers(0, 2**16)
)


@given(networks, addresses)
def test_membership_is_the_union(members: list[IPNetwork], address: IPAddress) -> None:
    assert (address in CidrSet.of(members)) == any(address in net for net in members)


@given(networks)
def test_text_parses_back_to_the_same_set(members: list[IPNetwork]) -> None:
    cidrs = CidrSet.of(members)
    assert CidrSet.parse(cidrs.entries()) == cidrs
    assert CidrSet.of(reversed(members)).text() == cidrs.text()


@given(st.lists(st.text(max_size=24), max_size=4))
def test_parse_only_raises_cidr_error(entries: list[str]) -> None:
    with contextlib.suppress(CidrError):
        CidrSet.parse(entries)

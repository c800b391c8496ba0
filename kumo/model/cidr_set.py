"""Sets of IP networks as KumoMTA holds them: ``prohibited_hosts``, ``relay_hosts``.

KumoMTA keeps such a list in a radix tree that merges what it can, and quotes the tree
in texts a client sees: the bounce for an MX on ``prohibited_hosts`` ends with the set
in Rust's debug form, ``{"0.0.0.0", "127.0.0.0/8", "::", "::1"}``. A :class:`CidrSet`
holds the same union of networks in the same normal form, so that its :meth:`CidrSet.text`
is that form to the character:

* the union is stored as its largest aligned blocks (``10.0.0.0/25`` and
  ``10.0.0.128/25`` are ``10.0.0.0/24``; a network inside another is absorbed);
* IPv4 blocks come first, in address order, then IPv6 blocks; both whole families
  together are the single entry ``any``;
* a block of one address is written without its length (``::1``, not ``::1/128``), and
  an IPv4-mapped IPv6 address in dotted form (``::ffff:10.0.0.1``), as Rust writes them.

Entries are parsed as KumoMTA parses them, strictly: an address, an address with a
prefix length and no host bits set (``10.0.0.1/8`` is refused: did you mean
``10.0.0.0/8``?), or ``any``. Netmask forms and zone ids are refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final, TypeAlias

import attrs

__all__ = [
    "DEFAULT_PROHIBITED_HOSTS",
    "DEFAULT_RELAY_HOSTS",
    "CidrError",
    "CidrSet",
    "IPAddress",
    "IPNetwork",
    "rust_ip_text",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

_WHOLE_V4: Final = ipaddress.IPv4Network("0.0.0.0/0")
_WHOLE_V6: Final = ipaddress.IPv6Network("::/0")


class CidrError(ValueError):
    """An entry is not an address, a CIDR or ``any``; the message names each bad entry."""


def rust_ip_text(address: IPAddress) -> str:
    """``address`` as Rust's ``Display`` writes it.

    The same as Python's text but for IPv4-mapped IPv6 addresses, which Rust writes
    in dotted form (``::ffff:10.0.0.1``) and Python 3.11 in hex (``::ffff:a00:1``).
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def _network_text(network: IPNetwork) -> str:
    address = rust_ip_text(network.network_address)
    if network.prefixlen == network.max_prefixlen:
        return address
    return f"{address}/{network.prefixlen}"


def _parse_entry(entry: str) -> tuple[IPNetwork, ...]:
    if entry == "any":
        return (_WHOLE_V4, _WHOLE_V6)
    address_text, slash, length_text = entry.rpartition("/")
    if not slash:
        address_text = entry
    if "%" in address_text:
        raise ValueError("zone ids are not allowed")
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        raise ValueError("not an IP address") from None
    if not slash:
        return (ipaddress.ip_network(address),)
    if not (length_text.isascii() and length_text.isdigit()):
        raise ValueError(f"the prefix length {length_text!r} is not a number of bits")
    length = int(length_text)
    if length > address.max_prefixlen:
        raise ValueError(f"the prefix length {length} is over {address.max_prefixlen}")
    network = ipaddress.ip_network((address, length), strict=False)
    if network.network_address != address:
        raise ValueError(f"host bits are set; did you mean {_network_text(network)}?")
    return (network,)


def _collapse(networks: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    v4 = [net for net in networks if isinstance(net, ipaddress.IPv4Network)]
    v6 = [net for net in networks if isinstance(net, ipaddress.IPv6Network)]
    # collapse_addresses yields the largest aligned blocks of the union, in address
    # order: the leaves of KumoMTA's merged radix tree, in the order it walks them.
    return (*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6))


@attrs.frozen(slots=True)
class CidrSet:
    """A union of IP networks, normalised as KumoMTA's ``CidrSet`` holds it.

    Build one with :meth:`parse` (texts) or :meth:`of` (networks); two sets that hold
    the same addresses are equal and have the same :meth:`text`.
    """

    networks: tuple[IPNetwork, ...] = attrs.field(converter=_collapse)
    """The largest aligned blocks of the union: IPv4 in address order, then IPv6."""

    @classmethod
    def of(cls, networks: Iterable[IPNetwork]) -> CidrSet:
        """The union of ``networks``."""
        return cls(tuple(networks))

    @classmethod
    def parse(cls, entries: Iterable[str]) -> CidrSet:
        """The union of ``entries``: addresses, CIDRs or ``any``.

        Raises :class:`CidrError` naming every entry that is none of these, each with
        why, joined by ``", "`` (KumoMTA reports them all at once too).
        """
        networks: list[IPNetwork] = []
        problems: list[str] = []
        for entry in entries:
            try:
                networks.extend(_parse_entry(entry))
            except ValueError as exc:
                problems.append(f"{entry!r} is not a valid CIDR: {exc}")
        if problems:
            raise CidrError(", ".join(problems))
        return cls(tuple(networks))

    def __contains__(self, address: object) -> bool:
        """Whether ``address`` (an IPv4 or IPv6 address) is in one of the networks.

        An IPv4 address is not in an IPv6 network, mapped or not, as in KumoMTA.
        """
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        return any(address in network for network in self.networks)

    def entries(self) -> tuple[str, ...]:
        """The blocks as KumoMTA writes them (``any`` when both families are whole)."""
        if self.networks == (_WHOLE_V4, _WHOLE_V6):
            return ("any",)
        return tuple(_network_text(network) for network in self.networks)

    def text(self) -> str:
        """The set as Rust's ``{:?}`` of KumoMTA's ``CidrSet`` writes it:
        ``{"0.0.0.0", "127.0.0.0/8", "::", "::1"}``; ``{}`` when empty."""
        return "{" + ", ".join(f'"{entry}"' for entry in self.entries()) + "}"


DEFAULT_PROHIBITED_HOSTS: Final = CidrSet.parse(["127.0.0.0/8", "::1", "0.0.0.0", "::"])
"""KumoMTA's default ``prohibited_hosts``: loopback and the unspecified addresses."""

DEFAULT_RELAY_HOSTS: Final = CidrSet.parse(["127.0.0.1", "::1"])
"""KumoMTA's default ``relay_hosts``: loopback only."""

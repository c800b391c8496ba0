"""Ready queues: their names, the hosts a connection tries, and how many connections.

A message that is due leaves its scheduled queue for the ready queue of its
destination, named as KumoMTA names it, ``<egress_source>-><site_name>@smtp_client``:

* the egress source is ``unspecified`` (kumo has one source: the kernel picks the IP);
* the site name of a destination resolved by MX is its MX host names factored into
  one pattern (:func:`mx_site_name`): ``gmail.com`` has
  ``(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com``, so every domain hosted on the
  same MX hosts shares one ready queue and one set of connections; a domain with no MX
  is its own host (implicit MX), and a domain literal's site is its IP text;
* with ``mx_list`` set the site name is ``mx_list:`` and the entries as written,
  joined by ``,`` (:func:`mx_list_site_name`).

A connection tries the MX hosts' addresses by preference, lowest first, in random order
within one preference so that equal hosts share the load (:func:`connection_plan`); an
``mx_list`` is tried in its own order. Before any connection, a plan with an address on
``prohibited_hosts`` bounces every message of the ready queue, as do a null MX and (as a
transient failure) a plan with no address at all (:func:`check_plan`).

Everything here is a function of values: the DNS lookups are the runtime's, and the
randomness comes in as a ``random.Random``.
"""

from __future__ import annotations

import ipaddress
import math
import random
import string
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from kumo.model.cidr_set import CidrSet, IPAddress, rust_ip_text
from kumo.model.message import Message
from kumo.model.retry import f32

__all__ = [
    "MX_RESOLVED_TO_NO_HOSTS",
    "NULL_MX",
    "SMTP_CLIENT",
    "UNSPECIFIED_SOURCE",
    "PlanFailure",
    "ReadyEntry",
    "ReadyQueue",
    "ResolvedAddress",
    "check_plan",
    "connection_plan",
    "ideal_connection_count",
    "is_null_mx",
    "mx_list_site_name",
    "mx_site_name",
    "order_mx_records",
    "ready_queue_name",
]

UNSPECIFIED_SOURCE: Final = "unspecified"
"""The egress source of every ready queue: kumo has one, and lets the kernel pick the IP."""

SMTP_CLIENT: Final = "smtp_client"
"""The protocol suffix of a ready queue that delivers over SMTP."""

_QUESTION: Final = "?"


def ready_queue_name(site_name: str, egress_source: str = UNSPECIFIED_SOURCE) -> str:
    """``<egress_source>-><site_name>@smtp_client``: the name KumoMTA gives the ready
    queue (and the ``service`` label of its metrics, after ``smtp_client:``)."""
    return f"{egress_source}->{site_name}@{SMTP_CLIENT}"


def mx_list_site_name(entries: Sequence[str]) -> str:
    """The site name of a destination whose ``mx_list`` is ``entries``: ``mx_list:`` and
    the entries exactly as written (with any ``:port``), joined by ``,``."""
    return "mx_list:" + ",".join(entries)


_ASCII_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _ascii_lower(text: str) -> str:
    # DNS names compare case-insensitively in ASCII only; str.lower() would also fold
    # other letters, which KumoMTA's resolver library leaves alone.
    return text.translate(_ASCII_LOWER)


def _split_port(host: str) -> tuple[str, int | None]:
    """``host:port`` as (host, port); a host with no port, or with more than one colon
    (an IPv6 address), as (host, None). The port is a number up to 65535."""
    name, colon, port_text = host.rpartition(":")
    if not colon or ":" in name or not (port_text.isascii() and port_text.isdigit()):
        return host, None
    port = int(port_text)
    if port > 65535:
        return host, None
    return name, port


def _labels(host: str) -> list[str] | None:
    """The labels of ``host``, lower-cased, with any ``:port`` kept on the last one;
    None if it is not a DNS name (an empty label, a label over 63 octets, a name over
    255 octets), which KumoMTA leaves out of the site name."""
    name, port = _split_port(host)
    name = _ascii_lower(name).removesuffix(".")
    labels = name.split(".") if name else []
    if any(not label or len(label.encode()) > 63 for label in labels):
        return None
    if len(name.encode()) > 253:
        return None
    if port is not None and labels:
        labels[-1] = f"{labels[-1]}:{port}"
    return labels


def mx_site_name(hosts: Iterable[str]) -> str:
    """The site name of MX ``hosts`` (every preference, in :func:`order_mx_records` order).

    Each name is lower-cased, its trailing dot dropped, and read right to left; at each
    position the distinct labels, in the order first met, are written ``(a|b)`` (one
    alone as is), followed by ``?`` when some names have no label there. So
    ``gmail-smtp-in.l.google.com`` and ``alt1..alt4`` of it give
    ``(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com``. A ``:port`` stays on the
    last label (``(mx1|mx2).example.com:2525``). Names that are not DNS names are left
    out. The order of the hosts matters: the same hosts in another order are another
    site, as in KumoMTA.
    """
    reversed_names = [labels[::-1] for labels in map(_labels, hosts) if labels is not None]
    depth = max(map(len, reversed_names), default=0)
    positions: list[list[str]] = [[] for _ in range(depth)]
    for labels in reversed_names:
        padded = labels + [_QUESTION] * (depth - len(labels))
        for position, label in zip(positions, padded, strict=True):
            if label not in position:
                position.append(label)
    parts = []
    for position in positions:
        labels = [label for label in position if label != _QUESTION]
        text = labels[0] if len(labels) == 1 else "(" + "|".join(labels) + ")"
        parts.append(text + _QUESTION if _QUESTION in position else text)
    return ".".join(reversed(parts))


def order_mx_records(records: Iterable[tuple[int, str]]) -> tuple[tuple[int, str], ...]:
    """MX records ``(preference, exchange)`` in KumoMTA's order, exchanges lower-cased.

    Lowest preference first, and within one preference by name, duplicates kept: the
    order that :func:`mx_site_name` reads.
    """
    return tuple(sorted((preference, _ascii_lower(host)) for preference, host in records))


def is_null_mx(hosts: Iterable[str]) -> bool:
    """Whether the MX hosts include the root, ``.``: the domain accepts no mail
    (RFC 7505), and every message for it bounces with :data:`NULL_MX`."""
    return any(host == "." for host in hosts)


@attrs.frozen(slots=True)
class ResolvedAddress:
    """One address a connection may try: the host name it came from, the IP, and the
    port when the name carried one (otherwise ``smtp_port`` applies)."""

    name: str
    """The MX host name as resolved (with its trailing dot), or the ``mx_list`` entry."""
    address: IPAddress
    port: int | None = attrs.field(default=None)

    @port.validator
    def _check_port(self, _: object, value: int | None) -> None:
        if value is not None and not 0 <= value <= 65535:
            raise ValueError(f"port must be in 0..65535, got {value}")

    def address_text(self) -> str:
        """The address as KumoMTA writes it: ``10.0.0.1``, ``10.0.0.1:25``, ``[::1]:25``."""
        text = rust_ip_text(self.address)
        if self.port is None:
            return text
        if isinstance(self.address, ipaddress.IPv6Address):
            return f"[{text}]:{self.port}"
        return f"{text}:{self.port}"

    def __str__(self) -> str:
        """``<name>/<address>`` (KumoMTA's form in replies and logs), or the address
        alone when the name is that very text."""
        address = self.address_text()
        return address if address == self.name else f"{self.name}/{address}"


def connection_plan(
    addresses: Iterable[tuple[int, ResolvedAddress]], rng: random.Random
) -> tuple[ResolvedAddress, ...]:
    """The order in which a connection tries ``addresses``, each with its MX preference.

    Lowest preference first; within one preference every address of every host of that
    preference is shuffled with ``rng`` (KumoMTA shuffles addresses, not hosts, so equal
    hosts share the load address by address). The result is a permutation of the input.
    """
    by_preference: dict[int, list[ResolvedAddress]] = {}
    for preference, address in addresses:
        by_preference.setdefault(preference, []).append(address)
    plan: list[ResolvedAddress] = []
    for preference in sorted(by_preference):
        level = by_preference[preference]
        rng.shuffle(level)
        plan.extend(level)
    return tuple(plan)


@attrs.frozen(slots=True)
class PlanFailure:
    """A reply given to every message of a ready queue before any connection is made.

    5xx: each message bounces; 4xx: each fails transiently and is rescheduled.
    """

    code: int
    enhanced_code: tuple[int, int, int]
    content: str

    @property
    def permanent(self) -> bool:
        """Whether the messages bounce (5xx) rather than wait for a retry (4xx)."""
        return self.code >= 500


NULL_MX: Final = PlanFailure(556, (5, 1, 10), "Recipient address has a null MX")
MX_RESOLVED_TO_NO_HOSTS: Final = PlanFailure(451, (4, 4, 4), "MX didn't resolve to any hosts")


def check_plan(plan: Sequence[ResolvedAddress], prohibited_hosts: CidrSet) -> PlanFailure | None:
    """Why no connection may be made for ``plan``, or None if one may.

    An empty plan is :data:`MX_RESOLVED_TO_NO_HOSTS` (transient: DNS may recover). An
    address anywhere in the plan on ``prohibited_hosts`` bounces the lot, even if other
    addresses would do: ``550 5.4.4 <name>/<address> is on the list of prohibited_hosts
    {"0.0.0.0", "127.0.0.0/8", "::/127"}``, naming the first such address and the set
    as KumoMTA prints it (:meth:`CidrSet.text`; the default list's ``::`` and ``::1``
    merge into ``::/127`` there).
    """
    if not plan:
        return MX_RESOLVED_TO_NO_HOSTS
    for candidate in plan:
        if candidate.address in prohibited_hosts:
            return PlanFailure(
                550,
                (5, 4, 4),
                f"{candidate} is on the list of prohibited_hosts {prohibited_hosts.text()}",
            )
    return None


def ideal_connection_count(ready_count: int, connection_limit: int) -> int:
    """How many connections a ready queue holding ``ready_count`` messages should have.

    KumoMTA's curve, ``min(ready_count, ceil(limit * (1 - exp(-0.023 * ready_count))))``
    in single precision: for a limit of 32, 1 message gets 1 connection, 4 get 3, 10
    get 7, 32 get 17, 128 get 31 and 256 or more get all 32. Never more than either
    argument; 0 for an empty queue.
    """
    if ready_count <= 0 or connection_limit <= 0:
        return 0
    count = f32(float(ready_count))
    exponent = f32(f32(-count) * f32(0.023))
    fraction = min(f32(1.0 - f32(math.exp(exponent))), count)
    goal = f32(f32(float(connection_limit)) * fraction)
    return min(math.ceil(goal), ready_count, connection_limit)


@attrs.frozen(slots=True)
class ReadyEntry:
    """A message waiting in a ready queue, with the scheduled queue that handed it over
    (and still owns it), its attempts so far, and its content, read from the spool when
    it was handed over (one read for a whole hand-over, not one per message)."""

    queue: str
    message: Message
    attempts: int
    content: bytes = b""


class ReadyQueue:
    """The messages due for one destination, oldest first, at most ``max_ready``.

    Scheduled queues :meth:`push` what is due while there is :meth:`room`; connections
    :meth:`pop` the next message. A scheduled queue :meth:`withdraw`\\ s what it handed
    and no connection took yet before a rule applies to it, so that a rule's sweep
    reaches ready messages too; a connection that could not use a message it took gives
    it back at the front (:meth:`push_front`).
    """

    __slots__ = ("_entries", "max_ready", "name")

    def __init__(self, name: str, max_ready: int) -> None:
        if max_ready < 1:
            raise ValueError(f"max_ready must be at least 1, got {max_ready}")
        self.name = name
        self.max_ready = max_ready
        self._entries: dict[str, ReadyEntry] = {}
        """Message id -> entry, in the order pushed (dicts keep it)."""

    def __len__(self) -> int:
        return len(self._entries)

    def room(self) -> int:
        """How many more messages may be pushed now."""
        return max(self.max_ready - len(self._entries), 0)

    def push(self, entries: Iterable[ReadyEntry]) -> None:
        """Add ``entries`` at the back (the caller keeps within :meth:`room`)."""
        for entry in entries:
            self._entries[entry.message.id] = entry

    def push_front(self, entry: ReadyEntry) -> None:
        """Give back an entry that was popped and not attempted: it is next again."""
        self._entries = {entry.message.id: entry, **self._entries}

    def pop(self) -> ReadyEntry | None:
        """The oldest entry, taken out; None when the queue is empty."""
        if not self._entries:
            return None
        message_id = next(iter(self._entries))
        return self._entries.pop(message_id)

    def withdraw(self, queue: str) -> list[str]:
        """Take out every entry scheduled queue ``queue`` handed over; their ids, in order."""
        ids = [mid for mid, entry in self._entries.items() if entry.queue == queue]
        for message_id in ids:
            del self._entries[message_id]
        return ids

    def drain(self) -> list[ReadyEntry]:
        """Take out every entry (delivery stops), in order."""
        entries = list(self._entries.values())
        self._entries.clear()
        return entries

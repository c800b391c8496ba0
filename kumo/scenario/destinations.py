"""The destinations of an in-process scenario: an SMTP server per domain, in memory.

An in-process scenario with ``destination`` steps runs the engine with the mail path on,
and everything from the queue actors to the SMTP client's bytes is the real code path:
:class:`~kumo.runtime.delivery.Deliveries`, the dispatchers, ready queues and
:class:`~kumo.runtime.smtp_connection.SmtpConnection`. Only the network is simulated,
through the two seams the engine's ``MailSettings`` has:

- the resolver: each domain a ``destination`` step names has one MX host,
  ``mx.<domain>.``, at its own address of 192.0.2.0/24 (TEST-NET-1, never routed), in
  the order the domains are first named, from its first step on; before, and for any
  other domain, it is NXDOMAIN (its mail fails transiently, as mail to a domain that
  does not resolve does);
- the connector: a connection to such an address is one end of a Trio memory stream
  whose other end is served by kumo's own sans-io SMTP server
  (:class:`~kumo.model.smtp_server.SmtpSession`, relaying for anyone, as a destination
  MX takes mail for its domain from anyone). Each message's final dot gets the answer of
  the domain's last ``destination`` step: ``250 OK ids=...`` when it accepts, else the
  step's ``4xx``/``5xx`` reply. A connection to any other address is refused.

No socket, no DNS and no clock: under the scenario's virtual clock a retry schedule of
days runs in milliseconds, and a run repeats exactly.

The servers answer final dots in rounds: a message's answer waits until every task of
the run is blocked, then the answers of all connections go out together. That takes no
time (virtual or otherwise) and changes no outcome; it is how a peer under load answers,
and it lets the engine decide and log the outcomes of its connections together, in a
few commits instead of one each (a pile-up of 10,000 messages is then a matter of
seconds, not minutes). :data:`ROUND_CUSHION` is the real time for which everything must
be blocked: a task waiting for the run to settle must wait longer than that.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections import deque
from collections.abc import Sequence
from typing import Final

import attrs
import trio
import trio.testing

from kumo.model.cidr_set import IPAddress
from kumo.model.mx_resolution import (
    DnsErrorKind,
    HostSource,
    MxHost,
    Resolution,
    destination,
    mx_lookup_failure,
)
from kumo.model.ready_queue import ResolvedAddress, ready_queue_name
from kumo.model.smtp_server import (
    MessagesReceived,
    Output,
    Peer,
    Phase,
    Reply,
    SmtpServerSettings,
    SmtpSession,
)
from kumo.model.statistics import counter
from kumo.runtime.mx import MxResolver
from kumo.scenario.format import Destination

__all__ = ["DestinationStatistics", "SimulatedDestinations"]

NETWORK: Final = ipaddress.IPv4Network("192.0.2.0/24")
"""Where the destinations' MX hosts are (TEST-NET-1): the n-th domain at ``.n``."""
SOURCE_IP: Final = "198.51.100.1"
"""kumo's own address as the destinations see it (TEST-NET-2)."""
FIRST_PORT: Final = 40_000
"""The source port of the first connection; each next one takes the next port."""
MX_PREFERENCE: Final = 10
ROUND_CUSHION: Final = 0.0
"""The ``cushion`` of the rounds' ``wait_all_tasks_blocked`` (see the module docstring)."""
_EVERYONE: Final = ("0.0.0.0/0", "::/0")
_READ_SIZE: Final = 64 * 1024


@attrs.frozen
class DestinationStatistics:
    """What one simulated destination has seen."""

    connections: int = counter("Connections made to the destination.")
    accepted: int = counter("Messages it answered with a 250.")
    refused: int = counter("Messages it answered with a 4xx or 5xx.")


class _Resolver(MxResolver):
    """DNS of the simulated world (see the module docstring); asks no server."""

    def __init__(self, destinations: SimulatedDestinations) -> None:
        # A nameserver must be named for the base class not to read /etc/resolv.conf;
        # it is never asked, since resolve() answers everything itself.
        super().__init__([("192.0.2.0", 53)])
        self._destinations = destinations

    async def resolve(self, domain: str, *, mx_list: Sequence[str] = ()) -> Resolution:
        await trio.lowlevel.checkpoint()
        address = self._destinations.address_of(domain)
        if address is None:
            return mx_lookup_failure(domain, DnsErrorKind.NXDOMAIN, "NXDOMAIN", 0)
        host = f"mx.{domain.lower()}."
        return destination(
            domain, HostSource.MX, (MxHost(MX_PREFERENCE, host),), {host: (address,)}
        )


class SimulatedDestinations:
    """The SMTP peers of ``domains`` (see the module docstring). Start :meth:`run` in a
    nursery before the engine connects; the servers run in it until it is cancelled.

    A domain exists (resolves, and its server accepts connections) once :meth:`answer`
    has said how it answers.
    """

    def __init__(self, domains: Sequence[str]) -> None:
        if len(domains) > NETWORK.num_addresses - 2:
            raise ValueError(f"at most {NETWORK.num_addresses - 2} destinations")
        self._addresses = {
            domain.lower(): NETWORK.network_address + n for n, domain in enumerate(domains, 1)
        }
        self._domains: dict[IPAddress, str] = {
            address: domain for domain, address in self._addresses.items()
        }
        self._answers: dict[str, Destination] = {}
        self._counts = {domain: [0, 0, 0] for domain in self._addresses}
        """Domain -> connections, accepted, refused."""
        self._connections = 0
        self._ids = 0
        self._nursery: trio.Nursery | None = None
        self._round = trio.Event()
        """Set when the answers waiting for the current round go out."""
        self._wanted = trio.Event()
        """Set when an answer waits for a round."""
        self.resolver: MxResolver = _Resolver(self)
        """The engine's resolver in this world."""

    def ready_queue(self, domain: str) -> str | None:
        """The ready queue the engine delivers ``domain``'s mail through: named after
        its one MX host, ``unspecified->mx.<domain>@smtp_client``; None for a domain
        not simulated."""
        name = domain.lower()
        return ready_queue_name(f"mx.{name}") if name in self._addresses else None

    def address_of(self, domain: str) -> ipaddress.IPv4Address | None:
        """The address of ``domain``'s MX host; None for a domain not simulated (yet)."""
        name = domain.lower()
        return self._addresses.get(name) if name in self._answers else None

    def answer(self, step: Destination) -> None:
        """From now on ``step.domain`` answers each message as ``step`` says (a
        connection under way too, from its next message)."""
        if step.domain not in self._addresses:
            raise ValueError(f"{step.domain!r} is not a simulated destination")
        self._answers[step.domain] = step

    def statistics(self, domain: str) -> DestinationStatistics:
        connections, accepted, refused = self._counts[domain.lower()]
        return DestinationStatistics(connections=connections, accepted=accepted, refused=refused)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve connections until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                await self._wanted.wait()
                await trio.testing.wait_all_tasks_blocked(ROUND_CUSHION)
                self._wanted = trio.Event()
                released, self._round = self._round, trio.Event()
                released.set()

    async def _next_round(self) -> None:
        """Wait for the round that sends the answers waiting now (see the module
        docstring)."""
        self._wanted.set()
        await self._round.wait()

    async def connect(self, address: ResolvedAddress, port: int) -> tuple[trio.abc.Stream, str]:
        """The engine's :class:`~kumo.runtime.smtp_connection.Connector` in this world:
        a stream to the server at ``address`` (any port). Raises ``ConnectionRefusedError``
        for an address where no destination is."""
        await trio.lowlevel.checkpoint()
        domain = self._domains.get(address.address)
        if domain is None or domain not in self._answers or self._nursery is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
        source_port = FIRST_PORT + self._connections % (65_536 - FIRST_PORT)
        self._connections += 1
        self._counts[domain][0] += 1
        ours, theirs = trio.testing.memory_stream_pair()
        self._nursery.start_soon(self._serve, theirs, domain, source_port)
        return ours, f"{SOURCE_IP}:{source_port}"

    async def _serve(self, stream: trio.abc.Stream, domain: str, source_port: int) -> None:
        """One connection to ``domain``'s server, until either side closes it."""
        settings = SmtpServerSettings(hostname=f"mx.{domain}", relay_hosts=_EVERYONE)
        session = SmtpSession(settings, Peer(SOURCE_IP, source_port))
        async with stream:
            outputs = session.start()
            try:
                while True:
                    await self._carry_out(stream, session, domain, outputs)
                    if session.phase is Phase.CLOSED:
                        return
                    data = await stream.receive_some(_READ_SIZE)
                    outputs = session.receive_data(bytes(data))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the client went away

    async def _carry_out(
        self, stream: trio.abc.Stream, session: SmtpSession, domain: str, outputs: list[Output]
    ) -> None:
        replies: list[bytes] = []
        todo = deque(outputs)
        while todo:
            output = todo.popleft()
            if isinstance(output, Reply):
                replies.append(output.encode())
            elif isinstance(output, MessagesReceived):
                if replies:
                    await stream.send_all(b"".join(replies))
                    replies.clear()
                await self._next_round()
                todo.extend(self._decide(session, domain, len(output.recipients)))
            # Rejections are not logged here, STARTTLS is not offered, and Close comes
            # last: the caller sees the session closed.
        if replies:
            await stream.send_all(b"".join(replies))

    def _decide(self, session: SmtpSession, domain: str, recipients: int) -> list[Output]:
        answer = self._answers[domain]
        counts = self._counts[domain]
        if answer.accepts:
            counts[1] += recipients
            ids = [f"{self._next_id():08d}" for _ in range(recipients)]
            return session.messages_durable(ids)
        counts[2] += recipients
        return session.messages_failed(Reply(answer.code, answer.text))

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

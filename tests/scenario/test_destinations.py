"""The in-process destinations: MX answers, a real SMTP conversation in memory with
kumo's own client and server, answers that change, and outcomes that come in rounds."""

from __future__ import annotations

import functools
import ipaddress
import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from kumo.model.mx_resolution import Destination as Resolved
from kumo.model.mx_resolution import DnsErrorKind, HostSource, ResolutionFailure
from kumo.model.ready_queue import ResolvedAddress
from kumo.model.smtp_client import ClientSettings, TlsMode
from kumo.model.smtp_reply import Disposition
from kumo.runtime.smtp_connection import (
    ConnectionSettings,
    MessageOutcome,
    OutgoingMessage,
    SmtpConnection,
    client_tls_context,
)
from kumo.scenario.destinations import SimulatedDestinations
from kumo.scenario.format import Destination

CONTENT = b"Subject: hi\r\n\r\nHello.\r\n"


@asynccontextmanager
async def running(domains: Sequence[str]) -> AsyncIterator[SimulatedDestinations]:
    destinations = SimulatedDestinations(domains)
    async with trio.open_nursery() as nursery:
        await nursery.start(destinations.run)
        yield destinations
        nursery.cancel_scope.cancel()


def settings(destinations: SimulatedDestinations) -> ConnectionSettings:
    tls = client_tls_context(verify=False)
    return ConnectionSettings(
        ClientSettings("kumo.test", enable_tls=TlsMode.OPPORTUNISTIC),
        verifying_tls=tls,
        insecure_tls=tls,
        connector=destinations.connect,
    )


async def deliver(
    destinations: SimulatedDestinations,
    domain: str,
    count: int = 1,
    *,
    refused_when_reported: list[int] | None = None,
) -> list[MessageOutcome]:
    resolved = await destinations.resolver.resolve(domain)
    assert isinstance(resolved, Resolved)
    send, receive = trio.open_memory_channel[OutgoingMessage](count)
    for n in range(count):
        send.send_nowait(OutgoingMessage(f"m{n}", "s@example.org", f"r{n}@{domain}", CONTENT))
    send.close()
    outcomes: list[MessageOutcome] = []

    async def report(outcome: MessageOutcome) -> None:
        outcomes.append(outcome)
        if refused_when_reported is not None:
            refused_when_reported.append(destinations.statistics(domain).refused)

    connection = SmtpConnection(
        settings(destinations),
        resolved.plan(random.Random(0)),
        site=resolved.ready_queue,
        messages=receive,
        report=report,
    )
    await connection.run()
    return outcomes


async def test_each_domain_resolves_to_its_own_mx_host_and_others_do_not() -> None:
    destinations = SimulatedDestinations(["Example.com", "example.net"])
    before = await destinations.resolver.resolve("example.com")
    assert isinstance(before, ResolutionFailure)  # no destination step yet
    destinations.answer(Destination("example.com", "accept"))
    destinations.answer(Destination("example.net", "554 5.7.1 Go away"))
    first = await destinations.resolver.resolve("example.com")
    second = await destinations.resolver.resolve("EXAMPLE.NET")
    assert isinstance(first, Resolved)
    assert isinstance(second, Resolved)
    assert first.source is HostSource.MX
    assert [host.name for host in first.hosts] == ["mx.example.com."]
    assert first.ready_queue == "unspecified->mx.example.com@smtp_client"
    assert [address for _, address in first.addresses] == [
        ResolvedAddress("mx.example.com.", ipaddress.ip_address("192.0.2.1"))
    ]
    assert second.addresses[0][1].address == ipaddress.ip_address("192.0.2.2")
    unknown = await destinations.resolver.resolve("example.org")
    assert isinstance(unknown, ResolutionFailure)
    assert unknown.kind is DnsErrorKind.NXDOMAIN
    assert destinations.address_of("example.org") is None


async def test_a_connection_anywhere_else_is_refused() -> None:
    async with running(["example.com"]) as destinations:
        not_yet = ResolvedAddress("mx.example.com.", ipaddress.ip_address("192.0.2.1"))
        with pytest.raises(ConnectionRefusedError):
            await destinations.connect(not_yet, 25)
        destinations.answer(Destination("example.com", "accept"))
        nowhere = ResolvedAddress("mx.example.org.", ipaddress.ip_address("192.0.2.99"))
        with pytest.raises(ConnectionRefusedError):
            await destinations.connect(nowhere, 25)


async def test_answers_follow_the_last_destination_step(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(["example.com"]) as destinations:
        destinations.answer(Destination("example.com", "accept"))
        [accepted] = await deliver(destinations, "example.com")
        assert accepted.disposition is Disposition.DELIVERY
        assert accepted.response.code == 250
        assert accepted.response.content == "OK ids=00000001"
        assert accepted.peer_address is not None
        assert accepted.peer_address.addr == "192.0.2.1"
        assert accepted.source_address == "198.51.100.1:40000"

        destinations.answer(Destination("example.com", "451 4.3.0 Try again later"))
        refused = await deliver(destinations, "example.com", 2)
        assert [o.disposition for o in refused] == [Disposition.TRANSIENT_FAILURE] * 2
        response = refused[0].response
        assert (response.code, response.content, response.command) == (
            451,
            "Try again later",
            ".\r\n",
        )
        assert response.enhanced_code is not None
        assert str(response.enhanced_code) == "4.3.0"

        destinations.answer(Destination("example.com", "554 5.7.1 Go away"))
        [bounced] = await deliver(destinations, "example.com")
        assert bounced.disposition is Disposition.BOUNCE
        assert bounced.response.code == 554

        stats = destinations.statistics("example.com")
        assert (stats.connections, stats.accepted, stats.refused) == (3, 1, 3)
    with pytest.raises(ValueError, match="not a simulated destination"):
        destinations.answer(Destination("example.org", "accept"))


async def test_the_answers_of_concurrent_connections_come_in_one_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    refused: list[int] = []
    started = trio.current_time()
    async with running(["example.com"]) as destinations:
        destinations.answer(Destination("example.com", "451 4.3.0 Try again later"))
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(
                    functools.partial(deliver, refused_when_reported=refused),
                    destinations,
                    "example.com",
                )
    # Every connection had its answer when the first outcome was reported, and the
    # rounds took no time.
    assert refused == [5] * 5
    assert trio.current_time() == started

"""Tests for kumo.runtime.mx against a real DNS server: dnsmasq, started here on 127.0.0.1.

Each test starts its own dnsmasq on a free port with the records it needs
(``--mx-host``, ``--host-record``, ``--address``) and nothing else (``--no-resolv
--no-hosts``; ``--local=/test/`` makes every other name under ``.test`` NXDOMAIN). Without
dnsmasq these tests skip, except under CI (``CI=true``), where they fail: CI installs it
(``.ci/run``). SERVFAIL comes from a few lines of Trio here, since dnsmasq gives none on
demand. The real clock runs throughout: the server is another process.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import random
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import dns.flags
import dns.message
import dns.rcode
import pytest
import trio

from kumo.model.cidr_set import DEFAULT_PROHIBITED_HOSTS, CidrSet
from kumo.model.mx_resolution import (
    Destination,
    DnsErrorKind,
    HostSource,
    MxHost,
    ResolutionFailure,
)
from kumo.model.ready_queue import (
    MX_RESOLVED_TO_NO_HOSTS,
    NULL_MX,
    PlanFailure,
    ResolvedAddress,
)
from kumo.model.smtp_client import ClientSettings
from kumo.model.smtp_reply import Disposition
from kumo.runtime.mx import MxResolver
from kumo.runtime.smtp_connection import (
    ConnectionSettings,
    MessageOutcome,
    OutgoingMessage,
    SmtpConnection,
    client_tls_context,
)
from tests.required_tools import require_tool
from tests.runtime.smtp_sink import running_sink

DEADLINE = 30  # seconds any test may take before it is a hang
DNSMASQ = shutil.which("dnsmasq") or next(
    (path for path in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if os.path.exists(path)), None
)

ZONE = (
    "--local=/test/",
    "--mx-host=example.test,mx1.example.test,10",
    "--mx-host=example.test,mx2.example.test,10",
    "--mx-host=example.test,backup.example.test,20",
    "--host-record=mx1.example.test,192.0.2.1,2001:db8::1",
    "--host-record=mx2.example.test,192.0.2.2",
    "--host-record=backup.example.test,192.0.2.20",
    "--host-record=implicit.test,192.0.2.5",
    "--mx-host=null.test,.,0",
    "--mx-host=gone.test,nowhere.test,10",
    "--mx-host=loopback.test,mx.loopback.test,10",
    "--address=/mx.loopback.test/127.0.0.1",
)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def free_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def require_dnsmasq() -> str:
    return require_tool(DNSMASQ, "dnsmasq", "dnsmasq-base")


@asynccontextmanager
async def dnsmasq(*options: str) -> AsyncIterator[int]:
    """dnsmasq on 127.0.0.1 at a free port, answering from ``options`` alone; yields the
    port once it serves."""
    binary = require_dnsmasq()
    process, port, log = await _start_dnsmasq(binary, options)
    try:
        assert process.stderr is not None
        async with trio.open_nursery() as nursery:
            # Keep its log flowing, so that it never blocks on a full pipe.
            nursery.start_soon(_drain, process.stderr, log)
            yield port
            nursery.cancel_scope.cancel()
    finally:
        process.terminate()
        with trio.move_on_after(5):
            await process.wait()


async def _start_dnsmasq(
    binary: str, options: tuple[str, ...]
) -> tuple[trio.Process, int, bytearray]:
    """Start dnsmasq on a free port; another port if the one found was taken meanwhile
    (its TCP side, or a test beside this one: the port is only free when probed)."""
    for _ in range(5):
        port = free_port(socket.SOCK_DGRAM)
        command = [
            binary,
            "--keep-in-foreground",
            "--log-facility=-",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--pid-file=",
            *options,
        ]
        process = await trio.lowlevel.open_process(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert process.stderr is not None
        log = bytearray()
        with trio.fail_after(DEADLINE):
            # dnsmasq says "started" once its sockets are bound.
            while b"started, version" not in log:
                chunk = await process.stderr.receive_some(4096)
                if not chunk:
                    break
                log += chunk
        if b"started, version" in log:
            return process, port, log
        with trio.move_on_after(5):
            await process.wait()
        if b"Address already in use" not in log:
            break
    pytest.fail(f"dnsmasq did not start: {log.decode(errors='replace')}")


async def _drain(stream: trio.abc.ReceiveStream, log: bytearray) -> None:
    while chunk := await stream.receive_some(4096):
        log += chunk


@asynccontextmanager
async def resolver(*options: str, lookup_timeout: int = 2_000_000_000) -> AsyncIterator[MxResolver]:
    with trio.fail_after(DEADLINE):
        async with dnsmasq(*ZONE, *options) as port:
            yield MxResolver([("127.0.0.1", port)], timeout=lookup_timeout)


async def resolved(domain: str, **kwargs: object) -> Destination:
    async with resolver() as mx:
        result = await mx.resolve(domain, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, Destination), result
    return result


async def failed(
    domain: str, *options: str, lookup_timeout: int = 2_000_000_000
) -> ResolutionFailure:
    async with resolver(*options, lookup_timeout=lookup_timeout) as mx:
        result = await mx.resolve(domain)
    assert isinstance(result, ResolutionFailure), result
    return result


# -- answers -----------------------------------------------------------------------------------


async def test_mx_records_give_hosts_addresses_and_the_site_name() -> None:
    destination = await resolved("Example.TEST")
    assert destination.source is HostSource.MX
    assert destination.hosts == (
        MxHost(10, "mx1.example.test."),
        MxHost(10, "mx2.example.test."),
        MxHost(20, "backup.example.test."),
    )
    assert destination.site_name == "(mx1|mx2|backup).example.test"
    assert destination.ready_queue == "unspecified->(mx1|mx2|backup).example.test@smtp_client"
    assert destination.addresses == (
        (10, ResolvedAddress("mx1.example.test.", ip("192.0.2.1"))),
        (10, ResolvedAddress("mx1.example.test.", ip("2001:db8::1"))),
        (10, ResolvedAddress("mx2.example.test.", ip("192.0.2.2"))),
        (20, ResolvedAddress("backup.example.test.", ip("192.0.2.20"))),
    )
    assert destination.unresolved == ()
    for seed in range(5):
        plan = destination.plan(random.Random(seed))
        assert {str(a) for a in plan[:3]} == {
            "mx1.example.test./192.0.2.1",
            "mx1.example.test./2001:db8::1",
            "mx2.example.test./192.0.2.2",
        }
        assert str(plan[3]) == "backup.example.test./192.0.2.20"
        assert destination.check(plan, DEFAULT_PROHIBITED_HOSTS) is None


async def test_no_mx_record_makes_the_domain_its_own_host() -> None:
    destination = await resolved("implicit.test")
    assert destination.source is HostSource.IMPLICIT_MX
    assert destination.hosts == (MxHost(1, "implicit.test."),)
    assert destination.site_name == "implicit.test"
    assert destination.addresses == ((1, ResolvedAddress("implicit.test.", ip("192.0.2.5"))),)


async def test_a_null_mx_bounces() -> None:
    destination = await resolved("null.test")
    assert destination.null_mx
    assert destination.addresses == ()
    plan = destination.plan(random.Random(0))
    assert destination.check(plan, DEFAULT_PROHIBITED_HOSTS) == NULL_MX
    assert NULL_MX.permanent


async def test_mx_hosts_without_addresses_leave_an_empty_plan() -> None:
    destination = await resolved("gone.test")
    assert destination.hosts == (MxHost(10, "nowhere.test."),)
    assert destination.addresses == ()
    assert destination.unresolved == ("nowhere.test.: NXDOMAIN",)
    plan = destination.plan(random.Random(0))
    assert destination.check(plan, DEFAULT_PROHIBITED_HOSTS) == MX_RESOLVED_TO_NO_HOSTS
    assert not MX_RESOLVED_TO_NO_HOSTS.permanent


async def test_an_mx_on_loopback_is_prohibited_by_default() -> None:
    destination = await resolved("loopback.test")
    plan = destination.plan(random.Random(0))
    assert destination.check(plan, DEFAULT_PROHIBITED_HOSTS) == PlanFailure(
        550,
        (5, 4, 4),
        "mx.loopback.test./127.0.0.1 is on the list of prohibited_hosts "
        '{"0.0.0.0", "127.0.0.0/8", "::/127"}',
    )
    assert destination.check(plan, CidrSet.parse([])) is None


async def test_an_mx_list_is_used_as_written_without_an_mx_lookup() -> None:
    entries = ["mx1.example.test:2525", "[192.0.2.9]", "192.0.2.10"]
    async with resolver() as mx:
        destination = await mx.resolve("example.test", mx_list=entries)
        lookups = mx.statistics().lookups
    assert isinstance(destination, Destination)
    assert lookups == 2  # A and AAAA of mx1.example.test; no MX
    assert destination.source is HostSource.MX_LIST
    assert destination.site_name == "mx_list:mx1.example.test:2525,[192.0.2.9],192.0.2.10"
    expected = [
        ResolvedAddress("mx1.example.test", ip("192.0.2.1"), 2525),
        ResolvedAddress("mx1.example.test", ip("2001:db8::1"), 2525),
        ResolvedAddress("[192.0.2.9]", ip("192.0.2.9")),
        ResolvedAddress("192.0.2.10", ip("192.0.2.10")),
    ]
    for seed in range(5):
        assert list(destination.plan(random.Random(seed))) == expected


async def test_a_domain_literal_needs_no_lookup() -> None:
    async with resolver() as mx:
        destination = await mx.resolve("[192.0.2.7]")
        assert mx.statistics().lookups == 0
    assert isinstance(destination, Destination)
    assert destination.source is HostSource.DOMAIN_LITERAL
    assert destination.site_name == "192.0.2.7"
    assert destination.addresses == ((1, ResolvedAddress("[192.0.2.7]", ip("192.0.2.7"))),)


# -- failures: data, never exceptions ----------------------------------------------------------


async def test_nxdomain_is_a_transient_failure() -> None:
    failure = await failed("unknown.test")
    assert failure.kind is DnsErrorKind.NXDOMAIN
    assert failure.error.startswith("MX lookup for unknown.test failed after ")
    assert failure.error.endswith(": NXDOMAIN")
    assert failure.site_name == "NXDOMAIN:unknown.test"
    assert not failure.permanent
    assert failure.response("unknown.test") == PlanFailure(
        451, (4, 4, 4), f"failed to resolve queue unknown.test: {failure.error}"
    )


async def test_a_refusing_server_is_a_transient_failure() -> None:
    # Outside --local=/test/ dnsmasq has no upstream to ask, and refuses.
    failure = await failed("elsewhere.example")
    assert failure.kind is DnsErrorKind.REFUSED
    assert "REFUSED" in failure.error
    assert failure.site_name == "DNSFAIL:elsewhere.example"


async def test_no_answer_in_time_is_a_transient_failure() -> None:
    # dnsmasq forwards slow.test to a port where nothing answers.
    silent = f"--server=/slow.test/127.0.0.1#{free_port(socket.SOCK_DGRAM)}"
    start = trio.current_time()
    failure = await failed("slow.test", silent, lookup_timeout=300_000_000)
    assert trio.current_time() - start < 5
    assert failure.kind is DnsErrorKind.TIMEOUT
    assert failure.error.startswith("MX lookup for slow.test failed after ")
    assert failure.error.endswith(": deadline has elapsed")
    assert failure.site_name == "DNSFAIL:slow.test"


async def test_a_name_that_cannot_be_a_dns_name_is_a_failure() -> None:
    failure = await failed("bad..name.test")
    assert failure.kind is DnsErrorKind.OTHER
    assert failure.error == "MX lookup for bad..name.test failed after 0ns: A DNS label is empty."


async def test_an_mx_list_entry_that_does_not_resolve_fails_the_list() -> None:
    entries = ["mx1.example.test", "nope.test:25"]
    async with resolver() as mx:
        failure = await mx.resolve("example.test", mx_list=entries)
    assert isinstance(failure, ResolutionFailure)
    assert failure.kind is DnsErrorKind.NXDOMAIN
    assert failure.error == "resolving mx_list entry nope.test:25: NXDOMAIN"
    assert failure.site_name == "mx_list:mx1.example.test,nope.test:25"


async def servfail_server(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A DNS server that answers SERVFAIL to everything."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        task_status.started(sock.getsockname()[1])
        while True:
            data, peer = await sock.recvfrom(4096)
            reply = dns.message.make_response(dns.message.from_wire(data))
            reply.set_rcode(dns.rcode.SERVFAIL)
            reply.flags |= dns.flags.RA
            await sock.sendto(reply.to_wire(), peer)


async def test_servfail_is_a_transient_failure() -> None:
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(servfail_server)
            result = await MxResolver([("127.0.0.1", port)]).resolve("example.test")
            nursery.cancel_scope.cancel()
    assert isinstance(result, ResolutionFailure)
    assert result.kind is DnsErrorKind.SERVFAIL
    assert "SERVFAIL" in result.error
    assert result.site_name == "DNSFAIL:example.test"


# -- from DNS to a delivery ----------------------------------------------------------------------


async def test_a_message_goes_where_the_mx_points() -> None:
    with trio.fail_after(DEADLINE):
        async with resolver() as mx, running_sink() as sink:
            destination = await mx.resolve("loopback.test")
            assert isinstance(destination, Destination)
            plan = destination.plan(random.Random(0))
            assert destination.check(plan, CidrSet.parse([])) is None
            settings = ConnectionSettings(
                ClientSettings("client.test"),
                smtp_port=sink.port,
                verifying_tls=client_tls_context(verify=False),
                insecure_tls=client_tls_context(verify=False),
            )
            outcomes: list[MessageOutcome] = []
            send, receive = trio.open_memory_channel[OutgoingMessage](1)
            async with send:
                await send.send(
                    OutgoingMessage(
                        "0" * 32, "a@example.org", "b@loopback.test", b"Subject: x\r\n\r\nx\r\n"
                    )
                )
            connection = SmtpConnection(
                settings,
                plan,
                site=destination.ready_queue,
                messages=receive,
                report=functools.partial(_append, outcomes),
            )
            await connection.run()

    [outcome] = outcomes
    assert outcome.disposition is Disposition.DELIVERY
    assert outcome.site == "unspecified->mx.loopback.test@smtp_client"
    assert outcome.peer_address is not None
    assert outcome.peer_address.name == "mx.loopback.test."
    assert outcome.peer_address.addr == "127.0.0.1"
    assert [t.data for t in sink.transactions] == [b"Subject: x\r\n\r\nx\r\n.\r\n"]


async def _append(outcomes: list[MessageOutcome], outcome: MessageOutcome) -> None:
    outcomes.append(outcome)

"""Tests for kumo.runtime.smtp_connection: real sockets on 127.0.0.1, a scripted sink.

The sink (:mod:`tests.runtime.smtp_sink`) is a Trio task in the same run, so its replies
are on the socket before the client's next wait begins: the tests of time-outs run under
``MockClock(autojump_threshold=0)`` and wait for KumoMTA's real defaults (300 s for the
final dot) in no time. The STARTTLS tests use certificates made by ``trustme``; one test
delivers to Postfix's ``smtp-sink`` when it is installed.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
import trio.testing
import trustme

from kumo.model.events import PeerAddress
from kumo.model.ready_queue import ResolvedAddress
from kumo.model.smtp_client import ClientSettings, ClientTimeouts, TlsMode
from kumo.model.smtp_reply import Disposition, EnhancedCode, Response
from kumo.runtime.admin_gate import AdminGate
from kumo.runtime.smtp_connection import (
    ConnectionSettings,
    ConnectionSummary,
    MessageOutcome,
    OutgoingMessage,
    SmtpConnection,
    client_tls_context,
)
from tests.postfix import postfix_smtp_sink, require_smtp_sink
from tests.runtime.smtp_sink import Act, SmtpSink, running_sink

SITE = "unspecified->mx_list:127.0.0.1@smtp_client"
DEADLINE = 30  # seconds of real time any test may take before it is a hang
VIRTUAL_DEADLINE = 3600  # the same under a MockClock, whose time jumps
LOCALHOST = ipaddress.ip_address("127.0.0.1")

CA = trustme.CA()
SERVER_CERT = CA.issue_cert("127.0.0.1")


def server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    SERVER_CERT.configure_cert(context)
    return context


def trusting_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    CA.configure_trust(context)
    return context


def untrusting_context() -> ssl.SSLContext:
    # Trusts only a CA that signed nothing here: every server certificate fails.
    context = ssl.create_default_context()
    trustme.CA().configure_trust(context)
    return context


def connection_settings(
    enable_tls: TlsMode = TlsMode.OPPORTUNISTIC,
    *,
    verifying_tls: ssl.SSLContext | None = None,
    **client: object,
) -> ConnectionSettings:
    return ConnectionSettings(
        ClientSettings("client.test", enable_tls=enable_tls, **client),  # type: ignore[arg-type]
        verifying_tls=verifying_tls or trusting_context(),
        insecure_tls=client_tls_context(verify=False),
    )


def address(port: int, name: str = "127.0.0.1") -> ResolvedAddress:
    return ResolvedAddress(name, LOCALHOST, port)


def message(n: int, content: bytes | None = None, recipient: str | None = None) -> OutgoingMessage:
    return OutgoingMessage(
        id=f"{n:032x}",
        sender="sender@example.org",
        recipient=recipient or f"rcpt{n}@example.com",
        content=content if content is not None else f"Subject: {n}\r\n\r\nbody {n}\r\n".encode(),
    )


def refused_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@attrs.define
class Run:
    summary: ConnectionSummary
    outcomes: list[MessageOutcome]
    left: list[OutgoingMessage]
    """Messages never taken."""
    connection: SmtpConnection


async def deliver(
    plan: Sequence[ResolvedAddress],
    messages: Sequence[OutgoingMessage],
    settings: ConnectionSettings | None = None,
    *,
    keep_open: bool = False,
    close_after: int | None = None,
    turn: Callable[[], Awaitable[None]] | None = None,
) -> Run:
    """Run one connection over ``messages`` (a channel holding all of them; closed after
    them unless ``keep_open``); ``close_after`` outcomes, ask it to close when idle."""
    send, receive = trio.open_memory_channel[OutgoingMessage](len(messages) or 1)
    for item in messages:
        send.send_nowait(item)
    if not keep_open:
        send.close()
    outcomes: list[MessageOutcome] = []

    async def report(outcome: MessageOutcome) -> None:
        outcomes.append(outcome)
        if close_after is not None and len(outcomes) == close_after:
            connection.close_when_idle()

    connection = SmtpConnection(
        settings or connection_settings(),
        plan,
        site=SITE,
        messages=receive,
        report=report,
        session_id="session-1",
        turn=turn,
    )
    summary = await connection.run()
    left = []
    while True:
        try:
            left.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return Run(summary, outcomes, left, connection)


@asynccontextmanager
async def sink_running(
    sink: SmtpSink | None = None, *, deadline: float = DEADLINE
) -> AsyncIterator[SmtpSink]:
    """``sink`` running; the test fails after ``deadline`` seconds (of virtual time
    under a MockClock, where pytest-timeout guards real time)."""
    with trio.fail_after(deadline):
        async with running_sink(sink) as running:
            yield running


def envelope(n: int) -> list[bytes]:
    return [
        b"MAIL FROM:<sender@example.org>\r\n",
        f"RCPT TO:<rcpt{n}@example.com>\r\n".encode(),
        b"DATA\r\n",
    ]


# -- deliveries ------------------------------------------------------------------------------


async def test_messages_are_delivered_byte_for_byte_over_one_pipelined_connection() -> None:
    contents = [
        b"Subject: dots\r\n\r\n.leading dot\r\nline\r\n..two\r\n",
        b"Subject: no final line end\r\n\r\nlast",
        b"",
    ]
    wires = [
        b"Subject: dots\r\n\r\n..leading dot\r\nline\r\n...two\r\n.\r\n",
        b"Subject: no final line end\r\n\r\nlast\r\n.\r\n",
        b"\r\n.\r\n",
    ]
    async with sink_running() as sink:
        plan = [address(sink.port, "mx.sink.test.")]
        run = await deliver(plan, [message(n, c) for n, c in enumerate(contents)])

    [session] = sink.sessions
    assert session.commands == [
        b"EHLO client.test\r\n",
        *envelope(0),
        b"RSET\r\n",
        *envelope(1),
        b"RSET\r\n",
        *envelope(2),
        b"QUIT\r\n",
    ]
    assert [t.data for t in session.transactions] == wires
    # PIPELINING: the envelope goes in one write, RSET included.
    assert b"".join(envelope(0)) in session.chunks
    assert b"RSET\r\n" + b"".join(envelope(1)) in session.chunks

    assert [o.message.id for o in run.outcomes] == [f"{n:032x}" for n in range(3)]
    first = run.outcomes[0]
    assert first.disposition is Disposition.DELIVERY
    assert first.response == Response(250, EnhancedCode(2, 0, 0), "Ok: queued", ".\r\n")
    assert first.site == SITE
    assert first.peer_address == PeerAddress("mx.sink.test.", f"127.0.0.1:{sink.port}")
    assert first.source_address == session.peer
    assert first.tls is None
    assert first.session_id == "session-1"
    assert first.delivery_protocol == "ESMTP"
    assert {o.disposition for o in run.outcomes} == {Disposition.DELIVERY}
    assert run.summary == ConnectionSummary((), plan[0], 3, None)
    assert not run.summary.exhausted
    stats = run.connection.statistics()
    assert (stats.taken, stats.delivered, stats.connected) == (3, 3, 0)


async def test_a_connection_waits_its_turn_while_an_admin_request_is_answered() -> None:
    """After each read it waits on the engine's admin gate before acting on what it read:
    here, on the banner, until the request is answered."""
    gate = AdminGate(60.0)
    runs: list[Run] = []
    async with sink_running() as sink, trio.open_nursery() as nursery:

        async def run() -> None:
            runs.append(await deliver([address(sink.port)], [message(0)], turn=gate.turn))

        with gate.request():
            nursery.start_soon(run)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            assert [session.commands for session in sink.sessions] == [[]]
    [done] = runs
    assert [o.disposition for o in done.outcomes] == [Disposition.DELIVERY]
    assert sink.sessions[0].commands[0] == b"EHLO client.test\r\n"


async def test_without_pipelining_one_command_at_a_time() -> None:
    async with sink_running(SmtpSink(pipelining=False)) as sink:
        run = await deliver([address(sink.port)], [message(0), message(1)])

    [session] = sink.sessions
    assert session.commands == [
        b"EHLO client.test\r\n",
        *envelope(0),
        b"RSET\r\n",
        *envelope(1),
        b"QUIT\r\n",
    ]
    assert session.early == []
    assert [o.disposition for o in run.outcomes] == [Disposition.DELIVERY] * 2, run.outcomes


async def test_temporary_and_permanent_refusals_then_a_delivery_on_the_same_connection() -> None:
    sink = (
        SmtpSink()
        .then("RCPT", b"451 4.7.1 try later\r\n")
        .then("DATA", b"554 5.5.1 no valid recipients\r\n")
        .then("DOT", b"554 5.7.1 content rejected\r\n")
    )
    async with sink_running(sink):
        run = await deliver([address(sink.port)], [message(0), message(1), message(2)])

    assert [(o.disposition, o.response) for o in run.outcomes] == [
        (
            Disposition.TRANSIENT_FAILURE,
            Response(451, EnhancedCode(4, 7, 1), "try later", "RCPT TO:<rcpt0@example.com>\r\n"),
        ),
        (
            Disposition.BOUNCE,
            Response(554, EnhancedCode(5, 7, 1), "content rejected", ".\r\n"),
        ),
        (Disposition.DELIVERY, Response(250, EnhancedCode(2, 0, 0), "Ok: queued", ".\r\n")),
    ]
    [session] = sink.sessions
    assert session.commands.count(b"RSET\r\n") == 2
    assert len(sink.transactions) == 2  # the refused RCPT's message sent no content
    stats = run.connection.statistics()
    assert (stats.delivered, stats.transient, stats.bounced) == (1, 1, 1)


async def test_a_421_ends_the_connection_and_leaves_the_next_message_untaken() -> None:
    sink = SmtpSink().then("MAIL", b"421 4.3.2 going away\r\n")
    async with sink_running(sink):
        run = await deliver([address(sink.port)], [message(0), message(1)])

    [outcome] = run.outcomes
    assert outcome.disposition is Disposition.TRANSIENT_FAILURE
    assert outcome.response == Response(
        421, EnhancedCode(4, 3, 2), "going away", "MAIL FROM:<sender@example.org>\r\n"
    )
    assert run.summary.error == "421 4.3.2 going away"
    assert run.summary.messages == 1
    assert run.left == [message(1)]
    assert b"QUIT\r\n" not in sink.sessions[0].commands


async def test_a_connection_dropped_mid_transaction() -> None:
    sink = SmtpSink(pipelining=False).then("MAIL", Act.DROP)
    async with sink_running(sink):
        run = await deliver([address(sink.port)], [message(0), message(1)])

    [outcome] = run.outcomes
    assert outcome.disposition is Disposition.TRANSIENT_FAILURE
    assert outcome.response == Response(
        400,
        None,
        "KumoMTA internal: failed to send message: Error Connection closed by peer "
        "reading response to cmd=MAIL FROM:<sender@example.org>",
        "MAIL FROM:<sender@example.org>\r\n",
    )
    assert run.summary.error == (
        "Error Connection closed by peer reading response to cmd=MAIL FROM:<sender@example.org>"
    )
    assert run.left == [message(1)]


async def test_an_envelope_no_command_can_carry_bounces_and_the_connection_goes_on() -> None:
    bad = message(0, recipient="a\r\nb@example.com")
    async with sink_running() as sink:
        run = await deliver([address(sink.port)], [bad, message(1)])

    first, second = run.outcomes
    assert first.disposition is Disposition.BOUNCE
    assert first.response == Response(
        554,
        EnhancedCode(5, 1, 3),
        "KumoMTA internal: message cannot be sent: "
        "recipient 'a\\r\\nb@example.com' contains a control character",
    )
    assert second.disposition is Disposition.DELIVERY
    # Nothing of the first went on the wire, so the second is the connection's first.
    assert sink.sessions[0].commands[1:4] == envelope(1)


# -- connection failures ---------------------------------------------------------------------


async def test_every_host_failing_gives_the_held_message_the_connect_failure_text() -> None:
    closed = refused_port()
    sink = SmtpSink().then("BANNER", b"554 5.3.2 no service here\r\n")
    async with sink_running(sink):
        plan = [address(closed), address(sink.port)]
        run = await deliver(plan, [message(0), message(1)])

    [outcome] = run.outcomes
    assert outcome.disposition is Disposition.TRANSIENT_FAILURE
    assert outcome.response == Response(
        400,
        None,
        "KumoMTA internal: failed to connect to any candidate hosts: "
        f"connect to 127.0.0.1:{closed} and read initial banner: "
        f"failed to connect to 127.0.0.1:{closed}: Connection refused (os error 111), "
        f"connect to 127.0.0.1:{sink.port} and read initial banner: "
        "Command rejected 554 5.3.2 no service here",
    )
    assert (outcome.peer_address, outcome.source_address, outcome.tls) == (None, None, None)
    assert outcome.site == SITE
    assert run.summary.exhausted
    assert run.summary.messages == 1
    assert len(run.summary.failures) == 2
    assert run.left == [message(1)]


async def test_the_next_address_is_tried_when_one_fails() -> None:
    closed = refused_port()
    async with sink_running() as sink:
        plan = [address(closed), address(sink.port)]
        run = await deliver(plan, [message(0)])

    assert [o.disposition for o in run.outcomes] == [Disposition.DELIVERY]
    assert run.outcomes[0].peer_address == PeerAddress("127.0.0.1", f"127.0.0.1:{sink.port}")
    assert run.summary.peer == plan[1]
    [failure] = run.summary.failures
    assert "Connection refused (os error 111)" in failure.error


async def test_no_message_no_connection(autojump_clock: trio.testing.MockClock) -> None:
    async with sink_running(deadline=VIRTUAL_DEADLINE) as sink:
        run = await deliver([address(sink.port)], [], keep_open=True)
        assert trio.current_time() == pytest.approx(5.0)  # idle_timeout's default
    assert run.summary == ConnectionSummary((), None, 0, None)
    assert sink.sessions == []


# -- STARTTLS ----------------------------------------------------------------------------------


async def test_opportunistic_starttls_with_a_verified_certificate() -> None:
    async with sink_running(SmtpSink(tls=server_context())) as sink:
        run = await deliver([address(sink.port)], [message(0, b"Subject: tls\r\n\r\nsecret\r\n")])

    [session] = sink.sessions
    assert session.tls
    assert session.commands[:3] == [
        b"EHLO client.test\r\n",
        b"STARTTLS\r\n",
        b"EHLO client.test\r\n",
    ]
    assert [t.data for t in session.transactions] == [b"Subject: tls\r\n\r\nsecret\r\n.\r\n"]
    [outcome] = run.outcomes
    assert outcome.disposition is Disposition.DELIVERY
    assert outcome.tls is not None
    assert outcome.tls.protocol_version.startswith("TLSv1.")
    assert outcome.tls.cipher


async def test_an_unverifiable_certificate_fails_the_host_under_opportunistic() -> None:
    settings = connection_settings(verifying_tls=untrusting_context())
    async with sink_running(SmtpSink(tls=server_context())) as sink:
        run = await deliver([address(sink.port)], [message(0)], settings)

    [outcome] = run.outcomes
    assert outcome.disposition is Disposition.TRANSIENT_FAILURE
    prefix = (
        "KumoMTA internal: failed to connect to any candidate hosts: "
        f"TLS handshake with 127.0.0.1:{sink.port} failed: "
    )
    assert outcome.response.content.startswith(prefix)
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.response.content
    assert sink.transactions == []


async def test_opportunistic_insecure_takes_any_certificate() -> None:
    settings = connection_settings(
        TlsMode.OPPORTUNISTIC_INSECURE, verifying_tls=untrusting_context()
    )
    async with sink_running(SmtpSink(tls=server_context())) as sink:
        run = await deliver([address(sink.port)], [message(0)], settings)

    [outcome] = run.outcomes
    assert outcome.disposition is Disposition.DELIVERY
    assert outcome.tls is not None
    assert sink.sessions[0].tls


async def test_required_tls_without_starttls_fails_the_host() -> None:
    async with sink_running() as sink:
        run = await deliver(
            [address(sink.port)], [message(0)], connection_settings(TlsMode.REQUIRED)
        )

    [outcome] = run.outcomes
    assert outcome.response.content == (
        "KumoMTA internal: failed to connect to any candidate hosts: "
        f"tls policy is Required but STARTTLS is not advertised by 127.0.0.1:{sink.port}"
    )
    assert sink.transactions == []


async def test_disabled_tls_stays_in_clear_text() -> None:
    async with sink_running(SmtpSink(tls=server_context())) as sink:
        run = await deliver(
            [address(sink.port)], [message(0)], connection_settings(TlsMode.DISABLED)
        )

    assert run.outcomes[0].tls is None
    assert b"STARTTLS\r\n" not in sink.sessions[0].commands


# -- time-outs and the end of a connection ---------------------------------------------------


async def test_no_reply_to_the_final_dot_times_out_after_data_dot_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with sink_running(SmtpSink().then("DOT", Act.STALL), deadline=VIRTUAL_DEADLINE) as sink:
        start = trio.current_time()
        run = await deliver([address(sink.port)], [message(0), message(1)])
        waited = trio.current_time() - start

    [outcome] = run.outcomes
    assert outcome.disposition is Disposition.TRANSIENT_FAILURE
    text = "Timed Out waiting 300s for response to cmd=."
    assert outcome.response == Response(
        421,
        EnhancedCode(4, 4, 2),
        f"KumoMTA internal: failed to send message to {SITE} 127.0.0.1:{sink.port}: {text}",
        ".\r\n",
    )
    assert run.summary.error == text
    assert waited == pytest.approx(300.0)
    assert run.left == [message(1)]


async def test_no_banner_times_out_after_banner_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with sink_running(
        SmtpSink().then("BANNER", Act.STALL), deadline=VIRTUAL_DEADLINE
    ) as sink:
        start = trio.current_time()
        run = await deliver([address(sink.port)], [message(0)])
        waited = trio.current_time() - start

    [outcome] = run.outcomes
    assert outcome.response.content == (
        "KumoMTA internal: failed to connect to any candidate hosts: "
        f"connect to 127.0.0.1:{sink.port} and read initial banner: reading banner: "
        "Timed Out waiting 60s for response to cmd=NONE"
    )
    assert waited == pytest.approx(60.0)


async def test_an_idle_connection_sends_quit_after_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with sink_running(deadline=VIRTUAL_DEADLINE) as sink:
        start = trio.current_time()
        run = await deliver([address(sink.port)], [message(0)], keep_open=True)
        waited = trio.current_time() - start

    assert [o.disposition for o in run.outcomes] == [Disposition.DELIVERY]
    assert sink.sessions[0].commands[-1] == b"QUIT\r\n"
    assert run.summary.error is None
    assert waited == pytest.approx(5.0)


async def test_max_deliveries_per_connection_ends_with_quit() -> None:
    settings = connection_settings(max_deliveries_per_connection=2)
    async with sink_running() as sink:
        run = await deliver([address(sink.port)], [message(n) for n in range(3)], settings)

    assert len(run.outcomes) == 2
    assert run.left == [message(2)]
    assert sink.sessions[0].commands[-1] == b"QUIT\r\n"
    assert run.summary.error is None


async def test_close_when_idle_ends_with_quit_before_the_next_message() -> None:
    async with sink_running() as sink:
        run = await deliver(
            [address(sink.port)], [message(0), message(1)], keep_open=True, close_after=1
        )

    assert len(run.outcomes) == 1
    assert run.left == [message(1)]
    assert sink.sessions[0].commands[-1] == b"QUIT\r\n"


async def test_short_real_time_outs_are_kept_too() -> None:
    # The same machinery on the real clock: a stalled RCPT reply under a 50 ms time-out.
    timeouts = ClientTimeouts(rcpt_to=50_000_000)
    settings = connection_settings(timeouts=timeouts)
    async with sink_running(SmtpSink(pipelining=False).then("RCPT", Act.STALL)) as sink:
        run = await deliver([address(sink.port)], [message(0)], settings)

    [outcome] = run.outcomes
    assert outcome.response.content.endswith(
        "Timed Out waiting 50ms for response to cmd=RCPT TO:<rcpt0@example.com>"
    )
    assert outcome.response.command == "RCPT TO:<rcpt0@example.com>\r\n"


# -- a real peer: Postfix's smtp-sink ----------------------------------------------------------


async def test_delivery_to_postfix_smtp_sink() -> None:
    require_smtp_sink()
    content = b"Subject: to postfix\r\n\r\n.dot\r\nbody\r\n"
    with trio.fail_after(DEADLINE):
        async with postfix_smtp_sink() as (port, dumps):
            run = await deliver([address(port)], [message(0, content), message(1)])
            written = [await path.read_bytes() for path in sorted(await trio.Path(dumps).iterdir())]

    assert [o.disposition for o in run.outcomes] == [Disposition.DELIVERY] * 2
    assert run.outcomes[0].response == Response(250, EnhancedCode(2, 0, 0), "Ok", ".\r\n")
    # smtp-sink writes each message with LF line ends, after headers of its own.
    assert len(written) == 2
    assert any(dump.endswith(b"\n.dot\nbody\n\n") for dump in written)
    assert all(b"X-Helo-Args: client.test\n" in dump for dump in written)


async def test_a_connector_of_the_settings_opens_every_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The settings' connector replaces TCP (an in-process scenario's seam): what it
    raises is the address's failure, and a connect that never returns times out."""
    asked: list[tuple[str, int]] = []

    async def connector(target: ResolvedAddress, port: int) -> tuple[trio.abc.Stream, str]:
        asked.append((target.name, port))
        if target.name == "refusing.":
            raise ConnectionRefusedError(111, "Connection refused")
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    settings = attrs.evolve(connection_settings(), connector=connector)
    plan = [
        ResolvedAddress("refusing.", ipaddress.ip_address("192.0.2.1")),
        ResolvedAddress("hanging.", ipaddress.ip_address("192.0.2.2"), 2525),
    ]
    with trio.fail_after(VIRTUAL_DEADLINE):
        run = await deliver(plan, [message(0)], settings)
    assert asked == [("refusing.", 25), ("hanging.", 2525)]
    [outcome] = run.outcomes
    assert outcome.disposition is Disposition.TRANSIENT_FAILURE
    assert outcome.response.content.startswith(
        "KumoMTA internal: failed to connect to any candidate hosts: "
        "connect to 192.0.2.1:25 and read initial banner: failed to connect to "
        "192.0.2.1:25: Connection refused (os error 111), connect to 192.0.2.2:2525 "
    )
    assert trio.current_time() >= 60  # connect_timeout, KumoMTA's default

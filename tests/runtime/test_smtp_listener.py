"""Tests for kumo.runtime.smtp_listener: real sockets on 127.0.0.1, a real engine.

The client here is a few lines of Trio (so that a test can hold a reply back, pipeline
at will, or vanish mid-DATA); the STARTTLS test wraps it in ``trio.SSLStream`` with a
certificate made by ``trustme``.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from kumo.model.events import MessageReceived, PeerAddress, Rejected
from kumo.model.smtp_server import Peer, SmtpServerSettings
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import Engine, open_engine
from kumo.runtime.smtp_listener import ListenerSettings, SmtpListener
from kumo.store.delivery_files import read_records
from kumo.store.layout import DATABASE, LOGS
from kumo.store.sqlite_log import SqliteEventStore
from tests.live_server import logged_events
from tests.runtime.harness import WALL_ORIGIN

HOST = "mx.example.net"
SESSION = SmtpServerSettings(hostname=HOST)
DEADLINE = 30  # seconds of real time any test may take before it is a hang


class Client:
    """An SMTP client that reads replies as whole lists of lines."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def reply(self) -> list[str]:
        """The next reply's lines (CRLF stripped); [] at end of input."""
        lines: list[str] = []
        while True:
            end = self._buffer.find(b"\r\n")
            if end < 0:
                data = await self.stream.receive_some(65536)
                if not data:
                    return lines
                self._buffer += data
                continue
            line = self._buffer[:end].decode()
            del self._buffer[: end + 2]
            lines.append(line)
            if line[3:4] != "-":
                return lines

    async def command(self, line: str) -> list[str]:
        await self.send(line.encode() + b"\r\n")
        return await self.reply()

    async def closed(self) -> bool:
        """Whether the server closed the connection (after any unread reply)."""
        return await self.reply() == []


def listener_settings(tls: ssl.SSLContext | None = None, **session: Any) -> ListenerSettings:
    return ListenerSettings(
        host="127.0.0.1",
        port=0,
        session=attrs.evolve(SESSION, starttls=tls is not None, **session),
        tls=tls,
    )


@attrs.define
class Served:
    engine: Engine
    listener: SmtpListener
    port: int
    data_dir: Path

    async def client(self) -> Client:
        client = await Client.connect(self.port)
        assert await client.reply() == [f"220 {HOST} KumoMTA"]
        return client


@asynccontextmanager
async def serving(
    data_dir: Path,
    settings: ListenerSettings | None = None,
    *,
    engine_wrapper: Any = None,
    threads: bool = True,
    admin_first: bool = False,
) -> AsyncIterator[Served]:
    """An engine and a listener on a free port; shut down (gracefully) at the end.
    ``admin_first``: the sessions wait their turn on the engine's admin gate, as
    ``kumo serve``'s do."""
    settings = settings or listener_settings()
    async with open_engine(data_dir, clock=EngineClock(WALL_ORIGIN), threads=threads) as engine:
        facing = engine if engine_wrapper is None else engine_wrapper(engine)
        turn = engine.admin_gate.turn if admin_first else None
        listener = SmtpListener(facing, settings, turn=turn)
        async with trio.open_nursery() as nursery:
            address = await nursery.start(listener.run)
            port = int(address.rpartition(":")[2])
            try:
                yield Served(engine, listener, port, data_dir)
            finally:
                listener.shut_down()
        await engine.wait_idle()


def log_records(data_dir: Path) -> list[dict[str, Any]]:
    """Every delivery-log record, in log order."""
    return read_records(data_dir / LOGS)


def received_events(data_dir: Path) -> list[MessageReceived]:
    return [c.event for c in logged_events(data_dir) if isinstance(c.event, MessageReceived)]


def spool_bodies(data_dir: Path) -> list[bytes]:
    with closing(SqliteEventStore(data_dir / DATABASE, readonly=True)) as store:
        seqs = [
            c.seq for batch in store.scan() for c in batch if isinstance(c.event, MessageReceived)
        ]
        return [store.spool_body(seq) or b"" for seq in seqs]


async def send_message(
    client: Client, recipients: Sequence[str], body: bytes = b"Subject: hi\r\n\r\nhello\r\n"
) -> list[str]:
    """One transaction; returns the reply to the final dot."""
    assert await client.command("MAIL FROM:<sender@example.org>") == ["250 OK <sender@example.org>"]
    for recipient in recipients:
        assert await client.command(f"RCPT TO:<{recipient}>") == [f"250 OK <{recipient}>"]
    assert await client.command("DATA") == ["354 Send body; end with CRLF.CRLF"]
    await client.send(body + b".\r\n")
    return await client.reply()


def ids_of(reply: list[str]) -> list[str]:
    [line] = reply
    assert line.startswith("250 OK ids="), line
    return line.removeprefix("250 OK ids=").split()


# -- a whole session ------------------------------------------------------------------------


async def test_a_full_session_queues_one_message_per_recipient_and_logs_receptions(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with serving(data) as served:
            client = await served.client()
            assert await client.command("EHLO client.example") == [
                f"250-{HOST} Aloha client.example",
                "250-PIPELINING",
                "250-ENHANCEDSTATUSCODES",
                "250-8BITMIME",
                "250 SMTPUTF8",
            ]
            body = b"X-Campaign: spring\r\nSubject: hi\r\n\r\n..dot\r\nhello\r\n"
            ids = ids_of(await send_message(client, ["a@Example.COM", "b@other.example"], body))
            assert await client.command("QUIT") == ["221 So long, and thanks for all the fish!"]
            assert await client.closed()
            assert served.listener.statistics().messages_received == 2

    events = received_events(data)
    assert [e.message_id for e in events] == ids
    assert [(e.queue, e.recipient, e.sender, e.protocol) for e in events] == [
        ("spring:@example.com", "a@Example.COM", "sender@example.org", "ESMTP"),
        ("spring:@other.example", "b@other.example", "sender@example.org", "ESMTP"),
    ]
    assert {e.peer for e in events} == {PeerAddress(name="client.example", addr="127.0.0.1")}
    [first, second] = spool_bodies(data)
    assert first == second
    assert first.startswith(
        b"Received: from client.example (127.0.0.1)\r\n"
        b"  by mx.example.net (KumoMTA 127.0.0.1) \r\n"
        b"  with ESMTP;\r\n"
    )
    assert first.endswith(b"\r\n" + body.replace(b"..dot", b".dot"))
    assert {e.size for e in events} == {len(first)}
    records = log_records(data)
    assert [(r["type"], r["id"]) for r in records] == [("Reception", i) for i in ids]
    for record in records:
        assert record["peer_address"] == {"name": "client.example", "addr": "127.0.0.1"}
        assert record["reception_protocol"] == "ESMTP"
        assert record["size"] == len(first)


async def test_pipelined_commands_are_answered_in_order(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with serving(data) as served:
            client = await served.client()
            await client.send(
                b"EHLO pipe.example\r\n"
                b"MAIL FROM:<s@example.org>\r\nRCPT TO:<a@one.example>\r\nDATA\r\n"
                b"Subject: 1\r\n\r\none\r\n.\r\n"
                b"MAIL FROM:<s@example.org>\r\nRCPT TO:<nobody>\r\nRCPT TO:<b@two.example>\r\n"
                b"DATA\r\nSubject: 2\r\n\r\ntwo\r\n.\r\nQUIT\r\n"
            )
            replies = [await client.reply() for _ in range(11)]
            assert await client.closed()

    assert [reply[-1][:3] for reply in replies] == [
        "250", "250", "250", "354", "250", "250", "501", "250", "354", "250", "221",
    ]  # fmt: skip
    assert replies[6] == ["501 5.1.3 Invalid recipient address syntax"]
    first, second = ids_of(replies[4]), ids_of(replies[9])
    assert [(e.message_id, e.queue) for e in received_events(data)] == [
        (first[0], "one.example"),
        (second[0], "two.example"),
    ]
    [rejection] = [r for r in log_records(data) if r["type"] == "Rejection"]
    assert rejection["response"]["command"] == "RCPT TO:<nobody>"
    assert rejection["sender"] == "s@example.org"


async def test_a_session_waits_its_turn_while_an_admin_request_is_answered(
    tmp_path: Path,
) -> None:
    """What a client sends is acted on once the engine's admin gate opens (the request
    is answered, or ``admin_hold`` passed)."""
    replies: list[list[str]] = []
    with trio.fail_after(DEADLINE):
        async with serving(tmp_path / "data", admin_first=True) as served:
            client = await served.client()
            gate = served.engine.admin_gate
            async with trio.open_nursery() as nursery:

                async def ehlo() -> None:
                    replies.append(await client.command("EHLO turn.example"))

                with gate.request():
                    nursery.start_soon(ehlo)
                    await trio.testing.wait_all_tasks_blocked(cushion=0.02)
                    assert replies == []
            assert await client.command("QUIT") == ["221 So long, and thanks for all the fish!"]
    [ehlo_reply] = replies
    assert ehlo_reply[0].startswith("250-")


# -- durability -------------------------------------------------------------------------------


class HeldEngine:
    """The engine, but each ``receive`` waits until the test lets it through."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.entered = trio.Event()
        self.release = trio.Event()

    def now(self) -> int:
        return self.engine.now()

    async def receive(self, events: Sequence[MessageReceived], bodies: Sequence[bytes]) -> object:
        self.entered.set()
        await self.release.wait()
        return await self.engine.receive(events, bodies)

    async def record_rejections(self, events: Sequence[Rejected]) -> None:
        await self.engine.record_rejections(events)


async def test_250_only_once_the_messages_are_durable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    held: list[HeldEngine] = []

    def hold(engine: Engine) -> HeldEngine:
        held.append(HeldEngine(engine))
        return held[0]

    with trio.fail_after(DEADLINE):
        async with serving(data, engine_wrapper=hold) as served:
            client = await served.client()
            replies: list[list[str]] = []

            async def finish() -> None:
                replies.append(await send_message(client, ["a@example.com"]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(finish)
                await held[0].entered.wait()
                await trio.testing.wait_all_tasks_blocked()
                # The messages wait for the log: no reply, nothing committed yet.
                assert replies == []
                assert received_events(data) == []
                held[0].release.set()
            # The reply came, and the log had made the message durable before it.
            log = served.engine.statistics().log
            assert log.durable_seq == log.last_seq
            [event] = received_events(data)
            assert ids_of(replies[0]) == [event.message_id]


async def test_a_refusing_engine_gets_a_4xx_never_a_250(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with serving(data) as served:
            client = await served.client()
            assert (await client.command("HELO c.example"))[0].startswith("250")
            served.engine.close()  # as when it shuts down: it refuses new work
            assert await send_message(client, ["a@example.com"]) == [
                f"421 4.3.2 {HOST} the spool is not accepting writes. Try later"
            ]
            assert await client.closed()
    assert received_events(data) == []


# -- rejections ---------------------------------------------------------------------------------


async def test_relaying_denied_is_a_550_and_a_rejection_record(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = listener_settings(relay_hosts=["10.0.0.0/8"])
    with trio.fail_after(DEADLINE):
        async with serving(data, settings) as served:
            client = await served.client()
            await client.command("EHLO outside.example")
            await client.command("MAIL FROM:<s@example.org>")
            [reply] = await client.command("RCPT TO:<a@example.com>")
            local_port = client.stream.socket.getsockname()[1]  # type: ignore[attr-defined]
            assert reply == f"550 5.7.1 relaying not permitted for 127.0.0.1:{local_port}"
            assert await client.command("DATA") == ["503 5.5.0 RCPT TO must be issued first"]
            await client.command("QUIT")
            assert served.listener.statistics().rejections == 2

    assert received_events(data) == []
    rejected = [c.event for c in logged_events(data) if isinstance(c.event, Rejected)]
    assert [(r.code, r.command) for r in rejected] == [
        (550, "RCPT TO:<a@example.com>"),
        (503, "DATA"),
    ]
    records = log_records(data)
    assert [r["type"] for r in records] == ["Rejection", "Rejection"]
    record = records[0]
    assert record["id"] == record["queue"] == record["site"] == ""
    assert record["size"] == 0
    assert record["sender"] == "s@example.org"
    assert record["recipient"] == ""
    assert record["response"] == {
        "code": 550,
        "enhanced_code": {"class": 5, "subject": 7, "detail": 1},
        "content": f"relaying not permitted for 127.0.0.1:{local_port}",
        "command": "RCPT TO:<a@example.com>",
    }
    assert record["peer_address"] == {"name": "outside.example", "addr": "127.0.0.1"}
    assert record["reception_protocol"] is None
    assert record["created"] == record["timestamp"]


async def test_a_message_too_big_is_refused_and_nothing_is_queued(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with serving(data, listener_settings(max_message_size=100)) as served:
            client = await served.client()
            await client.command("EHLO c.example")
            big = b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n"
            assert await send_message(client, ["a@example.com"], big) == [
                "552 5.3.4 message too big"
            ]
            # The session goes on: a message within the limit is taken.
            ids_of(await send_message(client, ["a@example.com"]))
    [event] = received_events(data)
    [rejection, reception] = log_records(data)
    assert rejection["type"] == "Rejection"
    assert rejection["response"]["command"] == "DATA"
    assert rejection["recipient"] == "a@example.com"
    assert reception["id"] == event.message_id


# -- time-outs, limits, disconnects ---------------------------------------------------------------


async def test_an_idle_client_is_told_and_closed_after_client_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    settings = attrs.evolve(listener_settings(), client_timeout=60 * 10**9)
    async with serving(tmp_path / "data", settings, threads=False) as served:
        client = await served.client()
        await client.command("EHLO slow.example")
        start = trio.current_time()
        await client.send(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nSub")
        assert [await client.reply() for _ in range(3)][-1] == ["354 Send body; end with CRLF.CRLF"]
        assert await client.reply() == [f"421 4.3.2 {HOST} idle too long"]
        assert trio.current_time() - start >= 60
        assert await client.closed()
    assert received_events(tmp_path / "data") == []
    # KumoMTA does not log its 421 4.3.2 replies.
    assert log_records(tmp_path / "data") == []


async def test_over_max_connections_a_client_gets_421_and_is_closed(tmp_path: Path) -> None:
    settings = attrs.evolve(listener_settings(), max_connections=1)
    with trio.fail_after(DEADLINE):
        async with serving(tmp_path / "data", settings) as served:
            first = await served.client()
            second = await Client.connect(served.port)
            assert await second.reply() == [
                f"421 4.3.2 {HOST} too many concurrent sessions. Try later"
            ]
            assert await second.closed()
            assert (await first.command("NOOP")) == ["250 the goggles do nothing"]
            await first.command("QUIT")
            assert await first.closed()
            third = await served.client()  # the first one's place is free again
            await third.command("QUIT")
            statistics = served.listener.statistics()
            assert (statistics.connections, statistics.refused) == (3, 1)


async def test_a_disconnect_mid_data_leaves_nothing_queued(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with serving(data) as served:
            client = await served.client()
            await client.command("EHLO gone.example")
            await client.command("MAIL FROM:<s@example.org>")
            await client.command("RCPT TO:<a@example.com>")
            await client.command("DATA")
            await client.send(b"Subject: cut\r\n\r\nhalf a mess")
            await client.stream.aclose()
            second = await served.client()  # the listener is unharmed
            await second.command("QUIT")
    assert received_events(data) == []
    assert log_records(data) == []


# -- shutdown --------------------------------------------------------------------------------------


async def test_shutting_down_says_421_to_every_session_and_stops_accepting(
    tmp_path: Path,
) -> None:
    with trio.fail_after(DEADLINE):
        async with serving(tmp_path / "data") as served:
            idle = await served.client()
            await idle.command("EHLO idle.example")
            mid_data = await served.client()
            await mid_data.command("HELO busy.example")
            await mid_data.command("MAIL FROM:<s@example.org>")
            await mid_data.command("RCPT TO:<a@example.com>")
            await mid_data.command("DATA")
            await mid_data.send(b"Subject: never\r\n\r\n")
            served.listener.shut_down()
            for client in (idle, mid_data):
                assert await client.reply() == [f"421 4.3.2 {HOST} shutting down"]
                assert await client.closed()
            with pytest.raises(OSError, match="all attempts to connect"):
                await Client.connect(served.port)
    assert received_events(tmp_path / "data") == []


async def test_a_transaction_being_made_durable_gets_its_250_then_421(tmp_path: Path) -> None:
    data = tmp_path / "data"
    held: list[HeldEngine] = []

    def hold(engine: Engine) -> HeldEngine:
        held.append(HeldEngine(engine))
        return held[0]

    with trio.fail_after(DEADLINE):
        async with serving(data, engine_wrapper=hold) as served:
            client = await served.client()
            await client.command("EHLO c.example")
            replies: list[list[str]] = []

            async def finish() -> None:
                replies.append(await send_message(client, ["a@example.com"]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(finish)
                await held[0].entered.wait()
                served.listener.shut_down()
                held[0].release.set()
            assert await client.reply() == [f"421 4.3.2 {HOST} shutting down"]
            assert await client.closed()
    [event] = received_events(data)
    assert ids_of(replies[0]) == [event.message_id]


# -- STARTTLS --------------------------------------------------------------------------------------


async def test_starttls_with_a_certificate_made_for_the_test(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme", reason="trustme makes the test certificate")
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    settings = attrs.evolve(listener_settings(server_context), client_timeout=DEADLINE * 10**9)
    data = tmp_path / "data"
    with trio.fail_after(DEADLINE):
        async with serving(data, settings) as served:
            client = await served.client()
            assert (await client.command("EHLO tls.example"))[-1] == "250 STARTTLS"
            assert await client.command("STARTTLS") == ["220 Ready to Start TLS"]
            client.stream = trio.SSLStream(
                client.stream, client_context, server_hostname="localhost"
            )
            # The session starts afresh: no EHLO yet, and no STARTTLS offered again.
            assert await client.command("MAIL FROM:<s@example.org>") == ["250 OK <s@example.org>"]
            assert await client.command("RSET") == ["250 Reset state"]
            assert (await client.command("EHLO tls.example"))[-1] == "250 SMTPUTF8"
            ids_of(await send_message(client, ["a@example.com"]))
            assert await client.command("STARTTLS") == [
                "501 Cannot STARTTLS as TLS is already active"
            ]
            await client.command("QUIT")
    [body] = spool_bodies(data)
    assert b"  with ESMTPS;\r\n" in body


async def test_a_failed_tls_handshake_ends_only_that_session(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme", reason="trustme makes the test certificate")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("localhost").configure_cert(server_context)
    settings = listener_settings(server_context)
    with trio.fail_after(DEADLINE):
        async with serving(tmp_path / "data", settings) as served:
            client = await served.client()
            await client.command("EHLO tls.example")
            await client.command("STARTTLS")
            await client.send(b"this is no TLS client hello\r\n" * 20)
            assert await client.closed()
            other = await served.client()
            assert await other.command("NOOP") == ["250 the goggles do nothing"]
            await other.command("QUIT")


async def test_a_connection_handed_in_without_a_socket_is_served_alike(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """serve_connection: what an in-process scenario uses, a memory stream and the
    addresses it says, the same session as over TCP; the stream stays the caller's."""
    data = tmp_path / "data"
    async with open_engine(data, clock=EngineClock(WALL_ORIGIN), threads=False) as engine:
        listener = SmtpListener(engine, listener_settings())
        ours, theirs = trio.testing.memory_stream_pair()

        async def serve() -> None:
            async with theirs:
                await listener.serve_connection(theirs, Peer("127.0.0.1", 4567), "192.0.2.25")

        # Virtual time: a hang fails at once.
        with trio.fail_after(3600):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                client = Client(ours)
                assert await client.reply() == [f"220 {HOST} KumoMTA"]
                assert (await client.command("EHLO client.example"))[0].startswith("250-")
                ids = ids_of(await send_message(client, ["a@example.com"]))
                assert await client.command("QUIT") == ["221 So long, and thanks for all the fish!"]
                assert await client.closed()
        await engine.wait_idle()
        assert listener.statistics().connections == 1
        assert listener.statistics().messages_received == 1
    [event] = received_events(data)
    assert event.message_id == ids[0]
    assert event.peer == PeerAddress(name="client.example", addr="127.0.0.1")
    [body] = spool_bodies(data)
    assert b"(KumoMTA 192.0.2.25)" in body

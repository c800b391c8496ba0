"""Tests for kumo.model.smtp_client: conversations with a scripted server, every text, fuzzing."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Sequence

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.smtp_client import (
    ClientSettings,
    ClientState,
    ClientTimeouts,
    ClientUsageError,
    Closed,
    ConnectionFailed,
    Output,
    Phase,
    Ready,
    RecipientOutcome,
    Send,
    SmtpClient,
    StartTls,
    Timeout,
    TlsMode,
    TransactionOutcome,
    connection_failure_response,
    format_rust_duration,
    stuff_content,
)
from kumo.model.smtp_reply import (
    MAX_REPLY_LENGTH,
    Disposition,
    EnhancedCode,
    Response,
    classify_reply,
)

PEER = "10.0.0.1:25"
SITE = "unspecified->mx.example.com@smtp_client"
SETTINGS = ClientSettings("client.example.net")

Message = tuple[str, Sequence[str], bytes]


def make_client(settings: ClientSettings = SETTINGS) -> SmtpClient:
    return SmtpClient(settings, peer=PEER, site=SITE)


# -- a tiny scripted server ----------------------------------------------------------------


@attrs.define
class ScriptedServer:
    """A strict little SMTP server: default replies, or scripted ones per verb, in turn.

    Verbs are EHLO, STARTTLS, RSET, MAIL, RCPT, DATA and DOT (the reply after the
    content). After a MAIL it refused it answers 503 to RCPT and DATA, and 503 to DATA
    without an accepted RCPT, as a real server does. After a 421 it hangs up.
    """

    pipelining: bool = True
    starttls: bool = False
    extensions: tuple[str, ...] = ("8BITMIME", "SMTPUTF8")
    script: dict[str, list[bytes]] = attrs.Factory(dict)
    writes: list[bytes] = attrs.Factory(list)
    commands: list[bytes] = attrs.Factory(list)
    accepted: list[tuple[bytes, tuple[bytes, ...], bytes]] = attrs.Factory(list)
    violations: list[str] = attrs.Factory(list)
    hung_up: bool = False
    tls: bool = False
    _buffer: bytearray = attrs.Factory(bytearray)
    _in_data: bool = False
    _sender: bytes | None = None
    _recipients: list[bytes] = attrs.Factory(list)

    def banner(self) -> bytes:
        return b"220 mx.example.com ESMTP\r\n"

    def ehlo_reply(self) -> bytes:
        lines = ["mx.example.com"]
        if self.pipelining:
            lines.append("PIPELINING")
        lines.extend(self.extensions)
        if self.starttls and not self.tls:
            lines.append("STARTTLS")
        return b"".join(
            f"250{' ' if n == len(lines) - 1 else '-'}{line}\r\n".encode()
            for n, line in enumerate(lines)
        )

    def start_tls(self) -> None:
        self.tls = True
        self._reset()

    def _reset(self) -> None:
        self._sender = None
        self._recipients = []

    def _reply(self, verb: str, default: bytes) -> bytes:
        scripted = self.script.get(verb)
        reply = scripted.pop(0) if scripted else default
        if reply.startswith(b"421"):
            self.hung_up = True
        return reply

    def feed(self, data: bytes) -> bytes:
        assert not self.hung_up, "the client wrote after the server hung up"
        self.writes.append(data)
        self._buffer += data
        out = bytearray()
        lines_in_write = 0
        while not self.hung_up:
            if self._in_data:
                end = self._buffer.find(b"\r\n.\r\n")
                if end < 0:
                    break
                body = bytes(self._buffer[: end + 2])
                del self._buffer[: end + 5]
                self._in_data = False
                if any(line in (b".", b".\r") for line in body.split(b"\n")[1:]):
                    self.violations.append("a line of the content reads as the end")
                content = body.replace(b"\n..", b"\n.")
                if content.startswith(b".."):
                    content = content[1:]
                reply = self._reply("DOT", b"250 2.0.0 OK ids=1\r\n")
                if reply.startswith(b"2"):
                    assert self._sender is not None
                    self.accepted.append((self._sender, tuple(self._recipients), content))
                self._reset()
                out += reply
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self.commands.append(line)
            lines_in_write += 1
            if lines_in_write > 1 and not self.pipelining:
                self.violations.append(f"pipelined {line!r} without PIPELINING")
            out += self._command(line)
        if self._buffer and not self._in_data and not self.hung_up:
            self.violations.append(f"a partial command {bytes(self._buffer)!r}")
        return bytes(out)

    def _command(self, line: bytes) -> bytes:
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper().decode()
        if verb == "EHLO":
            self._reset()
            return self._reply("EHLO", self.ehlo_reply())
        if verb == "STARTTLS":
            return self._reply("STARTTLS", b"220 2.0.0 ready\r\n")
        if verb == "RSET":
            self._reset()
            return self._reply("RSET", b"250 2.0.0 reset\r\n")
        if verb == "QUIT":
            self.hung_up = True
            return b"221 2.0.0 bye\r\n"
        if verb == "MAIL":
            reply = self._reply("MAIL", b"250 2.1.0 OK\r\n")
            if reply.startswith(b"2"):
                self._sender = line[len(b"MAIL FROM:") :]
            return reply
        if verb == "RCPT":
            if self._sender is None:
                return b"503 5.5.1 need MAIL\r\n"
            reply = self._reply("RCPT", b"250 2.1.5 OK\r\n")
            if reply.startswith(b"2"):
                self._recipients.append(line[len(b"RCPT TO:") :])
            return reply
        if verb == "DATA":
            if not self._recipients:
                return b"503 5.5.1 need RCPT\r\n"
            reply = self._reply("DATA", b"354 go ahead\r\n")
            self._in_data = reply.startswith(b"354")
            return reply
        return b"500 5.5.2 what\r\n"


HandshakeResult = Callable[[StartTls], str | None]


def converse(
    client: SmtpClient,
    server: ScriptedServer,
    messages: Sequence[Message] = (),
    *,
    handshake: HandshakeResult = lambda _: None,
) -> list[Output]:
    """Run a whole connection: every output, in order; ``handshake`` gives the TLS error."""
    log: list[Output] = []
    todo: deque[Output] = deque(client.connection_made())
    todo.extend(client.receive_data(server.banner()))
    queue = list(messages)
    while todo:
        output = todo.popleft()
        log.append(output)
        if isinstance(output, Send):
            if server.hung_up:
                continue  # written into a closed socket
            reply = server.feed(output.data)
            if reply:
                todo.extend(client.receive_data(reply))
            if server.hung_up:
                todo.extend(client.receive_data(b""))
        elif isinstance(output, StartTls):
            server.start_tls()
            error = handshake(output)
            todo.extend(client.tls_established() if error is None else client.tls_failed(error))
        elif isinstance(output, Ready):
            if queue:
                todo.extend(client.send_message(*queue.pop(0)))
            else:
                todo.extend(client.close())
    assert isinstance(log[-1], Closed | ConnectionFailed)
    assert sum(isinstance(o, Closed | ConnectionFailed) for o in log) == 1
    assert client.state is ClientState.CLOSED
    assert client.timeout is None
    assert server.violations == []
    return log


def outcomes(log: Sequence[Output]) -> list[TransactionOutcome]:
    return [o for o in log if isinstance(o, TransactionOutcome)]


def sent(log: Sequence[Output]) -> list[bytes]:
    return [o.data for o in log if isinstance(o, Send)]


def only(outcome: Output) -> RecipientOutcome:
    assert isinstance(outcome, TransactionOutcome)
    [result] = outcome.results
    return result


MESSAGE: Message = ("sender@example.net", ["rcpt@example.com"], b"Subject: hi\r\n\r\nhello\r\n")
DELIVERED = Response(250, EnhancedCode(2, 0, 0), "OK ids=1", ".\r\n")


# -- whole conversations ---------------------------------------------------------------------


def test_pipelined_conversation_reuses_the_connection_with_rset() -> None:
    server = ScriptedServer(pipelining=True)
    log = converse(make_client(), server, [MESSAGE, MESSAGE, MESSAGE])
    assert sent(log) == [
        b"EHLO client.example.net\r\n",
        b"MAIL FROM:<sender@example.net>\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n",
        b"Subject: hi\r\n\r\nhello\r\n.\r\n",
        b"RSET\r\nMAIL FROM:<sender@example.net>\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n",
        b"Subject: hi\r\n\r\nhello\r\n.\r\n",
        b"RSET\r\nMAIL FROM:<sender@example.net>\r\nRCPT TO:<rcpt@example.com>\r\nDATA\r\n",
        b"Subject: hi\r\n\r\nhello\r\n.\r\n",
        b"QUIT\r\n",
    ]
    assert [only(o) for o in outcomes(log)] == [
        RecipientOutcome("rcpt@example.com", Disposition.DELIVERY, DELIVERED)
    ] * 3
    assert log[-1] == Closed(None)
    assert len(server.accepted) == 3


def test_without_pipelining_one_command_at_a_time() -> None:
    server = ScriptedServer(pipelining=False)
    log = converse(make_client(), server, [MESSAGE, MESSAGE])
    assert sent(log)[1:5] == [
        b"MAIL FROM:<sender@example.net>\r\n",
        b"RCPT TO:<rcpt@example.com>\r\n",
        b"DATA\r\n",
        b"Subject: hi\r\n\r\nhello\r\n.\r\n",
    ]
    assert sent(log)[5] == b"RSET\r\n"
    assert [only(o).disposition for o in outcomes(log)] == [Disposition.DELIVERY] * 2


def test_the_reuse_limit_closes_with_quit() -> None:
    settings = ClientSettings("client.example.net", max_deliveries_per_connection=2)
    client = make_client(settings)
    log = converse(client, ScriptedServer(), [MESSAGE, MESSAGE, MESSAGE])
    assert len(outcomes(log)) == 2
    assert client.deliveries == 2
    # No Ready after the second outcome: QUIT at once, then the end.
    assert log[-3:] == [outcomes(log)[1], Send(b"QUIT\r\n"), Closed(None)]
    assert sum(isinstance(o, Ready) for o in log) == 2


def test_idle_timeout_sends_quit() -> None:
    client = make_client()
    client.connection_made()
    client.receive_data(b"220 hi\r\n")
    assert client.receive_data(b"250 mx\r\n") == [Ready()]
    assert client.timeout is not None
    assert (client.timeout.phase, client.timeout.nanos) == (Phase.IDLE, 5 * NANOS_PER_SECOND)
    assert client.timed_out() == [Send(b"QUIT\r\n")]
    assert client.state is ClientState.QUITTING
    assert client.timed_out() == [Closed(None)]


def test_quit_ends_on_any_reply_or_eof() -> None:
    for ending in (b"221 bye\r\n", b"garbage\r\n", b""):
        client = make_client()
        client.connection_made()
        client.receive_data(b"220 hi\r\n250 mx\r\n")
        client.close()
        assert client.receive_data(ending) == [Closed(None)]


def test_refused_mail_pipelined_then_rset_before_the_next() -> None:
    server = ScriptedServer(script={"MAIL": [b"550 5.7.1 sender refused\r\n"]})
    log = converse(make_client(), server, [MESSAGE, MESSAGE])
    first, second = outcomes(log)
    assert only(first) == RecipientOutcome(
        "rcpt@example.com",
        Disposition.BOUNCE,
        Response(
            550, EnhancedCode(5, 7, 1), "sender refused", "MAIL FROM:<sender@example.net>\r\n"
        ),
    )
    assert only(second).disposition is Disposition.DELIVERY
    assert sent(log)[2].startswith(b"RSET\r\nMAIL FROM:")


def test_refused_mail_without_pipelining_sends_nothing_more() -> None:
    server = ScriptedServer(pipelining=False, script={"MAIL": [b"451 4.3.0 try later\r\n"]})
    log = converse(make_client(), server, [MESSAGE])
    assert only(outcomes(log)[0]).disposition is Disposition.TRANSIENT_FAILURE
    assert server.commands == [
        b"EHLO client.example.net",
        b"MAIL FROM:<sender@example.net>",
        b"QUIT",
    ]


def test_recipients_each_get_their_outcome() -> None:
    server = ScriptedServer(script={"RCPT": [b"550 5.1.1 no such user\r\n", b"250 OK\r\n"]})
    log = converse(make_client(), server, [("s@x", ["gone@y", "here@y"], b"hi\r\n")])
    gone, here = outcomes(log)[0].results
    assert gone == RecipientOutcome(
        "gone@y",
        Disposition.BOUNCE,
        Response(550, EnhancedCode(5, 1, 1), "no such user", "RCPT TO:<gone@y>\r\n"),
    )
    assert here == RecipientOutcome("here@y", Disposition.DELIVERY, DELIVERED)
    assert server.accepted == [(b"<s@x>", (b"<here@y>",), b"hi\r\n")]


def test_a_refused_final_dot_fails_every_recipient() -> None:
    server = ScriptedServer(
        script={"RCPT": [b"550 5.1.1 no\r\n", b"250 OK\r\n"], "DOT": [b"451 4.3.0 later\r\n"]}
    )
    log = converse(make_client(), server, [("s@x", ["a@y", "b@y"], b"hi\r\n")])
    later = Response(451, EnhancedCode(4, 3, 0), "later", ".\r\n")
    assert [r.response for r in outcomes(log)[0].results] == [later, later]


def test_every_rcpt_refused_but_data_accepted_sends_a_lone_dot() -> None:
    # A pipelining server that answers 354 whatever came before (RFC 2920 3.1).
    server = ScriptedServer(script={"RCPT": [b"452 4.2.2 full\r\n"]})
    server.script["DATA"] = [b"354 go ahead\r\n"]
    client = make_client()
    client.connection_made()
    client.receive_data(server.banner())
    client.receive_data(server.ehlo_reply())
    [batch] = client.send_message(*MESSAGE)
    assert client.receive_data(b"250 OK\r\n452 4.2.2 full\r\n354 go ahead\r\n") == [Send(b".\r\n")]
    [outcome, ready] = client.receive_data(b"250 2.0.0 OK ids=nothing\r\n")
    assert only(outcome).response == Response(
        452, EnhancedCode(4, 2, 2), "full", "RCPT TO:<rcpt@example.com>\r\n"
    )
    assert only(outcome).disposition is Disposition.TRANSIENT_FAILURE
    assert ready == Ready()
    assert isinstance(batch, Send)


@pytest.mark.parametrize("pipelining", [True, False])
def test_421_at_mail_from_is_a_transient_failure_with_the_peer_text(pipelining: bool) -> None:
    # IT/disconnect_in_mail_from.rs, reference 3.4.
    server = ScriptedServer(
        pipelining=pipelining, script={"MAIL": [b"421 disconnecting 421-disconnect-me\r\n"]}
    )
    message = ("421-disconnect-me@example.com", ["rcpt@example.com"], b"hi\r\n")
    log = converse(make_client(), server, [message, MESSAGE])
    [outcome] = outcomes(log)
    assert only(outcome).disposition is Disposition.TRANSIENT_FAILURE
    assert only(outcome).response.to_json() == {
        "code": 421,
        "enhanced_code": None,
        "content": "disconnecting 421-disconnect-me",
        "command": "MAIL FROM:<421-disconnect-me@example.com>\r\n",
    }
    # Pipelined, the replies to RCPT and DATA were due: the hang-up is what ends it.
    assert log[-1] == Closed(
        "Error Connection closed by peer reading response to cmd=RCPT TO:<rcpt@example.com>"
        if pipelining
        else "421 disconnecting 421-disconnect-me"
    )


def test_451_after_the_dot_keeps_the_connection() -> None:
    # IT/disconnect_in_data.rs gives this response object.
    server = ScriptedServer(script={"DOT": [b"451 disconnecting disconnect-in-data-no-421\r\n"]})
    log = converse(make_client(), server, [MESSAGE, MESSAGE])
    first, second = outcomes(log)
    assert only(first).response.to_json() == {
        "code": 451,
        "enhanced_code": None,
        "content": "disconnecting disconnect-in-data-no-421",
        "command": ".\r\n",
    }
    assert only(first).disposition is Disposition.TRANSIENT_FAILURE
    assert only(second).disposition is Disposition.DELIVERY


@pytest.mark.parametrize(
    ("reply", "disposition"),
    [
        (b"400 tempfail requested\r\n", Disposition.TRANSIENT_FAILURE),
        (b"500 permfail requested\r\n", Disposition.BOUNCE),
    ],
)
def test_rcpt_refusals_of_the_reference_sink(reply: bytes, disposition: Disposition) -> None:
    server = ScriptedServer(script={"RCPT": [reply]})
    log = converse(make_client(), server, [("s@x", ["tempfail@example.com"], b"x\r\n")])
    result = only(outcomes(log)[0])
    assert result.disposition is disposition
    assert result.response.command == "RCPT TO:<tempfail@example.com>\r\n"


def test_null_sender_and_rcpt_251() -> None:
    server = ScriptedServer(script={"RCPT": [b"251 2.1.5 will forward\r\n"]})
    log = converse(make_client(), server, [("", ["a@b"], b"x\r\n")])
    assert sent(log)[1].startswith(b"MAIL FROM:<>\r\n")
    # 251 is a positive RCPT reply: the content is sent and the dot's reply decides.
    assert only(outcomes(log)[0]).response == DELIVERED
    assert server.accepted == [(b"<>", (b"<a@b>",), b"x\r\n")]


# -- 8-bit data and envelopes --------------------------------------------------------------


def test_8bit_data_needs_8bitmime() -> None:
    server = ScriptedServer(extensions=())
    message = ("s@x", ["r@y"], "caf\u00e9\r\n".encode())
    log = converse(make_client(), server, [message, MESSAGE])
    first, second = outcomes(log)
    assert only(first) == RecipientOutcome(
        "r@y",
        Disposition.BOUNCE,
        Response(
            554,
            EnhancedCode(5, 6, 3),
            "KumoMTA internal: DATA is 8bit, destination does not support 8BITMIME. "
            "Conversion via msg:check_fix_conformance during reception is required",
        ),
    )
    # Nothing was sent for it, so the next transaction is still the connection's first.
    assert sent(log)[1].startswith(b"MAIL FROM:")
    assert only(second).disposition is Disposition.DELIVERY


def test_8bit_envelope_needs_smtputf8() -> None:
    server = ScriptedServer(extensions=("8BITMIME",))
    log = converse(make_client(), server, [("s@x", ["j\u00f6rg@y"], b"x\r\n")])
    assert only(outcomes(log)[0]).response == Response(
        554,
        EnhancedCode(5, 6, 7),
        "KumoMTA internal: envelope is 8bit, destination does not support SMTPUTF8.",
    )
    assert only(outcomes(log)[0]).disposition is Disposition.BOUNCE


def test_8bit_parameters_when_offered() -> None:
    server = ScriptedServer()
    message = ("s@x", ["j\u00f6rg@y"], "caf\u00e9\r\n".encode())
    log = converse(make_client(), server, [message])
    assert sent(log)[1].startswith(b"MAIL FROM:<s@x> BODY=8BITMIME SMTPUTF8\r\n")
    assert sent(log)[1].endswith("RCPT TO:<j\u00f6rg@y>\r\nDATA\r\n".encode())
    assert only(outcomes(log)[0]).disposition is Disposition.DELIVERY


# -- STARTTLS --------------------------------------------------------------------------------


def tls_settings(mode: TlsMode | str) -> ClientSettings:
    return ClientSettings("client.example.net", enable_tls=mode)


def test_opportunistic_tls_when_offered_then_ehlo_again() -> None:
    client = make_client(tls_settings("Opportunistic"))
    server = ScriptedServer(starttls=True)
    log = converse(client, server, [MESSAGE])
    assert StartTls(verify_certificate=True) in log
    assert sent(log)[:3] == [
        b"EHLO client.example.net\r\n",
        b"STARTTLS\r\n",
        b"EHLO client.example.net\r\n",
    ]
    assert client.tls_active
    assert "STARTTLS" not in client.capabilities
    assert only(outcomes(log)[0]).disposition is Disposition.DELIVERY


@pytest.mark.parametrize(
    ("mode", "offered"),
    [
        (TlsMode.OPPORTUNISTIC, False),
        (TlsMode.OPPORTUNISTIC_INSECURE, False),
        (TlsMode.DISABLED, True),
        (TlsMode.DISABLED, False),
    ],
)
def test_clear_text(mode: TlsMode, offered: bool) -> None:
    client = make_client(tls_settings(mode))
    log = converse(client, ScriptedServer(starttls=offered), [MESSAGE])
    assert b"STARTTLS\r\n" not in sent(log)
    assert not client.tls_active
    assert only(outcomes(log)[0]).disposition is Disposition.DELIVERY


@pytest.mark.parametrize(
    ("mode", "verify"),
    [
        (TlsMode.REQUIRED, True),
        (TlsMode.REQUIRED_INSECURE, False),
        (TlsMode.OPPORTUNISTIC_INSECURE, False),
    ],
)
def test_verification_per_mode(mode: TlsMode, verify: bool) -> None:
    log = converse(make_client(tls_settings(mode)), ScriptedServer(starttls=True), [MESSAGE])
    assert StartTls(verify_certificate=verify) in log


@pytest.mark.parametrize("mode", ["Required", "RequiredInsecure"])
def test_required_tls_not_offered_fails_the_host(mode: str) -> None:
    log = converse(make_client(tls_settings(mode)), ScriptedServer(starttls=False), [MESSAGE])
    assert log[-1] == ConnectionFailed(
        f"tls policy is {mode} but STARTTLS is not advertised by {PEER}"
    )
    assert outcomes(log) == []


@pytest.mark.parametrize("mode", ["Opportunistic", "Required", "RequiredInsecure"])
def test_failed_handshake_fails_the_host_after_quit(mode: str) -> None:
    log = converse(
        make_client(tls_settings(mode)),
        ScriptedServer(starttls=True),
        [MESSAGE],
        handshake=lambda _: "certificate verify failed",
    )
    assert log[-2:] == [
        Send(b"QUIT\r\n"),
        ConnectionFailed(f"TLS handshake with {PEER} failed: certificate verify failed"),
    ]


def test_opportunistic_insecure_goes_on_in_clear_text_after_a_failed_handshake() -> None:
    client = make_client(tls_settings("OpportunisticInsecure"))
    log = converse(client, ScriptedServer(starttls=True), [MESSAGE], handshake=lambda _: "eof")
    assert sent(log)[2] == b"EHLO client.example.net\r\n"
    assert not client.tls_active
    assert only(outcomes(log)[0]).disposition is Disposition.DELIVERY


@pytest.mark.parametrize(("handshake", "label"), [("alert 40", "failed: alert 40"), (None, "OK")])
def test_opportunistic_insecure_ehlo_failure_after_starttls(
    handshake: str | None, label: str
) -> None:
    server = ScriptedServer(starttls=True)
    server.script["EHLO"] = [server.ehlo_reply(), b"554 5.0.0 go away\r\n"]
    log = converse(
        make_client(tls_settings("OpportunisticInsecure")),
        server,
        [MESSAGE],
        handshake=lambda _: handshake,
    )
    failure = ConnectionFailed(
        f"{PEER}: EHLO after OpportunisticInsecure STARTTLS handshake status: {label}",
        opportunistic_insecure_tls=True,
    )
    assert log[-1] == failure
    assert connection_failure_response([failure, failure]) == Response(
        400,
        None,
        "KumoMTA internal: failed to connect to any candidate hosts: "
        "All failures are related to OpportunisticInsecure STARTTLS. "
        "Consider setting enable_tls=Disabled for this site. "
        f"{failure.error}, {failure.error}",
    )


def test_ehlo_refused_after_verified_tls() -> None:
    server = ScriptedServer(starttls=True)
    server.script["EHLO"] = [server.ehlo_reply(), b"554 5.0.0 go away\r\n"]
    log = converse(make_client(), server, [MESSAGE])
    assert log[-1] == ConnectionFailed(
        f"{PEER}: EHLO after STARTTLS: Command rejected 554 5.0.0 go away"
    )


def test_starttls_refused_fails_the_host() -> None:
    server = ScriptedServer(
        starttls=True, script={"STARTTLS": [b"454 4.7.0 TLS not available\r\n"]}
    )
    log = converse(make_client(), server, [MESSAGE])
    assert log[-1] == ConnectionFailed("Command rejected 454 4.7.0 TLS not available")


def test_bytes_after_the_220_to_starttls_are_dropped() -> None:
    # STARTTLS command injection: a reply sent in the clear must not count after TLS.
    client = make_client()
    client.connection_made()
    client.receive_data(b"220 hi\r\n")
    assert client.receive_data(b"250-mx\r\n250 STARTTLS\r\n") == [Send(b"STARTTLS\r\n")]
    assert client.receive_data(b"220 go\r\n250-injected\r\n250 PIPELINING\r\n") == [
        StartTls(verify_certificate=True)
    ]
    assert client.buffered_bytes == 0
    assert client.receive_data(b"250 more injected\r\n") == []
    assert client.tls_established() == [Send(b"EHLO client.example.net\r\n")]
    assert client.receive_data(b"250 mx\r\n") == [Ready()]
    assert "PIPELINING" not in client.capabilities


# -- connection failures before ready --------------------------------------------------------


def test_banner_refused() -> None:
    client = make_client()
    client.connection_made()
    assert client.receive_data(b"554 5.7.1 go away\r\n") == [
        ConnectionFailed(
            f"connect to {PEER} and read initial banner: Command rejected 554 5.7.1 go away"
        )
    ]


def test_ehlo_refused_has_no_helo_fallback() -> None:
    client = make_client()
    client.connection_made()
    client.receive_data(b"220 hi\r\n")
    assert client.receive_data(b"500 5.5.1 what\r\n") == [
        ConnectionFailed(f"{PEER}: EHLO after banner: Command rejected 500 5.5.1 what")
    ]


def at_state(state: ClientState, settings: ClientSettings = SETTINGS) -> SmtpClient:
    """A client brought to ``state`` (STARTTLS offered)."""
    client = make_client(settings)
    steps: list[Callable[[], object]] = [
        client.connection_made,
        lambda: client.receive_data(b"220 hi\r\n"),
        lambda: client.receive_data(b"250-mx\r\n250 STARTTLS\r\n"),
        lambda: client.receive_data(b"220 go\r\n"),
        client.tls_established,
    ]
    for step in steps:
        if client.state is state:
            break
        step()
    assert client.state is state
    return client


@pytest.mark.parametrize(
    ("state", "timed_out", "eof"),
    [
        (
            ClientState.CONNECTING,
            f"connect to {PEER} and read initial banner: "
            f"timeout after 60s while connecting to {PEER}",
            None,
        ),
        (
            ClientState.BANNER,
            f"connect to {PEER} and read initial banner: reading banner: "
            "Timed Out waiting 60s for response to cmd=NONE",
            f"connect to {PEER} and read initial banner: reading banner: "
            "Error Connection closed by peer reading response to cmd=NONE",
        ),
        (
            ClientState.EHLO,
            f"{PEER}: EHLO after banner: "
            "Timed Out waiting 300s for response to cmd=EHLO client.example.net",
            f"{PEER}: EHLO after banner: "
            "Error Connection closed by peer reading response to cmd=EHLO client.example.net",
        ),
        (
            ClientState.STARTTLS,
            "Timed Out waiting 5s for response to cmd=STARTTLS",
            "Error Connection closed by peer reading response to cmd=STARTTLS",
        ),
        (
            ClientState.TLS_HANDSHAKE,
            "Timed Out waiting 5s for response to cmd=STARTTLS",
            f"TLS handshake with {PEER} failed: Connection closed by peer",
        ),
        (
            ClientState.EHLO_AFTER_TLS,
            f"{PEER}: EHLO after STARTTLS: "
            "Timed Out waiting 300s for response to cmd=EHLO client.example.net",
            f"{PEER}: EHLO after STARTTLS: "
            "Error Connection closed by peer reading response to cmd=EHLO client.example.net",
        ),
    ],
)
def test_failures_before_ready(state: ClientState, timed_out: str, eof: str | None) -> None:
    assert at_state(state).timed_out() == [ConnectionFailed(timed_out)]
    if eof is not None:
        assert at_state(state).receive_data(b"") == [ConnectionFailed(eof)]


def test_connect_failure_and_garbage_before_ready() -> None:
    assert at_state(ClientState.CONNECTING).connection_lost(
        "Connection refused (os error 111)"
    ) == [
        ConnectionFailed(
            f"connect to {PEER} and read initial banner: "
            f"failed to connect to {PEER}: Connection refused (os error 111)"
        )
    ]
    assert at_state(ClientState.BANNER).receive_data(b"SSH-2.0-OpenSSH\r\n") == [
        ConnectionFailed(
            f"connect to {PEER} and read initial banner: reading banner: "
            "Malformed Response: SSH-2.0-OpenSSH"
        )
    ]
    assert at_state(ClientState.EHLO).receive_data(b"250 \xff\r\n") == [
        ConnectionFailed(f"{PEER}: EHLO after banner: response is not UTF8")
    ]


def test_connection_failure_response_joins_the_errors() -> None:
    failures = [ConnectionFailed("a: x"), ConnectionFailed("b: y", opportunistic_insecure_tls=True)]
    response = connection_failure_response(failures)
    assert response.to_json() == {
        "code": 400,
        "enhanced_code": None,
        "content": "KumoMTA internal: failed to connect to any candidate hosts: a: x, b: y",
        "command": None,
    }
    assert classify_reply(response) is Disposition.TRANSIENT_FAILURE


# -- failures inside a transaction -------------------------------------------------------------


def in_transaction(*, pipelining: bool) -> SmtpClient:
    """A client that has just sent the first transaction's MAIL (and more if pipelining)."""
    client = make_client()
    client.connection_made()
    client.receive_data(b"220 hi\r\n")
    client.receive_data(b"250-mx\r\n250 PIPELINING\r\n" if pipelining else b"250 mx\r\n")
    client.send_message(*MESSAGE)
    return client


@pytest.mark.parametrize(
    ("replies", "command", "waited"),
    [
        (b"", "MAIL FROM:<sender@example.net>", "300s"),
        (b"250 ok\r\n", "RCPT TO:<rcpt@example.com>", "300s"),
        (b"250 ok\r\n250 ok\r\n", "DATA", "300s"),
        (b"250 ok\r\n250 ok\r\n354 go\r\n", ".", "300s"),
    ],
)
@pytest.mark.parametrize("pipelining", [True, False])
def test_a_time_out_in_a_transaction(
    replies: bytes, command: str, waited: str, pipelining: bool
) -> None:
    client = in_transaction(pipelining=pipelining)
    if replies:
        client.receive_data(replies)
    text = f"Timed Out waiting {waited} for response to cmd={command}"
    outcome, closed = client.timed_out()
    assert outcome == TransactionOutcome(
        (
            RecipientOutcome(
                "rcpt@example.com",
                Disposition.TRANSIENT_FAILURE,
                Response(
                    421,
                    EnhancedCode(4, 4, 2),
                    f"KumoMTA internal: failed to send message to {SITE} {PEER}: {text}",
                    command + "\r\n",
                ),
            ),
        )
    )
    assert closed == Closed(text)


def test_rset_time_out() -> None:
    client = in_transaction(pipelining=False)
    client.receive_data(b"250 a\r\n250 b\r\n354 c\r\n250 d\r\n")
    client.send_message(*MESSAGE)
    assert client.timeout is not None
    assert client.timeout.phase is Phase.RSET
    [outcome, _] = client.timed_out()
    assert isinstance(outcome, TransactionOutcome)
    assert only(outcome).response.content.endswith("Timed Out waiting 5s for response to cmd=RSET")
    assert only(outcome).response.command == "RSET\r\n"


@pytest.mark.parametrize("pipelining", [True, False])
def test_connection_lost_in_a_transaction(pipelining: bool) -> None:
    client = in_transaction(pipelining=pipelining)
    client.receive_data(b"250 ok\r\n")
    outcome, closed = client.connection_lost("Connection reset by peer (os error 104)")
    text = (
        "Error Connection reset by peer (os error 104) "
        "reading response to cmd=RCPT TO:<rcpt@example.com>"
    )
    assert outcome == TransactionOutcome(
        (
            RecipientOutcome(
                "rcpt@example.com",
                Disposition.TRANSIENT_FAILURE,
                Response(
                    400,
                    None,
                    f"KumoMTA internal: failed to send message: {text}",
                    "RCPT TO:<rcpt@example.com>\r\n",
                ),
            ),
        )
    )
    assert closed == Closed(text)


def test_a_refusal_before_the_break_outranks_it() -> None:
    client = in_transaction(pipelining=True)
    assert client.receive_data(b"550 5.7.1 no\r\n") == []  # the other replies are due
    outcome, closed = client.receive_data(b"")
    assert isinstance(outcome, TransactionOutcome)
    assert only(outcome).response == Response(
        550, EnhancedCode(5, 7, 1), "no", "MAIL FROM:<sender@example.net>\r\n"
    )
    assert only(outcome).disposition is Disposition.BOUNCE
    assert closed == Closed(
        "Error Connection closed by peer reading response to cmd=RCPT TO:<rcpt@example.com>"
    )


@pytest.mark.parametrize(
    ("garbage", "error"),
    [
        (b"hello there\r\n", "Malformed Response: hello there"),
        (b"250 \xc3\r\n", "response is not UTF8"),
        (b"x" * 5000, "Response line is too long"),
        (b"250-a\r\n251 b\r\n", "Malformed Response: 251 b"),
    ],
)
def test_garbage_in_a_transaction(garbage: bytes, error: str) -> None:
    client = in_transaction(pipelining=True)
    outcome, closed = client.receive_data(garbage)
    assert outcome == TransactionOutcome(
        (
            RecipientOutcome(
                "rcpt@example.com",
                Disposition.TRANSIENT_FAILURE,
                Response(400, None, f"KumoMTA internal: failed to send message: {error}"),
            ),
        )
    )
    assert closed == Closed(error)


def test_a_unilateral_reply_while_idle_closes() -> None:
    client = make_client()
    client.connection_made()
    client.receive_data(b"220 hi\r\n250 mx\r\n")
    assert client.receive_data(b"421 4.3.2 mx idle too long\r\n") == [
        Closed("unilateral response: 421 4.3.2 mx idle too long")
    ]
    with pytest.raises(ClientUsageError):
        client.send_message(*MESSAGE)


def test_replies_beyond_the_transaction_close_the_connection() -> None:
    client = in_transaction(pipelining=True)
    out = client.receive_data(b"250 a\r\n250 b\r\n354 c\r\n")
    assert out == [Send(b"Subject: hi\r\n\r\nhello\r\n.\r\n")]
    outcome, ready, closed = client.receive_data(b"250 d\r\n250 extra\r\n")
    assert only(outcome).disposition is Disposition.DELIVERY
    assert ready == Ready()
    assert closed == Closed("unilateral response: 250 extra")


# -- time-outs as data -------------------------------------------------------------------------


def test_default_timeouts_are_kumomtas_code_defaults() -> None:
    seconds = {k: v // NANOS_PER_SECOND for k, v in attrs.asdict(ClientTimeouts()).items()}
    assert seconds == {
        "connect": 60,
        "banner": 60,
        "ehlo": 300,
        "starttls": 5,
        "rset": 5,
        "mail_from": 300,
        "rcpt_to": 300,
        "data": 300,
        "data_dot": 300,
        "idle": 5,
    }
    assert {p.value for p in Phase} == set(seconds)


def test_each_wait_has_its_phase_and_a_new_serial() -> None:
    settings = ClientSettings("c.example", timeouts=ClientTimeouts(data_dot=1_500_000_000))
    client = make_client(settings)
    seen: list[Timeout] = []

    def note(_: object = None) -> None:
        assert client.timeout is not None
        seen.append(client.timeout)

    note()
    note(client.connection_made())
    note(client.receive_data(b"220 hi\r\n"))
    note(client.receive_data(b"250 mx\r\n"))
    note(client.send_message(*MESSAGE))
    note(client.receive_data(b"250 ok\r\n"))
    note(client.receive_data(b"250 ok\r\n"))
    note(client.receive_data(b"354 go\r\n"))
    note(client.receive_data(b"250 ok\r\n"))
    note(client.send_message(*MESSAGE))
    assert [t.phase for t in seen] == [
        Phase.CONNECT,
        Phase.BANNER,
        Phase.EHLO,
        Phase.IDLE,
        Phase.MAIL_FROM,
        Phase.RCPT_TO,
        Phase.DATA,
        Phase.DATA_DOT,
        Phase.IDLE,
        Phase.RSET,
    ]
    assert [t.serial for t in seen] == sorted({t.serial for t in seen})
    assert seen[7].seconds == 1.5
    client.receive_data(b"250 a\r\n250 b\r\n250 c\r\n354 d\r\n")
    [outcome, _] = client.timed_out()
    assert "Timed Out waiting 1.5s for response to cmd=." in only(outcome).response.content


def test_a_partial_multi_line_reply_does_not_restart_the_timer() -> None:
    client = at_state(ClientState.EHLO)
    before = client.timeout
    client.receive_data(b"250-mx\r\n250-PIPE")
    assert client.timeout == before


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (300 * NANOS_PER_SECOND, "300s"),
        (1_500_000_000, "1.5s"),
        (1_000_000_001, "1.000000001s"),
        (250_000_000, "250ms"),
        (1_500_000, "1.5ms"),
        (1_500, "1.5µs"),
        (7, "7ns"),
    ],
)
def test_durations_print_as_rust_debug(nanos: int, text: str) -> None:
    assert format_rust_duration(nanos) == text


# -- the shell's mistakes and bad envelopes ------------------------------------------------


def test_usage_errors() -> None:
    client = make_client()
    with pytest.raises(ClientUsageError):
        client.receive_data(b"220 hi\r\n")
    with pytest.raises(ClientUsageError):
        client.send_message(*MESSAGE)
    with pytest.raises(ClientUsageError):
        client.tls_established()
    client.connection_made()
    with pytest.raises(ClientUsageError):
        client.connection_made()
    client = in_transaction(pipelining=True)
    with pytest.raises(ClientUsageError):
        client.close()
    with pytest.raises(ClientUsageError):
        client.send_message(*MESSAGE)


@pytest.mark.parametrize(
    ("sender", "recipients"),
    [
        ("a@b\r\nRCPT TO:<evil@x>", ["r@y"]),
        ("s@x", ["r@y>\r\nDATA"]),
        ("s@x", []),
        ("s\x00@x", ["r@y"]),
    ],
)
def test_bad_envelopes_are_refused_and_change_nothing(sender: str, recipients: list[str]) -> None:
    client = make_client()
    client.connection_made()
    client.receive_data(b"220 hi\r\n250 mx\r\n")
    with pytest.raises(ValueError, match=r"control character|at least one"):
        client.send_message(sender, recipients, b"x")
    assert client.state is ClientState.READY
    assert client.deliveries == 0


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="ehlo_domain"):
        ClientSettings("two words")
    with pytest.raises(ValueError, match="ehlo_domain"):
        ClientSettings("")
    with pytest.raises(ValueError, match="Sometimes"):
        ClientSettings("x", enable_tls="Sometimes")
    with pytest.raises(ValueError, match="max_deliveries_per_connection"):
        ClientSettings("x", max_deliveries_per_connection=0)
    with pytest.raises(ValueError, match="idle"):
        ClientTimeouts(idle=0)
    assert (
        ClientSettings("x", enable_tls="RequiredInsecure").enable_tls is TlsMode.REQUIRED_INSECURE
    )


def test_after_the_end_inputs_are_ignored() -> None:
    client = at_state(ClientState.BANNER)
    client.receive_data(b"")
    calls: list[Callable[[], list[Output]]] = [
        lambda: client.receive_data(b"220 hi\r\n"),
        lambda: client.receive_data(b""),
        lambda: client.connection_lost("x"),
        client.timed_out,
        client.close,
        client.tls_established,
        lambda: client.tls_failed("x"),
    ]
    for call in calls:
        assert call() == []


# -- dot-stuffing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "wire"),
    [
        (b"foo", b"foo\r\n.\r\n"),
        (b".foo", b"..foo\r\n.\r\n"),
        (b"foo\n.bar", b"foo\n..bar\r\n.\r\n"),
        (b"foo\n.bar\n..baz\n", b"foo\n..bar\n...baz\n\r\n.\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"", b"\r\n.\r\n"),
        (b"x\r", b"x\r\r\n.\r\n"),
    ],
)
def test_stuffing(content: bytes, wire: bytes) -> None:
    assert stuff_content(content) == wire


line_text = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
mail_lines = st.lists(
    st.one_of(line_text, line_text.map(lambda b: b"." + b), st.just(b"."), st.just(b"..")),
    max_size=8,
)
contents = st.one_of(
    st.binary(max_size=80),
    st.builds(
        lambda lines, end: b"\r\n".join(lines) + end, mail_lines, st.sampled_from([b"", b"\r\n"])
    ),
)


@given(st.lists(contents, min_size=1, max_size=3), st.booleans())
@example([b".", b"\n.\r\n", b"a\r\n.\r\n"], False)
def test_the_server_receives_the_content_sent(messages: list[bytes], pipelining: bool) -> None:
    """Unstuffed by the server, the content is what was sent (with CRLF added when it did
    not end with one); no line of it can read as the end of the data."""
    server = ScriptedServer(pipelining=pipelining)
    log = converse(make_client(), server, [("s@x", ["r@y"], content) for content in messages])
    assert [content for _, _, content in server.accepted] == [
        c if c.endswith(b"\r\n") else c + b"\r\n" for c in messages
    ]
    assert [only(o).disposition for o in outcomes(log)] == [Disposition.DELIVERY] * len(messages)


# -- a random server script ----------------------------------------------------------------


def reply_for(code: int) -> bytes:
    return f"{code} scripted {code}\r\n".encode()


@settings(max_examples=200)
@given(
    pipelining=st.booleans(),
    max_deliveries=st.integers(1, 4),
    messages=st.lists(
        st.tuples(st.lists(st.sampled_from(["a@y", "b@y", "c@y"]), min_size=1, max_size=3)),
        max_size=4,
    ),
    mail=st.lists(st.sampled_from([250, 250, 421, 451, 550]), max_size=4),
    rcpt=st.lists(st.sampled_from([250, 250, 251, 421, 452, 550, 552]), max_size=8),
    data=st.lists(st.sampled_from([354, 354, 421, 451, 554]), max_size=4),
    dot=st.lists(st.sampled_from([250, 250, 421, 451, 554]), max_size=4),
)
def test_a_scripted_server_conversation(
    pipelining: bool,
    max_deliveries: int,
    messages: list[tuple[list[str]]],
    mail: list[int],
    rcpt: list[int],
    data: list[int],
    dot: list[int],
) -> None:
    """Whatever the server answers: one outcome per message handed; a Delivery exactly for
    the recipients the server accepted the content for; RSET before every transaction but
    the first; one command per write without PIPELINING; the reuse limit is kept."""
    script = {
        "MAIL": [reply_for(c) for c in mail],
        "RCPT": [reply_for(c) for c in rcpt],
        "DATA": [reply_for(c) for c in data],
        "DOT": [reply_for(c) for c in dot],
    }
    server = ScriptedServer(pipelining=pipelining, script=script)
    settings = ClientSettings("c.example", max_deliveries_per_connection=max_deliveries)
    client = make_client(settings)
    sent_messages = [
        (f"s{n}@x", recipients, f"m{n}\r\n".encode()) for n, (recipients,) in enumerate(messages)
    ]
    log = converse(client, server, sent_messages)
    results = outcomes(log)
    assert len(results) == client.deliveries <= min(max_deliveries, len(messages))
    delivered = {
        (f"<s{n}@x>".encode(), f"<{r.recipient}>".encode())
        for n, outcome in enumerate(results)
        for r in outcome.results
        if r.disposition is Disposition.DELIVERY
    }
    accepted = {(sender, rcpt) for sender, rcpts, _ in server.accepted for rcpt in rcpts}
    assert delivered == accepted
    for outcome in results:
        for result in outcome.results:
            assert result.disposition is classify_reply(result.response)
    before_mail = [
        server.commands[n - 1]
        for n, command in enumerate(server.commands)
        if command.startswith(b"MAIL")
    ]
    assert before_mail[:1] in ([], [b"EHLO c.example"])
    assert all(command == b"RSET" for command in before_mail[1:])
    if len(results) == max_deliveries:
        assert sent(log)[-1] == b"QUIT\r\n" or isinstance(log[-1], Closed)


# -- hostile servers: any bytes, any chunking ----------------------------------------------


def reply_line(code: int, final: bool, enhanced: str, text: str) -> bytes:
    return f"{code:03d}{' ' if final else '-'}{enhanced}{text}\r\n".encode()


def ehlo_reply(caps: Sequence[str]) -> bytes:
    lines = ["mx", *caps]
    return b"".join(reply_line(250, n == len(caps), "", c) for n, c in enumerate(lines))


reply_lines = st.builds(
    reply_line,
    st.sampled_from([220, 221, 250, 251, 354, 421, 451, 452, 503, 550, 552, 554])
    | st.integers(0, 999),
    st.booleans(),
    st.sampled_from(["", "2.0.0 ", "4.5.3 ", "5.7.1 "]),
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=10),
)
ehlo_replies = st.lists(
    st.sampled_from(["PIPELINING", "STARTTLS", "8BITMIME", "SMTPUTF8", "SIZE 100"]), max_size=4
).map(lambda caps: ehlo_reply(caps))
blobs = st.lists(
    st.one_of(reply_lines, ehlo_replies, st.binary(max_size=16), st.just(b"\r\n")), max_size=5
).map(b"".join)


def replies_of(*codes: int) -> st.SearchStrategy[bytes]:
    return st.sampled_from(codes).map(lambda code: reply_line(code, True, "", "x"))


@attrs.frozen
class Case:
    """One fuzzed connection: the client's settings and messages, the server's turns."""

    settings: ClientSettings
    messages: tuple[Message, ...]
    turns: tuple[bytes, ...]
    tls_ok: bool


any_settings = st.builds(
    ClientSettings,
    st.just("c.example"),
    enable_tls=st.sampled_from([*TlsMode, TlsMode.OPPORTUNISTIC, TlsMode.DISABLED]),
    max_deliveries_per_connection=st.integers(1, 3),
)
any_messages = st.lists(
    st.tuples(
        st.sampled_from(["", "s@x", "s\u00e9@x"]),
        st.sampled_from([["a@y"], ["a@y", "b@y"]]),
        st.binary(max_size=20),
    ),
    max_size=3,
)
random_cases = st.builds(
    Case,
    any_settings,
    any_messages.map(tuple),
    st.lists(blobs, max_size=12).map(tuple),
    st.booleans(),
)


@st.composite
def plausible_cases(draw: st.DrawFn) -> Case:
    """A server that mostly follows the client, with a few mistakes and some garbage."""
    settings = draw(any_settings)
    caps = draw(
        st.lists(st.sampled_from(["PIPELINING", "STARTTLS", "8BITMIME", "SMTPUTF8"]), unique=True)
    )
    tls_ok = draw(st.sampled_from([True, True, False]))
    turns = [b"220 mx ESMTP\r\n", ehlo_reply(caps)]
    if "STARTTLS" in caps and settings.enable_tls is not TlsMode.DISABLED:
        turns += [
            draw(replies_of(220, 220, 220, 454)),
            ehlo_reply([c for c in caps if c != "STARTTLS"]),
        ]
    positive = (250,) * 6
    messages: list[Message] = []
    for n in range(draw(st.integers(0, settings.max_deliveries_per_connection + 1))):
        recipients = draw(st.sampled_from([["a@y"], ["a@y"], ["a@y", "b@y"]]))
        messages.append(("s@x", recipients, draw(st.sampled_from([b"hi\r\n", b".\r\n", b"x"]))))
        envelope = [draw(replies_of(*positive, 421))] if n else []
        envelope.append(draw(replies_of(*positive, 421, 451, 550)))
        rcpt = replies_of(*positive, 251, 452, 550, 552)
        envelope += [draw(rcpt) for _ in recipients]
        envelope.append(draw(replies_of(354, 354, 354, 354, 354, 451, 554)))
        turns += [b"".join(envelope), draw(replies_of(*positive, 421, 451, 554))]
    turns.append(b"221 bye\r\n")
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        where = draw(st.integers(0, len(turns) - 1))
        change = draw(st.sampled_from(["insert", "replace", "truncate", "merge"]))
        if change == "insert":
            turns.insert(where, draw(blobs))
        elif change == "replace":
            turns[where] = draw(blobs)
        elif change == "truncate":
            turns[where] = turns[where][: draw(st.integers(0, len(turns[where])))]
        elif where + 1 < len(turns):
            turns[where : where + 2] = [turns[where] + turns[where + 1]]
    return Case(settings, tuple(messages), tuple(turns), tls_ok)


any_cases = st.one_of(random_cases, plausible_cases(), plausible_cases())


def run_turns(
    case: Case, splits: Sequence[Sequence[int]], ending: str
) -> tuple[list[Output], ClientState]:
    """Feed each turn's bytes in pieces, then do what the shell would: hand a message,
    finish a handshake; and at the end EOF, a time-out or a lost connection."""
    client = make_client(case.settings)
    log = client.connection_made()
    queue = list(case.messages)
    handed = 0
    pieces = itertools.chain(splits, itertools.repeat(()))
    for turn, cuts in zip(case.turns, pieces, strict=False):
        positions = sorted({min(c, len(turn)) for c in cuts} | {0, len(turn)})
        for start, end in itertools.pairwise(positions):
            log += client.receive_data(turn[start:end])
            assert client.buffered_bytes <= MAX_REPLY_LENGTH
        # A message refused before anything is sent leaves the connection ready at once.
        while client.state is ClientState.READY and queue:
            log += client.send_message(*queue.pop(0))
            handed += 1
        if client.state is ClientState.READY:
            log += client.close()
        elif client.state is ClientState.TLS_HANDSHAKE:
            log += client.tls_established() if case.tls_ok else client.tls_failed("bad")
    for _ in range(3):
        if ending == "eof":
            log += client.receive_data(b"")
        elif ending == "lost":
            log += client.connection_lost("reset")
        else:
            log += client.timed_out()
    ends = [n for n, o in enumerate(log) if isinstance(o, Closed | ConnectionFailed)]
    assert ends == [len(log) - 1], "exactly one end, and it is the last output"
    assert client.state is ClientState.CLOSED
    assert len(outcomes(log)) == handed
    return log, client.state


@settings(max_examples=300)
@given(
    case=any_cases,
    splits=st.lists(st.lists(st.integers(0, 200), max_size=6), max_size=12),
    ending=st.sampled_from(["eof", "lost", "timeout"]),
)
@example(
    case=Case(
        SETTINGS,
        (MESSAGE,),
        (
            b"220 hi\r\n",
            b"250-mx\r\n250 PIPELINING\r\n",
            b"250 a\r\n250 b\r\n354 c\r\n",
            b"250 ok\r\n",
        ),
        tls_ok=True,
    ),
    splits=[[3], [9, 10], [1, 2, 3, 4, 5]],
    ending="eof",
)
def test_any_bytes_in_any_chunking(case: Case, splits: list[list[int]], ending: str) -> None:
    """Hostile bytes never raise, always end in exactly one end, keep memory bounded, and
    give the same outputs however each turn's bytes are split."""
    at_once = run_turns(case, [], ending)
    chunked = run_turns(case, splits, ending)
    assert chunked == at_once


def test_close_before_ready_ends_at_once() -> None:
    client = make_client()
    assert client.close() == [Closed(None)]
    assert client.connection_made() == []
    for state in (ClientState.BANNER, ClientState.EHLO, ClientState.TLS_HANDSHAKE):
        assert at_state(state).close() == [Closed(None)]


def test_capabilities_from_ehlo() -> None:
    client = at_state(ClientState.EHLO)
    client.receive_data(
        b"250-2.0.0 mx greets you\r\n250-2.0.0 pipelining\r\n250-SIZE 100\r\n250 8bitmime\r\n"
    )
    assert client.capabilities == {"PIPELINING": None, "SIZE": "100", "8BITMIME": None}
    assert client.state is ClientState.READY

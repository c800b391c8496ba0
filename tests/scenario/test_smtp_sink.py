"""A live scenario's destination: Postfix's smtp-sink, answering as a destination step
says, restarted on the same address when the answer changes."""

from __future__ import annotations

import ipaddress
import os

import pytest
import trio

from kumo.model.ready_queue import ResolvedAddress
from kumo.runtime.smtp_connection import OutgoingMessage, connect_tcp
from kumo.scenario.format import Destination
from kumo.scenario.smtp_sink import SmtpSink, SmtpSinkError, sink_command
from kumo.scenario.smtp_submission import submit
from tests.postfix import free_port, require_smtp_sink

ROOT = ["-u", "nobody"] if os.geteuid() == 0 else []


@pytest.mark.parametrize(
    ("answer", "flags"),
    [
        ("accept", []),
        ("451 4.3.0 Try again later", ["-r", ".", "-b", "451 4.3.0 Try again later"]),
        ("554 5.7.1 Go away", ["-f", ".", "-B", "554 5.7.1 Go away"]),
    ],
)
def test_each_answer_is_a_refusal_of_the_final_dot(answer: str, flags: list[str]) -> None:
    step = Destination("example.com", answer)
    assert sink_command("/usr/sbin/smtp-sink", "127.0.0.1", 2600, step) == [
        "/usr/sbin/smtp-sink",
        *ROOT,
        *flags,
        "127.0.0.1:2600",
        "64",
    ]
    assert sink_command("smtp-sink", "::1", 2600, step)[-2] == "[::1]:2600"


async def send(port: int, count: int = 2) -> tuple[int, list[str]]:
    messages = [
        OutgoingMessage(f"{n}", "s@example.org", f"r{n}@example.com", b"Subject: x\r\n\r\nx\r\n")
        for n in range(count)
    ]
    server = ResolvedAddress("127.0.0.1", ipaddress.ip_address("127.0.0.1"), port)
    submitted = await submit(messages, server=server, connector=connect_tcp)
    return submitted.accepted, submitted.problems


async def test_the_sink_answers_as_told_and_recovers_on_the_same_address() -> None:
    require_smtp_sink()
    port = free_port()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            sink = SmtpSink("127.0.0.1", port, nursery)
            await sink.answer(Destination("example.com", "451 4.3.0 Try again later"))
            accepted, problems = await send(port)
            assert accepted == 0
            assert problems == [
                "r0@example.com: 451 Try again later",
                "r1@example.com: 451 Try again later",
            ]
            await sink.answer(Destination("example.com", "accept"))
            assert await send(port) == (2, [])
            await sink.stop()
            accepted, problems = await send(port, 1)
            assert accepted == 0
            assert "Connection refused" in problems[0]
            await sink.stop()  # twice is harmless


async def test_a_sink_that_cannot_listen_is_an_error() -> None:
    require_smtp_sink()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            sink = SmtpSink("192.0.2.1", free_port(), nursery)  # not an address of this host
            with pytest.raises(SmtpSinkError, match=r"smtp-sink did not start on 192\.0\.2\.1:"):
                await sink.answer(Destination("example.com", "accept"))

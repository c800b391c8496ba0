"""Planning an injection: one message per recipient, its queue, its bytes, its failures."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from collections.abc import Callable
from typing import TypeVar

import orjson
import pytest

from kumo.http.bodies import BuiltContent, InjectRecipient, InjectRequest, Mailbox
from kumo.http.errors import RequestRefused
from kumo.http.inject_api import (
    inject,
    plan_injection,
    render_message,
    render_own_headers,
    render_shared,
)
from kumo.model.requests import NewMessage
from tests.http.test_app import FakeEngine

T = TypeVar("T")

NOW = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
TEXT = "From: s@example.com\r\nX-Campaign: spring\r\nX-Tenant:  acme \r\n\r\nhello\r\n"


def plan(content: str | BuiltContent, *recipients: InjectRecipient, **kwargs: int):  # type: ignore[no-untyped-def]
    request = InjectRequest("s@example.com", recipients, content)
    return plan_injection(request, now=NOW, new_message_id=lambda: "<id@test>", **kwargs)


def test_one_message_per_recipient_sharing_the_body() -> None:
    result = plan(
        TEXT,
        InjectRecipient("a@Example.COM"),
        InjectRecipient("b@other.org", metadata={"campaign": "fall", "tenant": ""}),
        InjectRecipient("c@x.org", metadata={"queue": "my:verbatim@Queue"}),
        InjectRecipient("d@x.org", metadata={"routing_domain": "mx.net", "tenant": "t"}),
    )
    body = TEXT.encode()
    assert result.messages == (
        NewMessage("s@example.com", "a@Example.COM", "spring:acme@example.com", body),
        NewMessage("s@example.com", "b@other.org", "fall:acme@other.org", body),
        NewMessage("s@example.com", "c@x.org", "my:verbatim@Queue", body),
        NewMessage("s@example.com", "d@x.org", "spring:t@x.org!mx.net", body),
    )
    assert result.messages[0].body is result.messages[1].body
    assert result.failed_recipients == result.errors == ()


def test_bad_recipients_fail_alone() -> None:
    result = plan(
        "Subject: x\n\nbody",
        InjectRecipient("nobody"),
        InjectRecipient("ok@example.com"),
        InjectRecipient("trailing@"),
        InjectRecipient("meta@example.com", metadata={"campaign": 5}),
    )
    assert [m.queue for m in result.messages] == ["example.com"]
    assert result.failed_recipients == ("nobody", "trailing@", "meta@example.com")
    assert result.errors[0].startswith("nobody: ")
    assert result.errors[2] == "meta@example.com: metadata `campaign` must be a string"


def test_expansion_limit() -> None:
    recipients = [InjectRecipient(f"r{i}@example.com") for i in range(10)]
    assert len(plan("x" * 100, *recipients, max_bytes=1000).messages) == 10
    with pytest.raises(RequestRefused) as caught:
        plan("x" * 101, *recipients, max_bytes=1000)
    assert caught.value.status == 413
    built = BuiltContent(text_body="x" * 1000)
    with pytest.raises(RequestRefused):
        plan(built, *recipients, max_bytes=5000)


def test_rendered_message() -> None:
    content = BuiltContent(
        text_body="hello",
        html_body="<p>hello</p>",
        headers=(("X-Campaign", "spring"), ("Subject", "override")),
        from_=Mailbox("s@example.com", "Sender Näme"),
        subject="hi",
        reply_to=Mailbox("r@example.com"),
    )
    raw = render_message(
        content, InjectRecipient("a@example.com", "Ann"), date=NOW, message_id="<id@test>"
    )
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["To"] == "Ann <a@example.com>"
    assert parsed["From"] == "Sender Näme <s@example.com>"
    assert parsed["Reply-To"] == "r@example.com"
    assert parsed["Subject"] == "override"
    assert parsed["X-Campaign"] == "spring"
    assert parsed["Message-ID"] == "<id@test>"
    assert parsed.get_content_type() == "multipart/alternative"


def test_built_content_queue_from_headers() -> None:
    content = BuiltContent(text_body="hi", headers=(("x-tenant", "acme"),))
    result = plan(content, InjectRecipient("a@example.com"))
    assert result.messages[0].queue == "acme@example.com"
    assert b"Content-Type: text/plain" in result.messages[0].body


def test_unrenderable_address_fails_the_recipient() -> None:
    result = plan(BuiltContent(text_body="hi"), InjectRecipient("a b c <x@y.z>@example.com"))
    assert result.messages == ()
    assert result.failed_recipients == ("a b c <x@y.z>@example.com",)


def test_object_content_is_rendered_once_and_shared() -> None:
    content = BuiltContent(text_body="x" * 100_000, subject="big", from_=Mailbox("s@example.com"))
    result = plan(
        content, InjectRecipient("a@example.com", "Ann"), InjectRecipient("b@example.com")
    )
    first, second = result.messages
    assert first.body is second.body  # one copy of the 100 KB for every recipient
    assert first.head == b"To: Ann <a@example.com>\r\nMessage-ID: <id@test>\r\n"
    assert second.head == b"To: b@example.com\r\nMessage-ID: <id@test>\r\n"
    assert first.size == len(first.head) + len(first.body)
    parsed = email.message_from_bytes(first.head + first.body, policy=email.policy.default)
    assert (parsed["To"], parsed["Subject"], parsed["Message-ID"]) == (
        "Ann <a@example.com>",
        "big",
        "<id@test>",
    )
    assert parsed.get_content().rstrip("\r\n") == "x" * 100_000


def test_headers_that_content_sets_replace_the_recipients_own() -> None:
    content = BuiltContent(text_body="hi", headers=(("to", "list@example.com"),))
    recipient = InjectRecipient("a@example.com")
    assert render_own_headers(content, recipient, message_id="<m@x>") == b"Message-ID: <m@x>\r\n"
    raw = render_message(content, recipient, date=NOW, message_id="<m@x>")
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.get_all("To") == ["list@example.com"]
    assert render_shared(content, date=NOW) in raw


def test_content_that_cannot_be_rendered_fails_every_recipient() -> None:
    content = BuiltContent(text_body="hi", from_=Mailbox("a b c <x@y.z>@example.com"))
    result = plan(content, InjectRecipient("a@example.com"), InjectRecipient("b@example.com"))
    assert result.messages == ()
    assert result.failed_recipients == ("a@example.com", "b@example.com")


def test_expansion_limit_counts_heads_too() -> None:
    content = BuiltContent(text_body="x" * 1000)
    one = plan(content, InjectRecipient("a@example.com")).messages[0]
    assert len(plan(content, InjectRecipient("a@example.com"), max_bytes=one.size).messages) == 1
    with pytest.raises(RequestRefused):
        plan(content, InjectRecipient("a@example.com"), max_bytes=one.size - 1)


@pytest.mark.parametrize(
    ("content", "recipients", "off_the_loop"),
    [
        ("Subject: s\r\n\r\nx", 2, False),  # text content, a few recipients: a few µs each
        ("Subject: s\r\n\r\nx", 513, True),
        ({"text_body": "x"}, 1, True),  # rendering is the email package's: always off
    ],
)
async def test_messages_are_planned_off_the_event_loop_unless_cheap(
    content: object, recipients: int, off_the_loop: bool
) -> None:
    ran: list[str] = []

    async def spy(call: Callable[[], T]) -> T:
        ran.append("thread")
        return call()

    body = orjson.dumps(
        {
            "envelope_sender": "s@example.com",
            "recipients": [{"email": f"r{i}@example.com"} for i in range(recipients)],
            "content": content,
        }
    )
    engine = FakeEngine()
    reply = await inject(
        engine, content_type="application/json", body=body, now=NOW, run_blocking=spy
    )
    assert reply.status == 200
    assert ran == (["thread"] if off_the_loop else [])
    [(_, messages, _)] = engine.calls
    assert len(messages) == recipients

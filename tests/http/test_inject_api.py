"""Planning an injection: one message per recipient, its queue, its bytes, its failures."""

from __future__ import annotations

import datetime as dt
import email
import email.policy

import pytest

from kumo.http.bodies import BuiltContent, InjectRecipient, InjectRequest, Mailbox
from kumo.http.errors import RequestRefused
from kumo.http.inject_api import plan_injection, render_message
from kumo.model.requests import NewMessage

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

"""Tests for kumo.model.smtp_reception: what the log records of an SMTP transaction."""

from __future__ import annotations

import pytest

from kumo.model.events import MessageReceived, PeerAddress, Rejected
from kumo.model.smtp_reception import plan_reception, reception_queue, rejected_event
from kumo.model.smtp_server import MessagesReceived, Peer, Rejection, Reply

AT = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
IDS = ["0" * 31 + "1", "0" * 31 + "2", "0" * 31 + "3"]
OUTSIDE = Peer("10.0.0.5", 51234)


def transaction(
    *recipients: str,
    content: bytes = b"Subject: hi\r\n\r\nhello\r\n",
    peer: Peer = OUTSIDE,
    ehlo: str = "client.example",
    tls: bool = False,
) -> MessagesReceived:
    return MessagesReceived("s@example.org", recipients, content, ehlo, peer, tls)


def test_one_event_per_recipient_sharing_one_content() -> None:
    received = transaction("a@Example.COM", "b@other.example", "c@example.com")
    events, content = plan_reception(
        received, IDS, hostname="mx.example.net", local_ip="10.0.0.1", received_at=AT
    )
    assert content == (
        b"Received: from client.example (10.0.0.5)\r\n"
        b"  by mx.example.net (KumoMTA 10.0.0.1) \r\n"
        b"  with ESMTP;\r\n"
        b"  Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        b"Subject: hi\r\n\r\nhello\r\n"
    )
    peer = PeerAddress("client.example", "10.0.0.5")
    assert events == [
        MessageReceived(message_id, queue, "s@example.org", recipient, len(content), "ESMTP", peer)
        for message_id, queue, recipient in [
            (IDS[0], "example.com", "a@Example.COM"),
            (IDS[1], "other.example", "b@other.example"),
            (IDS[2], "example.com", "c@example.com"),
        ]
    ]


def test_campaign_and_tenant_come_from_the_headers_as_over_http() -> None:
    content = b"X-Tenant: acme\r\nX-Campaign: spring\r\n\r\nX-Campaign: not a header\r\n"
    events, _ = plan_reception(
        transaction("a@example.com", content=content),
        IDS[:1],
        hostname="h",
        local_ip="127.0.0.1",
        received_at=AT,
    )
    assert [e.queue for e in events] == ["spring:acme@example.com"]


def test_postmaster_without_a_domain_is_this_hosts() -> None:
    assert reception_queue("Postmaster", {}, local_domain="mx.example.net") == "mx.example.net"
    assert reception_queue("a@B.example", {"x-tenant": "t"}, local_domain="h") == "t@b.example"


def test_tls_a_missing_ehlo_and_a_mapped_ipv6_peer() -> None:
    received = transaction("a@example.com", peer=Peer("::ffff:10.0.0.5", 1), ehlo="", tls=True)
    events, content = plan_reception(
        received, IDS[:1], hostname="h", local_ip="::1", received_at=AT
    )
    assert content.startswith(
        b"Received: from unspecified (::ffff:10.0.0.5)\r\n"
        b"  by h (KumoMTA ::1) \r\n  with ESMTPS;\r\n"
    )
    assert events[0].peer == PeerAddress("", "::ffff:10.0.0.5")


def test_one_id_per_recipient() -> None:
    with pytest.raises(ValueError, match="2 ids for 1 recipients"):
        plan_reception(
            transaction("a@example.com"), IDS[:2], hostname="h", local_ip="::1", received_at=AT
        )


def test_a_rejection_becomes_a_rejected_event() -> None:
    rejection = Rejection(
        Reply(550, "5.7.1 relaying not permitted for 10.0.0.5:51234"),
        "RCPT TO:<x@y.example>",
        "s@example.org",
        "first@y.example",
        "client.example",
        Peer("10.0.0.5", 51234),
    )
    assert rejected_event(rejection) == Rejected(
        code=550,
        text="5.7.1 relaying not permitted for 10.0.0.5:51234",
        command="RCPT TO:<x@y.example>",
        sender="s@example.org",
        recipient="first@y.example",
        peer=PeerAddress("client.example", "10.0.0.5"),
    )

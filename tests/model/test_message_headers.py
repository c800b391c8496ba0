"""Tests for kumo.model.message_headers: the header block, unfolded, first value wins."""

from __future__ import annotations

from kumo.model.message_headers import QUEUE_HEADERS, content_headers, content_headers_of_bytes

TEXT = "From: s@example.com\r\nX-Campaign: spring\r\nX-Tenant:  acme \r\n\r\nhello\r\n"


def test_content_headers() -> None:
    names = frozenset({"x-campaign", "x-tenant"})
    assert content_headers(TEXT, names) == {"x-campaign": "spring", "x-tenant": "acme"}
    folded = "X-Campaign: a\n b\nX-Campaign: second\nx-tenant:\n\nX-Tenant: body"
    assert content_headers(folded, names) == {"x-campaign": "a b"}
    assert content_headers("no headers at all", names) == {}
    assert content_headers("", names) == {}


def test_content_headers_of_bytes_read_only_the_header_block() -> None:
    content = b"X-Tenant: \xff acme\r\nSubject: s\r\n\r\nX-Campaign: in the body\r\n"
    assert content_headers_of_bytes(content, QUEUE_HEADERS) == {"x-tenant": "\ufffd acme"}
    assert content_headers_of_bytes(b"X-Campaign: c\r\n", QUEUE_HEADERS) == {"x-campaign": "c"}
    assert content_headers_of_bytes(b"", QUEUE_HEADERS) == {}

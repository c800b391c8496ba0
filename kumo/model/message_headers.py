"""Reading headers out of a message's content, without parsing the whole message.

Campaign and tenant may come from the ``X-Campaign`` and ``X-Tenant`` headers of what
a client sends (docs/rules.md), over HTTP and SMTP alike; only the header block is read.
"""

from __future__ import annotations

from typing import Final

QUEUE_HEADERS: Final = frozenset({"x-campaign", "x-tenant"})
"""The headers a message's scheduled queue may be named from."""


def content_headers(message: str, names: frozenset[str]) -> dict[str, str]:
    """The first value of each header in ``names`` (lower-case) of an RFC 5322 text.

    Reads only the header block, up to the first empty line; unfolds continuation
    lines; a header with an empty value counts as absent.
    """
    ends = [end for end in (message.find("\r\n\r\n"), message.find("\n\n")) if end >= 0]
    block = message[: min(ends)] if ends else message
    found: dict[str, str] = {}
    current: str | None = None
    for line in block.replace("\r\n", "\n").split("\n"):
        if line[:1] in (" ", "\t") and current is not None:
            if current in names and current in found:
                found[current] = f"{found[current]} {line.strip()}".strip()
            continue
        name, colon, value = line.partition(":")
        if not colon:
            break
        current = name.strip().lower()
        if current in names and current not in found:
            found[current] = value.strip()
    return {name: value for name, value in found.items() if value}


def content_headers_of_bytes(content: bytes, names: frozenset[str]) -> dict[str, str]:
    """:func:`content_headers` of message bytes (as SMTP brings them): only the header
    block is decoded, as UTF-8, a byte that is not UTF-8 read as U+FFFD."""
    end = content.find(b"\r\n\r\n")
    block = content if end < 0 else content[: end + 2]
    return content_headers(block.decode("utf-8", "replace"), names)

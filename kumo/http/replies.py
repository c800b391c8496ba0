"""Replies as plain values: what a handler answers, before it is an HTTP response."""

from __future__ import annotations

from typing import Any, Final

import attrs
import orjson

JSON: Final = "application/json"
TEXT: Final = "text/plain; charset=utf-8"


@attrs.frozen(slots=True)
class Reply:
    """A status, a body and its content type."""

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    """Headers beside the content type (kumo extensions such as ``Kumo-Fleet-Figures``)."""


def json_reply(value: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """``value`` as a JSON body (orjson: exact integers, UTF-8)."""
    return Reply(status, orjson.dumps(value), JSON, headers)


def text_reply(text: str, status: int = 200) -> Reply:
    """``text`` as a plain-text body."""
    return Reply(status, text.encode(), TEXT)

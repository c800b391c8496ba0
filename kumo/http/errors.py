"""Refusals: a request the server will not act on, and the reply that says why.

Every refusal is a client error (4xx) with a ``text/plain`` body. The texts of the
415, 400, 413 and 422 refusals are KumoMTA's (axum's ``Json`` and ``Query`` extractors)
to the letter, so the prefixes below are part of the wire contract (docs/operations.md,
"Error replies").
"""

from __future__ import annotations

from typing import Final

UNSUPPORTED_MEDIA_TYPE: Final = "Expected request with `Content-Type: application/json`"
JSON_SYNTAX_PREFIX: Final = "Failed to parse the request body as JSON: "
JSON_SHAPE_PREFIX: Final = "Failed to deserialize the JSON body into the target type: "
BODY_TOO_LARGE: Final = "Failed to buffer the request body: length limit exceeded"
QUERY_PREFIX: Final = "Failed to deserialize query string: "

DEFAULT_BODY_LIMIT: Final = 2 * 2**20
"""2 MiB, KumoMTA's (axum's) default request body limit; over it is a 413."""


class RequestRefused(Exception):
    """The request is refused with ``status`` (a 4xx) and the plain-text ``text``.

    Raised anywhere below a route handler; the app turns it into the reply. Nothing
    has changed when it is raised: handlers validate before they call the engine.
    """

    def __init__(self, status: int, text: str, *, retry_after: int | None = None) -> None:
        super().__init__(status, text)
        self.status = status
        self.text = text
        self.retry_after = retry_after
        """Seconds for the ``Retry-After`` header of a 429, if any."""

    def __str__(self) -> str:
        return f"{self.status}: {self.text}"


def unsupported_media_type() -> RequestRefused:
    """415: the body is not declared as JSON."""
    return RequestRefused(415, UNSUPPORTED_MEDIA_TYPE)


def json_syntax_error(why: str) -> RequestRefused:
    """400: the body is empty or not JSON."""
    return RequestRefused(400, JSON_SYNTAX_PREFIX + why)


def json_shape_error(why: str) -> RequestRefused:
    """422: JSON of the wrong shape; ``why`` names the field and what is wrong with it."""
    return RequestRefused(422, JSON_SHAPE_PREFIX + why)


def query_error(why: str) -> RequestRefused:
    """400: a query string that does not fit its route (a parameter missing, given
    twice, or of the wrong form); ``why`` names the parameter and what is wrong."""
    return RequestRefused(400, QUERY_PREFIX + why)


def body_too_large() -> RequestRefused:
    """413: the body is over the configured limit."""
    return RequestRefused(413, BODY_TOO_LARGE)


def unauthorized(why: str) -> RequestRefused:
    """401: the peer is not trusted and did not authenticate."""
    return RequestRefused(401, why)


def too_many_attempts(why: str, retry_after: int) -> RequestRefused:
    """429: too many failed attempts to authenticate; ``Retry-After`` says when to retry."""
    return RequestRefused(429, why, retry_after=retry_after)

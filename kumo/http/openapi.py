"""The OpenAPI 3.1 document of kumo's HTTP API, served at ``/api-docs/openapi.json``."""

from __future__ import annotations

from typing import Any, Final

from kumo.http.routes import BOUNCE_PATH, INJECT_PATH, LIVENESS_PATH, METRICS_PATH, OPENAPI_PATH

_TEXT: Final = {"text/plain": {"schema": {"type": "string"}}}
_NULLABLE_STRING: Final = {"type": ["string", "null"]}


def _refusals(*statuses: int) -> dict[str, Any]:
    texts = {
        401: "Not a trusted host and no valid credentials.",
        429: "Too many failed authentication attempts from this peer or for this user, or "
        "too many password checks under way; `Retry-After` says when to retry.",
        404: "No live rule has this id.",
        413: "Body over the limit (`Failed to buffer the request body: length limit exceeded`).",
        415: "Content-Type is not JSON (`Expected request with `Content-Type: application/json``).",
        400: "Body empty or not JSON (`Failed to parse the request body as JSON: ...`).",
        422: "JSON of the wrong shape "
        "(`Failed to deserialize the JSON body into the target type: ...`).",
        503: "The engine refuses work for now: it is shutting down or its event log is "
        "closed (`kumo is shutting down; retry later`, `the event log is closed; retry later`).",
    }
    replies: dict[str, Any] = {
        str(status): {"description": texts[status], "content": _TEXT} for status in statuses
    }
    if 429 in statuses:
        replies["429"]["headers"] = {
            "Retry-After": {
                "description": "Whole seconds to wait before the next attempt.",
                "schema": {"type": "integer", "minimum": 1},
            }
        }
    return replies


_BOUNCE_REQUEST: Final = {
    "type": "object",
    "additionalProperties": False,
    "required": ["reason"],
    "properties": {
        "campaign": _NULLABLE_STRING,
        "tenant": _NULLABLE_STRING,
        "domain": _NULLABLE_STRING,
        "routing_domain": _NULLABLE_STRING,
        "queue_names": {"type": "array", "items": {"type": "string"}, "default": []},
        "reason": {"type": "string"},
        "duration": {
            "description": "humantime duration string (`5m`, `1h 30m`) or seconds; "
            "default 5 minutes, at most 100 years",
            "oneOf": [{"type": "string"}, {"type": "number", "minimum": 0}, {"type": "null"}],
        },
        "expires": {"type": ["string", "null"], "format": "date-time"},
        "suppress_logging": {"type": "boolean", "default": False},
    },
}

_BOUNCE_ENTRY: Final = {
    "type": "object",
    "required": [
        "id",
        "campaign",
        "tenant",
        "domain",
        "routing_domain",
        "reason",
        "duration",
        "bounced",
        "total_bounced",
    ],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "campaign": _NULLABLE_STRING,
        "tenant": _NULLABLE_STRING,
        "domain": _NULLABLE_STRING,
        "routing_domain": _NULLABLE_STRING,
        "reason": {"type": "string"},
        "duration": {"type": "string", "description": "remaining lifetime"},
        "bounced": {"type": "object", "additionalProperties": {"type": "integer"}},
        "total_bounced": {"type": "integer"},
        "queue_names": {"type": "array", "items": {"type": "string"}},
        "suppress_logging": {"type": "boolean"},
        "expires": {"type": "string", "format": "date-time"},
        "issued_at": {"type": "string", "format": "date-time"},
        "issued_by": {"type": "string"},
    },
}

_MAILBOX: Final = {
    "type": "object",
    "required": ["email"],
    "properties": {"email": {"type": "string"}, "name": _NULLABLE_STRING},
}

_INJECT_REQUEST: Final = {
    "type": "object",
    "required": ["envelope_sender", "recipients", "content"],
    "properties": {
        "envelope_sender": {"type": "string"},
        "recipients": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["email"],
                "properties": {
                    "email": {"type": "string"},
                    "name": _NULLABLE_STRING,
                    "substitutions": {"type": "object"},
                    "metadata": {
                        "type": "object",
                        "description": "`queue`, `campaign`, `tenant`, `routing_domain` "
                        "choose the scheduled queue",
                    },
                },
            },
        },
        "content": {
            "oneOf": [
                {"type": "string", "description": "a complete RFC 5322 message"},
                {
                    "type": "object",
                    "properties": {
                        "text_body": _NULLABLE_STRING,
                        "html_body": _NULLABLE_STRING,
                        "headers": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "from": _MAILBOX,
                        "subject": _NULLABLE_STRING,
                        "reply_to": _MAILBOX,
                    },
                },
            ]
        },
        "substitutions": {"type": "object"},
    },
}

_JSON_BODY: Final = "application/json"


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {_JSON_BODY: {"schema": schema}}


OPENAPI: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "kumo",
        "version": "0.1.0",
        "description": "KumoMTA-compatible administrative bounce API, event-sourced.",
    },
    "paths": {
        BOUNCE_PATH: {
            "post": {
                "summary": "Bounce what matches; replies at once, before the sweep ends.",
                "requestBody": {"required": True, "content": _json(_BOUNCE_REQUEST)},
                "responses": {
                    "200": {
                        "description": "The new rule's id.",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["id", "bounced", "total_bounced"],
                                "properties": {
                                    "id": {"type": "string", "format": "uuid"},
                                    "bounced": {"type": "object"},
                                    "total_bounced": {"type": "integer"},
                                },
                            }
                        ),
                    },
                    **_refusals(401, 429, 413, 415, 400, 422, 503),
                },
            },
            "get": {
                "summary": "The live rules, most recently issued last.",
                "responses": {
                    "200": {
                        "description": "Live rules.",
                        "content": _json({"type": "array", "items": _BOUNCE_ENTRY}),
                    },
                    **_refusals(401, 429, 503),
                },
            },
            "delete": {
                "summary": "Cancel a live rule.",
                "requestBody": {
                    "required": True,
                    "content": _json(
                        {
                            "type": "object",
                            "required": ["id"],
                            "properties": {"id": {"type": "string", "format": "uuid"}},
                        }
                    ),
                },
                "responses": {
                    "200": {"description": "`removed <id>`", "content": _TEXT},
                    **_refusals(401, 429, 404, 413, 415, 400, 422, 503),
                },
            },
        },
        INJECT_PATH: {
            "post": {
                "summary": "Receive one message per recipient.",
                "requestBody": {"required": True, "content": _json(_INJECT_REQUEST)},
                "responses": {
                    "200": {
                        "description": "Counts of injected and failed recipients.",
                        "content": _json(
                            {
                                "type": "object",
                                "required": [
                                    "success_count",
                                    "fail_count",
                                    "failed_recipients",
                                    "errors",
                                ],
                                "properties": {
                                    "success_count": {"type": "integer"},
                                    "fail_count": {"type": "integer"},
                                    "failed_recipients": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                    },
                                    "errors": {"type": "array", "items": {"type": "string"}},
                                },
                            }
                        ),
                    },
                    **_refusals(401, 429, 413, 415, 400, 422, 503),
                },
            }
        },
        LIVENESS_PATH: {
            "get": {
                "summary": "Liveness.",
                "responses": {"200": {"description": "`OK`", "content": _TEXT}},
            }
        },
        METRICS_PATH: {
            "get": {
                "summary": "Prometheus text: scheduled_count{queue=...}, received and bounced.",
                "description": (
                    "KumoMTA's `scheduled_count{queue}`, `total_messages_received` and "
                    "`total_messages_bounced`; every field of the engine's statistics as "
                    "`kumo_engine_<field>` (counter or gauge, as the field declares); per "
                    "queue actor `kumo_actor_mailbox_used`, `kumo_actor_lagging`, "
                    "`kumo_actor_catch_ups` and `kumo_actor_bounced`; and the histograms "
                    "`kumo_engine_log_commit_seconds` and "
                    "`kumo_admin_request_seconds{route,method}`. docs/operations.md lists "
                    "them all."
                ),
                "responses": {
                    "200": {"description": "Prometheus text format 0.0.4.", "content": _TEXT},
                    **_refusals(401, 429, 503),
                },
            }
        },
        OPENAPI_PATH: {
            "get": {
                "summary": "This document.",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": _json({})}},
            }
        },
    },
}

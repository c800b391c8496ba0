"""The OpenAPI 3.1 document of kumo's HTTP API, served at ``/api-docs/openapi.json``."""

from __future__ import annotations

from typing import Any, Final

from kumo.http.routes import (
    BOUNCE_PATH,
    INJECT_PATH,
    INSPECT_MESSAGE_PATH,
    INSPECT_QUEUE_PATH,
    LIVENESS_PATH,
    METRICS_JSON_PATH,
    METRICS_PATH,
    OPENAPI_PATH,
    READY_Q_STATES_PATH,
    REBIND_PATH,
    SUSPEND_PATH,
    SUSPEND_READY_Q_PATH,
)
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.requests import MAX_LIFETIME

_TEXT: Final = {"text/plain": {"schema": {"type": "string"}}}
_NULLABLE_STRING: Final = {"type": ["string", "null"]}


def _refusals(*statuses: int, texts: dict[int, str] | None = None) -> dict[str, Any]:
    """Refusal replies for ``statuses``; ``texts`` replaces the usual descriptions."""
    usual = {
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
    described = usual | (texts or {})
    replies: dict[str, Any] = {
        str(status): {"description": described[status], "content": _TEXT} for status in statuses
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
            "oneOf": [
                {"type": "string"},
                {"type": "number", "minimum": 0, "maximum": MAX_LIFETIME // NANOS_PER_SECOND},
                {"type": "null"},
            ],
        },
        "expires": {"type": ["string", "null"], "format": "date-time"},
        "suppress_logging": {"type": "boolean", "default": False},
        "dry_run": {
            "type": "boolean",
            "default": False,
            "description": "kumo extension: issue nothing, answer what the request would "
            "match now (the dry-run reply)",
        },
    },
}

_DRY_RUN_REPLY: Final = {
    "type": "object",
    "description": 'kumo extension: the reply to `"dry_run": true`; nothing was issued',
    "required": ["dry_run", "queues", "total_messages", "replaces"],
    "properties": {
        "dry_run": {"const": True},
        "queues": {
            "type": "array",
            "description": "the matching scheduled queues that hold messages, by name",
            "items": {
                "type": "object",
                "required": ["queue", "messages"],
                "properties": {
                    "queue": {"type": "string"},
                    "messages": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "messages held: due, waiting, or in a connection",
                    },
                },
            },
        },
        "total_messages": {"type": "integer", "minimum": 0},
        "replaces": {
            "type": ["string", "null"],
            "format": "uuid",
            "description": "the live rule with equal criteria that the request would replace",
        },
    },
}

_REBIND_DRY_RUN_REPLY: Final = {
    "type": "object",
    "description": 'kumo extension: the reply to `"dry_run": true`; nothing was issued',
    "required": ["dry_run", "queues", "total_messages", "total_moving"],
    "properties": {
        "dry_run": {"const": True},
        "queues": {
            "type": "array",
            "description": "the matching scheduled queues that hold messages, by name",
            "items": {
                "type": "object",
                "required": ["queue", "messages", "to", "flushed"],
                "properties": {
                    "queue": {"type": "string"},
                    "messages": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "messages held: due, waiting, or in a connection",
                    },
                    "to": {
                        "type": ["string", "null"],
                        "description": "the queue they would move to; null: unchanged",
                    },
                    "flushed": {
                        "type": "boolean",
                        "description": "unchanged, and `always_flush` would make the "
                        "waiting ones due now",
                    },
                },
            },
        },
        "total_messages": {"type": "integer", "minimum": 0},
        "total_moving": {
            "type": "integer",
            "minimum": 0,
            "description": "messages of the queues whose name would change",
        },
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
        "pending",
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
        "pending": {
            "type": "integer",
            "minimum": 0,
            "description": "kumo extension: messages still held in the queues the rule "
            "matches, which its sweep (and the attempts under way it waits for) still owes; "
            "0 when done",
        },
    },
}

_SUSPEND_REQUEST: Final = {
    **_BOUNCE_REQUEST,
    "properties": {
        name: schema
        for name, schema in _BOUNCE_REQUEST["properties"].items()  # type: ignore[attr-defined]
        if name != "suppress_logging"
    },
}

_SUSPEND_ENTRY: Final = {
    "type": "object",
    "required": ["id", "campaign", "tenant", "domain", "reason", "duration"],
    "properties": {
        name: schema
        for name, schema in _BOUNCE_ENTRY["properties"].items()  # type: ignore[attr-defined]
        if name not in ("bounced", "total_bounced", "suppress_logging", "pending")
    },
}

_REBIND_REQUEST: Final = {
    "type": "object",
    "additionalProperties": False,
    "required": ["reason", "data"],
    "properties": {
        "campaign": _NULLABLE_STRING,
        "tenant": _NULLABLE_STRING,
        "domain": _NULLABLE_STRING,
        "routing_domain": _NULLABLE_STRING,
        "reason": {"type": "string"},
        "data": {
            "description": "metadata to merge into each message; kumo can rebind only "
            "`campaign`, `tenant`, `routing_domain` and `queue` (the whole queue name)",
            "type": "object",
            "propertyNames": {"enum": ["campaign", "tenant", "routing_domain", "queue"]},
            "additionalProperties": {"type": "string"},
        },
        "suppress_logging": {"type": "boolean", "default": False},
        "always_flush": {"type": "boolean", "default": False},
        "trigger_rebind_event": {
            "type": "boolean",
            "default": False,
            "description": "accepted and ignored: kumo has no Lua rebind_message hook",
        },
        "dry_run": {
            "type": "boolean",
            "default": False,
            "description": "kumo extension: rebind nothing, answer what the rebind would "
            "move now (the dry-run reply)",
        },
    },
}

_READY_SUSPEND_REQUEST: Final = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "reason"],
    "properties": {
        "name": {
            "type": "string",
            "description": "the ready queue's exact name "
            "(`unspecified->mx.example.com@smtp_client`)",
        },
        "reason": {"type": "string"},
        "duration": _BOUNCE_REQUEST["properties"]["duration"],  # type: ignore[index]
        "expires": {"type": ["string", "null"], "format": "date-time"},
    },
}

_READY_SUSPEND_ENTRY: Final = {
    "type": "object",
    "required": ["id", "name", "reason", "duration", "expires"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "reason": {"type": "string"},
        "duration": {"type": "string", "description": "remaining lifetime"},
        "expires": {"type": "string", "format": "date-time"},
        "issued_at": {"type": "string", "format": "date-time"},
        "issued_by": {"type": "string"},
    },
}

_READY_QUEUE_STATE: Final = {
    "type": "object",
    "required": ["context", "since"],
    "properties": {
        "context": {
            "type": "string",
            "description": "why, in KumoMTA's words "
            "(`TooManyLeases for kumomta.connection_limit.<ready queue>`)",
        },
        "since": {
            "type": "string",
            "format": "date-time",
            "description": "when the ready queue entered the state",
        },
    },
}

_READY_Q_STATES: Final = {
    "type": "object",
    "required": ["states_by_ready_queue"],
    "properties": {
        "states_by_ready_queue": {
            "type": "object",
            "description": "ready queue -> its states by key; only the ready queues in a "
            "state appear",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "connection_limited": _READY_QUEUE_STATE,
                    "connection_rate_throttled": _READY_QUEUE_STATE,
                },
                "additionalProperties": False,
            },
        }
    },
}

_CANCEL_REQUEST: Final = {
    "type": "object",
    "required": ["id"],
    "properties": {"id": {"type": "string", "format": "uuid"}},
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

_SPOOL_ID: Final = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_UUID_BODY: Final = (
    "([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
)
_ANY_UUID: Final = f"^(urn:uuid:{_UUID_BODY}|\\{{{_UUID_BODY}\\}}|{_UUID_BODY})$"
"""The spellings of a UUID the uuid crate's parser takes (simple, hyphenated, braced,
URN): what ``inspect-message`` takes for ``id``, as KumoMTA does."""

_MESSAGE_INFORMATION: Final = {
    "type": "object",
    "required": ["sender", "recipient", "meta", "data"],
    "properties": {
        "sender": {"type": "string"},
        "recipient": {
            "description": "one address, or an array for a message with several",
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        },
        "meta": {
            "type": "object",
            "description": "`campaign`, `tenant`, `routing_domain`: those its queue name has",
            "additionalProperties": {"type": "string"},
        },
        "data": {
            "type": ["string", "null"],
            "description": "the content (invalid UTF-8 replaced), when `want_body=true`",
        },
        "due": {
            "type": "string",
            "format": "date-time",
            "description": "inspect-sched-q only: when next due (today: its arrival)",
        },
        "num_attempts": {
            "type": "integer",
            "minimum": 0,
            "description": "inspect-sched-q only: delivery attempts so far (today: 0)",
        },
    },
}

_INSPECTED_MESSAGE: Final = {
    "type": "object",
    "required": ["id", "message"],
    "properties": {"id": _SPOOL_ID, "message": _MESSAGE_INFORMATION},
}

_INSPECTED_QUEUE: Final = {
    "type": "object",
    "required": [
        "queue_name",
        "messages",
        "num_scheduled",
        "queue_config",
        "delayed_metric",
        "now",
        "last_changed",
    ],
    "properties": {
        "queue_name": {"type": "string"},
        "messages": {"type": "array", "items": _INSPECTED_MESSAGE},
        "num_scheduled": {"type": "integer", "minimum": 0},
        "queue_config": {
            "type": "object",
            "description": "the keys of KumoMTA's QueueConfig that kumo has: `retry_interval`, "
            "`max_retry_interval`, `max_age`, `protocol`, and null `egress_pool`, "
            "`max_message_rate`, `provider_name`",
        },
        "delayed_metric": {"type": "integer", "minimum": 0},
        "now": {"type": "string", "format": "date-time"},
        "last_changed": {
            "type": "string",
            "format": "date-time",
            "description": "when a message last arrived in the queue",
        },
    },
}

_WANT_BODY: Final = {
    "name": "want_body",
    "in": "query",
    "required": False,
    "description": "`true` to include each message's content as `data`",
    "schema": {"type": "boolean", "default": False},
}

_QUERY_REFUSED: Final = (
    "A parameter missing, given twice or of the wrong form "
    "(`Failed to deserialize query string: ...`)."
)

_JSON_BODY: Final = "application/json"


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {_JSON_BODY: {"schema": schema}}


def _cancel_link(path: str) -> dict[str, Any]:
    """The OpenAPI link from a POST that answers ``{"id"}`` to the DELETE that cancels
    that id: what a stateful client (schemathesis) follows."""
    pointer = path.replace("~", "~0").replace("/", "~1")
    return {
        "Cancel": {
            "operationRef": f"#/paths/{pointer}/delete",
            "requestBody": {"id": "$response.body#/id"},
            "description": "Cancel what the POST issued, by its id.",
        }
    }


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
                        "description": "The new rule's id (with `dry_run`: what it would match).",
                        "links": _cancel_link(BOUNCE_PATH),
                        "content": _json(
                            {
                                "oneOf": [
                                    {
                                        "type": "object",
                                        "required": ["id", "bounced", "total_bounced"],
                                        "properties": {
                                            "id": {"type": "string", "format": "uuid"},
                                            "bounced": {"type": "object"},
                                            "total_bounced": {"type": "integer"},
                                        },
                                    },
                                    _DRY_RUN_REPLY,
                                ]
                            }
                        ),
                    },
                    **_refusals(401, 429, 413, 415, 400, 422, 503),
                },
            },
            "get": {
                "summary": "The live rules, most recently issued last.",
                "parameters": [
                    {
                        "name": "scope",
                        "in": "query",
                        "required": False,
                        "description": (
                            "kumo extension: `fleet` sums each rule's `bounced` and "
                            "`total_bounced` over the nodes of the fleet that published "
                            "their counters (docs/fleet.md). Any other value is a 400."
                        ),
                        "schema": {"type": "string", "enum": ["fleet"]},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "Live rules.",
                        "headers": {
                            "Kumo-Fleet-Figures": {
                                "description": (
                                    "With `scope=fleet` only: `fleet; nodes=N` (summed over "
                                    "N nodes, this one included), `unavailable` (Redis did "
                                    "not answer in time: this node's figures alone) or "
                                    "`off` (the node is in no fleet)."
                                ),
                                "schema": {"type": "string"},
                            }
                        },
                        "content": _json({"type": "array", "items": _BOUNCE_ENTRY}),
                    },
                    **_refusals(401, 429, 400, 503),
                },
            },
            "delete": {
                "summary": "Cancel a live rule.",
                "requestBody": {"required": True, "content": _json(_CANCEL_REQUEST)},
                "responses": {
                    "200": {"description": "`removed <id>`", "content": _TEXT},
                    **_refusals(401, 429, 404, 413, 415, 400, 422, 503),
                },
            },
        },
        SUSPEND_PATH: {
            "post": {
                "summary": "Suspend delivery from the scheduled queues that match.",
                "requestBody": {"required": True, "content": _json(_SUSPEND_REQUEST)},
                "responses": {
                    "200": {
                        "description": "The new suspension's id (with `dry_run`: what it "
                        "would match).",
                        "links": _cancel_link(SUSPEND_PATH),
                        "content": _json(
                            {
                                "oneOf": [
                                    {
                                        "type": "object",
                                        "required": ["id"],
                                        "properties": {"id": {"type": "string", "format": "uuid"}},
                                    },
                                    _DRY_RUN_REPLY,
                                ]
                            }
                        ),
                    },
                    **_refusals(401, 429, 413, 415, 400, 422, 503),
                },
            },
            "get": {
                "summary": "The live suspensions, oldest first.",
                "responses": {
                    "200": {
                        "description": "Live suspensions.",
                        "content": _json({"type": "array", "items": _SUSPEND_ENTRY}),
                    },
                    **_refusals(401, 429, 503),
                },
            },
            "delete": {
                "summary": "Lift a live suspension: its messages are due at once.",
                "requestBody": {"required": True, "content": _json(_CANCEL_REQUEST)},
                "responses": {
                    "200": {"description": "`removed <id>`", "content": _TEXT},
                    **_refusals(401, 429, 404, 413, 415, 400, 422, 503),
                },
            },
        },
        REBIND_PATH: {
            "post": {
                "summary": "Move the scheduled messages of the queues that match to the "
                "queue their merged metadata names; replies at once, before they move.",
                "requestBody": {"required": True, "content": _json(_REBIND_REQUEST)},
                "responses": {
                    "200": {
                        "description": "`{}`: the rebind is durable (with `dry_run`: "
                        "what it would move).",
                        "content": _json(
                            {
                                "oneOf": [
                                    {"type": "object", "maxProperties": 0},
                                    _REBIND_DRY_RUN_REPLY,
                                ]
                            }
                        ),
                    },
                    **_refusals(401, 429, 413, 415, 400, 422, 503),
                },
            },
        },
        SUSPEND_READY_Q_PATH: {
            "post": {
                "summary": "Suspend a ready queue: its connections finish their transaction "
                "and close; its messages wait in their scheduled queues.",
                "requestBody": {"required": True, "content": _json(_READY_SUSPEND_REQUEST)},
                "responses": {
                    "200": {
                        "description": "The new suspension's id.",
                        "links": _cancel_link(SUSPEND_READY_Q_PATH),
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["id"],
                                "properties": {"id": {"type": "string", "format": "uuid"}},
                            }
                        ),
                    },
                    **_refusals(401, 429, 413, 415, 400, 422, 503),
                },
            },
            "get": {
                "summary": "The live ready-queue suspensions, oldest first.",
                "responses": {
                    "200": {
                        "description": "Live ready-queue suspensions.",
                        "content": _json({"type": "array", "items": _READY_SUSPEND_ENTRY}),
                    },
                    **_refusals(401, 429, 503),
                },
            },
            "delete": {
                "summary": "Lift a live ready-queue suspension: its messages are due at once.",
                "requestBody": {"required": True, "content": _json(_CANCEL_REQUEST)},
                "responses": {
                    "200": {"description": "`removed <id>`", "content": _TEXT},
                    **_refusals(401, 429, 404, 413, 415, 400, 422, 503),
                },
            },
        },
        READY_Q_STATES_PATH: {
            "get": {
                "summary": "The states the ready queues are in (`connection_limited`: the "
                "fleet's connection leases are all taken).",
                "parameters": [
                    {
                        "name": "queues",
                        "in": "query",
                        "required": False,
                        "style": "form",
                        "explode": True,
                        "description": "a ready queue's exact name, one parameter per "
                        "queue: only those are answered for; absent: all of them",
                        "schema": {"type": "array", "items": {"type": "string", "minLength": 1}},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The states, by ready queue.",
                        "content": _json(_READY_Q_STATES),
                    },
                    **_refusals(
                        401,
                        429,
                        400,
                        503,
                        texts={
                            400: "A `queues` parameter is empty "
                            "(`Failed to deserialize query string: ...`)."
                        },
                    ),
                },
            }
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
        INSPECT_MESSAGE_PATH: {
            "get": {
                "summary": "A queued message by its spool id.",
                "parameters": [
                    {
                        "name": "id",
                        "in": "query",
                        "required": True,
                        "description": "the spool id: 32 hex digits, or any UUID spelling",
                        "schema": {"type": "string", "pattern": _ANY_UUID},
                    },
                    _WANT_BODY,
                ],
                "responses": {
                    "200": {"description": "The message.", "content": _json(_INSPECTED_MESSAGE)},
                    **_refusals(
                        401,
                        429,
                        400,
                        404,
                        503,
                        texts={
                            400: _QUERY_REFUSED,
                            404: "No scheduled queue holds this message "
                            "(`Error: no such message <id>`).",
                        },
                    ),
                },
            }
        },
        INSPECT_QUEUE_PATH: {
            "get": {
                "summary": "A scheduled queue and its first messages.",
                "parameters": [
                    {
                        "name": "queue_name",
                        "in": "query",
                        "required": True,
                        "description": "the scheduled queue's name",
                        "schema": {"type": "string"},
                    },
                    _WANT_BODY,
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "messages to include at most, in arrival order; "
                        "absent: all of them",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**64 - 1},
                    },
                ],
                "responses": {
                    "200": {"description": "The queue.", "content": _json(_INSPECTED_QUEUE)},
                    **_refusals(
                        401,
                        429,
                        400,
                        404,
                        503,
                        texts={
                            400: _QUERY_REFUSED,
                            404: "kumo has no such queue: none has held messages since the "
                            "start (`Error: no such queue <name>`).",
                        },
                    ),
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
                "summary": "Prometheus text: KumoMTA's queue and service figures, kumo's.",
                "description": (
                    "KumoMTA's `scheduled_count{queue}`, `total_messages_received` and "
                    "`total_messages_bounced`; KumoMTA's `ready_count`, `connection_count`, "
                    "`total_messages_delivered`, `total_messages_transfail`, "
                    "`total_messages_fail` and `total_messages_received` by `service` "
                    "(`smtp_client:<ready queue>`, `smtp_client`, `esmtp_listener`, "
                    "`http_listener`); every other field of the engine's statistics as "
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
        METRICS_JSON_PATH: {
            "get": {
                "summary": "The metrics of /metrics as KumoMTA's JSON.",
                "description": (
                    'One key per family of /metrics: `{"help", "type", "value"}`; '
                    "`value` is the number of an unlabelled family, `{label: {value: n}}` "
                    "for a family with one label (an unlabelled total beside it left out), "
                    '`[{label: value, ..., "@": n}]` for more, and '
                    "`{count, sum, avg, bucket}` for a histogram."
                ),
                "responses": {
                    "200": {"description": "KumoMTA's metrics JSON.", "content": _json({})},
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

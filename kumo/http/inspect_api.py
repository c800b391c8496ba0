"""/api/admin/inspect-message/v1 and /api/admin/inspect-sched-q/v1: a queued message by
its id, a scheduled queue with a sample of its messages (GET).

The replies have KumoMTA's shapes (its ``InspectMessageV1Response`` and
``InspectQueueV1Response``), key order included: ``meta`` and ``queue_config`` keys
sorted, as serde_json writes a map; ``data`` null unless the body was asked for;
``due`` and ``num_attempts`` only in a queue's sample. An unknown id or queue is a 404
(``Error: no such message <id>``, ``Error: no such queue <name>``) where KumoMTA answers
an unknown id with a 500.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kumo.http.engine_protocol import AdminEngine
from kumo.http.queries import Query, parse_inspect_message, parse_inspect_queue
from kumo.http.replies import Reply, json_reply, text_reply
from kumo.model.duration import format_duration
from kumo.model.inspection import InspectedMessage, InspectedQueue, QueueConfig, message_meta
from kumo.model.rfc3339 import format_rfc3339

QueueConfigs = Callable[[str], QueueConfig]
"""Queue name -> the settings it runs with (``kumo.config.Config.queue_settings``)."""


def message_entry(message: InspectedMessage, *, scheduled: bool) -> dict[str, Any]:
    """``{"id", "message": {...}}`` for one message; with ``scheduled`` (a queue's
    sample) the message carries ``due`` and ``num_attempts`` too."""
    information: dict[str, Any] = {
        "sender": message.sender,
        "recipient": message.recipient,
        "meta": message_meta(message.queue),
        # As Rust's String::from_utf8_lossy: each invalid sequence becomes one U+FFFD.
        "data": None if message.body is None else message.body.decode("utf-8", "replace"),
    }
    if scheduled:
        information["due"] = format_rfc3339(message.schedule.due)
        information["num_attempts"] = message.schedule.num_attempts
    return {"id": message.id, "message": information}


def queue_config_entry(config: QueueConfig) -> dict[str, Any]:
    """``queue_config``: the keys of KumoMTA's ``QueueConfig`` that kumo has, sorted;
    durations in humantime. A client that reads it as KumoMTA's struct takes the
    defaults for the others (which kumo has no equivalent of)."""
    retry = config.retry
    return {
        "egress_pool": None,
        "max_age": format_duration(retry.max_age),
        "max_message_rate": None,
        "max_retry_interval": (
            None if retry.max_retry_interval is None else format_duration(retry.max_retry_interval)
        ),
        "protocol": {"smtp": {"mx_list": list(config.mx_list)}},
        "provider_name": None,
        "retry_interval": format_duration(retry.retry_interval),
    }


def queue_entry(queue: InspectedQueue, config: QueueConfig) -> dict[str, Any]:
    """The inspect-sched-q reply for ``queue``."""
    return {
        "queue_name": queue.name,
        "messages": [message_entry(message, scheduled=True) for message in queue.messages],
        "num_scheduled": queue.scheduled,
        "queue_config": queue_config_entry(config),
        # KumoMTA's scheduled_count gauge of the queue: what it holds.
        "delayed_metric": queue.scheduled,
        "now": format_rfc3339(queue.now),
        "last_changed": format_rfc3339(queue.last_changed),
    }


async def inspect_message(engine: AdminEngine, query: Query) -> Reply:
    """GET inspect-message: the message, or 404 when no scheduled queue holds it."""
    request = parse_inspect_message(query)
    message = await engine.inspect_message(request.message_id, want_body=request.want_body)
    if message is None:
        return text_reply(f"Error: no such message {request.message_id}", 404)
    return json_reply(message_entry(message, scheduled=False))


async def inspect_queue(engine: AdminEngine, query: Query, queue_configs: QueueConfigs) -> Reply:
    """GET inspect-sched-q: the queue and its first ``limit`` messages, or 404 when kumo
    has no such queue."""
    request = parse_inspect_queue(query)
    queue = await engine.inspect_queue(
        request.queue_name, want_body=request.want_body, limit=request.limit
    )
    if queue is None:
        return text_reply(f"Error: no such queue {request.queue_name}", 404)
    return json_reply(queue_entry(queue, queue_configs(queue.name)))

"""/api/admin/suspend-ready-q/v1: suspend (POST), list (GET) and lift (DELETE) the
suspension of a ready queue (SPEC section 9; docs/operations.md, "Suspending a ready
queue").

As for bounce rules: the body is validated into a request value before one engine
call, and a refused request changes nothing.
"""

from __future__ import annotations

from typing import Any

from kumo.http.bodies import parse_cancel_request, parse_ready_suspend_request
from kumo.http.engine_protocol import AdminEngine
from kumo.http.replies import Reply, json_reply, text_reply
from kumo.model.duration import format_duration
from kumo.model.ready_suspension import ReadySuspensionView
from kumo.model.rfc3339 import format_rfc3339


async def issue_ready_suspend(
    engine: AdminEngine, *, principal: str, content_type: str | None, body: bytes
) -> Reply:
    """POST: record the suspension durably; ``{"id": <uuid>}``."""
    request = parse_ready_suspend_request(content_type, body)
    return json_reply({"id": await engine.issue_ready_suspend(request, issued_by=principal)})


def ready_suspend_entry(view: ReadySuspensionView) -> dict[str, Any]:
    """One element of GET's array: KumoMTA's keys first (``duration`` the time left,
    ``expires`` when it ends), kumo's extra keys after."""
    return {
        "id": view.id,
        "name": view.name,
        "reason": view.reason,
        "duration": format_duration(max(view.remaining, 0)),
        "expires": format_rfc3339(view.expires_at),
        "issued_at": format_rfc3339(view.issued_at),
        "issued_by": view.issued_by,
    }


def list_ready_suspends(engine: AdminEngine) -> Reply:
    """GET: the live ready-queue suspensions, oldest first (``[]`` when none)."""
    return json_reply([ready_suspend_entry(view) for view in engine.list_ready_suspends()])


async def cancel_ready_suspend(
    engine: AdminEngine, *, principal: str, content_type: str | None, body: bytes
) -> Reply:
    """DELETE: 200 ``removed <id>``, or 404 for an id that is not a live suspension's."""
    rule_id = parse_cancel_request(content_type, body, struct="SuspendReadyQueueV1CancelRequest")
    if await engine.cancel_ready_suspend(rule_id, cancelled_by=principal):
        return text_reply(f"removed {rule_id}")
    return text_reply(f"suspend-ready-q entry {rule_id} not found", 404)

"""/api/admin/suspend/v1: suspend (POST), list (GET) and lift (DELETE) the delivery of
scheduled queues (SPEC section 9; docs/operations.md, "Suspending a destination").

As for bounce rules: the body is validated into a request value before one engine
call, and a refused request changes nothing.
"""

from __future__ import annotations

from typing import Any

from kumo.http.bodies import parse_cancel_request, parse_suspend_request
from kumo.http.bounce_api import preview
from kumo.http.engine_protocol import AdminEngine
from kumo.http.replies import Reply, json_reply, text_reply
from kumo.model.duration import format_duration
from kumo.model.rfc3339 import format_rfc3339
from kumo.model.state import RuleView


async def issue_suspend(
    engine: AdminEngine, *, principal: str, content_type: str | None, body: bytes
) -> Reply:
    """POST: record the suspension durably; ``{"id": <uuid>}``. With
    ``"dry_run": true`` nothing is issued: the reply says what it would match now."""
    request = parse_suspend_request(content_type, body)
    if request.dry_run:
        return preview(engine, request, "suspend")
    return json_reply({"id": await engine.issue_suspend(request, issued_by=principal)})


def suspend_entry(view: RuleView) -> dict[str, Any]:
    """One element of GET's array: KumoMTA's keys first, kumo's extra keys after."""
    criteria = view.criteria
    return {
        "id": view.id,
        "campaign": criteria.campaign,
        "tenant": criteria.tenant,
        "domain": criteria.domain,
        "reason": view.reason,
        "duration": format_duration(max(view.remaining, 0)),
        "routing_domain": criteria.routing_domain,
        "queue_names": sorted(criteria.queue_names),
        "expires": format_rfc3339(view.expires_at),
        "issued_at": format_rfc3339(view.issued_at),
        "issued_by": view.issued_by,
    }


def list_suspends(engine: AdminEngine) -> Reply:
    """GET: the live suspensions, oldest first (``[]`` when none)."""
    return json_reply([suspend_entry(view) for view in engine.list_suspends()])


async def cancel_suspend(
    engine: AdminEngine, *, principal: str, content_type: str | None, body: bytes
) -> Reply:
    """DELETE: 200 ``removed <id>``, or 404 for an id that is not a live suspension's."""
    rule_id = parse_cancel_request(content_type, body, struct="SuspendV1CancelRequest")
    if await engine.cancel_suspend(rule_id, cancelled_by=principal):
        return text_reply(f"removed {rule_id}")
    return text_reply(f"suspend entry {rule_id} not found", 404)

"""/api/admin/rebind/v1: move the scheduled messages of matching queues to the queue
their merged metadata names (SPEC section 9; docs/operations.md, "Rebinding messages").

A one-shot action, not a rule: the body is validated into a request value, one engine
call makes it durable (a ``RebindIssued`` in the log), and the reply is KumoMTA's
``{}``. The queues move their messages afterwards, as KumoMTA does asynchronously.
With ``"dry_run": true`` (a kumo extension) nothing is issued: the reply says what the
rebind would move now.
"""

from __future__ import annotations

from kumo.http.bodies import parse_rebind_request
from kumo.http.dry_run import rebind_dry_run_reply
from kumo.http.engine_protocol import AdminEngine
from kumo.http.replies import Reply, json_reply


async def rebind(
    engine: AdminEngine, *, principal: str, content_type: str | None, body: bytes
) -> Reply:
    """POST: record the rebind durably; ``{}``. A refused body, or a dry run, changes
    nothing."""
    request = parse_rebind_request(content_type, body)
    if request.dry_run:
        return rebind_dry_run_reply(engine.preview_rebind(request))
    await engine.rebind(request, issued_by=principal)
    return json_reply({})

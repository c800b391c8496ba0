"""/api/admin/bounce/v1: issue (POST), list (GET) and cancel (DELETE) bounce rules.

Each handler validates the body into a request value, makes one engine call, and
shapes the reply that docs/rules.md describes. Nothing reaches the engine unless the body was
valid, so a refused request changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import trio

from kumo.http.bodies import parse_bounce_request, parse_cancel_request
from kumo.http.dry_run import dry_run_reply
from kumo.http.engine_protocol import AdminEngine
from kumo.http.queries import Query, parse_bounce_list_query
from kumo.http.replies import JSON, Reply, json_reply, text_reply
from kumo.http.rule_listing import RuleListing, rule_entry
from kumo.model.requests import BounceRequest
from kumo.model.state import RuleKind


async def issue_bounce(
    engine: AdminEngine, *, principal: str, content_type: str | None, body: bytes
) -> Reply:
    """POST: record the rule durably and answer at once, before its sweep ends.

    ``bounced`` and ``total_bounced`` are always empty: they are kept for old clients;
    progress is read with GET. With ``"dry_run": true`` nothing is issued: the reply
    says what the rule would match now (:func:`preview`).
    """
    request = parse_bounce_request(content_type, body)
    if request.dry_run:
        return preview(engine, request, "bounce")
    rule_id = await engine.issue_bounce(request, issued_by=principal)
    return json_reply({"id": rule_id, "bounced": {}, "total_bounced": 0})


def preview(engine: AdminEngine, request: BounceRequest, kind: RuleKind) -> Reply:
    """The dry-run reply for ``request``, a rule of ``kind``: what it would match now and
    the live rule it would replace. Writes nothing."""
    result = engine.preview(
        request.criteria, replacing=kind, expires_at=request.expiry(engine.now())
    )
    return dry_run_reply(result)


FLEET_FIGURES_HEADER: Final = "Kumo-Fleet-Figures"
"""The header of a ``?scope=fleet`` answer: ``fleet; nodes=N`` (summed over N nodes,
this one included), ``unavailable`` (Redis did not answer in time: this node's figures
alone) or ``off`` (the node is in no fleet: its figures are the fleet's)."""


async def list_bounces(
    engine: AdminEngine,
    query: Query | None = None,
    listing: RuleListing | None = None,
    give_way: Callable[[], Awaitable[None]] = trio.lowlevel.checkpoint,
) -> Reply:
    """GET: the live rules, most recently issued last (``[]`` when none); with
    ``?scope=fleet``, each rule's ``bounced`` and ``total_bounced`` summed over the
    nodes of the fleet that published theirs, and :data:`FLEET_FIGURES_HEADER`.

    ``listing``: the app's encoder of this node's listing, which keeps each rule's
    unchanging parts encoded from one GET to the next (a fresh one without it);
    ``give_way``: what the listing awaits between two slices
    (:meth:`RuleListing.encode_in_slices`)."""
    if not parse_bounce_list_query(query or {}):
        listed = (listing or RuleListing()).encode_in_slices(
            engine.live_bounces(), give_way=give_way
        )
        body = await listed
        return Reply(200, body, JSON)
    figures = await engine.fleet_bounces()
    scope = f"fleet; nodes={figures.nodes}" if figures.scope == "fleet" else figures.scope
    return json_reply(
        [rule_entry(view) for view in figures.views],
        headers=((FLEET_FIGURES_HEADER, scope),),
    )


async def cancel_bounce(
    engine: AdminEngine, *, principal: str, content_type: str | None, body: bytes
) -> Reply:
    """DELETE: 200 ``removed <id>``, or 404 for an id that is not a live rule's."""
    rule_id = parse_cancel_request(content_type, body)
    if await engine.cancel_bounce(rule_id, cancelled_by=principal):
        return text_reply(f"removed {rule_id}")
    return text_reply(f"bounce entry {rule_id} not found", 404)

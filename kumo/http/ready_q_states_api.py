"""/api/admin/ready-q-states/v1: the states the ready queues are in (GET), KumoMTA's
``ReadyQueueStateResponse``.

``{"states_by_ready_queue": {"<ready queue>": {"<key>": {"context": "...", "since":
"<rfc3339>"}}}}``: only the ready queues in a state appear (``{}`` when none is), each
with its states by key (:mod:`kumo.model.ready_queue_state`). ``queues`` parameters
narrow the reply to the ready queues they name
(:func:`~kumo.http.queries.parse_ready_q_states_query`); a malformed one is a 400 and
reaches no engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kumo.http.engine_protocol import AdminEngine
from kumo.http.queries import Query, parse_ready_q_states_query
from kumo.http.replies import Reply, json_reply
from kumo.model.ready_queue_state import ReadyQueueState
from kumo.model.rfc3339 import format_rfc3339


def states_by_ready_queue(states: Iterable[ReadyQueueState]) -> dict[str, Any]:
    """The reply's document: ready queue -> state key -> ``{"context", "since"}``,
    ready queues and keys in the order ``states`` gives them."""
    by_queue: dict[str, dict[str, Any]] = {}
    for state in states:
        by_queue.setdefault(state.ready_queue, {})[state.key] = {
            "context": state.context,
            "since": format_rfc3339(state.since),
        }
    return {"states_by_ready_queue": by_queue}


def list_ready_q_states(engine: AdminEngine, query: Query) -> Reply:
    """GET: the states of the ready queues named (all when none is)."""
    queues = parse_ready_q_states_query(query)
    return json_reply(states_by_ready_queue(engine.ready_queue_states(queues)))

"""The states a ready queue can be in, as KumoMTA lists them
(``GET /api/admin/ready-q-states/v1``, ``kcli queue-summary``'s status column).

A state is a condition that keeps a ready queue from opening the connections it wants,
named by a key, with a *context* (why, in KumoMTA's words) and the wall-clock time it
began (*since*). A ready queue in no state has none; KumoMTA lists only those in one.

kumo has one cause today, :data:`CONNECTION_LIMITED`: the fleet's leases of the ready
queue are all taken (``[egress] fleet_limits``; :mod:`kumo.model.connection_lease`).
KumoMTA's other key, :data:`CONNECTION_RATE_THROTTLED`, needs a connection rate, which
kumo does not have.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Final

import attrs

CONNECTION_LIMITED: Final = "connection_limited"
"""No connection lease could be had: ``TooManyLeases for kumomta.connection_limit.<ready
queue>`` (:func:`kumo.model.connection_lease.refusal_context`)."""
CONNECTION_RATE_THROTTLED: Final = "connection_rate_throttled"
"""KumoMTA's other state (a ``max_connection_rate`` reached); never kumo's."""

STATE_KEYS: Final = (CONNECTION_LIMITED, CONNECTION_RATE_THROTTLED)
"""Every key a state may have, in KumoMTA's order."""


@attrs.frozen
class ReadyQueueState:
    """One state of one ready queue."""

    ready_queue: str
    key: str = attrs.field(validator=attrs.validators.in_(STATE_KEYS))
    context: str
    since: int
    """When the ready queue entered the state (ns since the epoch, the engine's clock);
    it stays put until the state ends, however often its cause recurs meanwhile."""


def select_states(
    states: Iterable[ReadyQueueState], queues: Collection[str] | None
) -> list[ReadyQueueState]:
    """The ``states`` of the ready queues named in ``queues`` (all of them when None),
    in their order. A name that is no ready queue's, or one of a queue in no state,
    selects nothing. (Some KumoMTA releases leave the named queues out instead; kumo
    keeps them, as KumoMTA documents the request.)"""
    if queues is None:
        return list(states)
    wanted = frozenset(queues)
    return [state for state in states if state.ready_queue in wanted]

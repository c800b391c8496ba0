"""The HTTP API's paths, spelled once.

The app serves them (:mod:`kumo.http.app`), the OpenAPI document describes them
(:mod:`kumo.http.openapi`), and kcli, the scenario runner, the benchmark and the tests
request them. All but the OpenAPI document's are KumoMTA's own paths: a client written
for KumoMTA finds them unchanged. Importing this module imports nothing else.
"""

from __future__ import annotations

from typing import Final

BOUNCE_PATH: Final = "/api/admin/bounce/v1"
"""Issue (POST), list (GET) and cancel (DELETE) bounce rules."""
SUSPEND_PATH: Final = "/api/admin/suspend/v1"
"""Suspend (POST), list (GET) and lift (DELETE) the delivery of scheduled queues."""
REBIND_PATH: Final = "/api/admin/rebind/v1"
"""Move the scheduled messages of matching queues to the queue new metadata names (POST)."""
SUSPEND_READY_Q_PATH: Final = "/api/admin/suspend-ready-q/v1"
"""Suspend (POST), list (GET) and lift (DELETE) the suspension of a ready queue."""
READY_Q_STATES_PATH: Final = "/api/admin/ready-q-states/v1"
"""The states the ready queues are in, such as ``connection_limited`` (GET
``[?queues=<ready queue>]...``)."""
INJECT_PATH: Final = "/api/inject/v1"
"""Receive messages (POST), one per recipient."""
LIVENESS_PATH: Final = "/api/check-liveness/v1"
"""``OK`` while the server runs (GET)."""
METRICS_PATH: Final = "/metrics"
"""Prometheus text (GET)."""
METRICS_JSON_PATH: Final = "/metrics.json"
"""The same metrics in KumoMTA's JSON shape (GET)."""
OPENAPI_PATH: Final = "/api-docs/openapi.json"
"""The OpenAPI document of these routes (GET)."""
INSPECT_MESSAGE_PATH: Final = "/api/admin/inspect-message/v1"
"""A queued message by its spool id (GET ``?id=<id>[&want_body=true]``)."""
INSPECT_QUEUE_PATH: Final = "/api/admin/inspect-sched-q/v1"
"""A scheduled queue and a sample of its messages (GET
``?queue_name=<name>[&want_body=true][&limit=N]``)."""

ROUTES: Final = (
    BOUNCE_PATH,
    SUSPEND_PATH,
    REBIND_PATH,
    SUSPEND_READY_Q_PATH,
    READY_Q_STATES_PATH,
    INJECT_PATH,
    LIVENESS_PATH,
    METRICS_PATH,
    METRICS_JSON_PATH,
    OPENAPI_PATH,
    INSPECT_MESSAGE_PATH,
    INSPECT_QUEUE_PATH,
)
"""Every path the app serves."""

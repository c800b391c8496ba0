"""The route paths: KumoMTA's spellings, served by the app, described by OpenAPI.

Every other test names the paths through :mod:`kumo.http.routes`; this one spells
them out, so that a change to a path cannot pass unnoticed.
"""

from __future__ import annotations

from kumo.http.app import create_app
from kumo.http.openapi import OPENAPI
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
    ROUTES,
    SUSPEND_PATH,
    SUSPEND_READY_Q_PATH,
)
from tests.http.test_app import FakeEngine


def test_the_paths_are_kumomtas() -> None:
    assert BOUNCE_PATH == "/api/admin/bounce/v1"
    assert INJECT_PATH == "/api/inject/v1"
    assert LIVENESS_PATH == "/api/check-liveness/v1"
    assert METRICS_PATH == "/metrics"
    assert METRICS_JSON_PATH == "/metrics.json"
    assert OPENAPI_PATH == "/api-docs/openapi.json"
    assert INSPECT_MESSAGE_PATH == "/api/admin/inspect-message/v1"
    assert INSPECT_QUEUE_PATH == "/api/admin/inspect-sched-q/v1"
    assert SUSPEND_PATH == "/api/admin/suspend/v1"
    assert REBIND_PATH == "/api/admin/rebind/v1"
    assert SUSPEND_READY_Q_PATH == "/api/admin/suspend-ready-q/v1"
    assert READY_Q_STATES_PATH == "/api/admin/ready-q-states/v1"
    assert len(set(ROUTES)) == len(ROUTES) == 12


def test_the_app_serves_every_route_and_no_other() -> None:
    app = create_app(FakeEngine())
    served = {rule.rule for rule in app.url_map.iter_rules()}
    assert served == set(ROUTES)


def test_the_openapi_document_describes_every_route() -> None:
    assert set(OPENAPI["paths"]) == set(ROUTES)

"""Each HTTP request holds the engine's admin gate while the app answers it."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from kumo.http.access import AccessPolicy, parse_network
from kumo.http.admin_first import AdminFirst
from kumo.http.app import create_app
from kumo.model.state import RuleView
from kumo.runtime.admin_gate import AdminGate
from tests.http.test_app import TRUSTED, FakeEngine

TRUSTING = AccessPolicy(trusted_hosts=(parse_network("127.0.0.1"),))


class GateWatchingEngine(FakeEngine):
    """Notes whether the gate was closed while GET's listing was made."""

    def __init__(self, gate: AdminGate) -> None:
        super().__init__()
        self.gate = gate
        self.seen: list[bool] = []

    def list_bounces(self) -> list[RuleView]:
        self.seen.append(self.gate.closed)
        return super().list_bounces()


async def test_the_gate_is_closed_while_a_request_is_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = AdminGate(0.1)
    engine = GateWatchingEngine(gate)
    client = create_app(engine, access=TRUSTING, admin_gate=gate).test_client()
    response = await client.get("/api/admin/bounce/v1", scope_base=TRUSTED)
    assert response.status_code == 200
    assert engine.seen == [True]
    assert not gate.closed


async def test_other_scopes_pass_through_without_closing_it() -> None:
    gate = AdminGate(0.1)
    seen: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(gate.closed)

    async def receive() -> dict[str, Any]:
        raise AssertionError("not called")

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("not called")

    middleware = AdminFirst(app, gate)
    await middleware({"type": "lifespan"}, receive, send)
    await middleware({"type": "http"}, receive, send)
    assert seen == [False, True]
    assert not gate.closed

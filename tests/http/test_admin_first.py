"""Each HTTP request holds the engine's admin gate while the app answers it."""

from __future__ import annotations

import uuid
from typing import Any

import trio
import trio.testing

from kumo.http.access import AccessPolicy, parse_network
from kumo.http.admin_first import AdminFirst
from kumo.http.app import create_app
from kumo.http.rule_listing import SLICE
from kumo.model.criteria import Criteria
from kumo.model.duration import NANOS_PER_SECOND as SECOND
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


async def test_requests_but_reads_are_writes(autojump_clock: trio.testing.MockClock) -> None:
    """A long read made inside a request gives way to it only if it is a write (it then
    waits ``read_yield``: the write it waits for is its own)."""
    gate = AdminGate(0.1, read_yield=0.01)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await gate.reader()()

    async def unused(*_: Any) -> Any:
        raise AssertionError("not called")

    middleware = AdminFirst(app, gate)
    for method in ("GET", "HEAD", "OPTIONS", "POST", "DELETE", "PUT"):
        await middleware({"type": "http", "method": method}, unused, unused)
    assert gate.statistics().gave_way == 3
    assert trio.current_time() == 0.03


async def test_get_s_listing_gives_way_to_a_write_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A listing of more than one slice waits, after its first slice, for the write."""
    gate = AdminGate(0.1, read_yield=0.05)
    engine = FakeEngine()
    view = RuleView(
        id="",
        criteria=Criteria(domain="d.example"),
        reason="why",
        remaining=SECOND,
        expires_at=2 * SECOND,
        issued_at=SECOND,
        issued_by="alice",
        suppress_logging=False,
        bounced={},
        total_bounced=0,
    )
    engine.rules = [view._replace(id=str(uuid.UUID(int=n))) for n in range(SLICE + 1)]
    client = create_app(engine, access=TRUSTING, admin_gate=gate).test_client()
    with gate.request(writes=True):
        started = trio.current_time()
        response = await client.get("/api/admin/bounce/v1", scope_base=TRUSTED)
        assert trio.current_time() - started == 0.05
    assert response.status_code == 200
    assert len(await response.get_json()) == SLICE + 1
    assert gate.statistics().gave_way == 1

"""The app in process, over Quart's test client, against a fake engine.

These pin the routing, the refusal order of docs/operations.md (401, 413, 415, 400, 422),
the reply shapes, and that a refused request never reaches the engine. The same
behaviour over real HTTP is in ``test_live.py``.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import attrs
import orjson
import pytest
import trio
import trio.testing
from quart.testing.utils import sentinel
from quart.typing import TestClientProtocol as Client

from kumo.http.access import AccessPolicy, hash_password, hash_token, parse_network
from kumo.http.app import create_app
from kumo.http.bounce_api import FLEET_FIGURES_HEADER
from kumo.http.errors import (
    BODY_TOO_LARGE,
    JSON_SHAPE_PREFIX,
    JSON_SYNTAX_PREFIX,
    UNSUPPORTED_MEDIA_TYPE,
)
from kumo.http.gatekeeper import AttemptLimits
from kumo.http.routes import (
    BOUNCE_PATH,
    INJECT_PATH,
    LIVENESS_PATH,
    METRICS_JSON_PATH,
    METRICS_PATH,
    OPENAPI_PATH,
    REBIND_PATH,
    SUSPEND_PATH,
    SUSPEND_READY_Q_PATH,
)
from kumo.model.criteria import Criteria
from kumo.model.dry_run import DryRun, QueueMatch, QueueMove, RebindDryRun
from kumo.model.fleet import FleetFigures
from kumo.model.inspection import InspectedMessage, InspectedQueue
from kumo.model.ready_queue_state import ReadyQueueState, select_states
from kumo.model.ready_suspension import ReadySuspensionView
from kumo.model.requests import BounceRequest, NewMessage, ReadySuspendRequest, RebindRequest
from kumo.model.state import LiveRules, Rule, RuleKind, RuleView
from kumo.model.statistics import counter
from kumo.runtime.delivery import DispatcherStatistics
from kumo.runtime.engine import EngineClosedError
from kumo.runtime.log_writer import LogClosedError
from kumo.runtime.queue_actor import ActorStatistics
from kumo.runtime.refusal import RefusedError

RULE_ID = "8d2b1f7e-3c4a-4b5d-9e6f-0a1b2c3d4e5f"
TRUSTED = {"client": ("127.0.0.1", 50000)}
UNTRUSTED = {"client": ("192.0.2.7", 50000)}
JSON = {"Content-Type": "application/json"}
SECOND = 1_000_000_000


@attrs.frozen
class FakeStatistics:
    received_total: int = counter("Messages received.")
    bounced_total: int = counter("Messages bounced.")


class FakeEngine:
    """Records every call; answers like the engine would."""

    node_id = "00000000-0000-4000-8000-000000000000"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, str]] = []
        self.rules: list[RuleView] = []
        self.suspensions: list[RuleView] = []
        self.ready_suspensions: list[ReadySuspensionView] = []
        self.closed = False
        self.refusal: RefusedError | None = None
        """Raised by every call, when set."""
        self.messages: dict[str, InspectedMessage] = {}
        """What inspect_message finds, by id."""
        self.queues: dict[str, InspectedQueue] = {}
        """What inspect_queue finds, by name."""
        self.fleet_figures: FleetFigures | None = None
        """What fleet_bounces answers (None: a node in no fleet)."""
        self.ready_states: list[ReadyQueueState] = []
        """The states the ready queues are in."""

    def _check(self) -> None:
        self._refuse()
        if self.closed:
            raise EngineClosedError("kumo is shutting down")

    def _refuse(self) -> None:
        if self.refusal is not None:
            raise self.refusal

    def now(self) -> int:
        return 1_767_225_600 * SECOND

    async def inject(self, messages: Sequence[NewMessage]) -> list[str]:
        self._check()
        self.calls.append(("inject", list(messages), ""))
        return [f"{index:032x}" for index in range(len(messages))]

    async def issue_bounce(self, request: BounceRequest, *, issued_by: str) -> str:
        self._check()
        self.calls.append(("issue_bounce", request, issued_by))
        return RULE_ID

    async def cancel_bounce(self, rule_id: str, *, cancelled_by: str) -> bool:
        self._check()
        self.calls.append(("cancel_bounce", rule_id, cancelled_by))
        return rule_id == RULE_ID

    def list_bounces(self) -> list[RuleView]:
        self._refuse()
        return list(self.rules)

    def live_bounces(self) -> LiveRules:
        """:attr:`rules` as the engine hands them to GET's listing (their ``remaining``
        must agree on the time)."""
        views = self.list_bounces()
        [now] = {view.expires_at - view.remaining for view in views} or {self.now()}
        rules = [
            Rule(
                view.id,
                view.criteria,
                view.reason,
                0,
                view.issued_at,
                view.expires_at,
                view.suppress_logging,
                view.issued_by,
                bounced=dict(view.bounced),
                total_bounced=view.total_bounced,
            )
            for view in views
        ]
        pending = {view.criteria: view.pending for view in views}
        return LiveRules(now, rules, pending.__getitem__)

    async def fleet_bounces(self) -> FleetFigures:
        self._refuse()
        return self.fleet_figures or FleetFigures(list(self.rules), "off", 1)

    async def issue_suspend(self, request: BounceRequest, *, issued_by: str) -> str:
        self._check()
        self.calls.append(("issue_suspend", request, issued_by))
        return RULE_ID

    async def cancel_suspend(self, rule_id: str, *, cancelled_by: str) -> bool:
        self._check()
        self.calls.append(("cancel_suspend", rule_id, cancelled_by))
        return rule_id == RULE_ID

    def list_suspends(self) -> list[RuleView]:
        self._refuse()
        return list(self.suspensions)

    async def rebind(self, request: RebindRequest, *, issued_by: str) -> str:
        self._check()
        self.calls.append(("rebind", request, issued_by))
        return RULE_ID

    async def issue_ready_suspend(self, request: ReadySuspendRequest, *, issued_by: str) -> str:
        self._check()
        self.calls.append(("issue_ready_suspend", request, issued_by))
        return RULE_ID

    async def cancel_ready_suspend(self, rule_id: str, *, cancelled_by: str) -> bool:
        self._check()
        self.calls.append(("cancel_ready_suspend", rule_id, cancelled_by))
        return rule_id == RULE_ID

    def list_ready_suspends(self) -> list[ReadySuspensionView]:
        self._refuse()
        return list(self.ready_suspensions)

    def ready_queue_states(self, queues: Collection[str] | None = None) -> list[ReadyQueueState]:
        self._refuse()
        self.calls.append(("ready_queue_states", queues, ""))
        return select_states(self.ready_states, queues)

    def queue_counts(self) -> Mapping[str, int]:
        self._refuse()
        return {"example.com": 2}

    def preview_rebind(self, request: RebindRequest) -> RebindDryRun:
        self._refuse()
        self.calls.append(("preview_rebind", request, ""))
        return RebindDryRun(
            (
                QueueMove("acme@example.com", 3, "acme@example.com!b.example"),
                QueueMove("acme@example.com!b.example", 1, None, request.always_flush),
            )
        )

    def preview(
        self,
        criteria: Criteria,
        *,
        replacing: RuleKind | None = None,
        expires_at: int | None = None,
    ) -> DryRun:
        self._refuse()
        self.calls.append(("preview", (criteria, replacing, expires_at), ""))
        return DryRun(
            (QueueMatch("acme@example.com", 3), QueueMatch("example.com", 2)),
            RULE_ID if replacing == "bounce" else None,
        )

    async def inspect_message(self, message_id: str, *, want_body: bool) -> InspectedMessage | None:
        self._check()
        self.calls.append(("inspect_message", (message_id, want_body), ""))
        message = self.messages.get(message_id)
        if message is None or want_body:
            return message
        return attrs.evolve(message, body=None)

    async def inspect_queue(
        self, name: str, *, want_body: bool, limit: int | None
    ) -> InspectedQueue | None:
        self._check()
        self.calls.append(("inspect_queue", (name, want_body, limit), ""))
        return self.queues.get(name)

    def statistics(self) -> FakeStatistics:
        self._refuse()
        return FakeStatistics(received_total=3, bounced_total=1)

    def actor_statistics(self, start: int = 0, stop: int | None = None) -> list[ActorStatistics]:
        self._refuse()
        return [ActorStatistics("example.com", 2, 0, 1, False, 0, 9, 0, 2, 0)]

    def dispatcher_statistics(
        self, start: int = 0, stop: int | None = None
    ) -> list[DispatcherStatistics]:
        self._refuse()
        return []


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


ALICE = hash_password("wonderland")
BOB = hash_password("builder")


@pytest.fixture
def client(engine: FakeEngine) -> Client:
    policy = AccessPolicy(
        trusted_hosts=(parse_network("127.0.0.1"),),
        users={"alice": ALICE},
        tokens={"ci": hash_token("tok")},
    )
    return create_app(engine, access=policy, body_limit=1000).test_client()


async def call(
    client: Client,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    scope: dict[str, Any] | None = None,
) -> tuple[int, str, str]:
    response = await client.open(
        path,
        method=method,
        data=body,
        headers=dict(headers or {}),
        scope_base=TRUSTED if scope is None else scope,
        json=sentinel,  # no JSON argument: the body is ``data``, sent as is
    )
    text = await response.get_data(as_text=True)
    return response.status_code, response.headers.get("Content-Type", ""), text


# -- access -----------------------------------------------------------------------------

PROTECTED = [
    ("POST", BOUNCE_PATH),
    ("GET", BOUNCE_PATH),
    ("DELETE", BOUNCE_PATH),
    ("POST", INJECT_PATH),
    ("GET", METRICS_PATH),
    ("GET", METRICS_JSON_PATH),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_untrusted_peer_gets_401_first(
    client: Client, engine: FakeEngine, method: str, path: str
) -> None:
    # Even with a body that is too large, of the wrong type, and not JSON.
    status, content_type, text = await call(
        client,
        method,
        path,
        body=b"{" * 5000,
        headers={"Content-Type": "text/plain"},
        scope=UNTRUSTED,
    )
    assert status == 401
    assert content_type.startswith("text/plain")
    assert text.startswith("Missing Authorization header: 192.0.2.7 is not a trusted host")
    assert engine.calls == []


@pytest.mark.parametrize("path", [LIVENESS_PATH, OPENAPI_PATH])
async def test_open_endpoints(client: Client, path: str) -> None:
    status, _, _ = await call(client, "GET", path, scope=UNTRUSTED)
    assert status == 200


async def test_liveness_text(client: Client) -> None:
    assert await call(client, "GET", LIVENESS_PATH) == (
        200,
        "text/plain; charset=utf-8",
        "OK",
    )


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_basic_auth_names_the_principal(client: Client, engine: FakeEngine) -> None:
    status, _, _ = await call(
        client,
        "POST",
        BOUNCE_PATH,
        body=b'{"reason": "r"}',
        headers=JSON | basic("alice", "wonderland"),
        scope=UNTRUSTED,
    )
    assert status == 200
    assert engine.calls[-1][2] == "alice"
    status, _, text = await call(
        client, "GET", METRICS_PATH, headers=basic("alice", "nope"), scope=UNTRUSTED
    )
    assert (status, text) == (401, "Invalid Authorization: unknown user or wrong password")


async def test_bearer_token_names_the_principal(client: Client, engine: FakeEngine) -> None:
    status, _, text = await call(
        client,
        "DELETE",
        BOUNCE_PATH,
        body=orjson.dumps({"id": RULE_ID}),
        headers=JSON | {"Authorization": "Bearer tok"},
        scope=UNTRUSTED,
    )
    assert (status, text) == (200, f"removed {RULE_ID}")
    assert engine.calls[-1] == ("cancel_bounce", RULE_ID, "ci")


async def test_401_asks_for_credentials(client: Client) -> None:
    response = await client.get(METRICS_PATH, scope_base=UNTRUSTED)
    assert response.status_code == 401
    assert "Basic" in response.headers["WWW-Authenticate"]


# -- the refusal order ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "status", "prefix"),
    [
        (b"{" * 1001, "text/plain", 413, BODY_TOO_LARGE),
        (b"{" * 1001, "application/json", 413, BODY_TOO_LARGE),
        (b"{", "text/plain", 415, UNSUPPORTED_MEDIA_TYPE),
        (b"{", None, 415, UNSUPPORTED_MEDIA_TYPE),
        (b"{", "application/json", 400, JSON_SYNTAX_PREFIX),
        (b"", "application/json", 400, JSON_SYNTAX_PREFIX),
        (b'{"foo": 1}', "application/json", 422, JSON_SHAPE_PREFIX),
    ],
)
@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_refusal_order_on_bounce_path(
    client: Client,
    engine: FakeEngine,
    method: str,
    body: bytes,
    content_type: str | None,
    status: int,
    prefix: str,
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    got_status, got_type, text = await call(client, method, BOUNCE_PATH, body=body, headers=headers)
    if method == "DELETE" and status == 422:
        prefix += "missing field `id`"  # DELETE ignores unknown fields
    assert got_status == status
    assert got_type == "text/plain; charset=utf-8"
    assert text.startswith(prefix)
    assert engine.calls == []


async def test_inject_refusals(client: Client, engine: FakeEngine) -> None:
    for body, headers, status in [
        (b"x" * 1001, JSON, 413),
        (b"{}", {}, 415),
        (b"[", JSON, 400),
        (b"{}", JSON, 422),
    ]:
        got, _, _ = await call(client, "POST", INJECT_PATH, body=body, headers=headers)
        assert got == status
    assert engine.calls == []


# -- replies ----------------------------------------------------------------------------


async def test_post_bounce(client: Client, engine: FakeEngine) -> None:
    status, content_type, text = await call(
        client,
        "POST",
        BOUNCE_PATH,
        body=b'{"domain": "example.com", "reason": "r", "duration": "1h"}',
        headers=JSON,
    )
    assert (status, content_type) == (200, "application/json")
    assert orjson.loads(text) == {"id": RULE_ID, "bounced": {}, "total_bounced": 0}
    assert engine.calls == [
        (
            "issue_bounce",
            BounceRequest(Criteria(domain="example.com"), "r", duration=3600 * SECOND),
            "127.0.0.1",
        )
    ]


async def get_with_headers(client: Client, path: str) -> tuple[int, dict[str, str], Any]:
    response = await client.open(path, method="GET", scope_base=TRUSTED, json=sentinel)
    return (
        response.status_code,
        {name.lower(): value for name, value in response.headers.items()},
        orjson.loads(await response.get_data(as_text=True)),
    )


async def test_get_bounces_with_the_fleet_s_figures(client: Client, engine: FakeEngine) -> None:
    view = RuleView(
        id=RULE_ID,
        criteria=Criteria(campaign="c"),
        reason="why",
        remaining=60 * SECOND,
        expires_at=1_893_549_845 * SECOND,
        issued_at=1_893_549_545 * SECOND,
        issued_by="alice",
        suppress_logging=False,
        bounced={"q1": 2},
        total_bounced=2,
    )
    engine.rules = [view]
    status, headers, entries = await get_with_headers(client, BOUNCE_PATH)
    assert (status, entries[0]["total_bounced"]) == (200, 2)
    assert FLEET_FIGURES_HEADER.lower() not in headers
    # Not in a fleet: the node's figures are the fleet's, and the header says so.
    status, headers, entries = await get_with_headers(client, f"{BOUNCE_PATH}?scope=fleet")
    assert (status, headers[FLEET_FIGURES_HEADER.lower()], entries[0]["total_bounced"]) == (
        200,
        "off",
        2,
    )
    summed = view._replace(bounced={"q1": 5, "q2": 1}, total_bounced=6)
    engine.fleet_figures = FleetFigures([summed], "fleet", 3)
    status, headers, entries = await get_with_headers(client, f"{BOUNCE_PATH}?scope=fleet")
    assert headers[FLEET_FIGURES_HEADER.lower()] == "fleet; nodes=3"
    assert (entries[0]["bounced"], entries[0]["total_bounced"]) == ({"q1": 5, "q2": 1}, 6)
    engine.fleet_figures = FleetFigures([view], "unavailable", 1)
    status, headers, entries = await get_with_headers(client, f"{BOUNCE_PATH}?scope=fleet")
    assert (status, headers[FLEET_FIGURES_HEADER.lower()]) == (200, "unavailable")
    for query in ("scope=local", "scope=", "scope=fleet&scope=fleet"):
        status, _, text = await call(client, "GET", f"{BOUNCE_PATH}?{query}")
        assert status == 400, query
        assert text.startswith("Failed to deserialize query string: "), text
    status, _, _ = await call(client, "GET", f"{BOUNCE_PATH}?other=1")
    assert status == 200


async def test_get_bounces(client: Client, engine: FakeEngine) -> None:
    assert (await call(client, "GET", BOUNCE_PATH))[2] == "[]"
    engine.rules = [
        RuleView(
            id=RULE_ID,
            criteria=Criteria(campaign="c", queue_names=["q2", "q1"]),
            reason="why",
            remaining=299_998_052_371,
            expires_at=1_893_549_845 * SECOND,
            issued_at=1_893_549_545 * SECOND + 500_000_000,
            issued_by="alice",
            suppress_logging=True,
            bounced={"q1": 2, "q2": 3},
            total_bounced=5,
        )
    ]
    status, _, text = await call(client, "GET", BOUNCE_PATH)
    assert status == 200
    entries = orjson.loads(text)
    assert entries == [
        {
            "id": RULE_ID,
            "campaign": "c",
            "tenant": None,
            "domain": None,
            "routing_domain": None,
            "reason": "why",
            "duration": "4m 59s 998ms 52us 371ns",
            "bounced": {"q1": 2, "q2": 3},
            "total_bounced": 5,
            "queue_names": ["q1", "q2"],
            "suppress_logging": True,
            "expires": "2030-01-02T02:04:05Z",
            "issued_at": "2030-01-02T01:59:05.500Z",
            "issued_by": "alice",
            "pending": 0,
        }
    ]
    # KumoMTA's keys come first, in KumoMTA's order.
    assert list(entries[0])[:9] == [
        "id",
        "campaign",
        "tenant",
        "domain",
        "routing_domain",
        "reason",
        "duration",
        "bounced",
        "total_bounced",
    ]


async def test_delete(client: Client, engine: FakeEngine) -> None:
    body = orjson.dumps({"id": RULE_ID.upper()})
    assert await call(client, "DELETE", BOUNCE_PATH, body=body, headers=JSON) == (
        200,
        "text/plain; charset=utf-8",
        f"removed {RULE_ID}",
    )
    other = "00000000-0000-4000-8000-000000000000"
    body = orjson.dumps({"id": other})
    status, _, text = await call(client, "DELETE", BOUNCE_PATH, body=body, headers=JSON)
    assert (status, text) == (404, f"bounce entry {other} not found")


async def test_suspend_post_get_delete(client: Client, engine: FakeEngine) -> None:
    body = b'{"routing_domain": "mx.example", "reason": "r", "duration": "1h"}'
    status, _, text = await call(client, "POST", SUSPEND_PATH, body=body, headers=JSON)
    assert (status, orjson.loads(text)) == (200, {"id": RULE_ID})
    assert engine.calls == [
        (
            "issue_suspend",
            BounceRequest(Criteria(routing_domain="mx.example"), "r", duration=3600 * SECOND),
            "127.0.0.1",
        )
    ]
    engine.suspensions = [
        RuleView(
            id=RULE_ID,
            criteria=Criteria(domain="example.com"),
            reason="why",
            remaining=90 * SECOND,
            expires_at=engine.now() + 90 * SECOND,
            issued_at=engine.now(),
            issued_by="ops",
            suppress_logging=False,
            bounced={},
            total_bounced=0,
        )
    ]
    [entry] = orjson.loads((await call(client, "GET", SUSPEND_PATH))[2])
    assert {key: entry[key] for key in ("id", "campaign", "tenant", "domain", "reason")} == {
        "id": RULE_ID,
        "campaign": None,
        "tenant": None,
        "domain": "example.com",
        "reason": "why",
    }
    assert entry["duration"] == "1m 30s"
    other = "00000000-0000-4000-8000-000000000000"
    body = orjson.dumps({"id": other})
    status, _, text = await call(client, "DELETE", SUSPEND_PATH, body=body, headers=JSON)
    assert (status, text) == (404, f"suspend entry {other} not found")


async def test_a_suspension_with_an_unknown_field_is_refused(
    client: Client, engine: FakeEngine
) -> None:
    # KumoMTA ignores unknown fields here, so that a misspelt criterion suspends
    # everything; kumo refuses them, as for bounces.
    body = b'{"domian": "example.com", "reason": "r"}'
    status, _, text = await call(client, "POST", SUSPEND_PATH, body=body, headers=JSON)
    assert status == 422
    assert "unknown field `domian`" in text
    assert engine.calls == []


async def test_rebind_replies_as_kumomta_once_durable(client: Client, engine: FakeEngine) -> None:
    body = b'{"domain": "example.com", "reason": "r", "data": {"routing_domain": "b.example"}}'
    status, _, text = await call(client, "POST", REBIND_PATH, body=body, headers=JSON)
    assert (status, orjson.loads(text)) == (200, {})
    assert engine.calls == [
        (
            "rebind",
            RebindRequest(Criteria(domain="example.com"), "r", {"routing_domain": "b.example"}),
            "127.0.0.1",
        )
    ]


async def test_a_rebind_dry_run_moves_nothing_and_says_where_each_queue_would_go(
    client: Client, engine: FakeEngine
) -> None:
    body = (
        b'{"domain": "example.com", "reason": "r", "data": {"routing_domain": "b.example"},'
        b' "always_flush": true, "dry_run": true}'
    )
    status, content_type, text = await call(client, "POST", REBIND_PATH, body=body, headers=JSON)
    assert (status, content_type) == (200, "application/json")
    assert orjson.loads(text) == {
        "dry_run": True,
        "queues": [
            {
                "queue": "acme@example.com",
                "messages": 3,
                "to": "acme@example.com!b.example",
                "flushed": False,
            },
            {"queue": "acme@example.com!b.example", "messages": 1, "to": None, "flushed": True},
        ],
        "total_messages": 4,
        "total_moving": 3,
    }
    # Only the preview: no rebind reached the engine.
    expected = RebindRequest(
        Criteria(domain="example.com"),
        "r",
        {"routing_domain": "b.example"},
        always_flush=True,
        dry_run=True,
    )
    assert engine.calls == [("preview_rebind", expected, "")]


@pytest.mark.parametrize("value", ['"true"', "1", "null", "[]"])
async def test_a_rebind_dry_run_must_be_a_boolean(
    client: Client, engine: FakeEngine, value: str
) -> None:
    body = f'{{"reason": "r", "data": {{}}, "dry_run": {value}}}'.encode()
    status, _, text = await call(client, "POST", REBIND_PATH, body=body, headers=JSON)
    assert status == 422
    assert text.startswith(JSON_SHAPE_PREFIX + "dry_run: invalid type: ")
    assert text.endswith("expected a boolean")
    assert engine.calls == []


async def test_a_rebind_dry_run_false_rebinds_as_usual(client: Client, engine: FakeEngine) -> None:
    body = b'{"reason": "r", "data": {}, "dry_run": false}'
    status, _, text = await call(client, "POST", REBIND_PATH, body=body, headers=JSON)
    assert (status, orjson.loads(text)) == (200, {})
    assert [name for name, *_ in engine.calls] == ["rebind"]


async def test_a_rebind_of_what_kumo_does_not_keep_is_refused(
    client: Client, engine: FakeEngine
) -> None:
    body = b'{"reason": "r", "data": {"x-custom": "1"}}'
    status, _, text = await call(client, "POST", REBIND_PATH, body=body, headers=JSON)
    assert status == 422
    assert "kumo cannot rebind `x-custom`" in text
    assert engine.calls == []


@pytest.mark.parametrize(("path", "kind"), [(BOUNCE_PATH, "bounce"), (SUSPEND_PATH, "suspend")])
async def test_a_dry_run_issues_nothing_and_says_what_would_match(
    client: Client, engine: FakeEngine, path: str, kind: str
) -> None:
    body = b'{"domain": "example.com", "reason": "r", "duration": "1h", "dry_run": true}'
    status, content_type, text = await call(client, "POST", path, body=body, headers=JSON)
    assert (status, content_type) == (200, "application/json")
    assert orjson.loads(text) == {
        "dry_run": True,
        "queues": [
            {"queue": "acme@example.com", "messages": 3},
            {"queue": "example.com", "messages": 2},
        ],
        "total_messages": 5,
        "replaces": RULE_ID if kind == "bounce" else None,
    }
    # Only the preview: no issue_* call reached the engine.
    assert engine.calls == [
        ("preview", (Criteria(domain="example.com"), kind, engine.now() + 3600 * SECOND), "")
    ]


@pytest.mark.parametrize("path", [BOUNCE_PATH, SUSPEND_PATH])
@pytest.mark.parametrize("value", ['"true"', "1", "null", "[]"])
async def test_dry_run_must_be_a_boolean(
    client: Client, engine: FakeEngine, path: str, value: str
) -> None:
    body = f'{{"domain": "example.com", "reason": "r", "dry_run": {value}}}'.encode()
    status, _, text = await call(client, "POST", path, body=body, headers=JSON)
    assert status == 422
    assert text.startswith(JSON_SHAPE_PREFIX + "dry_run: invalid type: ")
    assert text.endswith("expected a boolean")
    assert engine.calls == []


async def test_dry_run_false_issues_as_usual(client: Client, engine: FakeEngine) -> None:
    body = b'{"domain": "example.com", "reason": "r", "dry_run": false}'
    status, _, text = await call(client, "POST", BOUNCE_PATH, body=body, headers=JSON)
    assert (status, orjson.loads(text)["id"]) == (200, RULE_ID)
    assert [name for name, *_ in engine.calls] == ["issue_bounce"]


READY_QUEUE = "unspecified->mx.example.com@smtp_client"


async def test_suspend_ready_q_post_get_delete(client: Client, engine: FakeEngine) -> None:
    body = orjson.dumps({"name": READY_QUEUE, "reason": "r", "duration": "1h"})
    status, _, text = await call(client, "POST", SUSPEND_READY_Q_PATH, body=body, headers=JSON)
    assert (status, orjson.loads(text)) == (200, {"id": RULE_ID})
    body = orjson.dumps({"name": READY_QUEUE, "reason": "r", "expires": "2026-01-01T00:10:00Z"})
    status, _, _ = await call(client, "POST", SUSPEND_READY_Q_PATH, body=body, headers=JSON)
    assert status == 200
    assert engine.calls == [
        ("issue_ready_suspend", ReadySuspendRequest(READY_QUEUE, "r", 3600 * SECOND), "127.0.0.1"),
        (
            "issue_ready_suspend",
            ReadySuspendRequest(READY_QUEUE, "r", expires_at=engine.now() + 600 * SECOND),
            "127.0.0.1",
        ),
    ]
    engine.ready_suspensions = [
        ReadySuspensionView(
            id=RULE_ID,
            name=READY_QUEUE,
            reason="why",
            remaining=90 * SECOND,
            expires_at=engine.now() + 90 * SECOND,
            issued_at=engine.now(),
            issued_by="ops",
        )
    ]
    status, _, text = await call(client, "GET", SUSPEND_READY_Q_PATH)
    assert status == 200
    assert orjson.loads(text) == [
        {
            "id": RULE_ID,
            "name": READY_QUEUE,
            "reason": "why",
            "duration": "1m 30s",
            "expires": "2026-01-01T00:01:30Z",
            "issued_at": "2026-01-01T00:00:00Z",
            "issued_by": "ops",
        }
    ]
    body = orjson.dumps({"id": RULE_ID.upper()})
    status, _, text = await call(client, "DELETE", SUSPEND_READY_Q_PATH, body=body, headers=JSON)
    assert (status, text) == (200, f"removed {RULE_ID}")
    other = "00000000-0000-4000-8000-000000000000"
    body = orjson.dumps({"id": other})
    status, _, text = await call(client, "DELETE", SUSPEND_READY_Q_PATH, body=body, headers=JSON)
    assert (status, text) == (404, f"suspend-ready-q entry {other} not found")
    assert engine.calls[-2:] == [
        ("cancel_ready_suspend", RULE_ID, "127.0.0.1"),
        ("cancel_ready_suspend", other, "127.0.0.1"),
    ]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"reason": "r"}', "missing field `name`"),
        (b'{"name": "q"}', "missing field `reason`"),
        (b'{"reason": "r", "name": 7}', "name: invalid type: integer `7`, expected a string"),
        (
            b'{"name": "q", "reason": "r", "domain": "x"}',
            "unknown field `domain`, expected one of `name`, `reason`, `duration`, `expires`",
        ),
        (b'{"name": "q", "reason": "r", "duration": "soon"}', "duration: "),
        (b'{"name": "q", "name": "q", "reason": "r"}', "duplicate field `name`"),
        (b"[]", "invalid type: sequence, expected struct SuspendReadyQueueV1Request"),
    ],
)
async def test_a_ready_queue_suspension_of_the_wrong_shape_is_refused(
    client: Client, engine: FakeEngine, body: bytes, problem: str
) -> None:
    status, _, text = await call(client, "POST", SUSPEND_READY_Q_PATH, body=body, headers=JSON)
    assert status == 422
    assert text.startswith(JSON_SHAPE_PREFIX)
    assert problem in text
    assert engine.calls == []


async def test_suspend_ready_q_is_protected(client: Client, engine: FakeEngine) -> None:
    for method in ("GET", "POST", "DELETE"):
        body = b'{"name": "q", "reason": "r"}'
        status, _, _ = await call(
            client, method, SUSPEND_READY_Q_PATH, body=body, headers=JSON, scope=UNTRUSTED
        )
        assert status == 401
    assert engine.calls == []


async def test_inject(client: Client, engine: FakeEngine) -> None:
    body = orjson.dumps(
        {
            "envelope_sender": "s@example.com",
            "recipients": [{"email": "a@example.com"}, {"email": "broken"}],
            "content": "Subject: hi\r\n\r\nhello",
        }
    )
    status, _, text = await call(client, "POST", INJECT_PATH, body=body, headers=JSON)
    assert status == 200
    assert orjson.loads(text) == {
        "success_count": 1,
        "fail_count": 1,
        "failed_recipients": ["broken"],
        "errors": ["broken: recipient address 'broken' has no '@' before a domain"],
    }
    [(name, messages, _)] = engine.calls
    assert name == "inject"
    assert messages == [
        NewMessage("s@example.com", "a@example.com", "example.com", b"Subject: hi\r\n\r\nhello")
    ]


async def test_metrics(client: Client) -> None:
    status, content_type, text = await call(client, "GET", METRICS_PATH)
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'scheduled_count{queue="example.com"} 2\n' in text
    assert "total_messages_received 3\n" in text
    assert 'kumo_actor_mailbox_used{queue="example.com"} 1\n' in text


async def test_metrics_json(client: Client) -> None:
    status, content_type, text = await call(client, "GET", METRICS_JSON_PATH)
    assert (status, content_type) == (200, "application/json; charset=utf-8")
    document = orjson.loads(text)
    assert document["scheduled_count"] == {
        "help": "Messages waiting in a scheduled queue.",
        "type": "gauge",
        "value": {"queue": {"example.com": 2}},
    }
    assert document["total_messages_received"] == {
        "help": "Messages received.",
        "type": "counter",
        "value": 3,
    }
    assert document["kumo_actor_mailbox_used"]["value"] == {"queue": {"example.com": 1}}


async def test_metrics_time_admin_requests(client: Client) -> None:
    await call(client, "GET", "/api/admin/bounce/v1")
    await call(client, "GET", "/api/admin/bounce/v1")
    await call(client, "DELETE", "/api/admin/bounce/v1", body=b"{}", headers=JSON)  # 422
    await call(client, "GET", "/api/admin/bounce/v1", scope=UNTRUSTED)  # 401
    await call(client, "GET", "/api/check-liveness/v1")  # not an admin route
    _, _, text = await call(client, "GET", "/metrics")
    counts = {
        line.split(" ")[0]: line.split(" ")[1]
        for line in text.splitlines()
        if line.startswith("kumo_admin_request_seconds_count")
    }
    route = 'route="/api/admin/bounce/v1"'
    assert counts == {
        f'kumo_admin_request_seconds_count{{{route},method="GET"}}': "3",
        f'kumo_admin_request_seconds_count{{{route},method="DELETE"}}': "1",
    }


async def test_openapi(client: Client) -> None:
    status, content_type, text = await call(client, "GET", OPENAPI_PATH)
    document = orjson.loads(text)
    assert (status, content_type) == (200, "application/json")
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) >= {BOUNCE_PATH, INJECT_PATH, METRICS_PATH}


# -- everything else is a 4xx with a text -------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/api/admin/bounce/v2", 404),
        ("PUT", BOUNCE_PATH, 405),
        ("POST", METRICS_PATH, 405),
        ("DELETE", LIVENESS_PATH, 405),
    ],
)
async def test_unknown_routes(client: Client, method: str, path: str, status: int) -> None:
    got, content_type, text = await call(client, method, path)
    assert got == status
    assert content_type == "text/plain; charset=utf-8"
    assert text.startswith(str(status))


async def test_closed_engine_is_503(client: Client, engine: FakeEngine) -> None:
    engine.closed = True
    status, _, text = await call(client, "POST", BOUNCE_PATH, body=b'{"reason": "r"}', headers=JSON)
    assert (status, text) == (503, "kumo is shutting down; retry later")


INJECT_BODY = orjson.dumps(
    {
        "envelope_sender": "s@example.com",
        "recipients": [{"email": "a@example.com"}],
        "content": "Subject: hi\r\n\r\nhello",
    }
)
ENGINE_CALLS = [
    ("POST", "/api/admin/bounce/v1", b'{"reason": "r"}'),
    ("GET", "/api/admin/bounce/v1", None),
    ("DELETE", "/api/admin/bounce/v1", f'{{"id": "{RULE_ID}"}}'.encode()),
    ("POST", "/api/inject/v1", INJECT_BODY),
    ("GET", "/metrics", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ENGINE_CALLS)
@pytest.mark.parametrize(
    ("refusal", "text"),
    [
        (EngineClosedError("kumo is shutting down"), "kumo is shutting down; retry later"),
        (LogClosedError("the event log is closed"), "the event log is closed; retry later"),
        (LogClosedError("the event log failed"), "the event log failed; retry later"),
        (RefusedError(), "kumo cannot take this request now; retry later"),
    ],
)
async def test_engine_refusals_are_503(
    client: Client,
    engine: FakeEngine,
    method: str,
    path: str,
    body: bytes | None,
    refusal: RefusedError,
    text: str,
) -> None:
    engine.refusal = refusal
    got = await call(client, method, path, body=body, headers=JSON)
    assert got == (503, "text/plain; charset=utf-8", text)


async def test_failed_attempts_get_429_with_retry_after_until_time_passes(
    engine: FakeEngine, mock_clock: trio.testing.MockClock
) -> None:
    policy = AccessPolicy(trusted_hosts=(), users={"alice": ALICE, "bob": BOB})
    limits = AttemptLimits(burst=3, refill=5.0)
    client = create_app(engine, access=policy, attempt_limits=limits).test_client()
    guesser = {"client": ("198.51.100.66", 50000)}

    for attempt in range(3):
        status, _, _ = await call(
            client, "GET", BOUNCE_PATH, headers=basic("alice", f"g{attempt}"), scope=guesser
        )
        assert status == 401
    response = await client.get(BOUNCE_PATH, headers=basic("alice", "g3"), scope_base=guesser)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "5"
    assert await response.get_data(as_text=True) == (
        "Too many failed authentication attempts from 198.51.100.66; retry in 5 s"
    )
    # Another peer, another user: served at once.
    status, _, _ = await call(
        client, "GET", BOUNCE_PATH, headers=basic("bob", "builder"), scope=UNTRUSTED
    )
    assert status == 200

    mock_clock.jump(5.0)  # one failure has leaked away: one more attempt
    status, _, _ = await call(
        client, "GET", BOUNCE_PATH, headers=basic("alice", "g4"), scope=guesser
    )
    assert status == 401
    status, _, _ = await call(
        client, "GET", BOUNCE_PATH, headers=basic("alice", "g5"), scope=guesser
    )
    assert status == 429

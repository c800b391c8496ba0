"""GET /api/admin/ready-q-states/v1 in process: KumoMTA's reply shape to the byte, the
``queues`` filter (kumo keeps the named queues), 400 for an empty name, and the admin
routes' access control."""

from __future__ import annotations

import orjson
import pytest
from quart.typing import TestClientProtocol as Client

from kumo.http.access import AccessPolicy, parse_network
from kumo.http.app import create_app
from kumo.http.errors import QUERY_PREFIX
from kumo.http.ready_q_states_api import states_by_ready_queue
from kumo.http.routes import READY_Q_STATES_PATH
from kumo.model.ready_queue_state import (
    CONNECTION_LIMITED,
    CONNECTION_RATE_THROTTLED,
    ReadyQueueState,
)
from kumo.runtime.log_writer import LogClosedError
from tests.http.test_app import SECOND, UNTRUSTED, FakeEngine, call

SINCE = 1_767_225_600 * SECOND + 123_456_789  # 2026-01-01T00:00:00.123456789Z
GMAIL = "unspecified->(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com@smtp_client"
LOCAL = "unspecified->mx_list:127.0.0.1:2525@smtp_client"


def limited(queue: str, since: int = SINCE) -> ReadyQueueState:
    return ReadyQueueState(
        queue, CONNECTION_LIMITED, f"TooManyLeases for kumomta.connection_limit.{queue}", since
    )


def test_the_reply_is_kumomtas_shape() -> None:
    throttled = ReadyQueueState(LOCAL, CONNECTION_RATE_THROTTLED, "rate", SINCE + SECOND)
    assert orjson.dumps(states_by_ready_queue([limited(LOCAL), throttled])) == (
        b'{"states_by_ready_queue":{"unspecified->mx_list:127.0.0.1:2525@smtp_client":'
        b'{"connection_limited":{"context":"TooManyLeases for kumomta.connection_limit.'
        b'unspecified->mx_list:127.0.0.1:2525@smtp_client",'
        b'"since":"2026-01-01T00:00:00.123456789Z"},'
        b'"connection_rate_throttled":{"context":"rate","since":"2026-01-01T00:00:01.123456789Z"}}}}'
    )


def test_no_state_is_an_empty_object() -> None:
    assert states_by_ready_queue([]) == {"states_by_ready_queue": {}}


# -- over the app ------------------------------------------------------------------------


@pytest.fixture
def engine() -> FakeEngine:
    fake = FakeEngine()
    fake.ready_states = [limited(GMAIL), limited(LOCAL, SINCE + SECOND)]
    return fake


@pytest.fixture
def client(engine: FakeEngine) -> Client:
    access = AccessPolicy(trusted_hosts=(parse_network("127.0.0.1"),))
    return create_app(engine, access=access).test_client()


async def test_every_ready_queue_in_a_state(client: Client, engine: FakeEngine) -> None:
    status, content_type, text = await call(client, "GET", READY_Q_STATES_PATH)
    assert (status, content_type) == (200, "application/json")
    assert orjson.loads(text) == states_by_ready_queue(engine.ready_states)
    assert list(orjson.loads(text)["states_by_ready_queue"]) == [GMAIL, LOCAL]
    assert engine.calls == [("ready_queue_states", None, "")]


async def test_queues_keeps_only_the_named_ones(client: Client, engine: FakeEngine) -> None:
    # The name percent-encoded, as a client sends it; a name with no state gives nothing.
    path = f"{READY_Q_STATES_PATH}?queues=unspecified-%3Emx_list%3A127.0.0.1%3A2525%40smtp_client"
    status, _, text = await call(client, "GET", f"{path}&queues=nope&other=1")
    assert status == 200
    assert orjson.loads(text) == states_by_ready_queue([limited(LOCAL, SINCE + SECOND)])
    assert engine.calls == [("ready_queue_states", (LOCAL, "nope"), "")]
    status, _, text = await call(client, "GET", f"{READY_Q_STATES_PATH}?queues=nope")
    assert (status, orjson.loads(text)) == (200, {"states_by_ready_queue": {}})


@pytest.mark.parametrize("query", ["queues=", "queues=q&queues="])
async def test_an_empty_name_is_400_and_reaches_no_engine(
    client: Client, engine: FakeEngine, query: str
) -> None:
    assert await call(client, "GET", f"{READY_Q_STATES_PATH}?{query}") == (
        400,
        "text/plain; charset=utf-8",
        QUERY_PREFIX + "queues: a ready queue name cannot be empty",
    )
    assert engine.calls == []


async def test_only_trusted_or_authenticated_peers_may_ask(
    client: Client, engine: FakeEngine
) -> None:
    status, _, text = await call(client, "GET", READY_Q_STATES_PATH, scope=UNTRUSTED)
    assert status == 401
    assert text.startswith("Missing Authorization header: 192.0.2.7 is not a trusted host")
    assert engine.calls == []


async def test_ready_q_states_is_get_only(client: Client) -> None:
    status, _, _ = await call(client, "POST", READY_Q_STATES_PATH, body=b"{}")
    assert status == 405


async def test_a_refusing_engine_is_503(client: Client, engine: FakeEngine) -> None:
    engine.refusal = LogClosedError("the event log is closed")
    status, _, text = await call(client, "GET", READY_Q_STATES_PATH)
    assert (status, text) == (503, "the event log is closed; retry later")

"""The inspection routes in process: KumoMTA's reply shapes to the byte, 404 for what kumo
does not hold, 400 for a bad query, and the admin routes' access control."""

from __future__ import annotations

import orjson
import pytest
from quart.typing import TestClientProtocol as Client

from kumo.http.access import AccessPolicy, parse_network
from kumo.http.app import create_app
from kumo.http.errors import QUERY_PREFIX
from kumo.http.inspect_api import message_entry, queue_config_entry, queue_entry
from kumo.http.routes import INSPECT_MESSAGE_PATH, INSPECT_QUEUE_PATH
from kumo.model.duration import NANOS_PER_MINUTE, NANOS_PER_SECOND
from kumo.model.inspection import InspectedMessage, InspectedQueue, QueueConfig
from kumo.model.message import Message
from kumo.model.retry import RetryPolicy
from kumo.runtime.engine import EngineClosedError
from tests.http.test_app import SECOND, UNTRUSTED, FakeEngine, call

ARRIVAL = 1_767_225_600 * SECOND + 123_000_000  # 2026-01-01T00:00:00.123Z
ID = "d7ef132b5d7711eea8c8000c29c33806"
QUEUE = "spring:acme@example.com"
MESSAGE = InspectedMessage.of(
    QUEUE,
    Message(ID, "news@sender.example", "rcpt@example.com", 42, ARRIVAL, 3),
    b"Subject: hi\r\n\r\nhello\r\n",
)


def test_a_message_as_kumomta_shows_it() -> None:
    assert orjson.dumps(message_entry(MESSAGE, scheduled=False)) == (
        b'{"id":"d7ef132b5d7711eea8c8000c29c33806","message":{"sender":"news@sender.example",'
        b'"recipient":"rcpt@example.com","meta":{"campaign":"spring","tenant":"acme"},'
        b'"data":"Subject: hi\\r\\n\\r\\nhello\\r\\n"}}'
    )


def test_a_queued_message_has_its_due_time_and_attempts_too() -> None:
    entry = message_entry(MESSAGE, scheduled=True)
    assert list(entry["message"]) == ["sender", "recipient", "meta", "data", "due", "num_attempts"]
    assert entry["message"]["due"] == "2026-01-01T00:00:00.123Z"
    assert entry["message"]["num_attempts"] == 0


def test_no_body_is_null_and_a_body_that_is_not_utf8_is_read_lossily() -> None:
    without = InspectedMessage.of(QUEUE, Message(ID, "s", "r", 1, ARRIVAL, 3))
    assert message_entry(without, scheduled=False)["message"]["data"] is None
    broken = InspectedMessage.of(QUEUE, Message(ID, "s", "r", 1, ARRIVAL, 3), b"a\xff\xfeb\xc3")
    assert message_entry(broken, scheduled=False)["message"]["data"] == "a\ufffd\ufffdb\ufffd"


def test_queue_config_keys_are_sorted_durations_in_humantime() -> None:
    assert queue_config_entry(QueueConfig()) == {
        "egress_pool": None,
        "max_age": "7days",
        "max_message_rate": None,
        "max_retry_interval": None,
        "protocol": {"smtp": {"mx_list": []}},
        "provider_name": None,
        "retry_interval": "20m",
    }
    config = QueueConfig(
        RetryPolicy(
            retry_interval=90 * NANOS_PER_SECOND,
            max_retry_interval=30 * NANOS_PER_MINUTE,
            max_age=NANOS_PER_MINUTE * 60 * 25,
        ),
        mx_list=("mx1.example.net", "[192.0.2.1]:2525"),
    )
    entry = queue_config_entry(config)
    assert list(entry) == sorted(entry)
    assert (entry["retry_interval"], entry["max_retry_interval"], entry["max_age"]) == (
        "1m 30s",
        "30m",
        "1day 1h",
    )
    assert entry["protocol"] == {"smtp": {"mx_list": ["mx1.example.net", "[192.0.2.1]:2525"]}}


def test_a_queue_as_kumomta_shows_it() -> None:
    queue = InspectedQueue(QUEUE, (MESSAGE,), 7, last_changed=ARRIVAL, now=ARRIVAL + SECOND)
    entry = queue_entry(queue, QueueConfig())
    assert list(entry) == [
        "queue_name",
        "messages",
        "num_scheduled",
        "queue_config",
        "delayed_metric",
        "now",
        "last_changed",
    ]
    assert entry["queue_name"] == QUEUE
    assert entry["messages"] == [message_entry(MESSAGE, scheduled=True)]
    assert (entry["num_scheduled"], entry["delayed_metric"]) == (7, 7)
    assert entry["queue_config"] == queue_config_entry(QueueConfig())
    assert (entry["now"], entry["last_changed"]) == (
        "2026-01-01T00:00:01.123Z",
        "2026-01-01T00:00:00.123Z",
    )


# -- over the app ------------------------------------------------------------------------


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def client(engine: FakeEngine) -> Client:
    engine.messages[ID] = MESSAGE
    engine.queues[QUEUE] = InspectedQueue(QUEUE, (MESSAGE,), 1, ARRIVAL, ARRIVAL)
    configs = {QUEUE: QueueConfig(mx_list=("mx.example.net",))}
    return create_app(
        engine,
        access=AccessPolicy(trusted_hosts=(parse_network("127.0.0.1"),)),
        queue_configs=configs.__getitem__,
    ).test_client()


async def test_inspect_message_over_http(client: Client, engine: FakeEngine) -> None:
    status, content_type, text = await call(client, "GET", f"{INSPECT_MESSAGE_PATH}?id={ID}")
    assert (status, content_type) == (200, "application/json")
    assert orjson.loads(text) == message_entry(
        InspectedMessage.of(QUEUE, Message(ID, MESSAGE.sender, MESSAGE.recipient, 42, ARRIVAL, 3)),
        scheduled=False,
    )
    hyphenated = "D7EF132B-5D77-11EE-A8C8-000C29C33806"
    status, _, text = await call(
        client, "GET", f"{INSPECT_MESSAGE_PATH}?id={hyphenated}&want_body=true"
    )
    assert (status, orjson.loads(text)) == (200, message_entry(MESSAGE, scheduled=False))
    assert [call_[1] for call_ in engine.calls] == [(ID, False), (ID, True)]


async def test_inspect_sched_q_over_http(client: Client, engine: FakeEngine) -> None:
    path = f"{INSPECT_QUEUE_PATH}?queue_name=spring%3Aacme%40example.com&limit=5&want_body=true"
    status, _, text = await call(client, "GET", path)
    assert status == 200
    reply = orjson.loads(text)
    assert reply["queue_name"] == QUEUE
    assert reply["queue_config"]["protocol"] == {"smtp": {"mx_list": ["mx.example.net"]}}
    assert engine.calls == [("inspect_queue", (QUEUE, True, 5), "")]
    await call(client, "GET", f"{INSPECT_QUEUE_PATH}?queue_name={QUEUE}")
    assert engine.calls[-1] == ("inspect_queue", (QUEUE, False, None), "")


@pytest.mark.parametrize(
    ("path", "text"),
    [
        (f"{INSPECT_MESSAGE_PATH}?id={'0' * 32}", f"Error: no such message {'0' * 32}"),
        (f"{INSPECT_QUEUE_PATH}?queue_name=nope.example", "Error: no such queue nope.example"),
    ],
)
async def test_what_kumo_does_not_hold_is_404(client: Client, path: str, text: str) -> None:
    assert await call(client, "GET", path) == (404, "text/plain; charset=utf-8", text)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        (INSPECT_MESSAGE_PATH, "missing field `id`"),
        (f"{INSPECT_MESSAGE_PATH}?id=1&id=2", "duplicate field `id`"),
        (
            f"{INSPECT_MESSAGE_PATH}?id=nope",
            "id: invalid character: expected an optional prefix of `urn:uuid:` followed by "
            "[0-9a-fA-F-], found `n` at 1",
        ),
        (
            f"{INSPECT_MESSAGE_PATH}?id={ID}&want_body=yes",
            "want_body: provided string was not `true` or `false`",
        ),
        (INSPECT_QUEUE_PATH, "missing field `queue_name`"),
        (f"{INSPECT_QUEUE_PATH}?queue_name=q&limit=-5", "limit: invalid digit found in string"),
    ],
)
async def test_a_bad_query_is_400_and_reaches_no_engine(
    client: Client, engine: FakeEngine, path: str, why: str
) -> None:
    assert await call(client, "GET", path) == (400, "text/plain; charset=utf-8", QUERY_PREFIX + why)
    assert engine.calls == []


@pytest.mark.parametrize(
    "path", [f"{INSPECT_MESSAGE_PATH}?id={ID}", f"{INSPECT_QUEUE_PATH}?queue_name={QUEUE}"]
)
async def test_only_trusted_or_authenticated_peers_may_inspect(
    client: Client, engine: FakeEngine, path: str
) -> None:
    status, _, text = await call(client, "GET", path, scope=UNTRUSTED)
    assert status == 401
    assert text.startswith("Missing Authorization header: 192.0.2.7 is not a trusted host")
    assert engine.calls == []


@pytest.mark.parametrize("path", [INSPECT_MESSAGE_PATH, INSPECT_QUEUE_PATH])
async def test_inspection_is_get_only(client: Client, path: str) -> None:
    status, _, _ = await call(client, "POST", path, body=b"{}")
    assert status == 405


async def test_a_closing_engine_is_503(client: Client, engine: FakeEngine) -> None:
    engine.closed = True
    assert await call(client, "GET", f"{INSPECT_MESSAGE_PATH}?id={ID}") == (
        503,
        "text/plain; charset=utf-8",
        "kumo is shutting down; retry later",
    )
    engine.closed, engine.refusal = False, EngineClosedError("kumo is shutting down")
    status, _, _ = await call(client, "GET", f"{INSPECT_QUEUE_PATH}?queue_name={QUEUE}")
    assert status == 503

"""The Reception, AdminBounce and Rejection records (docs/operations.md, "The delivery
log")."""

from __future__ import annotations

import attrs
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.events import (
    Attempt,
    Bounced,
    Delivered,
    Expired,
    Message,
    MessageReceived,
    PeerAddress,
    PermanentlyFailed,
    Rebound,
    Rejected,
    Suspended,
    TransientlyFailed,
)
from kumo.model.log_record import (
    admin_bounce_lines,
    admin_bounce_record,
    admin_rebind_lines,
    admin_rebind_records,
    bounce_content,
    outcome_line,
    reception_line,
    reception_lines,
    reception_record,
    record_position,
    rejection_line,
)

NODE = "6f1c2a34-0000-4000-8000-000000000001"
KEYS = [
    "type", "id", "sender", "recipient", "queue", "site", "size", "response", "peer_address",
    "timestamp", "event_time", "created", "created_time", "num_attempts",
    "bounce_classification", "egress_pool", "egress_source", "source_address",
    "feedback_report", "meta", "headers", "delivery_protocol", "reception_protocol", "nodeid",
]  # fmt: skip


def test_admin_bounce_record_has_the_spec_shape() -> None:
    message = Message("ab" * 16, "s@x.org", "r@y.com", 1234, 1_700_000_000_500_000_000, 7)
    record = admin_bounce_record(
        message, queue="y.com", reason="bad\nlist", bounced_at=1_700_000_100_000_000_000,
        node_id=NODE,
    )  # fmt: skip
    assert list(record) == KEYS
    assert record["response"] == {
        "code": 551,
        "enhanced_code": {"class": 5, "subject": 7, "detail": 1},
        "content": "Administrator bounced with reason: bad list",
        "command": None,
    }
    assert record["timestamp"] == 1_700_000_100
    assert record["event_time"] == "2023-11-14T22:15:00Z"
    assert record["created"] == 1_700_000_000
    assert record["created_time"] == "2023-11-14T22:13:20.500Z"
    assert (record["site"], record["num_attempts"], record["meta"]) == ("localhost", 0, {})


def test_reception_record() -> None:
    event = MessageReceived("cd" * 16, "q", "s@x", "r@y", 10)
    record = orjson.loads(reception_line(event, received_at=1_000_000_001, node_id=NODE))
    assert list(record) == KEYS
    assert record["type"] == "Reception"
    assert record["site"] == ""
    assert record["response"] == {
        "code": 250,
        "enhanced_code": None,
        "content": "",
        "command": None,
    }
    assert record["event_time"] == "1970-01-01T00:00:01.000000001Z"


def test_reception_record_of_a_message_received_over_smtp() -> None:
    peer = PeerAddress("client.example", "10.0.0.5")
    event = MessageReceived("cd" * 16, "q", "s@x", "r@y", 10, "ESMTP", peer)
    record = orjson.loads(reception_line(event, received_at=1_000_000_001, node_id=NODE))
    assert list(record) == KEYS
    assert record["peer_address"] == {"name": "client.example", "addr": "10.0.0.5"}
    assert record["reception_protocol"] == "ESMTP"


def test_rejection_record_has_the_reference_shape() -> None:
    """Reference 4.5: no message, the last accepted recipient, the command without CRLF."""
    event = Rejected(
        code=550,
        text="5.7.1 relaying not permitted for 10.0.0.5:51234",
        command="RCPT TO:<c@d.example>",
        sender="a@b.example",
        recipient="first@d.example",
        peer=PeerAddress("client.example", "10.0.0.5"),
    )
    record = orjson.loads(
        rejection_line(event, rejected_at=1_700_000_100_000_000_000, node_id=NODE)
    )
    assert list(record) == KEYS
    assert record == record | {
        "type": "Rejection",
        "id": "",
        "sender": "a@b.example",
        "recipient": "first@d.example",
        "queue": "",
        "site": "",
        "size": 0,
        "response": {
            "code": 550,
            "enhanced_code": {"class": 5, "subject": 7, "detail": 1},
            "content": "relaying not permitted for 10.0.0.5:51234",
            "command": "RCPT TO:<c@d.example>",
        },
        "peer_address": {"name": "client.example", "addr": "10.0.0.5"},
        "timestamp": 1_700_000_100,
        "created": 1_700_000_100,
        "num_attempts": 0,
        "bounce_classification": "Uncategorized",
        "reception_protocol": None,
        "delivery_protocol": None,
        "nodeid": NODE,
    }
    plain = Rejected(501, "Syntax error\nsecond line", None, "", "", PeerAddress("", "::1"))
    response = orjson.loads(rejection_line(plain, rejected_at=0, node_id=NODE))["response"]
    assert response == {
        "code": 501,
        "enhanced_code": None,
        "content": "Syntax error second line",
        "command": None,
    }


def test_line_breaks_in_the_reason_become_single_spaces() -> None:
    assert bounce_content("a\r\nb\nc\rd\r\n\r\ne") == (
        "Administrator bounced with reason: a b c d  e"
    )


text = st.text(max_size=15)
# Few senders and times, so that runs of equal ones (what the encoder shares) are common.
messages = st.builds(
    Message,
    text,
    st.sampled_from(["s@x.example", "t@y.example"]) | text,
    text,
    st.integers(0, 10**7),
    st.sampled_from([5, 10**18]) | st.integers(0, 2**62),
    st.integers(1, 99),
    # Runs of one protocol, and changes between them.
    st.sampled_from(["HTTP", "ESMTP"]) | text,
)


@given(st.lists(messages, min_size=1, max_size=8), text, text, st.integers(0, 2**62))
def test_fast_lines_equal_the_plain_records(
    batch: list[Message], queue: str, reason: str, bounced_at: int
) -> None:
    lines = admin_bounce_lines(
        tuple(batch), queue=queue, reason=reason, bounced_at=bounced_at, node_id=NODE
    )
    expected = [
        orjson.dumps(
            admin_bounce_record(m, queue=queue, reason=reason, bounced_at=bounced_at, node_id=NODE)
        )
        + b"\n"
        for m in batch
    ]
    assert lines == expected


received_events = st.builds(
    MessageReceived,
    st.binary(min_size=16, max_size=16).map(bytes.hex),
    st.sampled_from(["q", "camp:t@d.example"]) | text,
    st.sampled_from(["s@x.example"]) | text,
    text,
    st.integers(0, 10**7),
    st.sampled_from(["HTTP", "ESMTP"]) | text,
    # Runs of one peer (what the encoder shares), and changes between them.
    st.none()
    | st.sampled_from([PeerAddress("c.example", "127.0.0.1")])
    | st.builds(PeerAddress, text, text),
)


@given(st.lists(received_events, max_size=8), st.integers(0, 2**62), text)
def test_fast_reception_lines_equal_the_plain_records(
    batch: list[MessageReceived], received_at: int, node_id: str
) -> None:
    assert reception_lines(batch, received_at=received_at, node_id=node_id) == [
        reception_line(event, received_at=received_at, node_id=node_id) for event in batch
    ]


def test_a_records_position_among_its_events_records() -> None:
    mids = [f"{n:032x}" for n in range(3)]
    received = MessageReceived(mids[0], "q", "s@x", "r@x", 5)
    messages = [Message(mid, "s@x", "r@x", 5, 1, 1) for mid in mids]
    bounced = Bounced("rule", "q", messages)

    assert record_position(received, "Reception", mids[0], suppressed=False) == 0
    assert record_position(received, "Reception", mids[1], suppressed=False) is None
    assert record_position(received, "AdminBounce", mids[0], suppressed=False) is None
    assert record_position(bounced, "AdminBounce", mids[2], suppressed=False) == 2
    assert record_position(bounced, "AdminBounce", mids[2], suppressed=True) is None
    assert record_position(bounced, "Reception", mids[2], suppressed=False) is None


def test_an_admin_rebind_record_per_moved_message_unless_suppressed() -> None:
    moved = [
        Message("0" * 32, "s@x.org", "a@example.com", 25, 1_000_000_000, 1),
        Message("1" * 32, "s@x.org", "b@example.com", 30, 2_000_000_000, 2),
    ]
    event = Rebound("b", "example.com", "example.com!relay", moved, [1, 0], "line\nbreak")
    first, second = admin_rebind_records(event, at=5_000_000_000, node_id=NODE)
    assert list(first) == list(
        reception_record(MessageReceived("0" * 32, "q", "s", "r", 1), received_at=0, node_id=NODE)
    )
    assert {k: first[k] for k in ("type", "id", "queue", "site", "num_attempts", "timestamp")} == {
        "type": "AdminRebind",
        "id": "0" * 32,
        "queue": "example.com!relay",
        "site": "",
        "num_attempts": 1,
        "timestamp": 5,
    }
    assert first["response"] == {
        "code": 250,
        "enhanced_code": None,
        "content": "Rebound from example.com to example.com!relay: line break",
        "command": None,
    }
    assert (first["created"], first["peer_address"], first["egress_pool"]) == (1, None, None)
    assert (second["id"], second["num_attempts"], second["size"]) == ("1" * 32, 0, 30)
    assert admin_rebind_lines(event, at=5_000_000_000, node_id=NODE) == [
        orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE) for record in (first, second)
    ]
    quiet = attrs.evolve(event, suppress_logging=True)
    assert admin_rebind_records(quiet, at=0, node_id=NODE) == []


SENT = Attempt(
    "unspecified->mx.example.com@smtp_client",
    250,
    (2, 0, 0),
    "OK",
    ".\r\n",
    PeerAddress("mx.example.com", "127.0.0.1"),
    "127.0.0.1:40000",
    protocol="ESMTP",
)
REFUSED = attrs.evolve(SENT, code=550, enhanced_code=(5, 1, 1), content="no such user")
DEFERRED = attrs.evolve(SENT, code=451, enhanced_code=(4, 7, 1), content="try later")


def _lines_of(message: Message) -> dict[str, list[bytes]]:
    """Record type -> the lines kumo writes for ``message`` in each of its events."""
    at = 5_000_000_000
    queue = "example.com"
    return {
        "AdminBounce": [
            orjson.dumps(
                admin_bounce_record(message, queue=queue, reason="r", bounced_at=at, node_id=NODE)
            )
            + b"\n",
            *admin_bounce_lines([message], queue=queue, reason="r", bounced_at=at, node_id=NODE),
        ],
        "AdminRebind": admin_rebind_lines(
            Rebound("b", queue, "example.com!relay", [message], [1], "why"), at=at, node_id=NODE
        ),
        "Delivery": [outcome_line(Delivered(queue, message, 0, SENT), at=at, node_id=NODE)],
        "Bounce": [
            outcome_line(PermanentlyFailed(queue, message, 1, REFUSED), at=at, node_id=NODE)
        ],
        "TransientFailure": [
            outcome_line(TransientlyFailed(queue, message, 0, DEFERRED, at), at=at, node_id=NODE),
            outcome_line(
                Suspended(rule_id="s", queue=queue, message=message, attempts=0, reason="why"),
                at=at,
                node_id=NODE,
            ),
        ],
        "Expiration": [
            outcome_line(
                Expired(queue, message, 4, "Next delivery time would be ..."), at=at, node_id=NODE
            )
        ],
    }


@pytest.mark.parametrize("protocol", ["ESMTP", "HTTP"])
@pytest.mark.parametrize(
    "kind",
    ["AdminBounce", "AdminRebind", "Delivery", "Bounce", "TransientFailure", "Expiration"],
)
def test_every_record_of_a_message_says_how_it_came_in(kind: str, protocol: str) -> None:
    """KumoMTA keeps the reception protocol in the message's meta: every record of a
    message received over SMTP says ``ESMTP``, of one injected over HTTP ``HTTP``."""
    message = Message("ab" * 16, "s@x.org", "r@example.com", 12, 1_000_000_000, 3, protocol)
    lines = _lines_of(message)[kind]
    assert lines
    for line in lines:
        record = orjson.loads(line)
        assert list(record)[: len(KEYS)] == KEYS
        assert record["type"] == kind
        assert record["reception_protocol"] == protocol
    if kind == "AdminBounce":
        assert lines[0] == lines[1]


def test_a_message_built_without_a_protocol_was_injected_over_http() -> None:
    message = Message("ab" * 16, "s@x.org", "r@example.com", 12, 1_000_000_000, 3)
    assert message.protocol == "HTTP"
    record = admin_bounce_record(message, queue="q", reason="r", bounced_at=0, node_id=NODE)
    assert record["reception_protocol"] == "HTTP"

"""What inspection shows: a message's metadata, its schedule before the mail path."""

from __future__ import annotations

import pytest

from kumo.model.inspection import InspectedMessage, Schedule, message_meta, schedule
from kumo.model.message import Message

MESSAGE = Message("ab" * 16, "s@x.example", "r@y.example", 120, 1_767_225_600_123_000_000, 7)


def test_a_message_is_due_from_its_arrival_with_no_attempt_yet() -> None:
    assert schedule(MESSAGE) == Schedule(due=MESSAGE.received_at, num_attempts=0)


@pytest.mark.parametrize(
    ("queue", "meta"),
    [
        ("example.com", {}),
        ("acme@example.com", {"tenant": "acme"}),
        ("spring:acme@example.com", {"campaign": "spring", "tenant": "acme"}),
        ("spring:@example.com", {"campaign": "spring"}),
        (
            "spring:acme@example.com!relay.example",
            {"campaign": "spring", "routing_domain": "relay.example", "tenant": "acme"},
        ),
        ("example.com!relay.example", {"routing_domain": "relay.example"}),
    ],
)
def test_the_metadata_is_what_names_the_queue_in_sorted_order(
    queue: str, meta: dict[str, str]
) -> None:
    got = message_meta(queue)
    assert got == meta
    assert list(got) == sorted(got)


def test_an_inspected_message_carries_its_queue_schedule_and_body() -> None:
    inspected = InspectedMessage.of("q.example", MESSAGE, b"Subject: x\r\n\r\n")
    assert (inspected.id, inspected.queue, inspected.sender, inspected.recipient) == (
        MESSAGE.id,
        "q.example",
        MESSAGE.sender,
        MESSAGE.recipient,
    )
    assert inspected.schedule == schedule(MESSAGE)
    assert inspected.body == b"Subject: x\r\n\r\n"
    assert InspectedMessage.of("q.example", MESSAGE).body is None

"""Inspection through a real engine: a message found by its id in the one queue that
holds it, a queue's first messages, the content from the spool, across a sweep and a
restart, and what was committed before the call always seen."""

from __future__ import annotations

from pathlib import Path

import pytest

from kumo.model.message_queue import MessageQueue
from kumo.model.rfc3339 import format_rfc3339
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import EngineClosedError, open_engine
from kumo.runtime.log_writer import BODIES_PER_READ
from tests.runtime.harness import WALL_ORIGIN, bounce, log_records, message

SPRING = "spring:acme@example.com"


def body(n: int) -> bytes:
    return f"Subject: {n}\r\n\r\nmessage {n}\r\n".encode()


async def test_a_message_is_found_by_its_id_with_its_content_on_demand(tmp_path: Path) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        spring = await engine.inject(
            [
                message(f"u{n}@example.com", campaign="spring", tenant="acme", body=body(n))
                for n in range(3)
            ]
        )
        [other] = await engine.inject([message("x@other.example", body=body(9))])
        # No wait: what was committed before the call is seen.
        found = await engine.inspect_message(spring[1], want_body=False)
        assert found is not None
        assert (found.id, found.queue, found.sender, found.recipient, found.body) == (
            spring[1],
            SPRING,
            "sender@example.org",
            "u1@example.com",
            None,
        )
        assert found.schedule.num_attempts == 0
        due = found.schedule.due
        with_body = await engine.inspect_message(other, want_body=True)
        assert with_body is not None
        assert (with_body.queue, with_body.body) == ("other.example", body(9))
        assert await engine.inspect_message("0" * 32, want_body=True) is None
        assert await engine.inspect_message("not a spool id", want_body=False) is None
    # Due at its arrival: the time its Reception record was created.
    created = {r["id"]: r["created_time"] for r in log_records(tmp_path)}
    assert created[spring[1]] == format_rfc3339(due)


async def test_the_message_is_looked_for_in_its_own_queue_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        ids = await engine.inject([message(f"u@d{n}.example") for n in range(50)])
        await engine.wait_idle()
        asked: list[MessageQueue] = []
        find = MessageQueue.find

        def spy(queue: MessageQueue, message_id: str) -> object:
            asked.append(queue)
            return find(queue, message_id)

        monkeypatch.setattr(MessageQueue, "find", spy)
        found = await engine.inspect_message(ids[37], want_body=False)
        assert found is not None
        assert found.queue == "d37.example"
        assert len(asked) == 1


async def test_a_queue_shows_its_first_messages_and_its_counts(tmp_path: Path) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        ids = await engine.inject(
            [
                message(f"u{n}@example.com", campaign="spring", tenant="acme", body=body(n))
                for n in range(4)
            ]
        )
        queue = await engine.inspect_queue(SPRING, want_body=False, limit=2)
        assert queue is not None
        assert [m.id for m in queue.messages] == ids[:2]
        assert all(m.body is None for m in queue.messages)
        assert queue.scheduled == 4
        assert queue.last_changed == queue.messages[-1].schedule.due
        assert queue.last_changed <= queue.now <= engine.now()
        everything = await engine.inspect_queue(SPRING, want_body=True, limit=None)
        assert everything is not None
        assert [(m.id, m.body) for m in everything.messages] == [
            (message_id, body(n)) for n, message_id in enumerate(ids)
        ]
        none = await engine.inspect_queue(SPRING, want_body=True, limit=0)
        assert none is not None
        assert (none.messages, none.scheduled) == ((), 4)
        assert await engine.inspect_queue("nope.example", want_body=False, limit=5) is None


async def test_contents_are_read_in_several_trips_when_many(tmp_path: Path) -> None:
    count = 2 * BODIES_PER_READ + 3
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        ids = await engine.inject(
            [message(f"u{n}@example.com", body=body(n)) for n in range(count)]
        )
        queue = await engine.inspect_queue("example.com", want_body=True, limit=None)
        assert queue is not None
        assert [(m.id, m.body) for m in queue.messages] == [
            (message_id, body(n)) for n, message_id in enumerate(ids)
        ]


async def test_a_swept_queue_is_known_and_empty_and_its_messages_are_gone(tmp_path: Path) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        ids = await engine.inject([message(f"u{n}@example.com") for n in range(5)])
        await engine.wait_idle()
        await engine.issue_bounce(bounce(domain="example.com"), issued_by="tester")
        await engine.wait_idle()
        for message_id in ids:
            assert await engine.inspect_message(message_id, want_body=True) is None
        queue = await engine.inspect_queue("example.com", want_body=False, limit=None)
        assert queue is not None
        assert (queue.messages, queue.scheduled) == ((), 0)
        # The sweep emptied the queue: its entries died with it, none is named any more.
        locations = engine._parts.projection.locations
        assert all(locations.queues_of(message_id) == [] for message_id in ids)
        # An arrival bounced at once by the live rule is not found either.
        [late] = await engine.inject([message("late@example.com")])
        await engine.wait_idle()
        assert await engine.inspect_message(late, want_body=False) is None


async def test_inspection_survives_a_restart(tmp_path: Path) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        ids = await engine.inject(
            [message(f"u{n}@example.com", tenant="acme", body=body(n)) for n in range(3)]
        )
        before = await engine.inspect_queue("acme@example.com", want_body=True, limit=None)
        await engine.wait_idle()
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        found = await engine.inspect_message(ids[2], want_body=True)
        assert found is not None
        assert (found.queue, found.body) == ("acme@example.com", body(2))
        after = await engine.inspect_queue("acme@example.com", want_body=True, limit=None)
        assert before is not None
        assert after is not None
        assert after.messages == before.messages
        # The last arrival is the newest message's, not the restart's.
        assert after.last_changed == before.last_changed
        assert await engine.inspect_queue("example.com", want_body=False, limit=None) is None


async def test_a_closing_engine_refuses_inspection(tmp_path: Path) -> None:
    async with open_engine(tmp_path, clock=EngineClock(WALL_ORIGIN)) as engine:
        [message_id] = await engine.inject([message("u@example.com")])
        engine.close()
        with pytest.raises(EngineClosedError):
            await engine.inspect_message(message_id, want_body=False)
        with pytest.raises(EngineClosedError):
            await engine.inspect_queue("example.com", want_body=False, limit=None)

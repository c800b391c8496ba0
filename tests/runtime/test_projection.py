"""The projection: where messages are, and when their queues last had one arrive."""

from __future__ import annotations

import hashlib

import trio

from kumo.model.events import Bounced, Committed, Message, MessageReceived
from kumo.model.message_queue import MessageQueue
from kumo.model.state import State
from kumo.runtime.projection import INDEX_CHUNK, Projection


def spool_id(n: int) -> str:
    return hashlib.md5(str(n).encode()).hexdigest()


def received(seq: int, time: int, queue: str) -> Committed:
    return Committed(seq, time, MessageReceived(spool_id(seq), queue, "s@x", f"r{seq}@y", 1))


def as_message(committed: Committed) -> Message:
    event = committed.event
    assert isinstance(event, MessageReceived)
    return Message(
        event.message_id, event.sender, event.recipient, 1, committed.time, committed.seq
    )


async def test_arrivals_are_located_and_a_queue_emptied_forgets_them() -> None:
    projection = Projection(State(keep_messages=False))
    first, second = received(1, 100, "a.example"), received(2, 200, "a.example")
    other = received(3, 300, "b.example")
    projection.apply([first, second, other])
    assert await projection.locate(spool_id(1)) == ["a.example"]
    assert await projection.locate(spool_id(3)) == ["b.example"]
    assert projection.arrivals == {"a.example": 200, "b.example": 300}
    # A bounce that leaves the queue holding a message: the entries stay (a hint).
    projection.apply([Committed(4, 400, Bounced("r", "a.example", [as_message(first)]))])
    assert await projection.locate(spool_id(2)) == ["a.example"]
    # The queue is empty: all its entries die at once.
    projection.apply([Committed(5, 500, Bounced("r", "a.example", [as_message(second)]))])
    assert await projection.locate(spool_id(1)) == []
    assert await projection.locate(spool_id(2)) == []
    assert await projection.locate(spool_id(3)) == ["b.example"]
    assert projection.arrivals["a.example"] == 200


async def test_what_the_queues_held_at_start_is_indexed_when_first_asked() -> None:
    count = 2 * INDEX_CHUNK + 5
    held = MessageQueue(as_message(received(seq, seq * 10, "big.example")) for seq in range(count))
    small = MessageQueue([as_message(received(count, 7, "small.example"))])
    projection = Projection(
        State(keep_messages=False), {"big.example": held, "small.example": small}
    )
    assert projection.arrivals == {"big.example": (count - 1) * 10, "small.example": 7}
    assert len(projection.locations) == 0  # a start pays nothing for it

    # Cancelled while it indexes: the next call still finds every message.
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(projection.locate, spool_id(0))
            while len(projection.locations) == 0:  # until a first chunk is indexed
                await trio.lowlevel.checkpoint()
            scope.cancel()
    assert 0 < len(projection.locations) < count
    for seq in range(count + 1):
        assert await projection.locate(spool_id(seq)) in (["big.example"], ["small.example"])
    assert await projection.locate(spool_id(count + 1)) == []


async def test_callers_wait_for_the_indexing_under_way() -> None:
    count = 3 * INDEX_CHUNK
    held = MessageQueue(as_message(received(seq, seq, "q.example")) for seq in range(count))
    projection = Projection(State(keep_messages=False), {"q.example": held})
    found: list[list[str]] = []

    async def locate(seq: int) -> None:
        found.append(await projection.locate(spool_id(seq)))

    async with trio.open_nursery() as nursery:
        for seq in (count - 1, 0, count // 2):
            nursery.start_soon(locate, seq)
    assert found == [["q.example"]] * 3

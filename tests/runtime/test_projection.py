"""The projection: where messages are, and when their queues last had one arrive."""

from __future__ import annotations

import hashlib

import trio
from hypothesis import example, given
from hypothesis import strategies as st

from kumo.model.criteria import Criteria
from kumo.model.dry_run import messages_matching
from kumo.model.events import (
    Attempt,
    BounceCancelled,
    Bounced,
    BounceIssued,
    Committed,
    Delivered,
    Event,
    Message,
    MessageReceived,
    Rebound,
)
from kumo.model.message_queue import MessageQueue
from kumo.model.state import State
from kumo.runtime.projection import INDEX_CHUNK, Projection

QUEUES = ["a.example", "c1:t@a.example", "c2@b.example", "t@c.example", "d.example"]
SENT = Attempt("unspecified->mx.example@smtp_client", 250, (2, 0, 0), "ok", ".\r\n")
CRITERIA = [
    Criteria(),
    Criteria(domain="a.example"),
    Criteria(campaign="c1"),
    Criteria(tenant="t"),
    Criteria(queue_names=("d.example", "c2@b.example")),
]


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


QUEUE = st.sampled_from([*QUEUES, "new.example"])


@example(  # a rebind into a queue already counted, and one into a queue new to the index
    steps=[
        ("receive", "a.example"),
        ("receive", "d.example"),
        ("pending", None),
        ("rebind", ("a.example", "d.example")),
        ("pending", None),
        ("rebind", ("d.example", "new.example")),
        ("fold", None),
        ("receive", "d.example"),
        ("pending", None),
    ]
)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("receive"), QUEUE),
            st.tuples(st.just("bounce"), QUEUE),
            st.tuples(st.just("deliver"), QUEUE),
            st.tuples(st.just("rebind"), st.tuples(QUEUE, QUEUE)),
            st.tuples(st.just("issue"), st.sampled_from(CRITERIA)),
            st.tuples(st.just("cancel"), st.sampled_from(CRITERIA)),
            st.tuples(st.just("pending"), st.none()),
            st.tuples(st.just("fold"), st.none()),
        ),
        max_size=60,
    )
)
def test_pending_is_the_messages_held_in_the_queues_matched(
    steps: list[tuple[str, object]],
) -> None:
    """However queues appear, fill, empty and move, rules come and go, and events are
    folded one by one or several at once, the pending kept up to date gives what
    matching every queue again gives (the model's definition)."""
    projection = Projection(State(keep_messages=False))
    held: dict[str, list[Message]] = {}
    batch: list[Committed] = []
    seq = 0

    def commit(event: Event) -> None:
        nonlocal seq
        seq += 1
        batch.append(Committed(seq, seq, event))

    def fold() -> None:
        projection.apply(batch)
        batch.clear()

    for kind, arg in steps:
        if kind == "receive":
            assert isinstance(arg, str)
            event = MessageReceived(spool_id(seq + 1), arg, "s@x", f"r{seq + 1}@y", 1)
            commit(event)
            held.setdefault(arg, []).append(Message(event.message_id, "s@x", "r@y", 1, seq, seq))
        elif kind in ("bounce", "deliver"):
            assert isinstance(arg, str)
            if held.get(arg):
                message = held[arg].pop()
                if kind == "bounce":
                    commit(Bounced(f"rule-{arg}", arg, [message]))
                else:
                    commit(Delivered(arg, message, 0, SENT))
        elif kind == "rebind":
            assert isinstance(arg, tuple)
            source, target = arg
            if source != target and held.get(source):
                moved = held.pop(source)
                held.setdefault(target, []).extend(moved)
                commit(Rebound("b", source, target, moved, [0] * len(moved), "why"))
        elif kind == "issue":
            assert isinstance(arg, Criteria)
            commit(BounceIssued(f"rule-{arg}", arg, "why", 10**18))
        elif kind == "cancel":
            commit(BounceCancelled(f"rule-{arg}"))
        elif kind == "fold":
            fold()
        else:
            fold()
            for criteria in CRITERIA:
                expected = messages_matching(
                    criteria, projection.queue_index, projection.state.queue_counts
                )
                assert projection.pending(criteria) == expected
    fold()
    for criteria in CRITERIA:
        assert projection.pending(criteria) == sum(
            len(held.get(q, [])) for q in [*QUEUES, "new.example"] if criteria.matches(q)
        )


def test_pending_forgets_the_matches_of_rules_that_ended() -> None:
    projection = Projection(State(keep_messages=False))
    projection.apply([received(1, 1, "a.example")])
    for n in range(500):
        projection.pending(Criteria(domain=f"gone-{n}.example"))  # no live rule: forgotten
    live = Criteria(domain="a.example")
    projection.apply([Committed(2, 2, BounceIssued("live", live, "why", 10**18))])
    assert projection.pending(live) == 1
    assert len(projection._pending) < 200
    assert live in projection._pending

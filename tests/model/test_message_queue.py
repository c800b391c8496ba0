"""Column-wise queued messages: what goes in comes out, in order."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.events import Message
from kumo.model.message_queue import MessageBatch, MessageQueue, QueueColumns

hex_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)
any_ids = st.one_of(hex_ids, st.text(max_size=40))
messages = st.builds(
    Message,
    any_ids,
    st.sampled_from(["s@x.example", "t@y.example"]) | st.text(max_size=10),
    st.text(st.characters() | st.characters(categories=["Cs"]), max_size=10),
    st.integers(0, 2**62),
    st.integers(0, 2**62),
    st.integers(1, 2**62),
    # Mostly HTTP, as queues are; any other string is kept as well.
    st.sampled_from(["HTTP", "HTTP", "ESMTP"]) | st.text(max_size=5),
)


def row(message: Message) -> tuple[object, ...]:
    """A message as :meth:`MessageQueue.rows` gives it: the protocol only when not HTTP."""
    return tuple(message) if message.protocol != "HTTP" else tuple(message)[:6]


@given(st.lists(messages, max_size=20))
def test_messages_round_trip_in_order(batch: list[Message]) -> None:
    queue = MessageQueue(batch)
    assert list(queue) == batch
    assert len(queue) == len(batch)
    assert bool(queue) == bool(batch)
    assert queue == batch
    assert queue.take_all() == tuple(batch)
    assert len(queue) == 0
    assert queue == []


@given(st.lists(messages, max_size=20), st.data())
def test_remove_keeps_the_others_in_order(batch: list[Message], data: st.DataObject) -> None:
    gone = {m.id for m in batch if data.draw(st.booleans())}
    queue = MessageQueue(batch)
    queue.remove(gone)
    assert list(queue) == [m for m in batch if m.id not in gone]


def test_ids_that_are_not_spool_ids_keep_their_spelling() -> None:
    spool = "0123456789abcdef0123456789abcdef"
    upper = spool.upper()
    queue = MessageQueue([Message(spool, "s", "r", 1, 2, 3)])
    queue.append(Message(upper, "s", "r", 1, 2, 4))
    queue.append(Message("m5", "s", "r", 1, 2, 5))
    assert [m.id for m in queue] == [spool, upper, "m5"]


def test_any_address_round_trips_even_a_lone_surrogate() -> None:
    odd = ["ü@bücher.example", "\ud800@x", "", "a\x00b@c", "x" * 70_000]
    batch = [Message(f"m{n}", odd[-1 - n], r, n, n, n + 1) for n, r in enumerate(odd)]
    assert list(MessageQueue(batch)) == batch


def test_senders_are_kept_once_and_come_back_in_place() -> None:
    batch = [Message(f"m{n}", "ab"[n % 3 == 0], "r", 1, 2, n + 1) for n in range(7)]
    queue = MessageQueue(batch)
    assert list(queue) == batch
    assert [sender for sender, _ in sorted(queue._senders.items(), key=lambda kv: kv[1])] == [
        "b",
        "a",
    ]


def test_a_recipient_with_a_nul_switches_to_lengths_and_keeps_the_others() -> None:
    batch = [
        Message(f"m{n}", "s", r, 1, 2, n + 1) for n, r in enumerate(["a@x", "", "b\x00@y", "c"])
    ]
    queue = MessageQueue(batch[:2])
    assert queue._lengths is None
    for message in batch[2:]:
        queue.append(message)
    assert queue._lengths is not None
    assert list(queue) == batch


@given(st.lists(messages, max_size=30), st.lists(st.integers(0, 12), max_size=6), st.data())
def test_take_in_chunks_yields_every_message_once_in_order(
    batch: list[Message], counts: list[int], data: st.DataObject
) -> None:
    queue = MessageQueue(batch)
    taken: list[Message] = []
    for count in counts:
        chunk = queue.take(count)
        assert len(chunk) == min(count, len(batch) - len(taken))
        taken.extend(chunk)
        assert list(queue) == batch[len(taken) :]
        # The queue goes on taking arrivals after a chunk left it.
        if data.draw(st.booleans()) and batch:
            queue.append(batch[0])
            batch.append(batch[0])
    taken.extend(queue.take_all())
    assert taken == batch
    assert not queue


@given(st.lists(messages, max_size=20), st.lists(messages, max_size=5))
def test_a_batch_is_an_immutable_sequence_of_its_messages(
    batch: list[Message], more: list[Message]
) -> None:
    messages_ = MessageBatch(batch)
    assert list(messages_) == batch
    assert len(messages_) == len(batch)
    assert messages_ == batch
    assert messages_ == tuple(batch)
    assert messages_ == MessageBatch(batch)
    assert hash(messages_) == hash(MessageBatch(batch))
    assert messages_.ids() == [m.id for m in batch]
    assert messages_.seqs() == [m.seq for m in batch]
    assert messages_.rows() == [row(m) for m in batch]
    assert list(messages_ + more) == batch + more
    assert list(messages_[1:3]) == batch[1:3]
    if batch:
        assert messages_[-1] == batch[-1]


def test_a_taken_batch_keeps_no_object_per_message_for_the_collector() -> None:
    queue = MessageQueue(Message(f"{n:032x}", "s@x", f"r{n}@y", 1, 2, n + 1) for n in range(1_000))
    before = len(gc.get_objects())
    batch = queue.take(600)
    rest = queue.take_all()
    assert len(gc.get_objects()) - before < 20
    assert len(batch) == 600
    assert len(rest) == 400


@given(st.lists(messages, max_size=20), st.lists(st.integers(0, 5), max_size=3))
def test_columns_round_trip_whatever_the_queue_went_through(
    batch: list[Message], takes: list[int]
) -> None:
    queue = MessageQueue(batch)
    for count in takes:
        queue.take(count)
    described, blobs = queue.columns()
    restored = MessageQueue.from_columns(described, blobs)
    assert list(restored) == list(queue)
    assert restored.columns() == (described, blobs)


def test_columns_that_do_not_fit_are_refused() -> None:
    queue = MessageQueue([Message(f"{n:032x}", "s@x", f"r{n}@a", 1, 2, n) for n in range(3)])
    described, blobs = queue.columns()
    with pytest.raises(ValueError, match="one id per message"):
        MessageQueue.from_columns(described, [blobs[0][:-1], *blobs[1:]])
    with pytest.raises(ValueError, match="one recipient per message"):
        MessageQueue.from_columns(described, [blobs[0], blobs[1] + b"x\x00", *blobs[2:]])
    with pytest.raises(ValueError, match="one value per message"):
        MessageQueue.from_columns(described, [*blobs[:-1], blobs[-1][:-8]])
    with pytest.raises(ValueError, match="sender index"):
        MessageQueue.from_columns(described._replace(senders=[]), blobs)
    with pytest.raises(ValueError, match="columns, expected"):
        MessageQueue.from_columns(described, blobs[:-1])


@given(st.lists(messages, max_size=20), st.integers(0, 25), st.integers(0, 5))
def test_head_copies_the_first_messages_and_leaves_the_queue(
    batch: list[Message], count: int, taken: int
) -> None:
    queue = MessageQueue(batch)
    queue.take(taken)
    rest = batch[taken:]
    assert queue.head(count) == rest[:count]
    assert list(queue) == rest
    # What head returned is a copy: taking afterwards still yields every message.
    assert list(queue.take_all()) == rest


@given(st.lists(messages, max_size=20, unique_by=lambda m: m.id), st.integers(0, 5), any_ids)
def test_find_returns_the_message_with_that_id_or_none(
    batch: list[Message], taken: int, other: str
) -> None:
    queue = MessageQueue(batch)
    queue.take(taken)
    for message in batch[taken:]:
        assert queue.find(message.id) == message
    for message in batch[:taken]:
        assert queue.find(message.id) is None
    if other not in {m.id for m in batch}:
        assert queue.find(other) is None


def test_find_never_matches_across_two_ids() -> None:
    first, second = "00" * 8 + "ab" * 8, "cd" * 8 + "11" * 8
    queue = MessageQueue([Message(first, "s", "r1", 1, 2, 1), Message(second, "s", "r2", 1, 2, 2)])
    straddling = "ab" * 8 + "cd" * 8  # the end of the first id, the start of the second
    assert queue.find(straddling) is None
    assert queue.find(second) == Message(second, "s", "r2", 1, 2, 2)


def test_last_received_at_is_the_newest_arrival() -> None:
    queue = MessageQueue()
    assert queue.last_received_at() is None
    queue.append(Message("a" * 32, "s", "r", 1, 10, 1))
    queue.append(Message("b" * 32, "s", "r", 1, 30, 2))
    assert queue.last_received_at() == 30
    queue.take(1)
    assert queue.last_received_at() == 30


def test_the_protocol_rides_on_the_sender_table() -> None:
    """An SMTP-received message costs no byte more than an injected one: its protocol is
    in the entry its sender index points at, once per (sender, protocol)."""
    batch = [
        Message(f"{n:032x}", "s@x", f"r{n}@y", 1, 2, n + 1, "ESMTP" if n % 2 else "HTTP")
        for n in range(6)
    ]
    queue = MessageQueue(batch)
    assert list(queue) == batch
    assert list(queue._senders) == ["s@x", ("s@x", "ESMTP")]
    assert [m.protocol for m in queue] == ["HTTP", "ESMTP"] * 3
    http_only = MessageQueue(m._replace(protocol="HTTP") for m in batch)
    for column in ("_raw", "_recipients", "_sender_index", "_sizes", "_times", "_seqs"):
        assert len(getattr(queue, column)) == len(getattr(http_only, column))
    assert queue.find(batch[3].id) == batch[3]
    assert queue.find(batch[2].id) == batch[2]
    assert queue.head(2) == batch[:2]
    assert queue.take(3) == tuple(batch[:3])
    assert list(queue) == batch[3:]


def test_rows_carry_the_protocol_only_when_it_is_not_http() -> None:
    """So that an event of injected messages encodes as it did before (7 fields only for
    the others)."""
    http = Message("a" * 32, "s", "r", 1, 2, 3)
    smtp = Message("b" * 32, "s", "r", 1, 2, 4, "ESMTP")
    assert MessageQueue([http]).rows() == [("a" * 32, "s", "r", 1, 2, 3)]
    assert MessageQueue([http, smtp]).rows() == [
        ("a" * 32, "s", "r", 1, 2, 3),
        ("b" * 32, "s", "r", 1, 2, 4, "ESMTP"),
    ]


def test_columns_of_an_http_queue_name_no_protocols_and_old_columns_read_as_http() -> None:
    """A snapshot written before queues kept the protocol has no ``protocols``: HTTP."""
    batch = [Message(f"{n:032x}", "s@x", f"r{n}@y", 1, 2, n + 1) for n in range(3)]
    described, blobs = MessageQueue(batch).columns()
    assert described.protocols is None
    old = QueueColumns(described.messages, described.raw_ids, described.lengths, ["s@x"])
    assert list(MessageQueue.from_columns(old, blobs)) == batch
    mixed = [*batch, batch[0]._replace(id="f" * 32, protocol="ESMTP", seq=9)]
    described, blobs = MessageQueue(mixed).columns()
    assert described.senders == ["s@x", "s@x"]
    assert described.protocols == ["HTTP", "ESMTP"]
    assert list(MessageQueue.from_columns(described, blobs)) == mixed


def test_protocols_that_do_not_fit_the_senders_are_refused() -> None:
    queue = MessageQueue([Message("a" * 32, "s", "r", 1, 2, 3, "ESMTP")])
    described, blobs = queue.columns()
    # A snapshot's header is JSON: its protocols may be anything.
    wrong: list[list[Any]] = [[], ["ESMTP", "HTTP"], [5]]
    for protocols in wrong:
        bad = described._replace(protocols=protocols)
        with pytest.raises(ValueError, match="protocols do not fit"):
            MessageQueue.from_columns(bad, blobs)
    twice = described._replace(senders=["s", "s"], protocols=["ESMTP", "ESMTP"])
    with pytest.raises(ValueError, match="listed twice"):
        MessageQueue.from_columns(twice, blobs)

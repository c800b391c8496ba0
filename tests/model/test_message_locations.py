"""The index of where messages are: it never loses a message, names only live queues,
and gives back the room of dead entries."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.message_locations import MessageLocations

QUEUES = ["a.example", "camp:t@b.example", "c.example!relay"]


def spool_id(bucket: int, middle: int, key: int) -> str:
    """An id whose first 12 bits are ``bucket``, then ``middle``, its last 8 bytes ``key``:
    a few values of each force shared buckets and shared keys."""
    return f"{bucket:03x}{middle:013x}{key:016x}"


def random_id(seed: int) -> str:
    """A spool id that looks random (spread over every bucket), the same every run."""
    return hashlib.md5(str(seed).encode()).hexdigest()


ids = st.builds(spool_id, st.integers(0, 2), st.integers(0, 3), st.integers(0, 40))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), ids, st.sampled_from(QUEUES)),
        st.tuples(st.just("retire"), st.just(""), st.sampled_from(QUEUES)),
        st.tuples(st.just("discard"), ids, st.sampled_from(QUEUES)),
    ),
    max_size=300,
)


def key_of(message_id: str) -> tuple[str, str]:
    """What the index tells ids apart by: their first 12 bits and their last 8 bytes."""
    return message_id[:3], message_id[-16:]


@given(operations)
def test_every_live_message_is_found_in_its_queue_and_no_dead_queue_is_named(
    steps: list[tuple[str, str, str]],
) -> None:
    locations = MessageLocations()
    live: dict[str, str] = {}
    """id -> its queue, for messages added and neither discarded nor retired."""
    for step, message_id, queue in steps:
        if step == "add" and message_id not in live:
            locations.add(message_id, queue)
            live[message_id] = queue
        elif step == "retire":
            locations.retire(queue)
            live = {m: q for m, q in live.items() if q != queue}
        elif step == "discard" and live.get(message_id) == queue:
            locations.discard(message_id, queue)
            del live[message_id]
    for message_id in {message_id for _, message_id, _ in steps if message_id}:
        found = locations.queues_of(message_id)
        assert len(found) == len(set(found))
        # Ids that share the bits the index keeps may name each other's queues: that is
        # the hint the caller checks. Nothing else is ever named.
        alike = {q for m, q in live.items() if key_of(m) == key_of(message_id)}
        assert set(found) == alike
        if message_id in live:
            assert live[message_id] in found


def test_distinct_ids_are_told_apart() -> None:
    locations = MessageLocations()
    locations.add("0" * 32, "a.example")
    locations.add("0" * 31 + "1", "b.example")
    assert locations.queues_of("0" * 32) == ["a.example"]
    assert locations.queues_of("0" * 31 + "1") == ["b.example"]
    assert locations.queues_of("0" * 31 + "2") == []


def test_a_match_across_two_entries_is_not_an_entry() -> None:
    locations = MessageLocations()
    # Two ids of one bucket: the bucket holds key1 slot1 key2 slot2. A key that equals
    # the end of one entry and the start of the next must not be found.
    first, second = "000" + "1" * 29, "000" + "2" * 29
    locations.add(first, "a.example")
    locations.add(second, "a.example")
    slot = (0).to_bytes(8, "little").hex()  # a.example's slot, the first made
    straddling = "000" + "0" * 13 + slot
    assert locations.queues_of(straddling) == []
    assert locations.queues_of(first) == ["a.example"]


def test_retiring_a_queue_forgets_its_messages_and_a_new_arrival_starts_afresh() -> None:
    locations = MessageLocations()
    locations.add("a" * 32, "q.example")
    locations.retire("q.example")
    assert locations.queues_of("a" * 32) == []
    locations.add("b" * 32, "q.example")
    assert locations.queues_of("b" * 32) == ["q.example"]
    assert locations.queues_of("a" * 32) == []
    locations.retire("never.example")  # nothing to retire: no error


def test_dead_entries_give_their_room_back_as_buckets_grow() -> None:
    locations = MessageLocations()
    many = [random_id(n) for n in range(20_000)]
    for message_id in many:
        locations.add(message_id, "old.example")
    assert len(locations) == 20_000
    locations.retire("old.example")
    fresh = [random_id(n + 1_000_000) for n in range(20_000)]
    for message_id in fresh:
        locations.add(message_id, "new.example")
    # Every bucket grew past its limit once more, and dropped the dead entries then.
    assert len(locations) <= 2 * 20_000
    assert all(locations.queues_of(message_id) == ["new.example"] for message_id in fresh)
    assert all(locations.queues_of(message_id) == [] for message_id in many)


def test_discard_drops_one_message_and_keeps_the_rest_of_its_queue() -> None:
    locations = MessageLocations()
    locations.add("a" * 32, "q.example")
    locations.add("b" * 32, "q.example")
    locations.discard("a" * 32, "q.example")
    locations.discard("a" * 32, "q.example")  # gone already: nothing happens
    locations.discard("c" * 32, "other.example")
    assert locations.queues_of("a" * 32) == []
    assert locations.queues_of("b" * 32) == ["q.example"]
    assert len(locations) == 1


@pytest.mark.parametrize("bad", ["", "abc", "g" * 32, "a" * 30, "a" * 34])
def test_only_spool_ids_are_indexed_and_anything_may_be_asked(bad: str) -> None:
    locations = MessageLocations()
    with pytest.raises(ValueError, match="not a spool id"):
        locations.add(bad, "q.example")
    assert locations.queues_of(bad) == []
    assert len(locations) == 0


@given(st.text(max_size=40))
def test_asking_any_text_never_fails(text: str) -> None:
    locations = MessageLocations()
    locations.add("f" * 32, "q.example")
    assert locations.queues_of(text) in ([], ["q.example"])

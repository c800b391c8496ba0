"""The router's deliveries: events that concern many queues share one list, and each
queue still gets exactly its events, in log order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kumo.model.criteria import Criteria
from kumo.model.events import BounceCancelled, BounceIssued, Committed, MessageReceived
from kumo.model.router import Router, _Deliveries

SECOND = 1_000_000_000
HOUR = 3600 * SECOND


def received(seq: int, queue: str) -> Committed:
    event = MessageReceived(f"{seq:032x}", queue, "s@x.org", f"r{seq}@{queue}", 10)
    return Committed(seq, seq * SECOND, event)


def issued(seq: int, rule_id: str, criteria: Criteria) -> Committed:
    return Committed(seq, seq * SECOND, BounceIssued(rule_id, criteria, "no", HOUR))


def test_a_rule_over_many_queues_then_an_arrival_to_one_of_them() -> None:
    router = Router()
    queues = [f"d{n}.example" for n in range(5)]
    router.route([received(n + 1, queue) for n, queue in enumerate(queues)])
    rule = issued(10, "r", Criteria())
    arrival = received(11, "d2.example")
    cancel = Committed(12, 12 * SECOND, BounceCancelled("r"))

    routing = router.route([rule, arrival, cancel])

    assert list(routing.deliveries) == queues
    assert routing.deliveries["d2.example"] == [rule, arrival, cancel]
    for queue in queues:
        if queue != "d2.example":
            assert routing.deliveries[queue] == [rule, cancel]


def test_an_arrival_first_keeps_its_queue_first() -> None:
    router = Router()
    router.route([received(1, "a.example"), received(2, "b.example")])
    arrival = received(3, "b.example")
    rule = issued(4, "r", Criteria())

    routing = router.route([arrival, rule])

    assert list(routing.deliveries) == ["b.example", "a.example"]
    assert routing.deliveries == {"b.example": [arrival, rule], "a.example": [rule]}


QUEUES = st.sampled_from(["a", "b", "c", "d"])
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("one"), st.lists(QUEUES, min_size=1, max_size=1)),
        st.tuples(st.just("every"), st.lists(QUEUES, unique=True, max_size=4)),
    ),
    max_size=30,
)


@given(STEPS)
def test_deliveries_are_what_a_list_per_queue_would_hold(
    steps: list[tuple[str, list[str]]],
) -> None:
    deliveries = _Deliveries()
    expected: dict[str, list[Committed]] = {}
    for seq, (kind, queues) in enumerate(steps, start=1):
        committed = received(seq, queues[0] if queues else "a")
        if kind == "one":
            deliveries.one(queues[0], committed)
        else:
            deliveries.every(queues, committed)
        for queue in queues:
            expected.setdefault(queue, []).append(committed)
    assert deliveries.lists == expected
    assert list(deliveries.lists) == list(expected)

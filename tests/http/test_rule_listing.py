"""GET's listing encoder: the same bytes as encoding every entry whole, every time."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import orjson
import trio
from hypothesis import example, given
from hypothesis import strategies as st

from kumo.http.rule_listing import RuleListing, rule_entry
from kumo.model.criteria import Criteria
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.state import LiveRules, Rule

NOW = 1_700_000_000 * NANOS_PER_SECOND


def whole(live: LiveRules) -> bytes:
    return orjson.dumps([rule_entry(view) for view in live.views()])


def rule(n: int, criteria: Criteria | None = None, bounced: Mapping[str, int] = {}) -> Rule:
    return Rule(
        f"rule-{n}",
        criteria or Criteria(domain=f"d{n}.example", campaign="c" if n % 2 else None),
        f'reason "{n}" é',
        n,
        NOW - 300 * NANOS_PER_SECOND,
        NOW + 300 * NANOS_PER_SECOND - n,
        bool(n % 3),
        "127.0.0.1",
        bounced=dict(bounced),
        total_bounced=sum(bounced.values()),
    )


def encode(encoder: RuleListing, listing: LiveRules) -> bytes:
    """``encoder``'s listing, three rules a slice (as a GET makes it, in a Trio run)."""
    return trio.run(partial(encoder.encode_in_slices, listing, rules_per_slice=3))


def live(rules: list[Rule], now: int = NOW, pending: Mapping[str, int] = {}) -> LiveRules:
    """``rules`` at ``now``, each with the ``pending`` of its id (0 if none)."""
    by_criteria = {r.criteria: pending.get(r.id, 0) for r in rules}
    return LiveRules(now, rules, by_criteria.__getitem__)


def test_the_listing_follows_counters_durations_and_rules() -> None:
    listing = RuleListing()
    assert encode(listing, live([])) == whole(live([])) == b"[]"
    first = [rule(1), rule(2, Criteria(queue_names=["b@x", "a@y"]))]
    assert encode(listing, live(first)) == whole(live(first))
    # The sweep goes on: counters, pending and the remaining time move.
    second = [rule(1, bounced={"q1": 3, "q2": 4}), first[1], rule(3)]
    later = live(second, NOW + 299 * NANOS_PER_SECOND, {"rule-1": 5})
    assert encode(listing, later) == whole(later)
    third = [rule(1, bounced={"q1": 3, "q2": 9}), second[2]]
    assert encode(listing, live(third)) == whole(live(third))


@given(
    st.lists(
        st.tuples(
            st.lists(st.tuples(st.integers(0, 5), st.integers(0, 10**6)), max_size=6),
            # Up to the last nanosecond of rule 5 (it expires at NOW + 300 s - 5 ns):
            # remaining times of whole seconds, of less than a second, of one ns.
            st.integers(0, 300 * NANOS_PER_SECOND - 6),
        ),
        max_size=5,
    )
)
@example([([(5, 0)], 300 * NANOS_PER_SECOND - 6), ([(1, 0), (2, 0)], NANOS_PER_SECOND - 1)])
@example([([(3, 1)], 299 * NANOS_PER_SECOND - 3), ([(4, 0)], 299 * NANOS_PER_SECOND - 4)])
def test_any_sequence_of_listings_encodes_as_whole(
    listings: list[tuple[list[tuple[int, int]], int]],
) -> None:
    """Counters grow from one listing to the next, as one node's do: a queue enters a
    rule's ``bounced`` map with its first bounced message, never with 0 (so the map
    changes only when ``total_bounced`` moves, which the encoder relies on)."""
    encoder = RuleListing()
    counted: dict[int, dict[str, int]] = {}
    for items, elapsed in listings:
        rules: dict[int, Rule] = {}
        pending: dict[str, int] = {}
        for n, held in items:
            bounced = counted.setdefault(n, {})
            if held:
                queue = f"q{held % 3}"
                bounced[queue] = bounced.get(queue, 0) + held
            rules[n] = rule(n, bounced=bounced)
            pending[f"rule-{n}"] = held
        listing = live(list(rules.values()), NOW + elapsed, pending)
        assert encode(encoder, listing) == whole(listing)


async def test_a_listing_in_slices_is_the_same_and_lets_other_tasks_run() -> None:
    rules = [rule(n, bounced={"q": n} if n % 4 else {}) for n in range(1, 12)]
    listing = live(rules, pending={"rule-3": 7})
    me = trio.lowlevel.current_task()
    steps: list[trio.lowlevel.Task] = []

    class Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task is me:
                steps.append(task)

    encoder = RuleListing()
    instrument = Steps()
    trio.lowlevel.add_instrument(instrument)
    try:
        body = await encoder.encode_in_slices(listing, rules_per_slice=2)
    finally:
        trio.lowlevel.remove_instrument(instrument)
    assert body == whole(listing)
    # Six slices of two rules or fewer: the task gave way to the others five times.
    assert len(steps) == 5
    # What it kept serves the next listing.
    assert await encoder.encode_in_slices(listing, rules_per_slice=5) == whole(listing)
    assert await encoder.encode_in_slices(live([])) == b"[]"

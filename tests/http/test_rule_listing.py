"""GET's listing encoder: the same bytes as encoding every entry whole, every time."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from kumo.http.rule_listing import RuleListing, rule_entry
from kumo.model.criteria import Criteria
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.state import RuleView


def whole(views: list[RuleView]) -> bytes:
    return orjson.dumps([rule_entry(view) for view in views])


def view(n: int, **changes: Any) -> RuleView:
    base = RuleView(
        id=f"rule-{n}",
        criteria=Criteria(domain=f"d{n}.example", campaign="c" if n % 2 else None),
        reason=f'reason "{n}" é',
        remaining=300 * NANOS_PER_SECOND - n,
        expires_at=1_700_000_000 * NANOS_PER_SECOND + n,
        issued_at=1_699_999_700 * NANOS_PER_SECOND,
        issued_by="127.0.0.1",
        suppress_logging=bool(n % 3),
        bounced={},
        total_bounced=0,
    )
    return base._replace(**changes)


def test_the_listing_follows_counters_durations_and_rules() -> None:
    listing = RuleListing()
    assert listing.encode([]) == whole([]) == b"[]"
    first = [view(1), view(2, criteria=Criteria(queue_names=["b@x", "a@y"]))]
    assert listing.encode(first) == whole(first)
    # The sweep goes on: counters, pending and the remaining time move.
    second = [
        view(1, bounced={"q1": 3, "q2": 4}, total_bounced=7, pending=5, remaining=1),
        first[1],
        view(3, remaining=-5),
    ]
    assert listing.encode(second) == whole(second)
    third = [second[0]._replace(bounced={"q1": 3, "q2": 9}, total_bounced=12), second[2]]
    assert listing.encode(third) == whole(third)


_views = st.builds(
    view,
    st.integers(0, 5),
    remaining=st.integers(-NANOS_PER_SECOND, 10**15),
    pending=st.integers(0, 10**6),
)


@given(st.lists(st.lists(_views, max_size=6), max_size=5))
def test_any_sequence_of_listings_encodes_as_whole(listings: list[list[RuleView]]) -> None:
    """Counters grow from one listing to the next, as one node's do: a queue enters a
    rule's ``bounced`` map with its first bounced message, never with 0 (so the map
    changes only when ``total_bounced`` moves, which the encoder relies on)."""
    encoder = RuleListing()
    counted: dict[str, dict[str, int]] = {}
    for views in listings:
        grown = []
        for item in views:
            bounced = counted.setdefault(item.id, {})
            if item.pending:
                queue = f"q{item.pending % 3}"
                bounced[queue] = bounced.get(queue, 0) + item.pending
            grown.append(item._replace(bounced=dict(bounced), total_bounced=sum(bounced.values())))
        assert encoder.encode(grown) == whole(grown)

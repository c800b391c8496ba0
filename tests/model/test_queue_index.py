"""The queue index finds exactly the queues a scan with ``Criteria.matches`` finds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.criteria import Criteria
from kumo.model.queue_index import QueueIndex
from kumo.model.queue_name import QueueName

# Few distinct parts, so that criteria drawn from them often match something.
PARTS = st.sampled_from(["a", "b", "", "x.example"])
OPTIONAL = st.none() | PARTS
NAMES = st.builds(
    lambda domain, campaign, tenant, routing: QueueName(domain, campaign, tenant, routing).format(),
    PARTS,
    OPTIONAL,
    OPTIONAL,
    OPTIONAL,
) | st.text(alphabet="ab:@!.", max_size=8)
CRITERIA = st.builds(
    Criteria,
    campaign=OPTIONAL,
    tenant=OPTIONAL,
    domain=OPTIONAL,
    routing_domain=OPTIONAL,
    queue_names=st.frozensets(NAMES, max_size=3) | st.just(frozenset()),
)


def index_of(names: list[str]) -> QueueIndex[str]:
    index: QueueIndex[str] = QueueIndex()
    for name in names:
        index.add(name, QueueName.parse(name), name)
    return index


@given(st.lists(NAMES, unique=True, max_size=25), CRITERIA)
def test_matching_equals_a_scan(names: list[str], criteria: Criteria) -> None:
    found = index_of(names).matching(criteria)
    scanned = [name for name in names if criteria.matches(name)]
    if criteria.queue_names:
        assert sorted(found) == sorted(scanned)
    else:
        assert found == scanned


def test_narrows_by_the_first_part_set_and_keeps_order() -> None:
    index = index_of(["c1:t@d.example", "d.example", "c2:t@e.example", "c1:u@d.example!mx"])
    assert index.matching(Criteria(domain="d.example")) == [
        "c1:t@d.example",
        "d.example",
        "c1:u@d.example!mx",
    ]
    assert index.matching(Criteria(domain="d.example", campaign="c1")) == [
        "c1:t@d.example",
        "c1:u@d.example!mx",
    ]
    assert index.matching(Criteria(tenant="t")) == ["c1:t@d.example", "c2:t@e.example"]
    assert index.matching(Criteria(routing_domain="mx")) == ["c1:u@d.example!mx"]
    assert index.matching(Criteria(domain="nowhere.example")) == []
    assert index.matching(Criteria(queue_names=["d.example", "gone"])) == ["d.example"]
    assert len(index.matching(Criteria())) == len(index) == 4


def test_a_name_is_indexed_once() -> None:
    index = index_of(["d.example"])
    with pytest.raises(ValueError, match="already indexed"):
        index.add("d.example", QueueName.parse("d.example"), "again")

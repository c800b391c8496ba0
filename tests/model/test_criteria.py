"""Matching a rule to a queue name (docs/rules.md, "Matching a rule to a queue")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.criteria import Criteria
from kumo.model.queue_name import QueueName


@pytest.mark.parametrize(
    ("criteria", "queue", "matches"),
    [
        (Criteria(), "anything!at:all", True),
        (Criteria(domain="example.com"), "example.com", True),
        (Criteria(domain="Example.com"), "example.com", False),
        (Criteria(domain="example.com"), "camp:tenant@example.com!relay.net", True),
        (Criteria(tenant="acme"), "example.com", False),
        (Criteria(tenant="acme"), "camp:@example.com", False),
        (Criteria(tenant=""), "camp:@example.com", True),
        (Criteria(tenant="acme"), "acme@example.com", True),
        (Criteria(campaign="camp"), "camp:acme@example.com", True),
        (Criteria(campaign="camp"), "acme@example.com", False),
        (Criteria(routing_domain="routing.com:2025"), "foo.com!routing.com:2025", True),
        (Criteria(routing_domain="routing.com"), "foo.com!routing.com:2025", False),
        (Criteria(campaign="c", tenant="t", domain="d", routing_domain="r"), "c:t@d!r", True),
        (Criteria(campaign="c", tenant="t", domain="d", routing_domain="r"), "c:t@d", False),
        (Criteria(domain="x", queue_names=["c:t@d"]), "c:t@d", True),
        (Criteria(domain="d", queue_names=["other"]), "d", False),
    ],
)
def test_matches(criteria: Criteria, queue: str, matches: bool) -> None:
    assert criteria.matches(queue) is matches
    assert criteria.matches(QueueName.parse(queue)) is matches


def test_equality_treats_queue_names_as_a_set() -> None:
    assert Criteria(queue_names=["a", "b", "a"]) == Criteria(queue_names=("b", "a"))
    assert hash(Criteria(queue_names=["a", "b"])) == hash(Criteria(queue_names=["b", "a"]))
    assert Criteria(domain="d") != Criteria(domain="d", tenant="t")


def test_describe() -> None:
    assert Criteria().describe() == "everything"
    assert Criteria(campaign="c", domain="d").describe() == "campaign=c, domain=d"
    assert Criteria(queue_names=["b", "a"]).describe() == "queue=a, queue=b"
    assert Criteria().everything
    assert not Criteria(queue_names=["a"]).everything


@given(st.text(max_size=30))
def test_empty_criteria_match_every_name(name: str) -> None:
    assert Criteria().matches(name)


@given(st.text(max_size=30))
def test_a_name_matches_the_criteria_made_of_its_own_parts(name: str) -> None:
    parts = QueueName.parse(name)
    criteria = Criteria(
        campaign=parts.campaign,
        tenant=parts.tenant,
        domain=parts.domain,
        routing_domain=parts.routing_domain,
    )
    assert criteria.matches(name)
    assert Criteria(queue_names=[name]).matches(name)

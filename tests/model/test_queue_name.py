"""Tests for kumo.model.queue_name: docs/rules.md's table, round trips, metadata rules."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kumo.model.queue_name import QueueName, queue_name_for, recipient_domain

# docs/rules.md: (campaign, tenant, routing_domain) present or not -> name.
NAME_TABLE = [
    (("camp", "ten", None), "camp:ten@example.com"),
    (("camp", "ten", "relay.net"), "camp:ten@example.com!relay.net"),
    ((None, "ten", None), "ten@example.com"),
    ((None, "ten", "relay.net"), "ten@example.com!relay.net"),
    (("camp", None, None), "camp:@example.com"),
    (("camp", None, "relay.net"), "camp:@example.com!relay.net"),
    ((None, None, None), "example.com"),
    ((None, None, "relay.net"), "example.com!relay.net"),
]


@pytest.mark.parametrize(("parts", "name"), NAME_TABLE)
def test_spec_table_formats(parts: tuple[str | None, str | None, str | None], name: str) -> None:
    campaign, tenant, routing_domain = parts
    queue = QueueName("example.com", campaign, tenant, routing_domain)
    assert queue.format() == name
    assert str(queue) == name
    assert (
        queue_name_for(
            domain="example.com", campaign=campaign, tenant=tenant, routing_domain=routing_domain
        )
        == name
    )


@pytest.mark.parametrize(("parts", "name"), NAME_TABLE)
def test_spec_table_parses(parts: tuple[str | None, str | None, str | None], name: str) -> None:
    campaign, tenant, routing_domain = parts
    if campaign is not None and tenant is None:
        tenant = ""  # `camp:@d` has an empty tenant, not none
    assert QueueName.parse(name) == QueueName("example.com", campaign, tenant, routing_domain)


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("camp:@d", QueueName("d", campaign="camp", tenant="")),
        ("@d", QueueName("d", tenant="")),
        ("d!", QueueName("d", routing_domain="")),
        ("", QueueName("")),
        ("foo.com!routing.com:2025", QueueName("foo.com", routing_domain="routing.com:2025")),
        ("foo.com:2025", QueueName("foo.com:2025")),
        (
            "t@foo.com:25!r.com:2025",
            QueueName("foo.com:25", tenant="t", routing_domain="r.com:2025"),
        ),
        # Only the first separator of each kind splits.
        ("a:b:c@d@e!f!g", QueueName("d@e", campaign="a", tenant="b:c", routing_domain="f!g")),
        ("c!x:y@d", QueueName("d", campaign="c!x", tenant="y")),
        ("!r", QueueName("", routing_domain="r")),
        (":@", QueueName("", campaign="", tenant="")),
    ],
)
def test_parse_edge_cases(name: str, parsed: QueueName) -> None:
    assert QueueName.parse(name) == parsed
    assert parsed.format() == name


def test_campaign_without_tenant_formats_with_empty_tenant() -> None:
    assert QueueName("d", campaign="camp").format() == "camp:@d"


def test_queue_name_for_lowercases_the_domain_only() -> None:
    name = queue_name_for(domain="Example.COM", campaign="Camp", tenant="Ten", routing_domain="R")
    assert name == "Camp:Ten@example.com!R"


@pytest.mark.parametrize(
    ("metadata", "name"),
    [
        ({"campaign": "", "tenant": "", "routing_domain": ""}, "d.com"),
        ({"campaign": "", "tenant": "t"}, "t@d.com"),
        ({"campaign": "c", "tenant": ""}, "c:@d.com"),
        ({"routing_domain": ""}, "d.com"),
        ({"routing_domain": "r"}, "d.com!r"),
    ],
)
def test_queue_name_for_treats_empty_metadata_as_absent(
    metadata: dict[str, str], name: str
) -> None:
    assert queue_name_for(domain="D.com", **metadata) == name


@pytest.mark.parametrize(
    ("address", "domain"),
    [
        ("user@Example.COM", "example.com"),
        ('"odd@local"@Host.Example', "host.example"),
        ("@d", "d"),
    ],
)
def test_recipient_domain(address: str, domain: str) -> None:
    assert recipient_domain(address) == domain


@pytest.mark.parametrize("address", ["", "user", "user@", "a@b@"])
def test_recipient_domain_refuses_addresses_without_a_domain(address: str) -> None:
    with pytest.raises(ValueError, match="domain"):
        recipient_domain(address)


# --- Properties ------------------------------------------------------------------------


@given(st.text())
@example("camp:@d")
@example("a:b@c!d:1")
def test_every_string_round_trips(name: str) -> None:
    assert QueueName.parse(name).format() == name


@given(st.text(alphabet=st.sampled_from("ab:@!.1"), max_size=12))
def test_every_separator_soup_round_trips(name: str) -> None:
    # Dense in separators, where plain st.text() rarely goes.
    assert QueueName.parse(name).format() == name


def _part(forbidden: str) -> st.SearchStrategy[str]:
    # A part holding a separator that parsing splits at first cannot survive the trip.
    return st.text(alphabet=st.characters(exclude_characters=forbidden))


@given(
    domain=_part("@!"),
    campaign=st.none() | _part("@:"),
    tenant=st.none() | _part("@:"),
    routing_domain=st.none() | _part("@"),
)
def test_parts_round_trip(
    domain: str, campaign: str | None, tenant: str | None, routing_domain: str | None
) -> None:
    queue = QueueName(domain, campaign, tenant, routing_domain)
    expected = queue
    if campaign is not None and tenant is None:
        expected = QueueName(domain, campaign, "", routing_domain)
    assert QueueName.parse(queue.format()) == expected

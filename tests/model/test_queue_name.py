"""Tests for kumo.model.queue_name: docs/rules.md's table, round trips, metadata rules."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from kumo.model.queue_name import (
    REBINDABLE_KEYS,
    QueueName,
    queue_name_for,
    rebound_queue_name,
    recipient_domain,
)

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


# -- rebinding ------------------------------------------------------------------------

_names = st.text(alphabet="ab:@!.", max_size=12)
_data = st.dictionaries(st.sampled_from(REBINDABLE_KEYS), st.text(alphabet="xy.", max_size=3))


@given(_names)
def test_rebinding_nothing_is_the_identity(name: str) -> None:
    assert rebound_queue_name(name, {}) == name
    assert rebound_queue_name(name, {"queue": ""}) == name


_name_part = st.text(alphabet="ab.", min_size=1, max_size=4)


@given(
    st.builds(
        QueueName,
        _name_part,
        st.none() | _name_part,
        st.none() | _name_part,
        st.none() | _name_part,
    ),
    _data,
)
def test_a_rebound_name_parses_into_the_merged_parts(
    queue: QueueName, data: dict[str, str]
) -> None:
    new = rebound_queue_name(queue.format(), data)
    parsed = QueueName.parse(new)
    assert parsed.format() == new
    if data.get("queue"):
        assert new == data["queue"]
        return

    def merged(part: str) -> str | None:
        value: str | None = getattr(queue, part)
        return (data[part] or None) if part in data else value

    # The domain is the recipient's: a rebind never changes it.
    assert parsed.domain == queue.domain
    assert parsed.routing_domain == merged("routing_domain")
    assert parsed.campaign == merged("campaign")
    # A campaign without a tenant spells an empty tenant (``camp:@domain``).
    assert parsed.tenant == (merged("tenant") or ("" if merged("campaign") else None))


@pytest.mark.parametrize(
    ("name", "data", "new"),
    [
        ("example.com", {"routing_domain": "relay.net"}, "example.com!relay.net"),
        ("example.com!relay.net", {"routing_domain": ""}, "example.com"),
        ("example.com", {"campaign": "spring"}, "spring:@example.com"),
        ("spring:@example.com", {"tenant": "t"}, "spring:t@example.com"),
        ("spring:t@example.com", {"campaign": ""}, "t@example.com"),
        ("camp:@example.com", {"campaign": "camp"}, "camp:@example.com"),
        ("t@example.com", {"queue": "elsewhere"}, "elsewhere"),
        ("t@example.com", {"queue": "", "tenant": "u"}, "u@example.com"),
    ],
)
def test_rebound_names(name: str, data: dict[str, str], new: str) -> None:
    assert rebound_queue_name(name, data) == new


def test_only_what_names_a_queue_can_be_rebound() -> None:
    with pytest.raises(KeyError, match="x-custom"):
        rebound_queue_name("example.com", {"x-custom": "1"})

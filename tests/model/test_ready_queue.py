"""Tests for kumo.model.ready_queue: names, site names, connection plans and limits."""

from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.cidr_set import DEFAULT_PROHIBITED_HOSTS, CidrSet
from kumo.model.message import Message
from kumo.model.ready_queue import (
    MX_RESOLVED_TO_NO_HOSTS,
    NULL_MX,
    PlanFailure,
    ReadyEntry,
    ReadyQueue,
    ResolvedAddress,
    check_plan,
    connection_plan,
    ideal_connection_count,
    is_null_mx,
    mx_list_site_name,
    mx_site_name,
    order_mx_records,
    ready_queue_name,
)

GMAIL_MX = [
    (5, "gmail-smtp-in.l.google.com."),
    (10, "alt1.gmail-smtp-in.l.google.com."),
    (20, "alt2.gmail-smtp-in.l.google.com."),
    (30, "alt3.gmail-smtp-in.l.google.com."),
    (40, "alt4.gmail-smtp-in.l.google.com."),
]


def host(name: str, address: str, port: int | None = None) -> ResolvedAddress:
    return ResolvedAddress(name, ipaddress.ip_address(address), port)


def test_ready_queue_names() -> None:
    assert (
        ready_queue_name(mx_site_name(h for _, h in order_mx_records(reversed(GMAIL_MX))))
        == "unspecified->(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com@smtp_client"
    )
    assert (
        ready_queue_name(mx_list_site_name(["localhost:2026"]))
        == "unspecified->mx_list:localhost:2026@smtp_client"
    )
    assert ready_queue_name("example.com", "pool1") == "pool1->example.com@smtp_client"


def test_mx_list_site_name_keeps_the_entries_as_written() -> None:
    assert mx_list_site_name(["127.0.0.1:2600"]) == "mx_list:127.0.0.1:2600"
    assert mx_list_site_name(["B.example:25", "[10.0.0.1]"]) == "mx_list:B.example:25,[10.0.0.1]"


@pytest.mark.parametrize(
    ("hosts", "site"),
    [
        # KumoMTA's own name_factoring and mx_order_name_factor cases.
        (
            ["mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net", "mta7.am0.yahoodns.net"],
            "(mta5|mta6|mta7).am0.yahoodns.net",
        ),
        (
            ["mta5.AM0.yahoodns.net", "mta6.am0.yAHOodns.net", "mta7.am0.yahoodns.net"],
            "(mta5|mta6|mta7).am0.yahoodns.net",
        ),
        (
            [
                "gmail-smtp-in.l.google.com",
                "alt1.gmail-smtp-in.l.google.com",
                "alt2.gmail-smtp-in.l.google.com",
                "alt3.gmail-smtp-in.l.google.com",
                "alt4.gmail-smtp-in.l.google.com",
            ],
            "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com",
        ),
        (
            [
                "mta5.am0.yahoodns.net:123",
                "mta6.am0.yahoodns.net:123",
                "mta7.am0.yahoodns.net:123",
            ],
            "(mta5|mta6|mta7).am0.yahoodns.net:123",
        ),
        (
            [
                "mta5.am0.yahoodns.net:123",
                "mta6.am0.yahoodns.net:456",
                "mta7.am0.yahoodns.net:123",
            ],
            "(mta5|mta6|mta7).am0.yahoodns.(net:123|net:456)",
        ),
        (
            [
                "example-com.mail.protection.outlook.com.",
                "mx-biz.mail.am0.yahoodns.net.",
                "mx-biz.mail.am0.yahoodns.net.",
            ],
            "(example-com|mx-biz).mail.(protection|am0).(outlook|yahoodns).(com|net)",
        ),
        (
            [
                "mx-biz.mail.am0.yahoodns.net.",
                "mx-biz.mail.am0.yahoodns.net.",
                "example-com.mail.protection.outlook.com.",
            ],
            "(mx-biz|example-com).mail.(am0|protection).(yahoodns|outlook).(net|com)",
        ),
        # An implicit MX: the domain itself.
        (["example.com."], "example.com"),
        # A shorter name first puts the "?" marker first; it never shows.
        (["a.com", "b.a.com"], "b?.a.com"),
        # Names that are not DNS names are left out.
        (["bad..name.example", "mx.example.com"], "mx.example.com"),
        ([], ""),
    ],
)
def test_mx_site_name(hosts: list[str], site: str) -> None:
    assert mx_site_name(hosts) == site


def test_mx_records_in_kumomta_s_order() -> None:
    records = [(20, "B.example."), (10, "z.example."), (20, "a.example."), (20, "b.example.")]
    assert order_mx_records(records) == (
        (10, "z.example."),
        (20, "a.example."),
        (20, "b.example."),
        (20, "b.example."),
    )


def test_null_mx() -> None:
    assert is_null_mx(["."])
    assert not is_null_mx(["mx.example.com."])
    assert (NULL_MX.code, NULL_MX.enhanced_code) == (556, (5, 1, 10))
    assert NULL_MX.content == "Recipient address has a null MX"
    assert NULL_MX.permanent


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (host("mx.example.com.", "192.0.2.1"), "mx.example.com./192.0.2.1"),
        (host("127.0.0.1", "127.0.0.1", 2600), "127.0.0.1/127.0.0.1:2600"),
        (host("127.0.0.1", "127.0.0.1"), "127.0.0.1"),
        (host("[::1]", "::1", 25), "[::1]/[::1]:25"),
        (host("mx6.example.", "::ffff:192.0.2.1"), "mx6.example./::ffff:192.0.2.1"),
    ],
)
def test_resolved_address_text(address: ResolvedAddress, text: str) -> None:
    assert str(address) == text


def test_resolved_address_port_range() -> None:
    with pytest.raises(ValueError, match="port"):
        host("mx.example.", "192.0.2.1", 65536)


def test_prohibited_host_bounces_the_plan() -> None:
    plan = [host("mx1.example.com.", "192.0.2.1"), host("mx2.example.com.", "127.0.0.1")]
    failure = check_plan(plan, DEFAULT_PROHIBITED_HOSTS)
    assert failure == PlanFailure(
        550,
        (5, 4, 4),
        'mx2.example.com./127.0.0.1 is on the list of prohibited_hosts {"0.0.0.0", '
        '"127.0.0.0/8", "::/127"}',
    )
    assert failure.permanent
    assert check_plan(plan[:1], DEFAULT_PROHIBITED_HOSTS) is None
    assert check_plan(plan, CidrSet.parse([])) is None


def test_mx_list_to_loopback_needs_an_empty_prohibited_list() -> None:
    plan = [host("127.0.0.1", "127.0.0.1", 2600)]
    failure = check_plan(plan, DEFAULT_PROHIBITED_HOSTS)
    assert failure is not None
    assert failure.content.startswith("127.0.0.1/127.0.0.1:2600 is on the list")
    assert check_plan(plan, CidrSet.parse(["10.0.0.0/8"])) is None


def test_an_empty_plan_is_transient() -> None:
    assert check_plan([], DEFAULT_PROHIBITED_HOSTS) is MX_RESOLVED_TO_NO_HOSTS
    assert (MX_RESOLVED_TO_NO_HOSTS.code, MX_RESOLVED_TO_NO_HOSTS.enhanced_code) == (451, (4, 4, 4))
    assert MX_RESOLVED_TO_NO_HOSTS.content == "MX didn't resolve to any hosts"
    assert not MX_RESOLVED_TO_NO_HOSTS.permanent


def test_connection_plan_by_preference_shuffled_within() -> None:
    a1, a2 = host("a.example.", "192.0.2.1"), host("a.example.", "192.0.2.2")
    b1, c1 = host("b.example.", "192.0.2.3"), host("c.example.", "192.0.2.4")
    addresses = [(20, c1), (10, a1), (10, a2), (10, b1)]
    orders = {connection_plan(addresses, random.Random(seed)) for seed in range(40)}
    assert {order[-1] for order in orders} == {c1}
    assert {frozenset(order[:3]) for order in orders} == {frozenset({a1, a2, b1})}
    assert len(orders) == 6  # every order of the three equal addresses comes up
    assert connection_plan(addresses, random.Random(7)) == connection_plan(
        addresses, random.Random(7)
    )


@pytest.mark.parametrize(
    ("limit", "table"),
    [
        # KumoMTA's connection_limit_32 and connection_limit_1024 tests.
        (
            32,
            [
                (0, 0), (1, 1), (2, 2), (3, 3), (4, 3), (5, 4), (6, 5), (7, 5), (8, 6),
                (9, 6), (10, 7), (20, 12), (32, 17), (64, 25), (128, 31), (256, 32),
                (400, 32), (512, 32), (1024, 32),
            ],
        ),
        (
            1024,
            [
                (n, n)
                for n in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 32, 64, 128, 256, 400, 512, 1024)
            ],
        ),
    ],
)  # fmt: skip
def test_ideal_connection_count(limit: int, table: list[tuple[int, int]]) -> None:
    assert [(n, ideal_connection_count(n, limit)) for n in (n for n, _ in table)] == table


# -- properties ----------------------------------------------------------------------

plan_entries = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.sampled_from(["192.0.2.1", "2001:db8::1", "127.0.0.1"]),
        st.none() | st.integers(min_value=1, max_value=65535),
    ),
    max_size=10,
)


@given(plan_entries, st.integers())
def test_plan_is_a_permutation_in_preference_order(
    entries: list[tuple[int, str, int | None]], seed: int
) -> None:
    # Each address named after its place in the input, so that equal ones differ.
    named = [(p, host(f"h{i}.example.", a, port)) for i, (p, a, port) in enumerate(entries)]
    plan = connection_plan(named, random.Random(seed))
    assert sorted(plan, key=str) == sorted((a for _, a in named), key=str)
    preference = {a.name: p for p, a in named}
    ranks = [preference[a.name] for a in plan]
    assert ranks == sorted(ranks)


@given(st.integers(0, 100_000), st.integers(1, 5_000))
def test_connections_never_exceed_messages_or_limit(ready: int, limit: int) -> None:
    count = ideal_connection_count(ready, limit)
    assert 0 <= count <= min(ready, limit)
    assert (count == 0) == (ready == 0)
    assert ideal_connection_count(ready + 1, limit) >= count


@given(st.lists(st.text(alphabet="abcAB.-:1?", max_size=20), max_size=6))
def test_site_name_of_any_hosts(hosts: list[str]) -> None:
    site = mx_site_name(hosts)
    assert site == site.lower()
    assert mx_site_name(h.upper() for h in hosts) == site


# -- the ready queue's holding ----------------------------------------------------------


def _entry(queue: str, n: int) -> ReadyEntry:
    return ReadyEntry(queue, Message(f"{n:032x}", "s@x", f"r{n}@y", 1, n, n), 0, b"x")


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.sampled_from("ab"), st.integers(1, 4)),
            st.tuples(st.just("pop"), st.just(""), st.just(0)),
            st.tuples(st.just("front"), st.just(""), st.just(0)),
            st.tuples(st.just("withdraw"), st.sampled_from("ab"), st.just(0)),
        ),
        max_size=40,
    ),
    st.integers(1, 6),
)
def test_a_ready_queue_is_a_bounded_fifo_that_gives_back_by_scheduled_queue(
    steps: list[tuple[str, str, int]], max_ready: int
) -> None:
    ready = ReadyQueue("unspecified->mx@smtp_client", max_ready)
    model: list[ReadyEntry] = []
    popped: list[ReadyEntry] = []
    made = 0
    for kind, queue, count in steps:
        if kind == "push":
            entries = []
            for _ in range(min(count, ready.room())):
                made += 1
                entries.append(_entry(queue, made))
            ready.push(entries)
            model += entries
        elif kind == "pop":
            got = ready.pop()
            assert got == (model.pop(0) if model else None)
            if got is not None:
                popped.append(got)
        elif kind == "front" and popped:
            entry = popped.pop()
            ready.push_front(entry)
            model.insert(0, entry)
        elif kind == "withdraw":
            taken = ready.withdraw(queue)
            assert taken == [e.message.id for e in model if e.queue == queue]
            model = [e for e in model if e.queue != queue]
        assert len(ready) == len(model)
        assert ready.room() == max(max_ready - len(model), 0)
    assert ready.drain() == model
    assert len(ready) == 0


def test_max_ready_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="max_ready must be at least 1"):
        ReadyQueue("q", 0)

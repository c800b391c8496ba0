"""kcli queue-summary's tables, byte for byte: KumoMTA's columns, order and markers
(reference section 9.2)."""

from __future__ import annotations

import functools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.cli.queue_summary import (
    ADMIN_LISTS,
    BOUNCE_MARK,
    READY_STATUS,
    SCHEDULED_STATUS,
    SUSPEND_MARK,
    QueueStateMark,
    ReadyQueue,
    ReadyStates,
    ScheduledQueue,
    StatusSource,
    chrono_display,
    criteria_marker,
    format_queue_summary,
    name_marker,
    natural_lexical_compare,
    ordered,
    ready_queues,
    ready_states,
    ready_status,
    scheduled_queues,
    scheduled_status,
)
from kumo.http.ready_q_states_api import states_by_ready_queue
from kumo.http.routes import BOUNCE_PATH, SUSPEND_PATH, SUSPEND_READY_Q_PATH
from kumo.model.prometheus_text import Sample, parse_samples
from kumo.model.ready_queue_state import CONNECTION_LIMITED, ReadyQueueState
from kumo.model.rfc3339 import TimestampError, parse_rfc3339

SUSPEND = StatusSource("/api/admin/suspend/v1", criteria_marker(SUSPEND_MARK))
"""The one line SCHEDULED_STATUS gains once kumo serves the suspend list."""
SUSPEND_READY_Q = StatusSource("/api/admin/suspend-ready-q/v1", name_marker(SUSPEND_MARK))

REFERENCE_PAGE = "\n".join(
    [
        "# TYPE connection_count gauge",
        'connection_count{service="smtp_client"} 1',
        'connection_count{service="esmtp_listener"} 4',
        'connection_count{service="smtp_client:unspecified->localhost@smtp_client"} 1',
        "# TYPE ready_count gauge",
        'ready_count{service="smtp_client"} 0',
        'ready_count{service="smtp_client:unspecified->localhost@smtp_client"} 0',
        "# TYPE total_messages_delivered counter",
        'total_messages_delivered{service="smtp_client"} 3',
        'total_messages_delivered{service="smtp_client:unspecified->localhost@smtp_client"} 3',
        "# TYPE total_messages_transfail counter",
        'total_messages_transfail{service="smtp_client:unspecified->localhost@smtp_client"} 1',
        "# TYPE total_messages_fail counter",
        'total_messages_fail{service="smtp_client:unspecified->localhost@smtp_client"} 5',
        "# TYPE scheduled_count gauge",
        'scheduled_count{queue="example.com"} 2',
        "",
    ]
)


def summary(
    page: str,
    *,
    by_volume: bool = False,
    scheduled: list[tuple[StatusSource, list[dict[str, object]]]] | None = None,
    ready: list[tuple[StatusSource, list[dict[str, object]]]] | None = None,
    states: ReadyStates | None = None,
) -> str:
    samples = parse_samples(page)
    return format_queue_summary(
        ordered(ready_queues(samples), by_volume=by_volume),
        ordered(scheduled_queues(samples), by_volume=by_volume),
        ready_listed=ready or [],
        scheduled_listed=scheduled or [],
        ready_states=states,
    )


def test_the_references_example() -> None:
    """Reference 9.2's example: one ready queue, one suspended scheduled queue."""
    suspended: list[dict[str, object]] = [
        {"id": "x", "campaign": None, "tenant": None, "domain": "example.com",
         "reason": "testing", "duration": "4m 59s"}
    ]  # fmt: skip
    text = summary(REFERENCE_PAGE, scheduled=[(SUSPEND, suspended)])
    assert text == (
        "SITE      SOURCE      PROTO       D T C Q \n"
        "localhost unspecified smtp_client 3 1 1 0 \n"
        "\n"
        "SCHEDULED QUEUE COUNT                   \n"
        "example.com         2 🛑suspend: testing\n"
    )
    assert text.encode().count("\U0001f6d1".encode()) == 1


def test_no_queues_at_all() -> None:
    assert summary("") == "SITE SOURCE PROTO D T C Q \n\nSCHEDULED QUEUE COUNT \n"


def test_a_bounce_rule_comes_before_a_suspension() -> None:
    page = 'scheduled_count{queue="example.com"} 1234\nscheduled_count{queue="b.example"} 5\n'
    bounces: list[dict[str, object]] = [
        {"campaign": None, "tenant": None, "domain": "example.com", "reason": "pause"},
        {"campaign": None, "tenant": None, "domain": "example.com", "reason": "second"},
    ]
    suspensions: list[dict[str, object]] = [
        {"campaign": None, "tenant": None, "domain": None, "reason": "all"}
    ]
    text = summary(page, scheduled=[(SCHEDULED_STATUS[0], bounces), (SUSPEND, suspensions)])
    # 🗑️ (with its variation selector) is two cells, as 🛑 is.
    assert text == (
        "SITE SOURCE PROTO D T C Q \n"
        "\n"
        "SCHEDULED QUEUE COUNT                 \n"
        "b.example           5 🛑suspend: all  \n"
        "example.com     1,234 🗑\ufe0f bounce: pause\n"
    )


def test_the_bounce_and_suspend_lists_mark_scheduled_queues() -> None:
    assert [source.path for source in SCHEDULED_STATUS] == [BOUNCE_PATH, SUSPEND_PATH]
    bounces, suspends = SCHEDULED_STATUS
    assert bounces.describe({"domain": None, "reason": "r"}, "a.example") == BOUNCE_MARK + "r"
    assert suspends.describe({"domain": None, "reason": "r"}, "a.example") == SUSPEND_MARK + "r"
    assert BOUNCE_MARK == "\U0001f5d1\ufe0f bounce: "
    assert SUSPEND_MARK == "\U0001f6d1suspend: "


@pytest.mark.parametrize(
    ("entry", "queue", "marked"),
    [
        ({"domain": "example.com"}, "example.com", True),
        ({"domain": "example.com"}, "camp:tenant@example.com!relay", True),
        ({"domain": "example.com"}, "example.net", False),
        ({"campaign": "camp"}, "camp:tenant@example.com", True),
        ({"campaign": "camp"}, "example.com", False),
        ({"tenant": "acme"}, "acme@example.com", True),
        ({"tenant": "acme"}, "camp:@example.com", False),
        ({"campaign": "camp", "tenant": "acme"}, "camp:acme@example.com", True),
        ({"campaign": "camp", "tenant": "acme"}, "camp:other@example.com", False),
        # KumoMTA's kcli looks at neither queue_names nor routing_domain: such a rule
        # marks every queue.
        ({"queue_names": ["other.example"]}, "example.com", True),
        ({"routing_domain": "relay"}, "example.com", True),
        ({}, "anything", True),
    ],
)
def test_which_scheduled_queues_a_rule_marks(
    entry: dict[str, object], queue: str, marked: bool
) -> None:
    describe = criteria_marker(BOUNCE_MARK)
    assert (describe({**entry, "reason": "why"}, queue) is not None) is marked


def test_ready_queue_marks_are_joined() -> None:
    name = "unspecified->mx.example.com@smtp_client"
    other = {"name": "unspecified->other@smtp_client", "reason": "no"}
    listed = [
        (SUSPEND_READY_Q, [other, {"name": name, "reason": "maintenance"}]),
        (StatusSource("/states", lambda entry, queue: f"{queue[:3]}: {entry['context']}"),
         [{"context": "limited"}]),
    ]  # fmt: skip
    assert ready_status(listed, name) == "🛑suspend: maintenance, uns: limited"
    assert scheduled_status(listed, name) == "🛑suspend: maintenance"
    assert ready_status([], name) == ""


LOCALHOST = "unspecified->localhost@smtp_client"
LIMITED = f"TooManyLeases for kumomta.connection_limit.{LOCALHOST}"
SINCE = parse_rfc3339("2025-01-23T10:11:12.123456789Z")


def test_the_admin_lists_in_kcli_order_and_every_source_among_them() -> None:
    assert ADMIN_LISTS == (SUSPEND_PATH, BOUNCE_PATH, SUSPEND_READY_Q_PATH)
    assert {source.path for source in (*SCHEDULED_STATUS, *READY_STATUS)} == set(ADMIN_LISTS)


@pytest.mark.parametrize(
    ("since", "shown"),
    [
        ("2025-01-23T10:11:12.123456789Z", "2025-01-23 10:11:12.123456789 UTC"),
        ("2025-01-23T10:11:12.123456Z", "2025-01-23 10:11:12.123456 UTC"),
        ("2025-01-23T10:11:12.120Z", "2025-01-23 10:11:12.120 UTC"),
        ("2025-01-23T10:11:12Z", "2025-01-23 10:11:12 UTC"),
        ("2025-01-23T12:11:12.5+02:00", "2025-01-23 10:11:12.500 UTC"),
        ("2025-01-23T10:11:12.000000001Z", "2025-01-23 10:11:12.000000001 UTC"),
    ],
)
def test_since_as_chrono_displays_it(since: str, shown: str) -> None:
    assert chrono_display(parse_rfc3339(since)) == shown


def test_a_ready_q_states_reply_read_back() -> None:
    document = states_by_ready_queue(
        [ReadyQueueState(LOCALHOST, CONNECTION_LIMITED, LIMITED, SINCE)]
    )
    assert ready_states(document) == {
        LOCALHOST: [QueueStateMark(CONNECTION_LIMITED, LIMITED, SINCE)]
    }
    # Keys sorted, whatever order the server wrote them in; other fields ignored.
    two = {"z": {"context": "b", "since": "2025-01-23T10:11:12Z", "extra": 1},
           "a": {"context": "a", "since": "2025-01-23T10:11:12Z"}}  # fmt: skip
    marks = ready_states({"states_by_ready_queue": {"q": two}, "other": []})
    assert [mark.key for mark in marks["q"]] == ["a", "z"]
    assert ready_states({"states_by_ready_queue": {}}) == {}


@pytest.mark.parametrize(
    "document",
    [
        [],
        {},
        {"states_by_ready_queue": []},
        {"states_by_ready_queue": {"q": []}},
        {"states_by_ready_queue": {"q": {"connection_limited": "x"}}},
        {"states_by_ready_queue": {"q": {"connection_limited": {"context": "c"}}}},
        {"states_by_ready_queue": {"q": {"connection_limited": {"context": 1, "since": "x"}}}},
    ],
)
def test_a_reply_of_another_shape_is_refused(document: object) -> None:
    with pytest.raises(ValueError, match=r"object|has no context and since"):
        ready_states(document)


def test_a_since_that_is_no_time_is_refused() -> None:
    document = {"states_by_ready_queue": {"q": {"k": {"context": "c", "since": "yesterday"}}}}
    with pytest.raises(TimestampError):
        ready_states(document)


def test_a_ready_queue_shows_its_states_after_its_suspension() -> None:
    """Reference 9.2: the suspend marker, then each state ``{key}: {context} @ {since}``,
    joined by ``, ``; the status column is as wide as its widest cell, on every line."""
    suspended: list[dict[str, object]] = [{"name": LOCALHOST, "reason": "maintenance"}]
    states = {LOCALHOST: [QueueStateMark(CONNECTION_LIMITED, LIMITED, SINCE)]}
    state = f"connection_limited: {LIMITED} @ 2025-01-23 10:11:12.123456789 UTC"
    only_states = summary(REFERENCE_PAGE, states=states)
    assert only_states == (
        f"SITE      SOURCE      PROTO       D T C Q {' ' * len(state)}\n"
        f"localhost unspecified smtp_client 3 1 1 0 {state}\n"
        "\n"
        "SCHEDULED QUEUE COUNT \n"
        "example.com         2 \n"
    )
    both = summary(REFERENCE_PAGE, ready=[(READY_STATUS[0], suspended)], states=states)
    status = f"🛑suspend: maintenance, {state}"
    assert both.splitlines()[:2] == [
        "SITE      SOURCE      PROTO       D T C Q " + " " * (len(status) + 1),
        "localhost unspecified smtp_client 3 1 1 0 " + status,
    ]
    # A state of a ready queue with no row shows nowhere; a row with none has no status.
    elsewhere = {"unspecified->elsewhere@smtp_client": states[LOCALHOST]}
    assert summary(REFERENCE_PAGE, states=elsewhere) == summary(REFERENCE_PAGE)


def test_ready_rows_add_up_the_services_of_a_queue() -> None:
    samples = [
        Sample("connection_count", {"service": "smtp_client"}, 9),  # global: no queue
        Sample("ready_count", {"service": "esmtp_listener"}, 9),
        Sample("total_messages_delivered", {"service": "smtp_client:q@smtp_client"}, 2),
        Sample("total_messages_delivered", {"service": "other:q@smtp_client"}, 3),
        Sample("total_messages_transfail", {"service": "smtp_client:q@smtp_client"}, 1.9),
        Sample("total_messages_fail", {"service": "smtp_client:q@smtp_client"}, 7),
        Sample("ready_count", {"service": "smtp_client:q@smtp_client"}, -1),
        Sample("connection_count", {"service": "smtp_client:q@smtp_client"}, math.nan),
        Sample("connection_count", {"queue": "smtp_client:x"}, 1),
        # Split at the first colon: the rest is the queue, colons and all.
        Sample("ready_count", {"service": "smtp_client:a->b:25@smtp_client"}, 4),
    ]
    assert ready_queues(samples) == [
        ReadyQueue("q@smtp_client", delivered=5, transfail=1),
        ReadyQueue("a->b:25@smtp_client", ready=4),
    ]


@pytest.mark.parametrize(
    ("name", "source", "site", "protocol"),
    [
        ("unspecified->mx_list:127.0.0.1:2600@smtp_client", "unspecified",
         "mx_list:127.0.0.1:2600", "smtp_client"),
        ("unspecified->(alt1|alt2)?.gmail-smtp-in.l.google.com@smtp_client", "unspecified",
         "(alt1|alt2)?.gmail-smtp-in.l.google.com", "smtp_client"),
        ("pool1->example.com@lua:make.queue", "pool1", "example.com", "lua:make.queue"),
        ("unspecified->example.com@maildir:/var/mail", "unspecified", "example.com",
         "maildir:/var/mail"),
        ("unspecified->example.com@xfer", "unspecified", "example.com@xfer", None),
        ("example.com@smtp_client", None, "example.com", "smtp_client"),
    ],
)  # fmt: skip
def test_a_ready_queue_name_splits_into_site_source_and_protocol(
    name: str, source: str | None, site: str, protocol: str | None
) -> None:
    queue = ReadyQueue(name)
    assert (queue.source, queue.site, queue.protocol) == (source, site, protocol)


def test_rows_in_kcli_order() -> None:
    page = "\n".join(
        f'scheduled_count{{queue="{name}"}} {count}'
        for name, count in [
            ("q10.example", 1),
            ("Q2.example", 1),
            ("q1.example", 7),
            ("b.example", 7),
            ("a.example", 0),
        ]
    )
    by_name = summary(page).splitlines()[3:]
    assert [line.split()[0] for line in by_name] == [
        "a.example",
        "b.example",
        "q1.example",
        "Q2.example",
        "q10.example",
    ]
    by_volume = summary(page, by_volume=True).splitlines()[3:]
    assert [line.split()[0] for line in by_volume] == [
        "b.example",
        "q1.example",
        "Q2.example",
        "q10.example",
        "a.example",
    ]


def test_ready_rows_by_volume_count_all_four_figures() -> None:
    queues = [
        ReadyQueue("x->a@smtp_client", delivered=1),
        ReadyQueue("x->b@smtp_client", ready=3),
        ReadyQueue("x->c@smtp_client", connections=1, transfail=1),
    ]
    assert [q.site for q in ordered(queues, by_volume=True)] == ["b", "c", "a"]
    assert [q.site for q in ordered(queues, by_volume=False)] == ["a", "b", "c"]


def test_counts_have_separators_and_fail_is_not_shown() -> None:
    queues = [ReadyQueue("unspecified->big.example@smtp_client", 1234567, 12345, 32, 1024)]
    text = format_queue_summary(queues, [ScheduledQueue("big.example", 1_000_000)])
    assert text == (
        "SITE        SOURCE      PROTO               D      T  C     Q \n"
        "big.example unspecified smtp_client 1,234,567 12,345 32 1,024 \n"
        "\n"
        "SCHEDULED QUEUE     COUNT \n"
        "big.example     1,000,000 \n"
    )


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [
        ("1", "10"),
        ("10", "15"),
        ("150", "220"),
        ("334", "335"),
        ("T-1", "T-5"),
        ("T-5", "T-27"),
        ("T-27a", "T-27b"),
        ("a", "ä"),
        ("ä", "aa"),
        ("aaa", "aaaa"),
        ("AAA", "aab"),
        ("q2.example", "q10.example"),
        ("7", "007"),  # a longer run of digits is larger
        ("!", "a"),  # a letter or digit sorts after anything else
        ("a-b", "ab"),
        ("Example.com", "example.com"),  # equal but for case: code points decide
    ],
)
def test_natural_lexical_order(smaller: str, larger: str) -> None:
    assert natural_lexical_compare(smaller, larger) < 0
    assert natural_lexical_compare(larger, smaller) > 0


@given(st.lists(st.text(max_size=6), max_size=8))
def test_natural_lexical_order_is_a_total_order(names: list[str]) -> None:
    key = functools.cmp_to_key(natural_lexical_compare)
    once = sorted(names, key=key)
    assert sorted(reversed(once), key=key) == once
    for name in names:
        assert natural_lexical_compare(name, name) == 0

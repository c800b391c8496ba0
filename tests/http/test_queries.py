"""Query strings of the inspection routes: what they become, and what is a 400."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.http.errors import QUERY_PREFIX, RequestRefused
from kumo.http.queries import (
    InspectMessageQuery,
    InspectQueueQuery,
    Query,
    parse_inspect_message,
    parse_inspect_queue,
    parse_ready_q_states_query,
)

SPOOL_ID = "d7ef132b5d7711eea8c8000c29c33806"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"id": [SPOOL_ID]}, InspectMessageQuery(SPOOL_ID)),
        ({"id": [SPOOL_ID], "want_body": ["true"]}, InspectMessageQuery(SPOOL_ID, True)),
        ({"id": [SPOOL_ID], "want_body": ["false"]}, InspectMessageQuery(SPOOL_ID)),
        # Any spelling of a UUID, as KumoMTA's SpoolId reads one.
        ({"id": [SPOOL_ID.upper()]}, InspectMessageQuery(SPOOL_ID)),
        ({"id": ["d7ef132b-5d77-11ee-a8c8-000c29c33806"]}, InspectMessageQuery(SPOOL_ID)),
        ({"id": ["{d7ef132b-5d77-11ee-a8c8-000c29c33806}"]}, InspectMessageQuery(SPOOL_ID)),
        ({"id": ["urn:uuid:d7ef132b-5d77-11ee-a8c8-000c29c33806"]}, InspectMessageQuery(SPOOL_ID)),
        # Parameters it does not know are ignored, as serde ignores unknown fields.
        ({"id": [SPOOL_ID], "limit": ["x"], "foo": ["1", "2"]}, InspectMessageQuery(SPOOL_ID)),
    ],
)
def test_inspect_message_queries(query: Query, expected: InspectMessageQuery) -> None:
    assert parse_inspect_message(query) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"queue_name": ["example.com"]}, InspectQueueQuery("example.com")),
        (
            {"queue_name": ["c:t@example.com!r"], "want_body": ["true"], "limit": ["0"]},
            InspectQueueQuery("c:t@example.com!r", True, 0),
        ),
        ({"queue_name": [""], "limit": ["+7"]}, InspectQueueQuery("", False, 7)),
        (
            {"queue_name": ["q"], "limit": [str(2**64 - 1)]},
            InspectQueueQuery("q", False, 2**64 - 1),
        ),
    ],
)
def test_inspect_queue_queries(query: Query, expected: InspectQueueQuery) -> None:
    assert parse_inspect_queue(query) == expected


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ({}, "missing field `id`"),
        ({"want_body": ["true"]}, "missing field `id`"),
        ({"id": [SPOOL_ID, SPOOL_ID]}, "duplicate field `id`"),
        (
            {"id": ["xyz"]},
            "id: invalid character: expected an optional prefix of `urn:uuid:` followed by "
            "[0-9a-fA-F-], found `x` at 1",
        ),
        ({"id": ["abc"]}, "id: invalid length: expected length 32 for simple format, found 3"),
        (
            {"id": [SPOOL_ID], "want_body": ["1"]},
            "want_body: provided string was not `true` or `false`",
        ),
        (
            {"id": [SPOOL_ID], "want_body": [""]},
            "want_body: provided string was not `true` or `false`",
        ),
        ({"id": [SPOOL_ID], "want_body": ["true", "true"]}, "duplicate field `want_body`"),
    ],
)
def test_bad_inspect_message_queries_are_400(query: Query, why: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        parse_inspect_message(query)
    assert (refused.value.status, refused.value.text) == (400, QUERY_PREFIX + why)


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ({}, "missing field `queue_name`"),
        ({"queue_name": ["a", "b"]}, "duplicate field `queue_name`"),
        ({"queue_name": ["q"], "limit": [""]}, "limit: cannot parse integer from empty string"),
        ({"queue_name": ["q"], "limit": ["-1"]}, "limit: invalid digit found in string"),
        ({"queue_name": ["q"], "limit": ["5x"]}, "limit: invalid digit found in string"),
        ({"queue_name": ["q"], "limit": ["+"]}, "limit: invalid digit found in string"),
        ({"queue_name": ["q"], "limit": ["١"]}, "limit: invalid digit found in string"),
        (
            {"queue_name": ["q"], "limit": [str(2**64)]},
            "limit: number too large to fit in target type",
        ),
        (
            {"queue_name": ["q"], "want_body": ["yes"]},
            "want_body: provided string was not `true` or `false`",
        ),
    ],
)
def test_bad_inspect_queue_queries_are_400(query: Query, why: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        parse_inspect_queue(query)
    assert (refused.value.status, refused.value.text) == (400, QUERY_PREFIX + why)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, None),
        ({"other": ["x"]}, None),
        ({"queues": ["a->b@smtp_client"]}, ("a->b@smtp_client",)),
        # One name a parameter, in the order given, each once.
        ({"queues": ["q2", "q1", "q2"]}, ("q2", "q1")),
        # A name is taken as it is: a comma is part of it.
        ({"queues": ["mx_list:a,b"]}, ("mx_list:a,b",)),
    ],
)
def test_ready_q_states_queries(query: Query, expected: tuple[str, ...] | None) -> None:
    assert parse_ready_q_states_query(query) == expected


@pytest.mark.parametrize("query", [{"queues": [""]}, {"queues": ["q", ""]}])
def test_an_empty_ready_queue_name_is_400(query: Query) -> None:
    with pytest.raises(RequestRefused) as refused:
        parse_ready_q_states_query(query)
    assert (refused.value.status, refused.value.text) == (
        400,
        QUERY_PREFIX + "queues: a ready queue name cannot be empty",
    )


_names = st.sampled_from(["id", "queue_name", "want_body", "limit", "queues", "other"])
_queries = st.dictionaries(_names, st.lists(st.text(max_size=40), max_size=3))


@given(_queries)
def test_any_query_is_parsed_or_refused_with_a_400(query: Query) -> None:
    for parse in (parse_inspect_message, parse_inspect_queue, parse_ready_q_states_query):
        outcome: object
        try:
            outcome = parse(query)
        except RequestRefused as refused:
            outcome = refused
        if isinstance(outcome, RequestRefused):
            assert outcome.status == 400
            assert outcome.text.startswith(QUERY_PREFIX)

"""The API fuzzed by a tool no one here wrote: schemathesis, against a real ``kumo serve``
and the OpenAPI document it serves.

Each operation gets schema-driven requests, valid and invalid (no 5xx, every status,
content type, header and body as the document says, invalid data refused), and the
stateful run follows the document's links (a POST of a bounce or a suspension, then
the DELETE of its id; a cancelled id is gone). Examples are bounded so that the run
takes seconds; ``tests/http/test_fuzz_live.py`` is our own, wider fuzzer of the same
server.

One check is left out: ``positive_data_acceptance`` (a request the schema allows must be
accepted). Some of the API's limits are not expressible in JSON Schema: the humantime
grammar of ``duration`` strings, the 100-year cap on a duration written as text, the
years (1677 to 2262) an ``expires`` date-time may name, what an inject ``content``
object must hold to build a message. The document states those limits in prose; the
server refuses what breaks them with a 4xx that says why, which the other checks
verify. Every limit that JSON Schema can say, the document says (``tests/http/
test_routes.py`` compares it with the server's parsers).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from kumo.http.openapi import OPENAPI
from kumo.http.routes import OPENAPI_PATH
from tests.live_server import build_queued, running_server

EXAMPLES = 30
"""Examples per operation: each costs one request to the server."""
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
EXCLUDED = [positive_data_acceptance]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server holding a few hundred messages, so that inspection finds some."""
    data_dir = tmp_path_factory.mktemp("schemathesis") / "data"
    build_queued(data_dir, 300, queues=3)
    with running_server(data_dir) as url:
        yield url


@pytest.fixture(scope="module")
def api(served: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(served + OPENAPI_PATH)


OPERATIONS = [
    (path, method)
    for path, item in OPENAPI["paths"].items()
    for method in item
    if method in ("get", "post", "delete")
]


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_every_operation_answers_as_its_document_says(
    api: schemathesis.BaseSchema, path: str, method: str
) -> None:
    # schemathesis's own pytest plugin does not run under pytest 9: one Hypothesis test
    # per operation, built here, does what it would.
    operation = api[path][method]

    @given(case=operation.as_strategy())
    @SETTINGS
    def fuzz(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(excluded_checks=EXCLUDED)

    fuzz()


def test_issued_rules_and_suspensions_can_be_cancelled_by_their_links(
    api: schemathesis.BaseSchema,
) -> None:
    machine = api.as_state_machine()
    assert machine.bundles, "the document has no links to follow"

    class Workflow(machine):  # type: ignore[misc,valid-type]
        def validate_response(
            self,
            response: schemathesis.Response,
            case: schemathesis.Case[Any],
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            case.validate_response(
                response,
                additional_checks=additional_checks,
                excluded_checks=EXCLUDED,
                transport_kwargs=kwargs,
            )

    Workflow.run(settings=settings(SETTINGS, max_examples=15, stateful_step_count=6))


def test_the_document_links_each_issuing_post_to_its_cancel(served: str) -> None:
    document = httpx.get(served + OPENAPI_PATH).json()
    for path in ("/api/admin/bounce/v1", "/api/admin/suspend/v1"):
        [link] = document["paths"][path]["post"]["responses"]["200"]["links"].values()
        assert link["requestBody"] == {"id": "$response.body#/id"}
        pointer = link["operationRef"].removeprefix("#/paths/")
        target, method = pointer.rsplit("/", 1)
        assert target.replace("~1", "/").replace("~0", "~") == path
        assert method == "delete"

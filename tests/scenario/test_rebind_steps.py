"""Scenario steps for rebinds: ``rebind`` (and its dry run), ``expect.rebinds`` and
``admin_rebinds``, a ``cancel`` naming a rebind refused; parsed, compared and run in
process."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from kumo.model.log_record import rebind_content
from kumo.scenario.expect import (
    Observation,
    Verdict,
    check_issue_reply,
    evaluate,
    rebound_from,
)
from kumo.scenario.format import (
    Bounce,
    Expect,
    RebindExpectation,
    ScenarioError,
    parse_scenario,
)
from kumo.scenario.report import format_result
from kumo.scenario.runner import ScenarioResult, run_in_process

SOURCE = "scenarios/rebind.toml"
REROUTE = """
[[step]]
name = "reroute"
[step.rebind]
domain = "example.com"
reason = "via relay"
data = { routing_domain = "relay.example" }
"""


def parse(text: str) -> list[object]:
    return [step.action for step in parse_scenario(textwrap.dedent(text), SOURCE).steps]


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(textwrap.dedent(text), SOURCE)
    return str(caught.value)


def test_a_rebind_step_is_the_admin_verbs_shape_and_its_expectations_find_its_reason() -> None:
    rebind, dry, expect = parse(
        REROUTE
        + """
        [[step]]
        name = "peek"
        rebind = { campaign = "c", reason = "r", data = {}, always_flush = true, dry_run = true }
        expect_body_contains = '"total_moving":0'

        [[step]]
        [step.expect]
        admin_rebinds = 3
        [[step.expect.rebinds]]
        rebind = "reroute"
        moved = { "example.com" = 3 }
        moved_to = { "example.com!relay.example" = 3 }
        total_moved = 3
        """
    )
    assert rebind == Bounce(
        {
            "domain": "example.com",
            "reason": "via relay",
            "data": {"routing_domain": "relay.example"},
        },
        verb="rebind",
    )
    assert isinstance(dry, Bounce)
    assert (dry.verb, dry.dry_run) == ("rebind", True)
    assert isinstance(expect, Expect)
    assert expect.record_counts == {"admin_rebinds": 3}
    assert expect.rebinds == (
        RebindExpectation(
            "reroute",
            "via relay",
            moved={"example.com": 3},
            moved_to={"example.com!relay.example": 3},
            total_moved=3,
        ),
    )
    assert expect.needs_records


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            REROUTE + '\n[[step]]\ncancel = "reroute"\n',
            f"{SOURCE}:10: step 2 (cancel): step 'reroute' is a rebind step: a rebind is "
            "done once and has nothing to cancel",
        ),
        (
            REROUTE + '\n[[step]]\nrebind = { reason = "r", data = {} }\nexpires_in = "1h"\n',
            f"{SOURCE}:11: step 2 (rebind): unknown key 'expires_in' (expected one "
            "of: name, note, rebind, expect_status, expect_body, expect_body_starts_with, "
            "expect_body_contains)",
        ),
        (
            REROUTE + '\n[[step]]\nexpect = { rules = [{ rule = "reroute" }] }\n',
            f"{SOURCE}:10: step 2 (expect): step 'reroute' is a rebind step, not a bounce",
        ),
        (
            '[[step]]\nname = "hold"\nsuspend = { reason = "r" }\n\n'
            '[[step]]\nexpect = { rebinds = [{ rebind = "hold" }] }\n',
            f"{SOURCE}:6: step 2 (expect): step 'hold' is a suspend step, not a rebind",
        ),
        (
            '[[step]]\nname = "peek"\nrebind = { reason = "r", data = {}, dry_run = true }\n\n'
            '[[step]]\nexpect = { rebinds = [{ rebind = "peek" }] }\n',
            f"{SOURCE}:6: step 2 (expect): step 'peek' is a dry run: it issued nothing",
        ),
        (
            '[[step]]\nname = "odd"\nrebind = { reason = 7, data = {} }\nexpect_status = 422\n\n'
            '[[step]]\nexpect = { rebinds = [{ rebind = "odd" }] }\n',
            f"{SOURCE}:7: step 2 (expect): rebind step 'odd' has no reason to find its records by",
        ),
        (
            REROUTE + '\n[[step]]\nexpect = { rebinds = [{ rebind = "reroute", to = {} }] }\n',
            f"{SOURCE}:10: step 2 (expect): unknown key 'to' in expect.rebinds[0] (expected "
            "one of: rebind, moved, moved_to, total_moved)",
        ),
    ],
)
def test_errors_name_the_file_the_line_and_the_step(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_a_rebind_reply_is_kumomtas_empty_object_and_keeps_no_id() -> None:
    rebind = Bounce({"reason": "r", "data": {}}, verb="rebind")
    checks, rule_id = check_issue_reply(rebind, "{}")
    assert rule_id is None
    assert [c.verdict for c in checks] == [Verdict.PASSED]
    checks, _ = check_issue_reply(rebind, '{"id": "x"}')
    assert checks[0].failed
    dry = Bounce({"reason": "r", "data": {}, "dry_run": True}, verb="rebind")
    checks, _ = check_issue_reply(dry, '{"dry_run": true, "total_messages": 2}')
    assert not any(c.failed for c in checks)
    checks, _ = check_issue_reply(dry, "{}")
    assert any(c.failed for c in checks)  # rebound for real: not a dry run


def record(old: str, new: str, reason: str) -> dict[str, Any]:
    content = rebind_content(old, new, reason)
    return {"type": "AdminRebind", "queue": new, "response": {"content": content}}


def test_a_rebinds_records_are_told_apart_by_its_reason() -> None:
    assert (
        rebound_from(rebind_content("a.example", "a.example!r", "x: y"), "a.example!r", "x: y")
        == "a.example"
    )
    assert rebound_from(rebind_content("a", "b", "why\r\nnot"), "b", "why\r\nnot") == "a"
    assert rebound_from(rebind_content("a", "b", "other"), "b", "why") is None
    assert rebound_from("Administrator bounced with reason: why", "b", "why") is None
    assert rebound_from(None, "b", "why") is None
    records: list[dict[str, Any]] = [
        record("example.com", "example.com!relay", "mine"),
        record("example.com", "example.com!relay", "mine"),
        record("acme@example.com", "acme@example.com!relay", "mine"),
        record("example.com", "example.com!relay", "someone else's"),
        {"type": "AdminBounce", "queue": "example.com", "response": {"content": "mine"}},
    ]
    expect = Expect(
        rebinds=(
            RebindExpectation(
                "move",
                "mine",
                moved={"example.com": 2, "acme@example.com": 1, "gone.example": 0},
                moved_to={"example.com!relay": 3},
                total_moved=4,
            ),
        )
    )
    failures = {
        c.what: (c.expected, c.actual)
        for c in evaluate(expect, Observation(records=records), {})
        if c.failed
    }
    assert failures == {
        "rebinds[move].moved_to": (
            '{"example.com!relay": 3}',
            '{"acme@example.com!relay": 1, "example.com!relay": 2}',
        ),
        "rebinds[move].total_moved": ("4", "3"),
    }
    skipped = evaluate(expect, Observation(records_note="no --log-dir"), {})
    assert [(c.what, c.verdict) for c in skipped] == [("rebinds[move]", Verdict.SKIPPED)]


def run_text(text: str) -> ScenarioResult:
    return run_in_process(parse_scenario(textwrap.dedent(text), "test.toml"))


def test_a_rebind_run_in_process_moves_the_mail_and_reports_what_differs() -> None:
    result = run_text(
        """
        [[step]]
        destination = { domain = "example.com", answer = "451 4.3.0 later" }

        [[step]]
        destination = { domain = "relay.example", answer = "accept" }

        [[step]]
        inject = { count = 3, domain = "example.com" }

        [[step]]
        name = "reroute"
        [step.rebind]
        domain = "example.com"
        reason = "via relay"
        data = { routing_domain = "relay.example" }

        [[step]]
        name = "wrong"
        [step.expect]
        admin_rebinds = 4
        rebinds = [{ rebind = "reroute", moved = { "example.com" = 2 } }]

        [[step]]
        [step.expect]
        deliveries = 3
        queued_total = 0
        rebinds = [{ rebind = "reroute", total_moved = 3 }]

        [[step]]
        name = "refused"
        rebind = { reason = "r", data = { colour = "red" } }
        expect_status = 422
        expect_body_contains = "kumo cannot rebind `colour`"
        """
    )
    verdicts = [step.verdict for step in result.steps]
    expected = [Verdict.PASSED] * 4 + [Verdict.FAILED] + [Verdict.PASSED] * 2
    assert verdicts == expected, format_result(result)
    failures = {c.what: (c.expected, c.actual) for c in result.steps[4].failures}
    assert failures == {
        'admin_rebinds where type = "AdminRebind"': ("4", "3"),
        "rebinds[reroute].moved": ('{"example.com": 2}', '{"example.com": 3}'),
    }
    assert 'step 4 "reroute" (rebind)' in format_result(result)

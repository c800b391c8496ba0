"""Scenario steps for suspensions (and the shape other admin verbs join): ``suspend``,
``cancel`` of a suspension, ``expect.suspensions`` and ``held``, dry runs; parsed,
compared and run in process."""

from __future__ import annotations

import textwrap

import pytest

from kumo.http.routes import BOUNCE_PATH, REBIND_PATH, SUSPEND_PATH, SUSPEND_READY_Q_PATH
from kumo.scenario.expect import (
    Observation,
    Verdict,
    cancel_reply_text,
    check_issue_reply,
    evaluate,
    record_matches,
)
from kumo.scenario.format import (
    ADMIN_VERBS,
    Bounce,
    Cancel,
    Expect,
    RuleExpectation,
    ScenarioError,
    parse_scenario,
)
from kumo.scenario.report import format_result
from kumo.scenario.runner import ScenarioResult, run_in_process

SOURCE = "scenarios/verbs.toml"
ID = "0b9e2a9c-8d43-4c7e-9a55-0d4f3c1e2b7a"


def parse(text: str) -> list[object]:
    return [step.action for step in parse_scenario(textwrap.dedent(text), SOURCE).steps]


def error_of(text: str) -> str:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(textwrap.dedent(text), SOURCE)
    return str(caught.value)


def test_every_admin_verb_has_a_path() -> None:
    assert {name: verb.path for name, verb in ADMIN_VERBS.items()} == {
        "bounce": BOUNCE_PATH,
        "suspend": SUSPEND_PATH,
        "rebind": REBIND_PATH,
        "suspend-ready-q": SUSPEND_READY_Q_PATH,
    }
    assert [name for name, verb in ADMIN_VERBS.items() if not verb.cancellable] == ["rebind"]


def test_suspend_and_its_cancel_share_the_bounce_steps_shape() -> None:
    suspend, dry, cancel, literal, expect = parse(
        """
        [[step]]
        name = "hold"
        suspend = { domain = "example.com", reason = "mx down" }
        expires_in = "1h"
        expect_status = 200

        [[step]]
        name = "would hold"
        suspend = { domain = "example.com", reason = "r", dry_run = true }

        [[step]]
        cancel = "hold"

        [[step]]
        cancel = { id = "0b9e2a9c-8d43-4c7e-9a55-0d4f3c1e2b7a", verb = "suspend" }
        expect_status = 404

        [[step]]
        [step.expect]
        held = 3
        suspension_count = 1
        suspensions = [{ suspension = "hold", domain = "example.com", unset = ["tenant"] }]
        """
    )
    assert suspend == Bounce(
        {"domain": "example.com", "reason": "mx down"}, 3600 * 10**9, verb="suspend"
    )
    assert isinstance(dry, Bounce)
    assert dry.dry_run
    assert not suspend.dry_run
    assert cancel == Cancel("hold", None, verb="suspend")
    assert isinstance(literal, Cancel)
    assert (literal.id, literal.verb) == (ID, "suspend")
    assert isinstance(expect, Expect)
    assert (expect.held, expect.suspension_count) == (3, 1)
    assert expect.suspensions == (
        RuleExpectation("hold", fields={"domain": "example.com"}, unset=("tenant",)),
    )
    assert expect.needs_suspensions
    assert expect.needs_records
    assert not expect.needs_listing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """
            [[step]]
            name = "hold"
            suspend = { domain = "d", reason = "r" }

            [[step]]
            expect = { rules = [{ rule = "hold" }] }
            """,
            f"{SOURCE}:7: step 2 (expect): step 'hold' is a suspend step, not a bounce",
        ),
        (
            """
            [[step]]
            name = "rule"
            bounce = { domain = "d", reason = "r" }

            [[step]]
            expect = { suspensions = [{ suspension = "rule" }] }
            """,
            f"{SOURCE}:7: step 2 (expect): step 'rule' is a bounce step, not a suspend",
        ),
        (
            """
            [[step]]
            name = "peek"
            bounce = { domain = "d", reason = "r", dry_run = true }

            [[step]]
            cancel = "peek"
            """,
            f"{SOURCE}:7: step 2 (cancel): step 'peek' is a dry run: it issued nothing",
        ),
        (
            """
            [[step]]
            cancel = { id = "x", verb = "rebind" }
            """,
            f"{SOURCE}:3: step 1 (cancel): cancel.verb must be one of bounce, suspend, "
            "suspend-ready-q, got 'rebind'",
        ),
        (
            """
            [[step]]
            name = "hold"
            suspend = { domain = "d", reason = "r" }

            [[step]]
            cancel = { rule = "hold", verb = "bounce" }
            """,
            f"{SOURCE}:7: step 2 (cancel): cancel takes the verb of the step it names: "
            "leave verb out",
        ),
        (
            """
            [[step]]
            name = "hold"
            suspend = { domain = "d", reason = "r" }

            [[step]]
            [step.expect]
            suspensions = [{ suspension = "hold", bounced = { d = 1 } }]
            """,
            f"{SOURCE}:8: step 2 (expect): unknown key 'bounced' in expect.suspensions[0] "
            "(expected one of: suspension, present, reason, campaign, tenant, domain, "
            "routing_domain, unset, queue_names, remaining)",
        ),
    ],
)
def test_errors_name_the_file_the_line_and_the_step(text: str, expected: str) -> None:
    assert error_of(text) == expected


def test_replies_of_each_verb_and_of_a_dry_run() -> None:
    suspend = Bounce({"reason": "r"}, verb="suspend")
    checks, rule_id = check_issue_reply(suspend, f'{{"id": "{ID}"}}')
    assert rule_id == ID
    assert all(c.verdict is Verdict.PASSED for c in checks)
    checks, rule_id = check_issue_reply(suspend, '{"id": 7}')
    assert rule_id is None
    assert checks[0].failed
    dry = Bounce({"reason": "r", "dry_run": True})
    checks, rule_id = check_issue_reply(dry, '{"dry_run": true, "total_messages": 3}')
    assert rule_id is None
    assert not any(c.failed for c in checks)
    checks, _ = check_issue_reply(dry, f'{{"id": "{ID}", "bounced": {{}}, "total_bounced": 0}}')
    assert any(c.failed for c in checks)  # the server issued it: not a dry run
    assert cancel_reply_text(404, ID, "suspend") == f"suspend entry {ID} not found"
    assert cancel_reply_text(404, ID) == f"bounce entry {ID} not found"


def test_held_records_and_the_suspension_listing_are_compared() -> None:
    held = {
        "type": "TransientFailure",
        "response": {"content": "KumoMTA internal: scheduled queue is suspended: r"},
    }
    attempt = {"type": "TransientFailure", "response": {"content": "451 try later"}}
    assert record_matches(held, {"suspended": True})
    assert not record_matches(attempt, {"suspended": True})
    assert record_matches(attempt, {"suspended": False})
    expect = Expect(
        suspensions=(RuleExpectation("hold", fields={"reason": "r"}),),
        suspension_count=2,
        held=1,
    )
    seen = Observation(suspensions=[{"id": ID, "reason": "other"}], records=[held, attempt, held])
    failures = {
        c.what: (c.expected, c.actual) for c in evaluate(expect, seen, {"hold": ID}) if c.failed
    }
    assert failures == {
        "suspensions[hold].reason": ('"r"', '"other"'),
        "suspension_count": ("2", "1"),
        'held where type = "TransientFailure", suspended = true': ("1", "2"),
    }


def run_text(text: str) -> ScenarioResult:
    return run_in_process(parse_scenario(textwrap.dedent(text), "test.toml"))


def test_a_suspension_run_in_process_reports_what_differs() -> None:
    result = run_text(
        """
        [[step]]
        destination = { domain = "example.com", answer = "accept" }

        [[step]]
        name = "hold"
        suspend = { domain = "example.com", reason = "r", duration = "1h" }

        [[step]]
        inject = { count = 2, domain = "example.com" }

        [[step]]
        name = "wrong"
        expect = { held = 3, suspensions = [{ suspension = "hold", reason = "x" }] }

        [[step]]
        cancel = "hold"

        [[step]]
        name = "again"
        cancel = "hold"
        expect_status = 404

        [[step]]
        expect = { deliveries = 2, held = 2, suspension_count = 0 }
        """
    )
    verdicts = [step.verdict for step in result.steps]
    assert verdicts == [Verdict.PASSED] * 3 + [Verdict.FAILED] + [Verdict.PASSED] * 3, (
        format_result(result)
    )
    failures = {c.what: (c.expected, c.actual) for c in result.steps[3].failures}
    assert failures == {
        'held where type = "TransientFailure", suspended = true': ("3", "2"),
        "suspensions[hold].reason": ('"x"', '"r"'),
    }
    report = format_result(result)
    assert 'step 2 "hold" (suspend)' in report
    assert "step 5 (cancel): suspend 'hold'" in report


def test_a_failed_suspend_fails_the_steps_that_use_its_id() -> None:
    result = run_text(
        """
        [[step]]
        name = "hold"
        suspend = { domian = "example.com", reason = "typo" }
        expect_status = 200

        [[step]]
        cancel = "hold"
        """
    )
    assert [step.verdict for step in result.steps] == [Verdict.FAILED] * 2
    assert result.steps[0].failures[0].actual == "422"
    assert "that suspend failed" in result.steps[1].failures[0].actual

"""Pure comparisons: replies, the GET listing, queue gauges and delivery-log records."""

from __future__ import annotations

from typing import Any

from kumo.scenario.expect import (
    Observation,
    Verdict,
    cancel_reply_text,
    check_bounce_reply,
    check_reply,
    evaluate,
    record_matches,
)
from kumo.scenario.format import Expect, RecordExpectation, ReplyCheck, RuleExpectation

MINUTE = 60 * 10**9
RULE_ID = "0b9e2a9c-8d43-4c7e-9a55-0d4f3c1e2b7a"


def entry(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": RULE_ID,
        "campaign": None,
        "tenant": None,
        "domain": "example.com",
        "routing_domain": None,
        "reason": "r",
        "duration": "4m 59s",
        "bounced": {"example.com": 3},
        "total_bounced": 3,
    }
    return base | fields


def verdicts(expect: Expect, seen: Observation, slack: int = 0) -> dict[str, Verdict]:
    checks = evaluate(expect, seen, {"rule": RULE_ID, "failed": None}, remaining_slack=slack)
    return {check.what: check.verdict for check in checks}


def test_reply_status_and_body_checks() -> None:
    expected = ReplyCheck(415, body_starts_with="Expected request", body_contains="json")
    checks = check_reply(expected, 415, "Expected request with `Content-Type: application/json`")
    assert [c.verdict for c in checks] == [Verdict.PASSED] * 3
    checks = check_reply(expected, 400, "Failed to parse")
    assert [c.what for c in checks if c.failed] == ["status", "body starts with", "body contains"]
    assert checks[0].expected == "415"
    assert checks[0].actual == "400"


def test_default_body_applies_only_without_other_body_checks() -> None:
    text = cancel_reply_text(404, RULE_ID)
    assert text == f"bounce entry {RULE_ID} not found"
    assert cancel_reply_text(200, RULE_ID) == f"removed {RULE_ID}"
    [_, body] = check_reply(ReplyCheck(404), 404, "not found", default_body=text)
    assert body.failed
    assert body.expected == f'"{text}"'
    checks = check_reply(
        ReplyCheck(404, body_starts_with="bounce entry"), 404, text, default_body="other"
    )
    assert not any(check.failed for check in checks)


def test_bounce_reply_shape() -> None:
    checks, rule_id = check_bounce_reply(
        f'{{"id": "{RULE_ID}", "bounced": {{}}, "total_bounced": 0}}'
    )
    assert rule_id == RULE_ID
    assert not any(check.failed for check in checks)
    checks, rule_id = check_bounce_reply('{"id": "x", "bounced": {"a": 1}, "total_bounced": 1}')
    assert [check.what for check in checks if check.failed] == ["id", "bounced", "total_bounced"]
    checks, rule_id = check_bounce_reply("oops")
    assert rule_id is None
    assert checks[0].failed


def test_rule_expectations() -> None:
    expect = Expect(
        rules=(
            RuleExpectation(
                "rule",
                fields={"domain": "example.com", "reason": "r"},
                unset=("tenant",),
                remaining=5 * MINUTE,
                bounced={"example.com": 3, "other.example": 0},
                total_bounced=3,
            ),
        ),
        rule_count=1,
        total_bounced=3,
    )
    seen = Observation(listing=[entry()])
    assert set(verdicts(expect, seen, slack=MINUTE).values()) == {Verdict.PASSED}
    # Without slack the 1-second shortfall fails; over the expected value always fails.
    assert verdicts(expect, seen)["rules[rule].remaining"] is Verdict.FAILED
    too_long = Observation(listing=[entry(duration="5m 1s")])
    assert verdicts(expect, too_long, slack=MINUTE)["rules[rule].remaining"] is Verdict.FAILED
    garbled = Observation(listing=[entry(duration="soon")])
    assert verdicts(expect, garbled, slack=MINUTE)["rules[rule].remaining"] is Verdict.FAILED


def test_absent_and_missing_rules() -> None:
    absent = Expect(rules=(RuleExpectation("rule", present=False),))
    assert verdicts(absent, Observation(listing=[]))["rules[rule]"] is Verdict.PASSED
    assert verdicts(absent, Observation(listing=[entry()]))["rules[rule]"] is Verdict.FAILED
    present = Expect(rules=(RuleExpectation("rule", bounced={}),))
    result = verdicts(present, Observation(listing=[]))
    assert result == {"rules[rule]": Verdict.FAILED}  # nothing more to compare
    failed_bounce = Expect(rules=(RuleExpectation("failed"),))
    [check] = evaluate(failed_bounce, Observation(listing=[]), {"failed": None})
    assert check.failed
    assert "that bounce failed" in check.actual


def test_queue_gauges() -> None:
    expect = Expect(queues={"a.example": 2, "gone.example": 0}, queued_total=5)
    seen = Observation(scheduled={"a.example": 2, "b.example": 3})
    assert set(verdicts(expect, seen).values()) == {Verdict.PASSED}
    checks = evaluate(expect, Observation(metrics_error="401: no"), {})
    assert [check.failed for check in checks] == [True]


def test_records_are_skipped_when_unavailable() -> None:
    expect = Expect(admin_bounces=2, records=(RecordExpectation(1, {"queue": "a"}),))
    checks = evaluate(expect, Observation(records_note="no --log-dir"), {})
    assert [check.verdict for check in checks] == [Verdict.SKIPPED] * 2
    assert checks[0].actual == "no --log-dir"


def test_record_counts() -> None:
    records: list[dict[str, Any]] = [
        {"type": "Reception", "queue": "a", "recipient": "x@A.example"},
        {
            "type": "AdminBounce",
            "queue": "a",
            "recipient": "x@A.example",
            "response": {"code": 551, "content": "Administrator bounced with reason: r  s"},
        },
    ]
    expect = Expect(
        admin_bounces=1,
        records=(
            RecordExpectation(1, {"reason": "r\r\n s", "recipient_domain": "a.example"}),
            RecordExpectation(1, {"type": "Reception"}),
            RecordExpectation(0, {"response.code": 550}),
        ),
    )
    checks = evaluate(expect, Observation(records=records), {})
    assert not any(check.failed for check in checks)
    assert checks[1].what == (
        'records[0] where reason = "r\\r\\n s", recipient_domain = "a.example", '
        'type = "AdminBounce"'
    )


def test_record_matching_is_exact() -> None:
    record = {"flag": True, "n": 1, "nested": {"k": None}}
    assert record_matches(record, {"flag": True, "nested.k": None})
    assert not record_matches(record, {"flag": 1})  # a bool is not a number
    assert not record_matches(record, {"n": True})
    assert not record_matches(record, {"missing": None})
    assert not record_matches(record, {"n.deeper": 1})


def failure(age: int, attempts: int) -> dict[str, Any]:
    created = 1_767_225_600
    return {
        "type": "TransientFailure",
        "timestamp": created + age,
        "created": created,
        "num_attempts": attempts,
    }


def test_counts_of_each_mail_path_record_type() -> None:
    records: list[dict[str, Any]] = [
        {"type": "Delivery"},
        {"type": "Delivery"},
        failure(0, 0),
        {"type": "Bounce"},
        {"type": "Expiration"},
    ]
    expect = Expect(
        admin_bounces=0,
        record_counts={"deliveries": 2, "transient_failures": 1, "bounces": 1, "expirations": 2},
    )
    checks = evaluate(expect, Observation(records=records), {})
    assert [(c.what, c.expected, c.actual, c.verdict) for c in checks] == [
        ('admin_bounces where type = "AdminBounce"', "0", "0", Verdict.PASSED),
        ('deliveries where type = "Delivery"', "2", "2", Verdict.PASSED),
        ('transient_failures where type = "TransientFailure"', "1", "1", Verdict.PASSED),
        ('bounces where type = "Bounce"', "1", "1", Verdict.PASSED),
        ('expirations where type = "Expiration"', "2", "1", Verdict.FAILED),
    ]
    skipped = evaluate(expect, Observation(records_note="no --log-dir"), {})
    assert [c.verdict for c in skipped] == [Verdict.SKIPPED] * 5


def test_record_ages_in_log_order() -> None:
    records = [failure(0, 0), {"type": "Reception"}, failure(30, 1), failure(90, 2)]
    wanted = RecordExpectation(None, {"type": "TransientFailure"}, ages=(0, 30, 90))
    checks = evaluate(Expect(records=(wanted,)), Observation(records=records), {})
    assert [(c.what, c.expected, c.actual, c.verdict) for c in checks] == [
        ('records[0] where type = "TransientFailure"', "3", "3", Verdict.PASSED),
        (
            'records[0] where type = "TransientFailure": ages',
            "[0, 30, 90]",
            "[0, 30, 90]",
            Verdict.PASSED,
        ),
    ]
    # One second off fails exactly, and passes with a second of slack (a live target's).
    late = [failure(0, 0), failure(31, 1), failure(90, 2)]
    checks = evaluate(Expect(records=(wanted,)), Observation(records=late), {})
    assert [c.verdict for c in checks] == [Verdict.PASSED, Verdict.FAILED]
    checks = evaluate(Expect(records=(wanted,)), Observation(records=late), {}, age_slack=1)
    assert [c.verdict for c in checks] == [Verdict.PASSED, Verdict.PASSED]
    assert checks[1].expected == "[0, 30, 90] (each within 1 s)"
    # A record missing, or one without its times, fails.
    for seen in ([failure(0, 0), failure(30, 1)], [*late[:2], {"type": "TransientFailure"}]):
        checks = evaluate(Expect(records=(wanted,)), Observation(records=seen), {})
        assert checks[1].verdict is Verdict.FAILED

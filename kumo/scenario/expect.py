"""Comparing what a server shows with what a scenario step expects. No I/O.

Every comparison yields :class:`Check` values (what was compared, expected, actual, and
the verdict), so that a report can show each one. The runner gathers the observations
(replies, the GET listing, ``/metrics``, delivery-log records) and calls in here.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import attrs

from kumo.model.duration import DurationError, format_duration, parse_duration
from kumo.model.log_record import SUSPENDED_PREFIX, bounce_content
from kumo.model.smtp_reply import flatten_content
from kumo.scenario.format import (
    ADMIN_VERBS,
    RECORD_COUNTS,
    Bounce,
    Expect,
    RebindExpectation,
    RecordExpectation,
    ReplyCheck,
    RuleExpectation,
)

ADMIN_BOUNCE: Final = "AdminBounce"
ADMIN_REBIND: Final = "AdminRebind"
_REBOUND_FROM: Final = "Rebound from "


class Verdict(enum.Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@attrs.frozen
class Check:
    """One comparison: ``what`` was compared, what was expected, what was seen."""

    what: str
    expected: str
    actual: str
    verdict: Verdict

    @property
    def failed(self) -> bool:
        return self.verdict is Verdict.FAILED


def compare(what: str, expected: object, actual: object) -> Check:
    """A check that passes when ``expected == actual``."""
    verdict = Verdict.PASSED if expected == actual else Verdict.FAILED
    return Check(what, show(expected), show(actual), verdict)


def skipped(what: str, why: str) -> Check:
    return Check(what, "", why, Verdict.SKIPPED)


def failed(what: str, expected: str, actual: str) -> Check:
    return Check(what, expected, actual, Verdict.FAILED)


def show(value: object) -> str:
    """A value as a report prints it: JSON, keys sorted, so that dicts compare by eye."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=_fallback)
    except (TypeError, ValueError):
        return repr(value)


def _fallback(value: object) -> object:
    if isinstance(value, frozenset | set):
        return sorted(value, key=str)
    raise TypeError(type(value).__name__)


def _abbreviate(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


# -- replies ----------------------------------------------------------------------------


def check_reply(
    expected: ReplyCheck, status: int, body: str, *, default_body: str | None = None
) -> list[Check]:
    """The status, then the body checks the step gives (``default_body`` if it gives none)."""
    checks = [compare("status", expected.status, status)]
    exact = expected.body
    if exact is None and default_body is not None and status == expected.status:
        has_other = expected.body_starts_with is not None or expected.body_contains is not None
        exact = None if has_other else default_body
    if exact is not None:
        checks.append(compare("body", exact, body))
    if expected.body_starts_with is not None:
        prefix = expected.body_starts_with
        checks.append(
            Check(
                "body starts with",
                show(prefix),
                show(_abbreviate(body)),
                Verdict.PASSED if body.startswith(prefix) else Verdict.FAILED,
            )
        )
    if expected.body_contains is not None:
        part = expected.body_contains
        checks.append(
            Check(
                "body contains",
                show(part),
                show(_abbreviate(body)),
                Verdict.PASSED if part in body else Verdict.FAILED,
            )
        )
    return checks


def check_inject_reply(status: int, body: str, expected_count: int) -> list[Check]:
    """A 200 inject reply counts every recipient a success and none a failure."""
    try:
        data = json.loads(body)
    except ValueError:
        return [failed("reply", "a JSON object", show(_abbreviate(body)))]
    if not isinstance(data, dict):
        return [failed("reply", "a JSON object", show(data))]
    return [
        compare("success_count", expected_count, data.get("success_count")),
        compare("fail_count", 0, data.get("fail_count")),
    ]


def check_bounce_reply(body: str) -> tuple[list[Check], str | None]:
    """A 200 bounce reply: ``{"id": <uuid4>, "bounced": {}, "total_bounced": 0}``.

    Returns the checks and the id, when the reply has a usable one.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return [failed("reply", "a JSON object", show(_abbreviate(body)))], None
    if not isinstance(data, dict):
        return [failed("reply", "a JSON object", show(data))], None
    rule_id = data.get("id")
    checks = [
        Check(
            "id",
            "a UUID",
            show(rule_id),
            Verdict.PASSED if is_uuid(rule_id) else Verdict.FAILED,
        ),
        compare("bounced", {}, data.get("bounced")),
        compare("total_bounced", 0, data.get("total_bounced")),
    ]
    return checks, rule_id if isinstance(rule_id, str) else None


def check_issue_reply(action: Bounce, body: str) -> tuple[list[Check], str | None]:
    """A 200 reply to an admin verb's step: a bounce's shape (:func:`check_bounce_reply`),
    ``{"id": <uuid>}`` for a suspension, ``{}`` for a one-shot verb (rebind: no id), or,
    for a dry run, ``{"dry_run": true, ...}`` (and no id). Returns the checks and the id."""
    if action.verb == "bounce" and not action.dry_run:
        return check_bounce_reply(body)
    try:
        data = json.loads(body)
    except ValueError:
        return [failed("reply", "a JSON object", show(_abbreviate(body)))], None
    if not isinstance(data, dict):
        return [failed("reply", "a JSON object", show(data))], None
    if action.dry_run:
        checks = [compare("dry_run", True, data.get("dry_run"))]
        checks.append(
            Check(
                "total_messages",
                "a count",
                show(data.get("total_messages")),
                Verdict.PASSED if isinstance(data.get("total_messages"), int) else Verdict.FAILED,
            )
        )
        return checks, None
    if not ADMIN_VERBS[action.verb].cancellable:
        return [compare("reply", {}, data)], None
    rule_id = data.get("id")
    check = Check(
        "id", "a UUID", show(rule_id), Verdict.PASSED if is_uuid(rule_id) else Verdict.FAILED
    )
    return [check], rule_id if isinstance(rule_id, str) else None


def is_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def cancel_reply_text(status: int, rule_id: str, verb: str = "bounce") -> str | None:
    """What DELETE answers for ``rule_id`` at ``verb``'s path: KumoMTA's texts
    (docs/rules.md; ``suspend entry <id> not found`` for a suspension)."""
    if status == 200:
        return f"removed {rule_id}"
    if status == 404:
        return f"{verb} entry {rule_id} not found"
    return None


# -- /metrics ---------------------------------------------------------------------------

# -- expect steps -----------------------------------------------------------------------


@attrs.frozen
class Observation:
    """What the runner saw for one ``expect`` step; ``None`` where it did not look.

    ``records_note`` says why records are missing when the target cannot read them.
    """

    listing: Sequence[Mapping[str, Any]] | None = None
    listing_error: str | None = None
    scheduled: Mapping[str, int] | None = None
    metrics_error: str | None = None
    records: Sequence[Mapping[str, Any]] | None = None
    records_note: str | None = None
    suspensions: Sequence[Mapping[str, Any]] | None = None
    """GET /api/admin/suspend/v1's listing."""
    suspensions_error: str | None = None


def evaluate(
    expect: Expect,
    seen: Observation,
    rule_ids: Mapping[str, str | None],
    *,
    remaining_slack: int = 0,
    age_slack: int = 0,
) -> list[Check]:
    """Every check ``expect`` asks for, against ``seen``.

    ``rule_ids`` maps bounce step names to the ids they got (``None``: the bounce
    failed). ``remaining`` passes when the listed remaining lifetime is at most the
    expected value and at least ``remaining_slack`` ns less; a record's age (``ages``)
    when it is within ``age_slack`` seconds of the expected one.
    """
    checks: list[Check] = []
    if expect.needs_listing:
        if seen.listing is None:
            checks.append(
                failed("GET /api/admin/bounce/v1", "a JSON array", seen.listing_error or "?")
            )
        else:
            listing = seen.listing
            for rule in expect.rules:
                checks.extend(_check_rule(rule, listing, rule_ids.get(rule.rule), remaining_slack))
            if expect.rule_count is not None:
                checks.append(compare("rule_count", expect.rule_count, len(listing)))
            if expect.total_bounced is not None:
                total = sum(_as_int(entry.get("total_bounced")) for entry in listing)
                checks.append(compare("total_bounced", expect.total_bounced, total))
    if expect.needs_suspensions:
        if seen.suspensions is None:
            checks.append(
                failed("GET /api/admin/suspend/v1", "a JSON array", seen.suspensions_error or "?")
            )
        else:
            for rule in expect.suspensions:
                checks.extend(
                    _check_rule(
                        rule,
                        seen.suspensions,
                        rule_ids.get(rule.rule),
                        remaining_slack,
                        noun="suspensions",
                        verb="suspend",
                    )
                )
            if expect.suspension_count is not None:
                checks.append(
                    compare("suspension_count", expect.suspension_count, len(seen.suspensions))
                )
    if expect.needs_metrics:
        if seen.scheduled is None:
            checks.append(
                failed("GET /metrics", "scheduled_count gauges", seen.metrics_error or "?")
            )
        else:
            checks.extend(_check_queues(expect, seen.scheduled))
    if expect.needs_records:
        checks.extend(_check_records(expect, seen, age_slack))
    return checks


def _as_int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _check_rule(
    rule: RuleExpectation,
    listing: Sequence[Mapping[str, Any]],
    rule_id: str | None,
    slack: int,
    *,
    noun: str = "rules",
    verb: str = "bounce",
) -> list[Check]:
    prefix = f"{noun}[{rule.rule}]"
    if rule_id is None:
        return [
            failed(prefix, f"the id of {verb} step " + show(rule.rule), f"none: that {verb} failed")
        ]
    entry = next((item for item in listing if item.get("id") == rule_id), None)
    listed = "listed" if entry is not None else "not listed"
    presence = Check(
        prefix,
        "listed" if rule.present else "not listed",
        f"{listed} (id {rule_id})",
        Verdict.PASSED if (entry is not None) == rule.present else Verdict.FAILED,
    )
    if entry is None or not rule.present:
        return [presence]
    checks = [presence]
    for key, expected in rule.fields.items():
        checks.append(compare(f"{prefix}.{key}", expected, entry.get(key)))
    for key in rule.unset:
        checks.append(compare(f"{prefix}.{key}", None, entry.get(key)))
    if rule.queue_names is not None:
        names = entry.get("queue_names")
        actual = sorted(names) if isinstance(names, list) else names
        checks.append(compare(f"{prefix}.queue_names", sorted(rule.queue_names), actual))
    if rule.remaining is not None:
        checks.append(
            _check_remaining(f"{prefix}.remaining", rule.remaining, entry.get("duration"), slack)
        )
    if rule.bounced is not None:
        expected_map = {queue: n for queue, n in rule.bounced.items() if n}
        actual_map = entry.get("bounced")
        checks.append(compare(f"{prefix}.bounced", expected_map, actual_map))
    if rule.total_bounced is not None:
        checks.append(
            compare(f"{prefix}.total_bounced", rule.total_bounced, entry.get("total_bounced"))
        )
    return checks


def _check_remaining(what: str, expected: int, actual: object, slack: int) -> Check:
    wanted = format_duration(expected)
    if slack:
        wanted = f"{format_duration(max(expected - slack, 0))} to {wanted}"
    if not isinstance(actual, str):
        return failed(what, wanted, show(actual))
    try:
        nanos = parse_duration(actual)
    except DurationError as error:
        return failed(what, wanted, f"{show(actual)} ({error})")
    ok = expected - slack <= nanos <= expected
    return Check(what, wanted, actual, Verdict.PASSED if ok else Verdict.FAILED)


def _check_queues(expect: Expect, scheduled: Mapping[str, int]) -> list[Check]:
    checks: list[Check] = []
    if expect.queues is not None:
        for queue, count in expect.queues.items():
            checks.append(compare(f"queues[{queue}]", count, scheduled.get(queue, 0)))
    if expect.queued_total is not None:
        checks.append(compare("queued_total", expect.queued_total, sum(scheduled.values())))
    return checks


def _check_records(expect: Expect, seen: Observation, age_slack: int) -> list[Check]:
    wanted: list[tuple[str, RecordExpectation]] = []
    if expect.admin_bounces is not None:
        wanted.append(("admin_bounces", RecordExpectation(expect.admin_bounces, {})))
    for key, count in expect.record_counts.items():
        wanted.append((key, RecordExpectation(count, {"type": RECORD_COUNTS[key]})))
    if expect.held is not None:
        where = {"type": "TransientFailure", "suspended": True}
        wanted.append(("held", RecordExpectation(expect.held, where)))
    for position, item in enumerate(expect.records):
        wanted.append((f"records[{position}]", item))
    if seen.records is None:
        why = seen.records_note or "the delivery log is not available"
        return [skipped(what, why) for what, _ in wanted] + [
            skipped(f"rebinds[{rebind.rebind}]", why) for rebind in expect.rebinds
        ]
    checks: list[Check] = []
    for what, item in wanted:
        checks.extend(_check_record(what, item, seen.records, age_slack))
    for rebind in expect.rebinds:
        checks.extend(_check_rebind(rebind, seen.records))
    return checks


def _check_rebind(rebind: RebindExpectation, records: Iterable[Mapping[str, Any]]) -> list[Check]:
    """What a rebind step moved, counted from its ``AdminRebind`` records."""
    moved: dict[str, int] = {}
    moved_to: dict[str, int] = {}
    for record in records:
        if record.get("type") != ADMIN_REBIND:
            continue
        to_queue = record.get("queue")
        if not isinstance(to_queue, str):
            continue
        source = rebound_from(_lookup(record, "response.content"), to_queue, rebind.reason)
        if source is not None:
            moved[source] = moved.get(source, 0) + 1
            moved_to[to_queue] = moved_to.get(to_queue, 0) + 1
    prefix = f"rebinds[{rebind.rebind}]"
    checks: list[Check] = []
    if rebind.moved is not None:
        expected = {queue: n for queue, n in rebind.moved.items() if n}
        checks.append(compare(f"{prefix}.moved", expected, moved))
    if rebind.moved_to is not None:
        expected = {queue: n for queue, n in rebind.moved_to.items() if n}
        checks.append(compare(f"{prefix}.moved_to", expected, moved_to))
    if rebind.total_moved is not None:
        checks.append(compare(f"{prefix}.total_moved", rebind.total_moved, sum(moved.values())))
    return checks


def rebound_from(content: object, to_queue: str, reason: str) -> str | None:
    """The queue an ``AdminRebind`` record's message left, if its text is
    ``Rebound from <queue> to <to_queue>: <reason>``
    (:func:`kumo.model.log_record.rebind_content`); None for any other text."""
    if not isinstance(content, str) or not content.startswith(_REBOUND_FROM):
        return None
    tail = flatten_content(f" to {to_queue}: {reason}")
    if not content.endswith(tail) or len(content) <= len(_REBOUND_FROM) + len(tail):
        return None
    return content[len(_REBOUND_FROM) : len(content) - len(tail)]


def _check_record(
    what: str, item: RecordExpectation, records: Iterable[Mapping[str, Any]], age_slack: int
) -> list[Check]:
    where = dict(item.where)
    where.setdefault("type", ADMIN_BOUNCE)
    matching = [record for record in records if record_matches(record, where)]
    label = f"{what} where {describe_filter(where)}" if where else what
    checks = [compare(label, item.expected_count, len(matching))]
    if item.ages is not None:
        ages = [record_age(record) for record in matching]
        close = len(ages) == len(item.ages) and all(
            age is not None and abs(age - wanted) <= age_slack
            for age, wanted in zip(ages, item.ages, strict=True)
        )
        expected = show(list(item.ages))
        if age_slack:
            expected += f" (each within {age_slack} s)"
        checks.append(
            Check(
                f"{label}: ages", expected, show(ages), Verdict.PASSED if close else Verdict.FAILED
            )
        )
    return checks


def record_age(record: Mapping[str, Any]) -> int | None:
    """How old the message was at ``record``, in whole seconds (``timestamp - created``,
    both whole seconds since the epoch); None if the record lacks either."""
    timestamp, created = record.get("timestamp"), record.get("created")
    if not isinstance(timestamp, int) or not isinstance(created, int):
        return None
    return timestamp - created


def describe_filter(where: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} = {show(value)}" for key, value in where.items())


def record_matches(record: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    """Whether ``record`` has every value of ``where`` (dotted paths into the record).

    Three keys are shorthands: ``reason`` (the AdminBounce response text for that
    reason), ``recipient_domain`` (the lower-cased domain of the recipient) and
    ``suspended`` (true: the record of a message a suspension held; false: any other).
    """
    for key, expected in where.items():
        if key == "suspended":
            content = _lookup(record, "response.content")
            held = isinstance(content, str) and content.startswith(SUSPENDED_PREFIX)
            if held != bool(expected):
                return False
        elif key == "reason":
            if _lookup(record, "response.content") != bounce_content(str(expected)):
                return False
        elif key == "recipient_domain":
            recipient = record.get("recipient")
            if not isinstance(recipient, str):
                return False
            if recipient.rpartition("@")[2].lower() != str(expected).lower():
                return False
        else:
            found = _lookup(record, key)
            if found is _MISSING or found != expected:
                return False
            if isinstance(found, bool) != isinstance(expected, bool):
                return False
    return True


_MISSING: Final = object()


def _lookup(record: Mapping[str, Any], path: str) -> Any:
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value

"""The scenario format: what parses into which steps, and the errors for malformed files."""

from __future__ import annotations

import json
import textwrap

import pytest

from kumo.scenario.format import (
    DEFAULT_WALL_ORIGIN,
    Bounce,
    Cancel,
    Destination,
    Expect,
    Inject,
    Request,
    Restart,
    ScenarioError,
    Traffic,
    Wait,
    parse_scenario,
)

SOURCE = "scenarios/example.toml"


def parse(text: str) -> list[object]:
    return [step.action for step in parse_scenario(textwrap.dedent(text), SOURCE).steps]


def error_of(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(textwrap.dedent(text).lstrip("\n"), SOURCE)
    return caught.value


def test_every_action_parses() -> None:
    text = """
        [scenario]
        name = "all steps"
        wall_origin = 2026-03-02T09:00:00+01:00

        [[step]]
        inject = { count = 3, domain = "Example.com", tenant = "acme", campaign = "c" }

        [[step]]
        name = "rule"
        bounce = { domain = "example.com", reason = "r", queue_names = ["a", "b"] }
        expires_in = "-1h"

        [[step]]
        wait = "1h 30m"

        [[step]]
        wait = 90

        [[step]]
        restart = true

        [[step]]
        cancel = "rule"
        expect_status = 404

        [[step]]
        expect_status = 200
        expect_body_starts_with = "{"
        [step.request]
        method = "post"
        path = "/api/admin/bounce/v1"
        json = { reason = "x" }
        pad_to = 20

        [[step]]
        [step.expect]
        queues = { "acme@example.com" = 0 }
        admin_bounces = 3
        records = [{ count = 3, "response.code" = 551, reason = "r" }]
        [[step.expect.rules]]
        rule = "rule"
        remaining = "5m"
        bounced = { "c:acme@example.com" = 3 }
        unset = ["tenant"]
    """
    scenario = parse_scenario(textwrap.dedent(text), SOURCE)
    assert scenario.name == "all steps"
    assert scenario.wall_origin == DEFAULT_WALL_ORIGIN + (60 * 24 + 8) * 3600 * 10**9
    inject, bounce, wait, wait_seconds, restart, cancel, request, expect = (
        step.action for step in scenario.steps
    )
    assert inject == Inject(
        recipients=None, count=3, domain="Example.com", campaign="c", tenant="acme"
    )
    assert scenario.steps[0].summary == "3 to c:acme@example.com"
    assert isinstance(bounce, Bounce)
    assert bounce.body == {"domain": "example.com", "reason": "r", "queue_names": ["a", "b"]}
    assert bounce.expires_in == -3600 * 10**9
    assert wait == Wait(5400 * 10**9)
    assert wait_seconds == Wait(90 * 10**9)
    assert restart == Restart()
    assert isinstance(cancel, Cancel)
    assert (cancel.rule, cancel.id, cancel.reply.status) == ("rule", None, 404)
    assert isinstance(request, Request)
    assert request.method == "POST"
    assert request.body == b'{"reason":"x"}      '
    assert ("Content-Type", "application/json") in request.headers
    assert isinstance(expect, Expect)
    assert expect.queues == {"acme@example.com": 0}
    assert expect.records[0].where == {"response.code": 551, "reason": "r"}
    [rule] = expect.rules
    assert rule.remaining == 300 * 10**9
    assert rule.unset == ("tenant",)
    assert [step.line for step in scenario.steps] == [6, 9, 14, 17, 20, 23, 27, 36]


def test_defaults() -> None:
    scenario = parse_scenario('[[step]]\ninject = { domain = "example.com" }\n', "dir/x.toml")
    assert scenario.name == "x"
    assert scenario.wall_origin == DEFAULT_WALL_ORIGIN
    [step] = scenario.steps
    assert isinstance(step.action, Inject)
    assert step.action.count == 1
    assert step.action.sender == "sender@example.org"
    assert step.label == "step 1 (inject)"


@pytest.mark.parametrize(
    ("description", "summary"),
    [
        (None, ""),
        ("", ""),
        ("One sentence.", "One sentence"),
        ("No full stop", "No full stop"),
        ("A first\n  sentence, wrapped.  Then more.\nAnd more.", "A first sentence, wrapped"),
        ("Is it? Yes.", "Is it?"),
        ("Version 1.5 of it. More.", "Version 1.5 of it"),
    ],
)
def test_summary_is_the_first_sentence_on_one_line(description: str | None, summary: str) -> None:
    # A JSON string is a TOML basic string, escapes included.
    header = "" if description is None else f"[scenario]\ndescription = {json.dumps(description)}\n"
    text = header + '[[step]]\ninject = { domain = "example.com" }\n'
    assert parse_scenario(text, SOURCE).summary == summary


def test_toml_dates_become_rfc3339_in_bodies() -> None:
    [bounce] = parse(
        """
        [[step]]
        bounce = { reason = "x", expires = 2026-01-01T00:30:00Z }
        """
    )
    assert isinstance(bounce, Bounce)
    assert bounce.body["expires"] == "2026-01-01T00:30:00Z"


def test_syntax_error_names_file_line_and_step() -> None:
    error = error_of(
        """
        [[step]]
        name = "seed"
        inject = { count = 3, domain = "example.com" }

        [[step]]
        name = "broken"
        bounce = { reason = "x", domain = }
        """
    )
    assert error.line == 7
    assert error.step == 'step 2 "broken"'
    assert str(error).startswith(f'{SOURCE}:7: step 2 "broken": TOML syntax error: ')


def test_syntax_error_before_any_step() -> None:
    error = error_of('[scenario]\nname = "x\n')
    assert str(error).startswith(f"{SOURCE}:2: TOML syntax error: ")
    assert error.step is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """
            [[step]]
            name = "seed"
            inject = { cout = 3, domain = "example.com" }
            """,
            f"{SOURCE}:3: step 1 \"seed\" (inject): unknown key 'cout' in inject "
            "(expected one of: count, domain, recipients, sender, campaign, tenant, "
            "routing_domain, queue, subject, via)",
        ),
        (
            """
            [[step]]
            inject = { count = 3, domain = "example.com" }

            [[step]]
            name = "nothing to do"
            """,
            f'{SOURCE}:4: step 2 "nothing to do": a step needs one action key: one of '
            "inject, traffic, destination, bounce, suspend, rebind, suspend-ready-q, cancel, wait, "
            "restart, expect, request",
        ),
        (
            """
            [[step]]
            wait = "5m"
            restart = true
            """,
            f"{SOURCE}:3: step 1 (wait): a step has one action, this one has 2: wait, restart",
        ),
        (
            """
            [[step]]
            name = "a"
            wait = "5 parsecs"
            """,
            f"{SOURCE}:3: step 1 \"a\" (wait): wait: invalid duration '5 parsecs': "
            'unknown time unit "parsecs", supported units: ns, us/µs, ms, sec, min, hours, '
            "days, weeks, months, years (and few variations)",
        ),
        (
            """
            [[step]]
            wait = "5m"

            [[step]]
            cancel = "rule"
            """,
            f"{SOURCE}:5: step 2 (cancel): no earlier bounce or suspend or suspend-ready-q "
            "step is named 'rule'",
        ),
        (
            """
            [[step]]
            name = "rule"
            wait = "5m"

            [[step]]
            cancel = "rule"
            """,
            f"{SOURCE}:6: step 2 (cancel): step 'rule' is a wait step, not a bounce or "
            "suspend or suspend-ready-q",
        ),
        (
            """
            [[step]]
            name = "twice"
            wait = "5m"

            [[step]]
            name = "twice"
            wait = "5m"
            """,
            f"{SOURCE}:6: step 2 \"twice\" (wait): step name 'twice' is already used by an "
            "earlier step",
        ),
        (
            """
            [[step]]
            name = "rule"
            bounce = { reason = "x" }

            [[step]]
            name = "look"
            [step.expect]
            rule_count = 1
            [[step.expect.rules]]
            rule = "rule"
            remaining = "soon"
            """,
            f'{SOURCE}:11: step 2 "look" (expect): expect.rules[0].remaining: invalid '
            "duration 'soon': expected number at 0",
        ),
        (
            """
            [[step]]
            expect = { records = [{ queue = "example.com" }] }
            """,
            f"{SOURCE}:2: step 1 (expect): each expect.records entry needs count = <number "
            "of records>",
        ),
        (
            """
            [[step]]
            expect = { queues = { "example.com" = "five" } }
            """,
            f"{SOURCE}:2: step 1 (expect): expect.queues.example.com must be an integer, got "
            "the string 'five'",
        ),
        (
            """
            [[step]]
            request = { path = "api/admin/bounce/v1" }
            """,
            f"{SOURCE}:2: step 1 (request): request.path must start with '/', got "
            "'api/admin/bounce/v1'",
        ),
        (
            """
            [[step]]
            inject = { domain = "example.com" }
            expect_body = "x"
            """,
            f"{SOURCE}:3: step 1 (inject): unknown key 'expect_body' (expected one of: name, "
            "note, inject, expect_status)",
        ),
        (
            """
            [[step]]
            bounce = { reason = "x", duration = "5m" }
            expires_in = "10m"
            """,
            f"{SOURCE}:3: step 1 (bounce): expires_in sets the body's expires: leave expires "
            "and duration out",
        ),
        (
            """
            [[step]]
            restart = false
            """,
            f"{SOURCE}:2: step 1 (restart): write restart = true",
        ),
        (
            """
            [[step]]
            inject = { recipients = ["a@example.com"], count = 2 }
            """,
            f"{SOURCE}:2: step 1 (inject): inject takes either recipients or domain (and "
            "count), not both",
        ),
        (
            """
            [[step]]
            name = "r"
            bounce = { reason = "x" }

            [[step]]
            expect = { rules = [{ rule = "r", present = false, bounced = {} }] }
            """,
            f"{SOURCE}:6: step 2 (expect): an absent rule (present = false) has nothing else "
            "to check",
        ),
    ],
)
def test_semantic_errors_name_file_line_and_step(text: str, expected: str) -> None:
    assert str(error_of(text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[scenario]\nname = "x"\n', f"{SOURCE}: no steps: add [[step]] tables"),
        (
            'steps = []\n[[step]]\nwait = "1s"\n',
            f"{SOURCE}:1: unknown top-level key 'steps' "
            "(expected [scenario], [config] and [[step]] tables)",
        ),
        (
            '[scenario]\nname = "x"\ntitle = "y"\n[[step]]\nwait = "1s"\n',
            f"{SOURCE}:1: unknown key 'title' in [scenario] (expected one of: name, "
            "description, wall_origin)",
        ),
        (
            '[scenario]\nwall_origin = 2026-01-01T00:00:00\n[[step]]\nwait = "1s"\n',
            f"{SOURCE}:1: [scenario] wall_origin must be a date-time with an offset, such as "
            "2026-01-01T00:00:00Z",
        ),
        ('step = "wait"\n', f"{SOURCE}:1: 'step' must be an array of tables: [[step]]"),
    ],
)
def test_file_level_errors(text: str, expected: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, SOURCE)
    assert str(caught.value) == expected


def test_mail_path_steps_parse() -> None:
    text = """
        [scenario]
        name = "mail"

        [config.queue]
        retry_interval = "30s"
        max_age = "10m"

        [config.domains."Example.com"]
        max_ready = 10

        [[step]]
        destination = { domain = "Example.COM", answer = "451 4.3.0 Try again later" }

        [[step]]
        inject = { count = 2, domain = "example.com", campaign = "c", via = "smtp" }

        [[step]]
        traffic = { count = 5, every = "10s", batch = 2, domain = "example.com", via = "http" }

        [[step]]
        destination = { domain = "example.net", answer = "accept" }

        [[step]]
        [step.expect]
        deliveries = 1
        transient_failures = 2
        bounces = 0
        expirations = 3
        records = [{ type = "TransientFailure", ages = ["0s", 30, "1m 30s"] }]
    """
    scenario = parse_scenario(textwrap.dedent(text), SOURCE)
    refuses, inject, traffic, accepts, expect = (step.action for step in scenario.steps)
    assert isinstance(refuses, Destination)
    assert isinstance(accepts, Destination)
    assert refuses == Destination("example.com", "451 4.3.0 Try again later")
    assert (refuses.accepts, refuses.code, refuses.text) == (False, 451, "4.3.0 Try again later")
    assert (accepts.accepts, accepts.code, accepts.text) == (True, 250, "")
    assert scenario.steps[0].summary == "example.com answers 451 4.3.0 Try again later"
    assert inject == Inject(
        recipients=None, count=2, domain="example.com", campaign="c", via="smtp"
    )
    assert scenario.steps[1].summary == "2 to c:@example.com over SMTP"
    assert traffic == Traffic(
        Inject(recipients=None, count=5, domain="example.com"), 10 * 10**9, batch=2
    )
    assert traffic.duration == 30 * 10**9  # batches at 10s, 20s and 30s
    assert scenario.steps[2].summary == "5 to example.com, 2 every 10s for 30s"
    assert isinstance(expect, Expect)
    assert expect.record_counts == {
        "deliveries": 1,
        "transient_failures": 2,
        "bounces": 0,
        "expirations": 3,
    }
    [record] = expect.records
    assert (record.count, record.expected_count, record.ages) == (None, 3, (0, 30, 90))
    assert record.where == {"type": "TransientFailure"}
    assert scenario.delivers
    assert scenario.destination_domains == ("example.com", "example.net")
    assert scenario.config is not None
    assert scenario.config.queue_settings("example.com").retry_interval == 30 * 10**9
    assert scenario.config.egress_settings("EXAMPLE.com").max_ready == 10


def test_a_scenario_without_destination_steps_does_not_deliver() -> None:
    scenario = parse_scenario('[[step]]\ninject = { domain = "example.com" }\n', SOURCE)
    assert not scenario.delivers
    assert scenario.config is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """
            [[step]]
            destination = { domain = "example.com" }
            """,
            f'{SOURCE}:2: step 1 (destination): destination needs domain = "<domain>" and '
            'answer = "accept" or a 4xx/5xx reply such as "451 4.3.0 Try again later"',
        ),
        (
            """
            [[step]]
            destination = { domain = "example.com", answer = "250 OK" }
            """,
            f'{SOURCE}:2: step 1 (destination): destination.answer must be "accept" or a '
            '4xx/5xx reply on one line (a code, a space, a text: "451 4.3.0 Try again '
            "later\"), got '250 OK'",
        ),
        (
            """
            [[step]]
            destination = { domain = "example.com", answer = "451" }
            """,
            f'{SOURCE}:2: step 1 (destination): destination.answer must be "accept" or a '
            '4xx/5xx reply on one line (a code, a space, a text: "451 4.3.0 Try again '
            "later\"), got '451'",
        ),
        (
            """
            [[step]]
            destination = { domain = "a@example.com", answer = "accept" }
            """,
            f"{SOURCE}:2: step 1 (destination): destination.domain 'a@example.com' is not a domain",
        ),
        (
            """
            [[step]]
            inject = { domain = "example.com", via = "uucp" }
            """,
            f"{SOURCE}:2: step 1 (inject): inject.via must be one of http, smtp, got 'uucp'",
        ),
        (
            """
            [[step]]
            inject = { domain = "example.com", via = "smtp", routing_domain = "r.example" }
            """,
            f"{SOURCE}:2: step 1 (inject): inject.routing_domain cannot go over SMTP (only "
            "campaign and tenant can, as X-Campaign and X-Tenant headers)",
        ),
        (
            """
            [[step]]
            traffic = { domain = "example.com", count = 3 }
            """,
            f'{SOURCE}:2: step 1 (traffic): traffic needs every = "<duration between batches>"',
        ),
        (
            """
            [[step]]
            traffic = { domain = "example.com", every = 0 }
            """,
            f"{SOURCE}:2: step 1 (traffic): traffic.every must be longer than 0s",
        ),
        (
            """
            [[step]]
            traffic = { every = "1s" }
            """,
            f"{SOURCE}:2: step 1 (traffic): traffic needs a domain (with a count) or a list "
            "of recipients",
        ),
        (
            """
            [[step]]
            expect = { records = [{ type = "Delivery", ages = ["1.5s"] }] }
            """,
            f"{SOURCE}:2: step 1 (expect): expect.records[0].ages: records are timed in whole "
            "seconds, got 1s 500ms",
        ),
        (
            """
            [[step]]
            expect = { records = [{ count = 2, ages = [1] }] }
            """,
            f"{SOURCE}:2: step 1 (expect): count (2) and ages (1) disagree",
        ),
        (
            """
            [[step]]
            expect = { deliveries = -1 }
            """,
            f"{SOURCE}:2: step 1 (expect): expect.deliveries must be at least 0, got -1",
        ),
    ],
)
def test_mail_path_errors(text: str, expected: str) -> None:
    assert str(error_of(text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[config]\nqueue = { retry_interval = "30s" }\n[[step]]\nwait = "1s"\n',
            f"{SOURCE}:1: [config] sets how mail is delivered, and nothing is: add a "
            "destination step, or leave [config] out",
        ),
        (
            '[config]\nlisten = "127.0.0.1:8000"\n[[step]]\nwait = "1s"\n',
            f"{SOURCE}:1: unknown key 'listen' in [config] (expected the mail path's tables: "
            "queue, egress, domains)",
        ),
        (
            '[config.queue]\nretry_interval = "soon"\n[[step]]\nwait = "1s"\n',
            f"{SOURCE}:1: [config]: queue.retry_interval: 'soon' is not a duration",
        ),
    ],
)
def test_config_errors(text: str, expected: str) -> None:
    assert str(error_of(text)).startswith(expected)

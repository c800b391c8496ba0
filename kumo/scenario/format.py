"""The scenario file format: TOML text in, validated step values out. No I/O.

A scenario is a ``[scenario]`` table, an optional ``[config]`` table (the mail path's
settings for the in-process engine) and a list of ``[[step]]`` tables, run in order.
Each step has exactly one *action* key (``inject``, ``traffic``, ``destination``,
``bounce``, ``suspend``, ``rebind``, ``cancel``, ``wait``, ``restart``, ``expect``,
``request``), an optional ``name`` (the id a ``bounce`` or ``suspend`` gets is saved
under it; a ``rebind``'s name is what ``expect.rebinds`` refers to) and
optional checks on the reply
(``expect_status``, ``expect_body...``). ``docs/scenarios.md`` describes every key with
an example.

Everything wrong with a file is found here, before anything runs, and reported as a
:class:`ScenarioError` naming the file, the line and the step.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Final, NoReturn, TypeAlias, TypeVar

import attrs

from kumo.config import Config, ConfigError, parse_config_data
from kumo.http.routes import BOUNCE_PATH, REBIND_PATH, SUSPEND_PATH, SUSPEND_READY_Q_PATH
from kumo.model.duration import NANOS_PER_SECOND, DurationError, format_duration, parse_duration
from kumo.model.queue_name import queue_name_for

T = TypeVar("T")

DEFAULT_WALL_ORIGIN: Final = 1_767_225_600 * NANOS_PER_SECOND
"""2026-01-01T00:00:00Z: where the in-process wall clock starts unless a scenario says."""
DEFAULT_SENDER: Final = "sender@example.org"
DEFAULT_SUBJECT: Final = "kumo scenario"
ACTIONS: Final = (
    "inject",
    "traffic",
    "destination",
    "bounce",
    "suspend",
    "rebind",
    "suspend-ready-q",
    "cancel",
    "wait",
    "restart",
    "expect",
    "request",
)
VIAS: Final = ("http", "smtp")
"""How ``inject`` and ``traffic`` send their messages: ``POST /api/inject/v1`` or SMTP."""
ACCEPT: Final = "accept"
"""The ``answer`` of a destination that takes every message."""
CONFIG_TABLES: Final = ("queue", "egress", "domains")
"""The tables of kumo serve's configuration a scenario's ``[config]`` may hold."""
MAX_DESTINATIONS: Final = 254
"""Destination domains one scenario may simulate (each gets an address of 192.0.2.0/24)."""
RECORD_COUNTS: Final = {
    "admin_bounces": "AdminBounce",
    "deliveries": "Delivery",
    "transient_failures": "TransientFailure",
    "bounces": "Bounce",
    "expirations": "Expiration",
    "admin_rebinds": "AdminRebind",
}
"""The ``expect`` keys that count delivery-log records of one type."""
REPLY_CHECKS: Final = (
    "expect_status",
    "expect_body",
    "expect_body_starts_with",
    "expect_body_contains",
)
RULE_FIELDS: Final = ("reason", "campaign", "tenant", "domain", "routing_domain")
HELD: Final = "held"
"""The ``expect`` key that counts a suspension's holds: ``TransientFailure`` records
whose reply is ``451 4.4.4 KumoMTA internal: scheduled queue is suspended: ...``."""
CRITERIA_PARTS: Final = ("campaign", "tenant", "domain", "routing_domain")
MAX_INJECT: Final = 10_000_000
_SENTENCE_END: Final = re.compile(r"(?<=[.!?])\s+")


class ScenarioError(ValueError):
    """A scenario file that cannot run; ``str()`` is ``FILE:LINE: STEP: what is wrong``."""

    def __init__(self, source: str, line: int | None, step: str | None, message: str) -> None:
        super().__init__(source, line, step, message)
        self.source = source
        self.line = line
        self.step = step
        self.message = message

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {self.step}: {self.message}" if self.step else f"{where}: {self.message}"


# -- admin verbs ------------------------------------------------------------------------


@attrs.frozen
class AdminVerb:
    """An admin action a step issues by POSTing its table to ``path``, and, when
    ``cancellable``, cancels with ``DELETE {"id"}`` there (404 ``<name> entry <id> not
    found``). A verb is added to scenarios with one line in :data:`ADMIN_VERBS` and its
    name in :data:`ACTIONS`."""

    name: str
    """The step key, and the noun of KumoMTA's 404 text."""
    path: str
    cancellable: bool = True
    """False: a one-shot action (rebind), which KumoMTA answers with ``{}``: no id is
    kept and nothing can be cancelled."""


ADMIN_VERBS: Final[Mapping[str, AdminVerb]] = {
    verb.name: verb
    for verb in (
        AdminVerb("bounce", BOUNCE_PATH),
        AdminVerb("suspend", SUSPEND_PATH),
        AdminVerb("rebind", REBIND_PATH, cancellable=False),
        AdminVerb("suspend-ready-q", SUSPEND_READY_Q_PATH),
    )
}


# -- step values ------------------------------------------------------------------------


@attrs.frozen
class ReplyCheck:
    """What a step expects of the HTTP reply it gets."""

    status: int = 200
    body: str | None = None
    body_starts_with: str | None = None
    body_contains: str | None = None


@attrs.frozen
class Inject:
    """Receive messages through ``POST /api/inject/v1``, one per recipient."""

    recipients: tuple[str, ...] | None
    """Explicit addresses; ``None`` means ``count`` generated addresses at ``domain``."""
    count: int
    domain: str | None
    sender: str = DEFAULT_SENDER
    campaign: str | None = None
    tenant: str | None = None
    routing_domain: str | None = None
    queue: str | None = None
    subject: str = DEFAULT_SUBJECT
    reply: ReplyCheck = ReplyCheck()
    via: str = "http"
    """``http``: ``POST /api/inject/v1``; ``smtp``: one SMTP transaction per message to
    the server's SMTP listener (campaign and tenant as ``X-Campaign``/``X-Tenant``)."""


@attrs.frozen
class Traffic:
    """Messages that keep arriving: ``batch`` of ``inject``'s messages every ``every``
    ns, the first batch ``every`` after the step, while the later steps run."""

    inject: Inject
    every: int
    batch: int = 1

    @property
    def duration(self) -> int:
        """ns from the step to the last batch."""
        return -(-self.inject.count // self.batch) * self.every


@attrs.frozen
class Destination:
    """From now on the SMTP peer of ``domain`` answers every message with ``answer``:
    ``accept``, or a ``4xx``/``5xx`` reply to the message's final dot."""

    domain: str
    """Lower case."""
    answer: str
    """``accept`` or a reply: ``451 4.3.0 Try again later``."""

    @property
    def accepts(self) -> bool:
        return self.answer == ACCEPT

    @property
    def code(self) -> int:
        """The reply code of a refusal (250 for ``accept``)."""
        return 250 if self.accepts else int(self.answer[:3])

    @property
    def text(self) -> str:
        """The reply text after the code (``""`` for ``accept``)."""
        return "" if self.accepts else self.answer[4:]


@attrs.frozen
class Bounce:
    """``POST`` ``body`` to an admin verb's path (``bounce``: /api/admin/bounce/v1,
    ``suspend``: /api/admin/suspend/v1, :data:`ADMIN_VERBS`); the step's name keeps the
    new id. One shape for every verb; the class keeps its first verb's name."""

    body: Mapping[str, Any]
    expires_in: int | None = None
    """Signed ns: the runner sets ``expires`` to the target's wall time plus this."""
    reply: ReplyCheck = ReplyCheck()
    verb: str = "bounce"

    @property
    def dry_run(self) -> bool:
        """A dry run (``dry_run = true`` in the body): nothing issued, no id kept."""
        return self.body.get("dry_run") is True


@attrs.frozen
class Cancel:
    """``DELETE`` the id that a ``bounce`` or ``suspend`` step got, or a literal id, at
    that verb's path (``verb``: the named step's kind, else ``bounce``)."""

    rule: str | None
    id: str | None
    reply: ReplyCheck = ReplyCheck()
    verb: str = "bounce"


@attrs.frozen
class Wait:
    """Let ``nanos`` pass: virtual time in-process, a real sleep against a live server."""

    nanos: int


@attrs.frozen
class Restart:
    """Stop the server and start it again on the same data."""


@attrs.frozen
class Request:
    """A raw HTTP request, for what the other steps cannot say (bad input, other paths)."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    reply: ReplyCheck = ReplyCheck()


@attrs.frozen
class RuleExpectation:
    """One rule in GET's listing: present or absent, and the values it shows."""

    rule: str
    present: bool = True
    fields: Mapping[str, str | bool] = attrs.Factory(dict)
    """``reason``, criteria parts and ``suppress_logging``: expected values."""
    unset: tuple[str, ...] = ()
    """Criteria parts expected null."""
    queue_names: frozenset[str] | None = None
    remaining: int | None = None
    bounced: Mapping[str, int] | None = None
    total_bounced: int | None = None


@attrs.frozen
class RebindExpectation:
    """What one rebind step moved, from its ``AdminRebind`` records: those whose text is
    ``Rebound from <queue> to <new queue>: <reason>`` with the step's ``reason``."""

    rebind: str
    """The name of the rebind step."""
    reason: str
    """The step's reason: how its records are told apart from other rebinds'."""
    moved: Mapping[str, int] | None = None
    """Messages moved, by the queue they left (the whole map; 0: none)."""
    moved_to: Mapping[str, int] | None = None
    """Messages moved, by the queue they went to (the whole map; 0: none)."""
    total_moved: int | None = None


@attrs.frozen
class RecordExpectation:
    """``count`` delivery-log records whose fields equal ``where`` (dotted paths), and
    ``ages``, if given: each one's ``timestamp - created`` in seconds, in log order."""

    count: int | None
    """None: as many as ``ages`` lists."""
    where: Mapping[str, Any]
    ages: tuple[int, ...] | None = None

    @property
    def expected_count(self) -> int:
        if self.count is not None:
            return self.count
        assert self.ages is not None
        return len(self.ages)


@attrs.frozen
class Expect:
    """What the server shows: the GET listings, queue gauges and delivery-log records."""

    rules: tuple[RuleExpectation, ...] = ()
    rule_count: int | None = None
    total_bounced: int | None = None
    queues: Mapping[str, int] | None = None
    queued_total: int | None = None
    admin_bounces: int | None = None
    records: tuple[RecordExpectation, ...] = ()
    record_counts: Mapping[str, int] = attrs.Factory(dict)
    """``deliveries``, ``transient_failures``, ``bounces``, ``expirations`` (and
    ``admin_bounces``, kept apart above): records of that type (:data:`RECORD_COUNTS`)."""
    suspensions: tuple[RuleExpectation, ...] = ()
    """Suspensions in GET /api/admin/suspend/v1's listing (``rule``: a suspend step)."""
    suspension_count: int | None = None
    held: int | None = None
    """Records of messages a suspension held (:data:`HELD`)."""
    rebinds: tuple[RebindExpectation, ...] = ()
    """What rebind steps moved, from their ``AdminRebind`` records."""

    @property
    def needs_listing(self) -> bool:
        return bool(self.rules) or self.rule_count is not None or self.total_bounced is not None

    @property
    def needs_suspensions(self) -> bool:
        return bool(self.suspensions) or self.suspension_count is not None

    @property
    def needs_metrics(self) -> bool:
        return self.queues is not None or self.queued_total is not None

    @property
    def needs_records(self) -> bool:
        return (
            self.admin_bounces is not None
            or bool(self.records)
            or bool(self.record_counts)
            or self.held is not None
            or bool(self.rebinds)
        )


Action: TypeAlias = (
    Inject | Traffic | Destination | Bounce | Cancel | Wait | Restart | Expect | Request
)


@attrs.frozen
class Step:
    index: int
    """1-based position in the file."""
    name: str | None
    kind: str
    action: Action
    line: int | None
    note: str | None = None

    @property
    def label(self) -> str:
        """``step 3 "seed" (inject)``: how reports and errors name this step."""
        return step_label(self.index, self.name, self.kind)

    @property
    def summary(self) -> str:
        """What the step does, in a few words: ``10 to spring:acme@gmail.com``."""
        return describe_action(self.action)


@attrs.frozen
class Scenario:
    source: str
    name: str
    description: str | None
    wall_origin: int
    steps: tuple[Step, ...]
    config: Config | None = None
    """``[config]``: what the in-process engine delivers with (None: the defaults)."""

    @property
    def delivers(self) -> bool:
        """Whether the in-process engine runs the mail path: the scenario has a
        ``destination`` step. Otherwise it holds every message until a rule bounces it."""
        return any(isinstance(step.action, Destination) for step in self.steps)

    @property
    def destination_domains(self) -> tuple[str, ...]:
        """The domains the ``destination`` steps name, in the order first named."""
        domains = (
            step.action.domain for step in self.steps if isinstance(step.action, Destination)
        )
        return tuple(dict.fromkeys(domains))

    @property
    def summary(self) -> str:
        """The description's first sentence on one line, without its full stop; ``""`` if none.

        ``kumo scenario list`` shows it, so a description opens with a sentence that says
        what the scenario shows.
        """
        if not self.description:
            return ""
        text = " ".join(self.description.split())
        first = _SENTENCE_END.split(text, maxsplit=1)[0]
        return first.removesuffix(".")


def describe_action(action: Action) -> str:
    """A one-line summary of ``action`` for reports."""
    if isinstance(action, Inject):
        via = " over SMTP" if action.via == "smtp" else ""
        if action.recipients is not None:
            listed = ", ".join(action.recipients[:3]) + (", ..." if action.count > 3 else "")
            return f"{action.count} to {listed}{via}"
        assert action.domain is not None
        if action.queue is not None:
            return f"{action.count} to queue {action.queue}{via}"
        queue = queue_name_for(
            domain=action.domain,
            campaign=action.campaign,
            tenant=action.tenant,
            routing_domain=action.routing_domain,
        )
        return f"{action.count} to {queue}{via}"
    if isinstance(action, Traffic):
        return (
            f"{describe_action(action.inject)}, {action.batch} every "
            f"{format_duration(action.every)} for {format_duration(action.duration)}"
        )
    if isinstance(action, Destination):
        return f"{action.domain} answers {action.answer}"
    if isinstance(action, Bounce):
        body = _encode_json(action.body).decode()
        if action.verb != "bounce":
            body = f"{action.verb} {body}"
        if action.expires_in is not None:
            body += f", expires in {_signed_duration(action.expires_in)}"
        return body
    if isinstance(action, Cancel):
        what = repr(action.rule) if action.rule is not None else f"id {action.id}"
        return what if action.verb == "bounce" else f"{action.verb} {what}"
    if isinstance(action, Wait):
        return format_duration(action.nanos)
    if isinstance(action, Restart):
        return "the server"
    if isinstance(action, Request):
        return f"{action.method} {action.path} ({len(action.body)} bytes)"
    keys = [
        key
        for key, value in (
            ("rules", action.rules),
            ("rule_count", action.rule_count),
            ("total_bounced", action.total_bounced),
            ("queues", action.queues),
            ("queued_total", action.queued_total),
            ("admin_bounces", action.admin_bounces),
            *action.record_counts.items(),
            ("records", action.records),
            ("suspensions", action.suspensions),
            ("suspension_count", action.suspension_count),
            (HELD, action.held),
            ("rebinds", action.rebinds),
        )
        if value is not None and value != ()
    ]
    return ", ".join(keys)


def _signed_duration(nanos: int) -> str:
    return format_duration(nanos) if nanos >= 0 else "-" + format_duration(-nanos)


def step_label(index: int, name: str | None, kind: str | None) -> str:
    label = f"step {index}"
    if name is not None:
        label += f" {_quote(name)}"
    if kind is not None:
        label += f" ({kind})"
    return label


# -- parsing ----------------------------------------------------------------------------

_SYNTAX_POSITION = re.compile(r"\s*\(at line (\d+), column \d+\)$|\s*\(at end of document\)$")
_STEP_HEADER = re.compile(r"^\s*\[\[\s*step\s*\]\]\s*(?:#.*)?$")
_NAME_LINE = re.compile(r"""^\s*name\s*=\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)')""")


def parse_scenario(text: str, source: str) -> Scenario:
    """Parse the TOML ``text`` of the file named ``source`` (used in messages only).

    Raises :class:`ScenarioError` for a syntax error (with tomllib's line) or anything
    the format does not allow (with the line of the offending key, as near as the text
    tells), and nothing else.
    """
    lines = text.splitlines()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = _SYNTAX_POSITION.search(message)
        line: int | None = None
        if match is not None:
            message = message[: match.start()]
            line = int(match.group(1)) if match.group(1) else len(lines)
        step = _step_at_line(lines, line) if line is not None else None
        raise ScenarioError(source, line, step, f"TOML syntax error: {message}") from None
    return _Parser(source, lines).scenario(data)


def _step_at_line(lines: Sequence[str], line: int) -> str | None:
    """The label of the ``[[step]]`` whose text holds ``line`` (1-based), if any."""
    headers = [number for number, text in enumerate(lines, 1) if _STEP_HEADER.match(text)]
    before = [number for number in headers if number <= line]
    if not before:
        return None
    start = before[-1]
    end = headers[len(before)] if len(before) < len(headers) else len(lines) + 1
    name = None
    for text in lines[start : end - 1]:
        match = _NAME_LINE.match(text)
        if match is not None:
            name = match.group(1) if match.group(1) is not None else match.group(2)
            break
    return step_label(len(before), name, None)


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Parser:
    def __init__(self, source: str, lines: list[str]) -> None:
        self.source = source
        self.lines = lines
        self.headers = [n for n, text in enumerate(lines, 1) if _STEP_HEADER.match(text)]

    # -- locating ---------------------------------------------------------------------

    def _top_line(self, key: str) -> int | None:
        pattern = re.compile(rf"^\s*(?:\[\s*{re.escape(key)}\s*[\].]|{re.escape(key)}\s*[=.])")
        for number, text in enumerate(self.lines, 1):
            if pattern.match(text):
                return number
        return None

    def _step_range(self, index: int) -> tuple[int, int] | None:
        """Lines ``[first, end)`` of the ``index``-th (1-based) ``[[step]]``."""
        if index > len(self.headers):
            return None
        first = self.headers[index - 1]
        end = self.headers[index] if index < len(self.headers) else len(self.lines) + 1
        return first, end

    def locate(self, index: int, path: Sequence[str | int]) -> int | None:
        """The line of ``path`` (keys, list positions) inside step ``index``, best effort."""
        found = self._step_range(index)
        if found is None:
            return self._top_line("step")
        line, end = found
        for key in path:
            if isinstance(key, int):
                hit = self._nth_item(line, end, key)
            else:
                hit = self._key_line(line, end, key)
            if hit is None:
                break
            line = hit
        return line

    def _key_line(self, start: int, end: int, key: str) -> int | None:
        name = re.escape(key)
        pattern = re.compile(rf"""(?:^|[\s{{,.\[])(?:{name}|"{name}"|'{name}')\s*(?:=|\.|\]|$)""")
        for number in range(start, end):
            if pattern.search(self.lines[number - 1]):
                return number
        return None

    def _nth_item(self, start: int, end: int, position: int) -> int | None:
        seen = -1
        for number in range(start, end):
            text = self.lines[number - 1]
            if re.match(r"^\s*\[\[", text) or "{" in text:
                seen += 1
                if seen == position:
                    return number
        return None

    # -- the whole file ---------------------------------------------------------------

    def fail_top(self, key: str | None, message: str) -> NoReturn:
        line = self._top_line(key) if key is not None else None
        raise ScenarioError(self.source, line, None, message)

    def scenario(self, data: dict[str, Any]) -> Scenario:
        unknown = sorted(set(data) - {"scenario", "config", "step"})
        if unknown:
            self.fail_top(
                unknown[0],
                f"unknown top-level key {unknown[0]!r} "
                "(expected [scenario], [config] and [[step]] tables)",
            )
        header = data.get("scenario", {})
        if not isinstance(header, dict):
            self.fail_top("scenario", "'scenario' must be a table: [scenario]")
        extra = sorted(set(header) - {"name", "description", "wall_origin"})
        if extra:
            self.fail_top(
                "scenario",
                f"unknown key {extra[0]!r} in [scenario] "
                "(expected one of: name, description, wall_origin)",
            )
        name = header.get("name", PurePath(self.source).stem)
        if not isinstance(name, str) or not name:
            self.fail_top("scenario", "[scenario] name must be a non-empty string")
        description = header.get("description")
        if description is not None and not isinstance(description, str):
            self.fail_top("scenario", "[scenario] description must be a string")
        wall_origin = DEFAULT_WALL_ORIGIN
        if "wall_origin" in header:
            origin = header["wall_origin"]
            if not isinstance(origin, dt.datetime) or origin.tzinfo is None:
                self.fail_top(
                    "scenario",
                    "[scenario] wall_origin must be a date-time with an offset, "
                    "such as 2026-01-01T00:00:00Z",
                )
            wall_origin = _epoch_nanos(origin)
        raw_steps = data.get("step")
        if raw_steps is None:
            raise ScenarioError(self.source, None, None, "no steps: add [[step]] tables")
        if not isinstance(raw_steps, list) or not all(isinstance(s, dict) for s in raw_steps):
            self.fail_top("step", "'step' must be an array of tables: [[step]]")
        if not raw_steps:
            self.fail_top("step", "no steps: add [[step]] tables")
        steps: list[Step] = []
        for index, raw in enumerate(raw_steps, 1):
            steps.append(_StepParser(self, index, raw, steps).step())
        scenario = Scenario(
            self.source, name, description, wall_origin, tuple(steps), self.config(data)
        )
        if scenario.config is not None and not scenario.delivers:
            self.fail_top(
                "config",
                "[config] sets how mail is delivered, and nothing is: "
                "add a destination step, or leave [config] out",
            )
        if len(scenario.destination_domains) > MAX_DESTINATIONS:
            self.fail_top("step", f"a scenario simulates {MAX_DESTINATIONS} destinations at most")
        return scenario

    def config(self, data: dict[str, Any]) -> Config | None:
        """``[config]``: kumo serve's ``[queue]``, ``[egress]`` and ``[domains]`` tables,
        checked as kumo serve checks them."""
        if "config" not in data:
            return None
        table = data["config"]
        if not isinstance(table, dict):
            self.fail_top("config", "'config' must be a table: [config]")
        extra = sorted(set(table) - set(CONFIG_TABLES))
        if extra:
            self.fail_top(
                "config",
                f"unknown key {extra[0]!r} in [config] "
                f"(expected the mail path's tables: {', '.join(CONFIG_TABLES)})",
            )
        try:
            # base_dir resolves file paths, and none of these tables has one.
            return parse_config_data(table, base_dir=Path())
        except ConfigError as error:
            self.fail_top("config", f"[config]: {error}")


def _epoch_nanos(value: dt.datetime) -> int:
    delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * NANOS_PER_SECOND + delta.microseconds * 1_000


class _StepParser:
    """Validates one ``[[step]]`` table; errors name the step and the key's line."""

    def __init__(self, parser: _Parser, index: int, raw: dict[str, Any], done: list[Step]):
        self.parser = parser
        self.index = index
        self.raw = raw
        self.done = done
        name = raw.get("name")
        self.name = name if isinstance(name, str) else None
        self.kind: str | None = None

    def fail(self, message: str, *path: str | int) -> NoReturn:
        line = self.parser.locate(self.index, path)
        label = step_label(self.index, self.name, self.kind)
        raise ScenarioError(self.parser.source, line, label, message)

    # -- typed getters ----------------------------------------------------------------

    def string(self, value: object, *path: str | int, empty: bool = False) -> str:
        if not isinstance(value, str):
            self.fail(f"{_dotted(path)} must be a string, got {_describe(value)}", *path)
        if not value and not empty:
            self.fail(f"{_dotted(path)} must not be empty", *path)
        return value

    def integer(self, value: object, *path: str | int, minimum: int = 0) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(f"{_dotted(path)} must be an integer, got {_describe(value)}", *path)
        if value < minimum:
            self.fail(f"{_dotted(path)} must be at least {minimum}, got {value}", *path)
        return value

    def boolean(self, value: object, *path: str | int) -> bool:
        if not isinstance(value, bool):
            self.fail(f"{_dotted(path)} must be true or false, got {_describe(value)}", *path)
        return value

    def table(self, value: object, *path: str | int) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(f"{_dotted(path)} must be a table, got {_describe(value)}", *path)
        return value

    def duration(self, value: object, *path: str | int, signed: bool = False) -> int:
        """A humantime string (``"5m"``) or a number of seconds, in ns."""
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            self.fail(
                f'{_dotted(path)} must be a duration such as "5m" or a number of seconds, '
                f"got {_describe(value)}",
                *path,
            )
        if isinstance(value, str):
            text, sign = value, 1
            if signed and text.startswith("-"):
                text, sign = text[1:], -1
            try:
                return sign * parse_duration(text)
            except DurationError as error:
                self.fail(f"{_dotted(path)}: invalid duration {value!r}: {error}", *path)
        if value < 0 and not signed:
            self.fail(f"{_dotted(path)} must not be negative, got {value}", *path)
        return round(value * NANOS_PER_SECOND)

    def counts(self, value: object, *path: str | int) -> dict[str, int]:
        table = self.table(value, *path)
        return {queue: self.integer(count, *path, queue) for queue, count in table.items()}

    def check_keys(
        self, table: Mapping[str, Any], allowed: Sequence[str], *path: str | int
    ) -> None:
        for key in table:
            if key not in allowed:
                where = f" in {_dotted(path)}" if path else ""
                self.fail(
                    f"unknown key {key!r}{where} (expected one of: {', '.join(allowed)})",
                    *path,
                    key,
                )

    # -- the step ---------------------------------------------------------------------

    def step(self) -> Step:
        raw = self.raw
        actions = [key for key in ACTIONS if key in raw]
        self.kind = actions[0] if actions else None
        if "name" in raw:
            name = self.string(raw["name"], "name")
            if any(step.name == name for step in self.done):
                self.fail(f"step name {name!r} is already used by an earlier step", "name")
        note = raw.get("note")
        if note is not None:
            self.string(note, "note", empty=True)
        if not actions:
            known = ("name", "note", "expires_in", *REPLY_CHECKS)
            unknown = [key for key in raw if key not in known]
            if unknown:
                self.fail(
                    f"unknown key {unknown[0]!r}: a step needs one action key, "
                    f"one of {', '.join(ACTIONS)}",
                    unknown[0],
                )
            self.fail(f"a step needs one action key: one of {', '.join(ACTIONS)}")
        if len(actions) > 1:
            self.fail(
                f"a step has one action, this one has {len(actions)}: {', '.join(actions)}",
                actions[1],
            )
        kind = actions[0]
        parse: Callable[[Any], Action] = (
            functools.partial(self._issue, kind)
            if kind in ADMIN_VERBS
            else getattr(self, f"_{kind}")
        )
        allowed = ["name", "note", kind, *_SIBLINGS[kind]]
        self.check_keys(raw, allowed)
        action = parse(raw[kind])
        return Step(
            self.index,
            self.name,
            kind,
            action,
            self.parser.locate(self.index, ()),
            note,
        )

    def reply(self, default_status: int = 200) -> ReplyCheck:
        raw = self.raw
        status = default_status
        if "expect_status" in raw:
            status = self.integer(raw["expect_status"], "expect_status", minimum=100)
            if status > 599:
                self.fail(
                    f"expect_status must be an HTTP status (100-599), got {status}",
                    "expect_status",
                )
        texts: dict[str, str | None] = {}
        for key in ("expect_body", "expect_body_starts_with", "expect_body_contains"):
            value = raw.get(key)
            texts[key] = None if value is None else self.string(value, key, empty=True)
        return ReplyCheck(
            status,
            texts["expect_body"],
            texts["expect_body_starts_with"],
            texts["expect_body_contains"],
        )

    def _inject(self, value: object) -> Inject:
        table = self.table(value, "inject")
        self.check_keys(table, _INJECT_KEYS, "inject")
        return self.messages(table, "inject")

    def messages(self, table: dict[str, Any], key: str) -> Inject:
        """The messages an ``inject`` (or ``traffic``) table describes."""
        strings: dict[str, str | None] = {}
        for part in (
            "domain",
            "sender",
            "campaign",
            "tenant",
            "routing_domain",
            "queue",
            "subject",
        ):
            strings[part] = None if part not in table else self.string(table[part], key, part)
        via = "http"
        if "via" in table:
            via = self.string(table["via"], key, "via")
            if via not in VIAS:
                self.fail(f"{key}.via must be one of {', '.join(VIAS)}, got {via!r}", key, "via")
            if via == "smtp":
                for part in ("routing_domain", "queue"):
                    if part in table:
                        self.fail(
                            f"{key}.{part} cannot go over SMTP (only campaign and tenant "
                            "can, as X-Campaign and X-Tenant headers)",
                            key,
                            part,
                        )
        recipients: tuple[str, ...] | None = None
        if "recipients" in table:
            listed = table["recipients"]
            if not isinstance(listed, list) or not listed:
                self.fail(
                    f"{key}.recipients must be a non-empty array of addresses",
                    key,
                    "recipients",
                )
            recipients = tuple(self.string(r, key, "recipients") for r in listed)
            for address in recipients:
                if "@" not in address:
                    self.fail(f"{key}.recipients: {address!r} is not an address", key, "recipients")
            if "domain" in table or "count" in table:
                self.fail(
                    f"{key} takes either recipients or domain (and count), not both",
                    key,
                    "recipients",
                )
            count = len(recipients)
        else:
            if strings["domain"] is None:
                self.fail(f"{key} needs a domain (with a count) or a list of recipients", key)
            count = self.integer(table.get("count", 1), key, "count", minimum=1)
            if count > MAX_INJECT:
                self.fail(f"{key}.count must be at most {MAX_INJECT}", key, "count")
        return Inject(
            recipients=recipients,
            count=count,
            domain=strings["domain"],
            sender=strings["sender"] or DEFAULT_SENDER,
            campaign=strings["campaign"],
            tenant=strings["tenant"],
            routing_domain=strings["routing_domain"],
            queue=strings["queue"],
            subject=strings["subject"] or DEFAULT_SUBJECT,
            reply=self.reply(),
            via=via,
        )

    def _traffic(self, value: object) -> Traffic:
        table = self.table(value, "traffic")
        self.check_keys(table, _TRAFFIC_KEYS, "traffic")
        if "every" not in table:
            self.fail('traffic needs every = "<duration between batches>"', "traffic")
        every = self.duration(table["every"], "traffic", "every")
        if every <= 0:
            self.fail("traffic.every must be longer than 0s", "traffic", "every")
        batch = self.integer(table.get("batch", 1), "traffic", "batch", minimum=1)
        messages = self.messages({k: v for k, v in table.items() if k in _INJECT_KEYS}, "traffic")
        return Traffic(messages, every, batch)

    def _destination(self, value: object) -> Destination:
        table = self.table(value, "destination")
        self.check_keys(table, ("domain", "answer"), "destination")
        for key in ("domain", "answer"):
            if key not in table:
                self.fail(
                    'destination needs domain = "<domain>" and answer = "accept" '
                    'or a 4xx/5xx reply such as "451 4.3.0 Try again later"',
                    "destination",
                )
        domain = self.string(table["domain"], "destination", "domain")
        if "@" in domain or any(c.isspace() for c in domain):
            self.fail(f"destination.domain {domain!r} is not a domain", "destination", "domain")
        answer = self.string(table["answer"], "destination", "answer")
        if answer != ACCEPT and not _REFUSAL.fullmatch(answer):
            self.fail(
                f'destination.answer must be "{ACCEPT}" or a 4xx/5xx reply on one line '
                f'(a code, a space, a text: "451 4.3.0 Try again later"), got {answer!r}',
                "destination",
                "answer",
            )
        return Destination(domain.lower(), answer)

    def _issue(self, verb: str, value: object) -> Bounce:
        """A ``bounce``, ``suspend`` or ``rebind`` step (any :data:`ADMIN_VERBS` verb): its
        table is the body, sent as it is (the server validates it)."""
        table = self.table(value, verb)
        expires_in = None
        if "expires_in" in self.raw:
            if "expires" in table or "duration" in table:
                self.fail(
                    "expires_in sets the body's expires: leave expires and duration out",
                    "expires_in",
                )
            expires_in = self.duration(self.raw["expires_in"], "expires_in", signed=True)
        return Bounce(_json_ready(table), expires_in, self.reply(), verb)

    def _cancel(self, value: object) -> Cancel:
        if isinstance(value, str):
            value = {"rule": value}
        table = self.table(value, "cancel")
        self.check_keys(table, ("rule", "id", "verb"), "cancel")
        cancellable = [verb.name for verb in ADMIN_VERBS.values() if verb.cancellable]
        if ("rule" in table) == ("id" in table):
            self.fail(
                f"cancel needs the name of a {' or '.join(cancellable)} step "
                '(cancel = "NAME") or an id (cancel = { id = "...", verb = "suspend" })',
                "cancel",
            )
        rule = None
        verb = "bounce"
        if "rule" in table:
            if "verb" in table:
                self.fail("cancel takes the verb of the step it names: leave verb out", "cancel")
            named = next((s for s in self.done if s.name == table["rule"]), None)
            if named is not None and named.kind in ADMIN_VERBS and named.kind not in cancellable:
                self.fail(
                    f"step {named.name!r} is a {named.kind} step: a {named.kind} is done "
                    "once and has nothing to cancel",
                    "cancel",
                )
            rule, verb = self.issue_name(table["rule"], cancellable, "cancel")
        elif "verb" in table:
            verb = self.string(table["verb"], "cancel", "verb")
            if verb not in cancellable:
                self.fail(
                    f"cancel.verb must be one of {', '.join(cancellable)}, got {verb!r}",
                    "cancel",
                    "verb",
                )
        literal = (
            None if "id" not in table else self.string(table["id"], "cancel", "id", empty=True)
        )
        return Cancel(rule, literal, self.reply(), verb)

    def bounce_name(self, value: object, *path: str | int) -> str:
        return self.issue_name(value, ("bounce",), *path)[0]

    def issue_name(self, value: object, verbs: Sequence[str], *path: str | int) -> tuple[str, str]:
        """The name of an earlier step of one of ``verbs`` (not a dry run), and its verb."""
        name = self.string(value, *path)
        wanted = " or ".join(verbs)
        for step in self.done:
            if step.name == name:
                if step.kind not in verbs:
                    self.fail(f"step {name!r} is a {step.kind} step, not a {wanted}", *path)
                assert isinstance(step.action, Bounce)
                if step.action.dry_run:
                    self.fail(f"step {name!r} is a dry run: it issued nothing", *path)
                return name, step.kind
        self.fail(f"no earlier {wanted} step is named {name!r}", *path)

    def _wait(self, value: object) -> Wait:
        return Wait(self.duration(value, "wait"))

    def _restart(self, value: object) -> Restart:
        if value is not True:
            self.fail("write restart = true", "restart")
        return Restart()

    def _request(self, value: object) -> Request:
        table = self.table(value, "request")
        self.check_keys(table, _REQUEST_KEYS, "request")
        method = self.string(table.get("method", "GET"), "request", "method").upper()
        if not re.fullmatch(r"[A-Z]+", method):
            self.fail(f"request.method {method!r} is not an HTTP method", "request", "method")
        path = self.string(table.get("path"), "request", "path")
        if not path.startswith("/"):
            self.fail(f"request.path must start with '/', got {path!r}", "request", "path")
        headers: list[tuple[str, str]] = []
        for header, text in self.table(table.get("headers", {}), "request", "headers").items():
            headers.append((header, self.string(text, "request", "headers", header, empty=True)))
        if "body" in table and "json" in table:
            self.fail("request takes body (text) or json (a value), not both", "request", "json")
        body = b""
        if "body" in table:
            body = self.string(table["body"], "request", "body", empty=True).encode()
        elif "json" in table:
            body = _encode_json(_json_ready(table["json"]))
            if not any(h.lower() == "content-type" for h, _ in headers):
                headers.append(("Content-Type", "application/json"))
        if "pad_to" in table:
            size = self.integer(table["pad_to"], "request", "pad_to")
            if size < len(body):
                self.fail(
                    f"request.pad_to ({size}) is shorter than the body ({len(body)} bytes)",
                    "request",
                    "pad_to",
                )
            body += b" " * (size - len(body))
        return Request(method, path, tuple(headers), body, self.reply())

    def expectations(
        self, table: Mapping[str, object], key: str, parse: Callable[[object, int], T]
    ) -> list[T]:
        """``expect.<key>``, an array of tables, each parsed by ``parse`` (item, position)."""
        if key not in table:
            return []
        listed = table[key]
        if not isinstance(listed, list):
            self.fail(f"expect.{key} must be an array of tables", "expect", key)
        return [parse(item, position) for position, item in enumerate(listed)]

    def _expect(self, value: object) -> Expect:
        table = self.table(value, "expect")
        self.check_keys(table, _EXPECT_KEYS, "expect")
        if not table:
            self.fail("expect has nothing to check", "expect")
        rules = self.expectations(table, "rules", self.rule_expectation)
        suspensions = self.expectations(table, "suspensions", self.suspension_expectation)
        rebinds = self.expectations(table, "rebinds", self.rebind_expectation)
        records = self.expectations(table, "records", self.record_expectation)
        optional_ints: dict[str, int | None] = {}
        for key in (
            "rule_count",
            "total_bounced",
            "queued_total",
            "admin_bounces",
            "suspension_count",
            HELD,
        ):
            optional_ints[key] = (
                None if key not in table else self.integer(table[key], "expect", key)
            )
        record_counts = {
            key: self.integer(table[key], "expect", key)
            for key in RECORD_COUNTS
            if key in table and key != "admin_bounces"
        }
        queues = None if "queues" not in table else self.counts(table["queues"], "expect", "queues")
        return Expect(
            rules=tuple(rules),
            rule_count=optional_ints["rule_count"],
            total_bounced=optional_ints["total_bounced"],
            queues=queues,
            queued_total=optional_ints["queued_total"],
            admin_bounces=optional_ints["admin_bounces"],
            records=tuple(records),
            record_counts=record_counts,
            suspensions=tuple(suspensions),
            suspension_count=optional_ints["suspension_count"],
            held=optional_ints[HELD],
            rebinds=tuple(rebinds),
        )

    def rebind_expectation(self, item: object, position: int) -> RebindExpectation:
        """One entry of ``expect.rebinds``: ``rebind`` names a rebind step (not a dry
        run), whose ``reason`` finds its records."""
        at: tuple[str | int, ...] = ("expect", "rebinds", position)
        table = self.table(item, *at)
        self.check_keys(table, _REBIND_KEYS, *at)
        if "rebind" not in table:
            self.fail('each expect.rebinds entry needs rebind = "<name of a rebind step>"', *at)
        name = self.issue_name(table["rebind"], ("rebind",), *at, "rebind")[0]
        step = next(s for s in self.done if s.name == name)
        assert isinstance(step.action, Bounce)
        reason = step.action.body.get("reason")
        if not isinstance(reason, str):
            self.fail(f"rebind step {name!r} has no reason to find its records by", *at, "rebind")
        return RebindExpectation(
            name,
            reason,
            moved=None if "moved" not in table else self.counts(table["moved"], *at, "moved"),
            moved_to=None
            if "moved_to" not in table
            else self.counts(table["moved_to"], *at, "moved_to"),
            total_moved=None
            if "total_moved" not in table
            else self.integer(table["total_moved"], *at, "total_moved"),
        )

    def suspension_expectation(self, item: object, position: int) -> RuleExpectation:
        """One entry of ``expect.suspensions``: ``suspension`` names a suspend step; the
        other keys are those of ``expect.rules`` a suspension has (no counters)."""
        at: tuple[str | int, ...] = ("expect", "suspensions", position)
        table = self.table(item, *at)
        self.check_keys(table, _SUSPENSION_KEYS, *at)
        if "suspension" not in table:
            self.fail(
                'each expect.suspensions entry needs suspension = "<name of a suspend step>"', *at
            )
        name = self.issue_name(table["suspension"], ("suspend",), *at, "suspension")[0]
        rules_like = {("rule" if key == "suspension" else key): v for key, v in table.items()}
        return attrs.evolve(self.rule_fields(rules_like, at), rule=name)

    def rule_expectation(self, item: object, position: int) -> RuleExpectation:
        at: tuple[str | int, ...] = ("expect", "rules", position)
        table = self.table(item, *at)
        self.check_keys(table, _RULE_KEYS, *at)
        if "rule" not in table:
            self.fail('each expect.rules entry needs rule = "<name of a bounce step>"', *at)
        rule = self.bounce_name(table["rule"], *at, "rule")
        return attrs.evolve(self.rule_fields(table, at), rule=rule)

    def rule_fields(self, table: Mapping[str, Any], at: tuple[str | int, ...]) -> RuleExpectation:
        """The checks of a rule (or suspension) entry, its ``rule`` name left as given."""
        rule = str(table.get("rule", ""))
        present = self.boolean(table.get("present", True), *at, "present")
        if not present and set(table) - {"rule", "present"}:
            self.fail("an absent rule (present = false) has nothing else to check", *at, "present")
        fields: dict[str, str | bool] = {}
        for key in RULE_FIELDS:
            if key in table:
                fields[key] = self.string(table[key], *at, key, empty=True)
        if "suppress_logging" in table:
            fields["suppress_logging"] = self.boolean(
                table["suppress_logging"], *at, "suppress_logging"
            )
        unset: tuple[str, ...] = ()
        if "unset" in table:
            listed = table["unset"]
            if not isinstance(listed, list):
                self.fail("unset must be an array of criteria names", *at, "unset")
            for part in listed:
                if part not in CRITERIA_PARTS or part in fields:
                    self.fail(
                        f"unset lists criteria expected null ({', '.join(CRITERIA_PARTS)}), "
                        f"each once and not also given a value; got {part!r}",
                        *at,
                        "unset",
                    )
            unset = tuple(listed)
        queue_names = None
        if "queue_names" in table:
            listed = table["queue_names"]
            if not isinstance(listed, list):
                self.fail("queue_names must be an array of strings", *at, "queue_names")
            queue_names = frozenset(self.string(q, *at, "queue_names") for q in listed)
        return RuleExpectation(
            rule=rule,
            present=present,
            fields=fields,
            unset=unset,
            queue_names=queue_names,
            remaining=None
            if "remaining" not in table
            else self.duration(table["remaining"], *at, "remaining"),
            bounced=None
            if "bounced" not in table
            else self.counts(table["bounced"], *at, "bounced"),
            total_bounced=None
            if "total_bounced" not in table
            else self.integer(table["total_bounced"], *at, "total_bounced"),
        )

    def record_expectation(self, item: object, position: int) -> RecordExpectation:
        at: tuple[str | int, ...] = ("expect", "records", position)
        table = self.table(item, *at)
        if "count" not in table and "ages" not in table:
            self.fail("each expect.records entry needs count = <number of records>", *at)
        count = None if "count" not in table else self.integer(table["count"], *at, "count")
        ages = None
        if "ages" in table:
            listed = table["ages"]
            if not isinstance(listed, list):
                self.fail("ages must be an array of durations", *at, "ages")
            ages = tuple(self.whole_seconds(age, *at, "ages") for age in listed)
            if count is not None and count != len(ages):
                self.fail(f"count ({count}) and ages ({len(ages)}) disagree", *at, "count")
        where = {
            key: _json_ready(value) for key, value in table.items() if key not in ("count", "ages")
        }
        for key, expected in where.items():
            if key in ("reason", "recipient_domain"):
                self.string(expected, *at, key, empty=True)
            elif not key or any(not part for part in key.split(".")):
                self.fail(f"record field path {key!r} is not a dotted path", *at, key)
        return RecordExpectation(count, where, ages)

    def whole_seconds(self, value: object, *path: str | int) -> int:
        nanos = self.duration(value, *path)
        seconds, rest = divmod(nanos, NANOS_PER_SECOND)
        if rest:
            self.fail(
                f"{_dotted(path)}: records are timed in whole seconds, "
                f"got {format_duration(nanos)}",
                *path,
            )
        return seconds


_REFUSAL: Final = re.compile(r"[45][0-9][0-9] [^\r\n]*\S[^\r\n]*")
_SIBLINGS: Final[Mapping[str, tuple[str, ...]]] = {
    "inject": ("expect_status",),
    "traffic": (),
    "destination": (),
    "bounce": ("expires_in", *REPLY_CHECKS),
    "suspend": ("expires_in", *REPLY_CHECKS),
    "rebind": REPLY_CHECKS,
    "suspend-ready-q": ("expires_in", *REPLY_CHECKS),
    "cancel": REPLY_CHECKS,
    "request": REPLY_CHECKS,
    "wait": (),
    "restart": (),
    "expect": (),
}
_INJECT_KEYS: Final = (
    "count",
    "domain",
    "recipients",
    "sender",
    "campaign",
    "tenant",
    "routing_domain",
    "queue",
    "subject",
    "via",
)
_TRAFFIC_KEYS: Final = (*_INJECT_KEYS, "every", "batch")
_REQUEST_KEYS: Final = ("method", "path", "headers", "body", "json", "pad_to")
_EXPECT_KEYS: Final = (
    "rules",
    "rule_count",
    "total_bounced",
    "queues",
    "queued_total",
    "admin_bounces",
    "deliveries",
    "transient_failures",
    "bounces",
    "expirations",
    "admin_rebinds",
    "records",
    "suspensions",
    "suspension_count",
    HELD,
    "rebinds",
)
_REBIND_KEYS: Final = ("rebind", "moved", "moved_to", "total_moved")
_SUSPENSION_KEYS: Final = (
    "suspension",
    "present",
    *RULE_FIELDS,
    "unset",
    "queue_names",
    "remaining",
)
_RULE_KEYS: Final = (
    "rule",
    "present",
    *RULE_FIELDS,
    "suppress_logging",
    "unset",
    "queue_names",
    "remaining",
    "bounced",
    "total_bounced",
)


def _json_ready(value: Any) -> Any:
    """TOML values as JSON values: date-times become RFC 3339 text."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    return value


def _encode_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _dotted(path: Sequence[str | int]) -> str:
    text = ""
    for key in path:
        if isinstance(key, int):
            text += f"[{key}]"
        else:
            text += f".{key}" if text else key
    return text or "the step"


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}"

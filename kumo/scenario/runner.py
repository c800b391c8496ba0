"""Running scenarios: two targets behind one interface, and the runner that drives them.

* :class:`InProcessTarget`: a fresh engine in a data directory, served by the real HTTP
  app through httpx's ASGI transport, so bad input gets exactly the replies it gets over
  the wire. Run it under ``trio.testing.MockClock(autojump_threshold=0)`` (as
  :func:`run_in_process` does): waits advance virtual time, so an hour-long scenario
  takes milliseconds and runs the same way every time. After each step the target
  waits until the engine is idle, so expectations need no retries. A restart closes the
  engine and opens it again on the same directory; the wall clock runs on.
* :class:`LiveTarget`: a running server at an endpoint, over HTTP in real time. Waits
  are sleeps; expectations are retried for a while, because a sweep finishes after its
  reply; restarts happen only with a restart command; delivery-log records are read
  from a log directory when one is given.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, Protocol

import attrs
import httpx
import trio
import trio.testing

from kumo.http.app import create_app
from kumo.http.routes import BOUNCE_PATH, INJECT_PATH, LIVENESS_PATH, METRICS_PATH
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.prometheus_text import parse_scheduled_counts
from kumo.model.rfc3339 import format_rfc3339
from kumo.runtime.blocking import inline
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import Engine, open_engine
from kumo.scenario.expect import (
    Check,
    Observation,
    Verdict,
    cancel_reply_text,
    check_bounce_reply,
    check_inject_reply,
    check_reply,
    evaluate,
    failed,
)
from kumo.scenario.format import (
    Bounce,
    Cancel,
    Expect,
    Inject,
    Request,
    Restart,
    Scenario,
    Step,
    Wait,
)
from kumo.store.delivery_files import read_records, segment_sizes
from kumo.store.layout import LOGS

INJECT_BATCH: Final = 1_000
"""Recipients per inject request."""
STEP_BUDGET: Final = 3_600.0
"""Seconds a step may take beyond its own wait. In-process this is virtual time, so a
step that hangs fails at once instead of hanging the run."""
LIVE_SETTLE_TIMEOUT: Final = 10.0
"""Seconds a live target retries an expectation before it reports the failure."""
LIVE_REMAINING_SLACK: Final = 30 * NANOS_PER_SECOND
"""How far a live rule's remaining lifetime may fall short of the expected value."""
RESTART_TIMEOUT: Final = 60.0
REQUEST_TIMEOUT: Final = 60.0
"""Seconds a live request may take (KumoMTA's kcli gives up after 60 s too)."""
_RETRY_INTERVAL: Final = 0.25


class Target(Protocol):
    """Where a scenario runs. Each call may raise ``httpx.HTTPError`` or ``OSError``."""

    @property
    def description(self) -> str:
        """``in-process`` or the endpoint, for reports."""

    @property
    def remaining_slack(self) -> int:
        """ns by which a listed remaining lifetime may be under the expected one."""

    @property
    def settle_timeout(self) -> float:
        """Seconds to keep retrying a failed expectation (0: check once)."""

    @property
    def inject_batch(self) -> int:
        """Recipients per inject request."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        content: bytes = b"",
    ) -> httpx.Response: ...

    async def settle(self) -> None:
        """Return once what the last request set going has had its effects, if it can tell."""

    async def sleep(self, nanos: int) -> None: ...

    async def restart(self) -> str | None:
        """Restart the server; return why not (the step is skipped), or None when done."""

    def wall_now(self) -> int:
        """The target's wall time, ns since the epoch (for ``expires_in``)."""

    async def read_records(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        """The delivery-log records written since the run began, or None and why not."""


# -- the targets ------------------------------------------------------------------------


class InProcessTarget:
    """A fresh engine behind the real app, on the trio clock (virtual under MockClock).

    Build it with :meth:`open`. The engine runs in a task of its own, so that a restart
    (close, then open again on the same directory) happens outside whatever cancel
    scopes the caller has open.
    """

    description = "in-process"
    remaining_slack = 0
    settle_timeout = 0.0
    inject_batch = INJECT_BATCH

    def __init__(self, data_dir: Path, clock: EngineClock, nursery: trio.Nursery) -> None:
        self.data_dir = data_dir
        self.clock = clock
        self._nursery = nursery
        self._engine: Engine | None = None
        self._client: httpx.AsyncClient | None = None
        self._stop = trio.Event()
        self._stopped = trio.Event()

    @classmethod
    @asynccontextmanager
    async def open(cls, data_dir: Path, *, wall_origin: int) -> AsyncIterator[InProcessTarget]:
        async with trio.open_nursery() as nursery:
            target = cls(data_dir, EngineClock(wall_origin), nursery)
            await target._start()
            try:
                yield target
            finally:
                await target._shut_down()

    async def _start(self) -> None:
        self._stop, self._stopped = trio.Event(), trio.Event()
        await self._nursery.start(self._serve, self._stop, self._stopped)

    async def _shut_down(self) -> None:
        self._stop.set()
        await self._stopped.wait()

    async def _serve(
        self,
        stop: trio.Event,
        stopped: trio.Event,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            # threads=False: SQLite and file writes run inline, so that virtual time
            # only moves when the scenario waits (see kumo.runtime.blocking).
            async with open_engine(self.data_dir, clock=self.clock, threads=False) as engine:
                # An ASGI app; quart's scope types are narrower than httpx's.
                app: Any = create_app(engine, run_blocking=inline)
                transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://kumo.invalid"
                ) as client:
                    self._engine, self._client = engine, client
                    task_status.started()
                    await stop.wait()
                    self._engine = self._client = None
        finally:
            stopped.set()

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "the target is not running"
        return self._engine

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        content: bytes = b"",
    ) -> httpx.Response:
        assert self._client is not None, "the target is not running"
        return await self._client.request(method, path, headers=list(headers), content=content)

    async def settle(self) -> None:
        await self.engine.wait_idle()

    async def sleep(self, nanos: int) -> None:
        await trio.sleep(nanos / NANOS_PER_SECOND)

    async def restart(self) -> str | None:
        await self._shut_down()
        await self._start()
        return None

    def wall_now(self) -> int:
        return self.clock.now()

    async def read_records(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        # Inline, not in a thread: a thread would let virtual time jump.
        return read_records(self.data_dir / LOGS), None


class LiveTarget:
    """A server at ``endpoint``, in real time. Build it with :meth:`open`."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        endpoint: str,
        *,
        log_dir: Path | None,
        restart_command: str | None,
        settle_timeout: float,
        remaining_slack: int,
    ) -> None:
        self._client = client
        self.endpoint = endpoint
        self.log_dir = log_dir
        self.restart_command = restart_command
        self.settle_timeout = settle_timeout
        self.remaining_slack = remaining_slack
        self._log_offsets: dict[str, int] = {}
        self.inject_batch = INJECT_BATCH

    @property
    def description(self) -> str:
        return self.endpoint

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        endpoint: str,
        *,
        log_dir: Path | None = None,
        restart_command: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
        settle_timeout: float = LIVE_SETTLE_TIMEOUT,
        remaining_slack: int = LIVE_REMAINING_SLACK,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> AsyncIterator[LiveTarget]:
        async with httpx.AsyncClient(
            base_url=endpoint.rstrip("/"),
            headers=list(headers),
            timeout=httpx.Timeout(request_timeout),
        ) as client:
            target = cls(
                client,
                endpoint,
                log_dir=log_dir,
                restart_command=restart_command,
                settle_timeout=settle_timeout,
                remaining_slack=remaining_slack,
            )
            if log_dir is not None:
                # Records from before the run are not the scenario's: count from here.
                target._log_offsets = await trio.to_thread.run_sync(segment_sizes, log_dir)
            yield target

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        content: bytes = b"",
    ) -> httpx.Response:
        return await self._client.request(method, path, headers=list(headers), content=content)

    async def settle(self) -> None:
        """Nothing to wait on from outside: expectations retry instead."""

    async def sleep(self, nanos: int) -> None:
        await trio.sleep(nanos / NANOS_PER_SECOND)

    async def restart(self) -> str | None:
        if self.restart_command is None:
            return "a live target restarts only when given a restart command (--restart-command)"
        result = await trio.run_process(
            self.restart_command, shell=True, check=False, capture_stdout=True, capture_stderr=True
        )
        if result.returncode != 0:
            output = (result.stderr or b"").decode(errors="replace").strip()
            raise OSError(f"restart command exited {result.returncode}: {output}")
        await self._wait_live()
        return None

    async def _wait_live(self) -> None:
        with trio.fail_after(RESTART_TIMEOUT):
            while True:
                try:
                    reply = await self._client.get(LIVENESS_PATH)
                    if reply.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(_RETRY_INTERVAL)

    def wall_now(self) -> int:
        return time.time_ns()

    async def read_records(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        if self.log_dir is None:
            return None, "no delivery-log directory given (--log-dir)"
        records = await trio.to_thread.run_sync(read_records, self.log_dir, self._log_offsets)
        return records, None


# -- results ----------------------------------------------------------------------------


@attrs.frozen
class StepResult:
    step: Step
    verdict: Verdict
    checks: tuple[Check, ...]
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    """Real time the step took."""

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if check.failed)


@attrs.frozen
class ScenarioResult:
    scenario: Scenario | None
    source: str
    target: str
    steps: tuple[StepResult, ...] = ()
    error: str | None = None
    """Why the scenario could not run (a malformed file) or stopped (a crash)."""
    seconds: float = 0.0
    virtual_seconds: float | None = None
    """Time on the target's clock, when that is virtual."""
    notes: tuple[str, ...] = ()
    """What the report should mention: a server that was not fresh, a clean-up."""

    @property
    def name(self) -> str:
        return self.scenario.name if self.scenario is not None else Path(self.source).stem

    @property
    def passed(self) -> bool:
        return self.error is None and all(s.verdict is not Verdict.FAILED for s in self.steps)


def _verdict(checks: Sequence[Check]) -> Verdict:
    if any(check.failed for check in checks):
        return Verdict.FAILED
    if checks and all(check.verdict is Verdict.SKIPPED for check in checks):
        return Verdict.SKIPPED
    return Verdict.PASSED


# -- the runner -------------------------------------------------------------------------


class _Run:
    """One scenario on one target: the ids the bounce steps got, the recipients made."""

    def __init__(self, scenario: Scenario, target: Target) -> None:
        self.scenario = scenario
        self.target = target
        self.rule_ids: dict[str, str | None] = {}
        self.next_recipient = 1

    async def step(self, step: Step) -> StepResult:
        started = time.monotonic()
        wait = step.action.nanos / NANOS_PER_SECOND if isinstance(step.action, Wait) else 0.0
        budget = wait + STEP_BUDGET
        if isinstance(step.action, Expect):
            budget += self.target.settle_timeout
        notes: list[str] = []
        with trio.move_on_after(budget) as scope:
            try:
                checks = await self._dispatch(step, notes)
            except (httpx.HTTPError, OSError, trio.TooSlowError) as error:
                checks = [failed("request", "a reply", f"{type(error).__name__}: {error}")]
        if scope.cancelled_caught:
            checks = [failed("time", f"done within {budget:g} s", "still running: timed out")]
        return StepResult(
            step, _verdict(checks), tuple(checks), tuple(notes), time.monotonic() - started
        )

    async def _dispatch(self, step: Step, notes: list[str]) -> list[Check]:
        action = step.action
        if isinstance(action, Inject):
            return await self._inject(action)
        if isinstance(action, Bounce):
            return await self._bounce(step, action)
        if isinstance(action, Cancel):
            return await self._cancel(action)
        if isinstance(action, Wait):
            await self.target.sleep(action.nanos)
            await self.target.settle()
            return []
        if isinstance(action, Restart):
            why = await self.target.restart()
            if why is not None:
                notes.append(why)
                return [Check("restart", "restarted", f"skipped: {why}", Verdict.SKIPPED)]
            await self.target.settle()
            return []
        if isinstance(action, Request):
            reply = await self.target.request(
                action.method, action.path, headers=action.headers, content=action.body
            )
            await self.target.settle()
            return check_reply(action.reply, reply.status_code, reply.text)
        return await self._expect(action, notes)

    async def _inject(self, action: Inject) -> list[Check]:
        recipients = list(action.recipients or ())
        if action.recipients is None:
            first = self.next_recipient
            self.next_recipient += action.count
            recipients = [f"user{n}@{action.domain}" for n in range(first, self.next_recipient)]
        metadata = {
            key: value
            for key, value in (
                ("campaign", action.campaign),
                ("tenant", action.tenant),
                ("routing_domain", action.routing_domain),
                ("queue", action.queue),
            )
            if value is not None
        }
        content = (
            f"From: <{action.sender}>\r\nSubject: {action.subject}\r\n\r\n"
            f"A message from the kumo scenario {self.scenario.name!r}.\r\n"
        )
        statuses: list[int] = []
        successes = failures = 0
        problems: list[Check] = []
        size = self.target.inject_batch
        for start in range(0, len(recipients), size):
            batch = recipients[start : start + size]
            body = {
                "envelope_sender": action.sender,
                "recipients": [
                    {"email": address, **({"metadata": metadata} if metadata else {})}
                    for address in batch
                ],
                "content": content,
            }
            reply = await self.target.request(
                "POST",
                INJECT_PATH,
                headers=[("Content-Type", "application/json")],
                content=json.dumps(body).encode(),
            )
            statuses.append(reply.status_code)
            if reply.status_code != action.reply.status:
                problems.append(
                    failed("status", str(action.reply.status), f"{reply.status_code}: {reply.text}")
                )
                break
            if reply.status_code == 200:
                for check in check_inject_reply(reply.status_code, reply.text, len(batch)):
                    if check.failed:
                        problems.append(check)
                data = _json_object(reply.text)
                successes += _count(data.get("success_count"))
                failures += _count(data.get("fail_count"))
        await self.target.settle()
        if problems:
            return problems[:3]
        checks = [
            Check(
                "status",
                str(action.reply.status),
                f"{statuses[0]} ({len(statuses)} request{'s' if len(statuses) != 1 else ''})",
                Verdict.PASSED,
            )
        ]
        if action.reply.status == 200:
            checks.append(
                Check("success_count", str(len(recipients)), str(successes), Verdict.PASSED)
            )
        return checks

    async def _bounce(self, step: Step, action: Bounce) -> list[Check]:
        body = dict(action.body)
        if action.expires_in is not None:
            body["expires"] = format_rfc3339(self.target.wall_now() + action.expires_in)
        reply = await self.target.request(
            "POST",
            BOUNCE_PATH,
            headers=[("Content-Type", "application/json")],
            content=json.dumps(body).encode(),
        )
        checks = check_reply(action.reply, reply.status_code, reply.text)
        rule_id = None
        if reply.status_code == 200 and action.reply.status == 200:
            more, rule_id = check_bounce_reply(reply.text)
            checks += more
        if step.name is not None:
            self.rule_ids[step.name] = rule_id
        await self.target.settle()
        return checks

    async def _cancel(self, action: Cancel) -> list[Check]:
        if action.rule is not None:
            rule_id = self.rule_ids.get(action.rule)
            if rule_id is None:
                return [
                    failed(
                        "id", f"the id of bounce step {action.rule!r}", "none: that bounce failed"
                    )
                ]
        else:
            assert action.id is not None
            rule_id = action.id
        reply = await self.target.request(
            "DELETE",
            BOUNCE_PATH,
            headers=[("Content-Type", "application/json")],
            content=json.dumps({"id": rule_id}).encode(),
        )
        await self.target.settle()
        return check_reply(
            action.reply,
            reply.status_code,
            reply.text,
            default_body=cancel_reply_text(reply.status_code, rule_id),
        )

    async def _expect(self, action: Expect, notes: list[str]) -> list[Check]:
        await self.target.settle()
        deadline = trio.current_time() + self.target.settle_timeout
        while True:
            seen = await self._observe(action)
            checks = evaluate(
                action, seen, self.rule_ids, remaining_slack=self.target.remaining_slack
            )
            if not any(check.failed for check in checks) or trio.current_time() >= deadline:
                break
            await trio.sleep(_RETRY_INTERVAL)
        if seen.records_note is not None:
            notes.append(f"record checks skipped: {seen.records_note}")
        return checks

    async def _observe(self, action: Expect) -> Observation:
        listing: list[dict[str, Any]] | None = None
        listing_error = scheduled_error = None
        scheduled: dict[str, int] | None = None
        records: list[dict[str, Any]] | None = None
        records_note = None
        if action.needs_listing:
            reply = await self.target.request("GET", BOUNCE_PATH)
            value = _json_value(reply.text)
            if reply.status_code == 200 and isinstance(value, list):
                listing = [item for item in value if isinstance(item, dict)]
            else:
                listing_error = f"{reply.status_code}: {reply.text[:300]}"
        if action.needs_metrics:
            reply = await self.target.request("GET", METRICS_PATH)
            if reply.status_code == 200:
                scheduled = parse_scheduled_counts(reply.text)
            else:
                scheduled_error = f"{reply.status_code}: {reply.text[:300]}"
        if action.needs_records:
            records, records_note = await self.target.read_records()
        return Observation(
            listing, listing_error, scheduled, scheduled_error, records, records_note
        )


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _json_object(text: str) -> dict[str, Any]:
    value = _json_value(text)
    return value if isinstance(value, dict) else {}


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


async def run_scenario(
    scenario: Scenario, target: Target, *, clean_up: bool = False
) -> ScenarioResult:
    """Run every step of ``scenario`` on ``target``, in order, whatever fails.

    A failing step does not stop the run (later steps show more of what went wrong).
    Scenarios assume a server with no live rules and no queued mail: a note says when
    the target had some. ``clean_up`` cancels, at the end, the rules the scenario issued
    that are still live, so that they do not bounce what the next scenario injects.
    """
    started = time.monotonic()
    clock_start = trio.current_time()
    notes = await _preflight(target)
    run = _Run(scenario, target)
    results = [await run.step(step) for step in scenario.steps]
    if clean_up:
        notes += await _clean_up(target, [i for i in run.rule_ids.values() if i is not None])
    return ScenarioResult(
        scenario,
        scenario.source,
        target.description,
        tuple(results),
        seconds=time.monotonic() - started,
        virtual_seconds=trio.current_time() - clock_start,
        notes=tuple(notes),
    )


async def _preflight(target: Target) -> list[str]:
    """Notes on what the target holds before the run (scenarios assume nothing)."""
    notes: list[str] = []
    try:
        listing = await target.request("GET", BOUNCE_PATH)
        metrics = await target.request("GET", METRICS_PATH)
    except (httpx.HTTPError, OSError) as error:
        return [f"could not look at the server before the run: {error}"]
    rules = _json_value(listing.text) if listing.status_code == 200 else None
    if isinstance(rules, list) and rules:
        notes.append(
            f"the server had {len(rules)} live rule(s) before the run; "
            "the expectations assume a fresh server"
        )
    if metrics.status_code == 200:
        queued = sum(parse_scheduled_counts(metrics.text).values())
        if queued:
            notes.append(
                f"the server had {queued} queued message(s) before the run; "
                "the expectations assume a fresh server"
            )
    return notes


async def _clean_up(target: Target, rule_ids: Sequence[str]) -> list[str]:
    cancelled = 0
    for rule_id in rule_ids:
        try:
            reply = await target.request(
                "DELETE",
                BOUNCE_PATH,
                headers=[("Content-Type", "application/json")],
                content=json.dumps({"id": rule_id}).encode(),
            )
        except (httpx.HTTPError, OSError):
            continue
        cancelled += reply.status_code == 200
    if not cancelled:
        return []
    return [f"cleaned up: cancelled {cancelled} rule(s) the scenario left live"]


def run_in_process(scenario: Scenario, data_dir: Path | None = None) -> ScenarioResult:
    """Run ``scenario`` on a fresh engine under a virtual clock, in its own ``trio.run``.

    ``data_dir`` keeps the engine's data (it must be new or empty); by default a
    temporary directory is used and removed. Blocking: call it outside any event loop.
    """

    async def main(directory: Path) -> ScenarioResult:
        started = time.monotonic()
        try:
            async with InProcessTarget.open(directory, wall_origin=scenario.wall_origin) as target:
                return await run_scenario(scenario, target)
        except Exception as error:  # the engine itself failed: report, do not crash
            return ScenarioResult(
                scenario,
                scenario.source,
                InProcessTarget.description,
                error=f"the in-process engine failed: {type(error).__name__}: {error}",
                seconds=time.monotonic() - started,
            )

    clock = trio.testing.MockClock(autojump_threshold=0)
    if data_dir is not None:
        return trio.run(main, data_dir, clock=clock)
    with tempfile.TemporaryDirectory(prefix="kumo-scenario-") as directory:
        return trio.run(main, Path(directory), clock=clock)


def run_live(
    scenario: Scenario,
    endpoint: str,
    *,
    log_dir: Path | None = None,
    restart_command: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    settle_timeout: float = LIVE_SETTLE_TIMEOUT,
    request_timeout: float = REQUEST_TIMEOUT,
) -> ScenarioResult:
    """Run ``scenario`` against the server at ``endpoint``, in real time. Blocking.

    Rules the scenario leaves live are cancelled at the end (see :func:`run_scenario`).
    """

    async def main() -> ScenarioResult:
        async with LiveTarget.open(
            endpoint,
            log_dir=log_dir,
            restart_command=restart_command,
            headers=headers,
            settle_timeout=settle_timeout,
            request_timeout=request_timeout,
        ) as target:
            result = await run_scenario(scenario, target, clean_up=True)
        return attrs.evolve(result, virtual_seconds=None)

    return trio.run(main)

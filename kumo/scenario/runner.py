"""Running scenarios: two targets behind one interface, and the runner that drives them.

* :class:`InProcessTarget`: a fresh engine in a data directory, served by the real HTTP
  app through httpx's ASGI transport, so bad input gets exactly the replies it gets over
  the wire, and by its real SMTP listener through memory streams. Run it under
  ``trio.testing.MockClock(autojump_threshold=0)`` (as :func:`run_in_process` does):
  waits advance virtual time, so an hour-long scenario takes milliseconds and runs the
  same way every time. After each step the target waits until nothing can happen
  without time passing, so expectations need no retries. A restart closes the engine
  and opens it again on the same directory; the wall clock runs on. With
  ``destination`` steps the engine delivers, to simulated SMTP peers
  (:mod:`kumo.scenario.destinations`).
* :class:`LiveTarget`: a running server at an endpoint, over HTTP in real time. Waits
  are sleeps; expectations are retried for a while, because a sweep finishes after its
  reply; restarts happen only with a restart command; delivery-log records are read
  from a log directory when one is given; SMTP goes to the listener address given, and
  destinations are Postfix's smtp-sink at the addresses given
  (:mod:`kumo.scenario.smtp_sink`).

A ``traffic`` step sends its messages in the background, batch by batch, while the
steps after it run; a batch that fails fails the step during which it was sent.
"""

from __future__ import annotations

import ipaddress
import json
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, Protocol

import attrs
import httpx
import trio
import trio.testing

from kumo.cli.serve import mail_settings
from kumo.config import Config
from kumo.http.app import create_app
from kumo.http.routes import (
    BOUNCE_PATH,
    INJECT_PATH,
    LIVENESS_PATH,
    METRICS_PATH,
    SUSPEND_PATH,
)
from kumo.model.duration import NANOS_PER_SECOND, format_duration
from kumo.model.prometheus_text import parse_scheduled_counts
from kumo.model.ready_queue import ResolvedAddress, mx_list_site_name, ready_queue_name
from kumo.model.rfc3339 import format_rfc3339
from kumo.model.smtp_server import Peer, SmtpServerSettings
from kumo.runtime.blocking import inline
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import Engine, open_engine
from kumo.runtime.smtp_connection import OutgoingMessage, connect_tcp
from kumo.runtime.smtp_listener import ListenerSettings, SmtpListener
from kumo.scenario.destinations import ROUND_CUSHION, SimulatedDestinations
from kumo.scenario.expect import (
    Check,
    Observation,
    Verdict,
    cancel_reply_text,
    check_inject_reply,
    check_issue_reply,
    check_reply,
    compare,
    evaluate,
    failed,
)
from kumo.scenario.format import (
    ADMIN_VERBS,
    Bounce,
    Cancel,
    Destination,
    Expect,
    Inject,
    Request,
    Restart,
    Scenario,
    Step,
    Traffic,
    Wait,
)
from kumo.scenario.smtp_sink import SmtpSink
from kumo.scenario.smtp_submission import Submitted, submit
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
LIVE_AGE_SLACK: Final = 2
"""Seconds a live record's age (``ages``) may be off: real time passes between a due
time and the attempt."""
_RETRY_INTERVAL: Final = 0.25
SMTP_CLIENT_IP: Final = "127.0.0.1"
"""The in-process SMTP client's address, as the engine's listener sees it (a relay host)."""
_FIRST_SMTP_PORT: Final = 50_000
SETTLE_CUSHION: Final = ROUND_CUSHION + 0.0001
"""Real seconds every task must be blocked before the in-process target counts as
settled: longer than the simulated destinations' rounds wait, so that they go first."""


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

    @property
    def age_slack(self) -> int:
        """Seconds a record's age may be off the expected one."""

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

    def ready_queue(self, domain: str) -> str | None:
        """The ready queue the server delivers ``domain``'s mail through (for a
        ``{ready_queue:DOMAIN}`` placeholder), or None if the target cannot tell."""

    async def read_records(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        """The delivery-log records written since the run began, or None and why not."""

    async def set_destination(self, step: Destination) -> None:
        """Make ``step.domain``'s SMTP peer answer as ``step`` says, from now on; raise
        ``OSError`` if the target cannot."""

    async def send_smtp(self, messages: Sequence[OutgoingMessage]) -> Submitted:
        """Send ``messages`` to the server's SMTP listener, one transaction each; raise
        ``OSError`` if the target has none."""


READY_QUEUE_PLACEHOLDER: Final = re.compile(r"\{ready_queue:([^{}\s]+)\}")
"""``{ready_queue:DOMAIN}`` in a string of an admin step's body: the name of the ready
queue the target delivers DOMAIN's mail through (in-process: its simulated MX; live:
its ``--sink`` address as the domain's ``mx_list``)."""


def fill_ready_queues(
    body: Mapping[str, Any], ready_queue: Callable[[str], str | None]
) -> dict[str, Any]:
    """``body`` with every ``{ready_queue:DOMAIN}`` in its string values (at any depth)
    replaced by ``ready_queue(DOMAIN)``; KeyError naming the domain if that is None."""

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return READY_QUEUE_PLACEHOLDER.sub(lambda found: named(found.group(1)), value)
        if isinstance(value, Mapping):
            return {key: fill(item) for key, item in value.items()}
        if isinstance(value, list):
            return [fill(item) for item in value]
        return value

    def named(domain: str) -> str:
        name = ready_queue(domain)
        if name is None:
            raise KeyError(domain)
        return name

    return {key: fill(value) for key, value in body.items()}


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
    age_slack = 0

    def __init__(
        self,
        data_dir: Path,
        clock: EngineClock,
        nursery: trio.Nursery,
        destinations: SimulatedDestinations | None = None,
        config: Config | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.clock = clock
        self.destinations = destinations
        """The simulated SMTP peers; None when the engine does not deliver."""
        self._nursery = nursery
        self._mail = (
            None
            if destinations is None
            else mail_settings(
                config or Config(), resolver=destinations.resolver, connector=destinations.connect
            )
        )
        self._engine: Engine | None = None
        self._client: httpx.AsyncClient | None = None
        self._listener: SmtpListener | None = None
        self._smtp_connections = 0
        self._stop = trio.Event()
        self._stopped = trio.Event()

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        data_dir: Path,
        *,
        wall_origin: int,
        destinations: Sequence[str] = (),
        config: Config | None = None,
    ) -> AsyncIterator[InProcessTarget]:
        """The target, running. With ``destinations`` (domains) the engine delivers to
        simulated peers of those domains, with the mail settings of ``config`` (kumo
        serve's defaults by default); without, it holds every message."""
        async with trio.open_nursery() as nursery:
            simulated = None
            if destinations:
                simulated = SimulatedDestinations(destinations)
                await nursery.start(simulated.run)
            target = cls(data_dir, EngineClock(wall_origin), nursery, simulated, config)
            await target._start()
            try:
                yield target
            finally:
                await target._shut_down()
                nursery.cancel_scope.cancel()

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
            async with open_engine(
                self.data_dir, clock=self.clock, threads=False, mail=self._mail
            ) as engine:
                # An ASGI app; quart's scope types are narrower than httpx's.
                app: Any = create_app(engine, run_blocking=inline)
                transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://kumo.invalid"
                ) as client:
                    self._engine, self._client = engine, client
                    # The listener's sessions only: connections come through memory
                    # streams (send_smtp), never a socket.
                    self._listener = SmtpListener(
                        engine,
                        ListenerSettings(host=SMTP_CLIENT_IP, port=0, session=SmtpServerSettings()),
                    )
                    task_status.started()
                    await stop.wait()
                    self._engine = self._client = self._listener = None
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
        if self._client is None:
            # Traffic may send while a restart step has the engine down.
            raise httpx.ConnectError("the in-process server is not running (restarting)")
        return await self._client.request(method, path, headers=list(headers), content=content)

    async def settle(self) -> None:
        """Return once nothing can happen without time passing: every committed event
        processed (:meth:`Engine.wait_idle`) and every task blocked (a message being
        delivered, an outcome being decided, a traffic batch under way all run first).
        Under the virtual clock this is exact; time does not move meanwhile."""
        engine = self.engine
        while True:
            await engine.wait_idle()
            seq = engine.statistics().log.last_seq
            await trio.testing.wait_all_tasks_blocked(SETTLE_CUSHION)
            if self._engine is engine and engine.statistics().log.last_seq == seq:
                return

    async def sleep(self, nanos: int) -> None:
        await trio.sleep(nanos / NANOS_PER_SECOND)

    async def restart(self) -> str | None:
        await self._shut_down()
        await self._start()
        return None

    def wall_now(self) -> int:
        return self.clock.now()

    def ready_queue(self, domain: str) -> str | None:
        return None if self.destinations is None else self.destinations.ready_queue(domain)

    async def read_records(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        # Inline, not in a thread: a thread would let virtual time jump.
        return read_records(self.data_dir / LOGS), None

    async def set_destination(self, step: Destination) -> None:
        await trio.lowlevel.checkpoint()
        if self.destinations is None:
            raise OSError("the engine delivers nothing: the scenario has no destination step")
        self.destinations.answer(step)

    async def send_smtp(self, messages: Sequence[OutgoingMessage]) -> Submitted:
        listener = ResolvedAddress("localhost", ipaddress.ip_address(SMTP_CLIENT_IP), 25)
        return await submit(messages, server=listener, connector=self._connect_to_listener)

    async def _connect_to_listener(
        self, address: ResolvedAddress, port: int
    ) -> tuple[trio.abc.Stream, str]:
        """A connection to the engine's SMTP listener through a memory stream."""
        await trio.lowlevel.checkpoint()
        listener = self._listener
        if listener is None:
            raise ConnectionRefusedError("the in-process server is not running")
        client_port = _FIRST_SMTP_PORT + self._smtp_connections % (65_536 - _FIRST_SMTP_PORT)
        self._smtp_connections += 1
        ours, theirs = trio.testing.memory_stream_pair()

        async def serve() -> None:
            async with theirs:
                await listener.serve_connection(
                    theirs, Peer(SMTP_CLIENT_IP, client_port), SMTP_CLIENT_IP
                )

        self._nursery.start_soon(serve)
        return ours, f"{SMTP_CLIENT_IP}:{client_port}"


class LiveTarget:
    """A server at ``endpoint``, in real time. Build it with :meth:`open`."""

    age_slack = LIVE_AGE_SLACK

    def __init__(
        self,
        client: httpx.AsyncClient,
        endpoint: str,
        *,
        log_dir: Path | None,
        restart_command: str | None,
        settle_timeout: float,
        remaining_slack: int,
        smtp: tuple[str, int] | None = None,
        sinks: Mapping[str, SmtpSink] | None = None,
    ) -> None:
        self._client = client
        self.endpoint = endpoint
        self.log_dir = log_dir
        self.restart_command = restart_command
        self.settle_timeout = settle_timeout
        self.remaining_slack = remaining_slack
        self.smtp = smtp
        """The server's SMTP listener (IP, port), if given."""
        self.sinks = dict(sinks or {})
        """Destination domain -> its smtp-sink."""
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
        smtp: tuple[str, int] | None = None,
        sinks: Mapping[str, tuple[str, int]] | None = None,
    ) -> AsyncIterator[LiveTarget]:
        """The target; ``smtp`` is the server's SMTP listener, ``sinks`` the address of
        each destination domain's smtp-sink (started by its first ``destination`` step,
        stopped when the block ends)."""
        async with (
            httpx.AsyncClient(
                base_url=endpoint.rstrip("/"),
                headers=list(headers),
                timeout=httpx.Timeout(request_timeout),
            ) as client,
            trio.open_nursery() as processes,
        ):
            target = cls(
                client,
                endpoint,
                log_dir=log_dir,
                restart_command=restart_command,
                settle_timeout=settle_timeout,
                remaining_slack=remaining_slack,
                smtp=smtp,
                sinks={
                    domain.lower(): SmtpSink(host, port, processes)
                    for domain, (host, port) in (sinks or {}).items()
                },
            )
            try:
                if log_dir is not None:
                    # Records from before the run are not the scenario's: count from here.
                    target._log_offsets = await trio.to_thread.run_sync(segment_sizes, log_dir)
                yield target
            finally:
                for sink in target.sinks.values():
                    await sink.stop()

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

    def ready_queue(self, domain: str) -> str | None:
        # The server delivers the domain to its --sink address, as the mx_list of its
        # [domains."DOMAIN"] (docs/scenarios.md): the ready queue is named after it.
        sink = self.sinks.get(domain.lower())
        if sink is None:
            return None
        return ready_queue_name(mx_list_site_name([f"{sink.host}:{sink.port}"]))

    async def read_records(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        if self.log_dir is None:
            return None, "no delivery-log directory given (--log-dir)"
        records = await trio.to_thread.run_sync(read_records, self.log_dir, self._log_offsets)
        return records, None

    async def set_destination(self, step: Destination) -> None:
        sink = self.sinks.get(step.domain)
        if sink is None:
            raise OSError(
                f"no smtp-sink for {step.domain} (--sink {step.domain}=IP:PORT, the "
                "address the server delivers it to)"
            )
        await sink.answer(step)

    async def send_smtp(self, messages: Sequence[OutgoingMessage]) -> Submitted:
        if self.smtp is None:
            raise OSError("no SMTP listener given (--smtp IP:PORT)")
        host, port = self.smtp
        listener = ResolvedAddress(host, ipaddress.ip_address(host), port)
        return await submit(messages, server=listener, connector=connect_tcp)


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


class _TrafficRun:
    """The progress of one ``traffic`` step in the background."""

    def __init__(self, step: Step, total: int) -> None:
        self.step = step
        self.total = total
        self.sent = 0
        self.done = False
        self.problems: list[Check] = []
        """Failed checks of batches not yet reported with a step."""


class _Run:
    """One scenario on one target: the ids the bounce steps got, the recipients made,
    the traffic under way (in ``nursery``)."""

    def __init__(self, scenario: Scenario, target: Target, nursery: trio.Nursery) -> None:
        self.scenario = scenario
        self.target = target
        self.rule_ids: dict[str, str | None] = {}
        """Step name -> the id its bounce or suspend got (None: it failed)."""
        self.issued: list[tuple[str, str]] = []
        """(verb, id) of everything the run issued, for the clean-up."""
        self.next_recipient = 1
        self.traffic: list[_TrafficRun] = []
        self._nursery = nursery

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
        checks += self._traffic_problems()
        return StepResult(
            step, _verdict(checks), tuple(checks), tuple(notes), time.monotonic() - started
        )

    def _traffic_problems(self) -> list[Check]:
        """What the traffic's batches got wrong since the last step, as this step's."""
        problems: list[Check] = []
        for traffic in self.traffic:
            label = traffic.step.label
            problems += [
                attrs.evolve(c, what=f"traffic of {label}: {c.what}") for c in traffic.problems
            ]
            traffic.problems.clear()
        return problems

    def unfinished_traffic(self) -> list[str]:
        """Notes on the traffic still under way (the run's end stops it)."""
        return [
            f"the traffic of {t.step.label} was stopped at the end of the run, "
            f"{t.sent} of {t.total} messages sent"
            for t in self.traffic
            if not t.done
        ]

    async def _dispatch(self, step: Step, notes: list[str]) -> list[Check]:
        action = step.action
        if isinstance(action, Inject):
            return await self._inject(action)
        if isinstance(action, Traffic):
            return self._start_traffic(step, action)
        if isinstance(action, Destination):
            try:
                await self.target.set_destination(action)
            except OSError as error:
                return [
                    failed("destination", f"{action.domain} answering {action.answer}", str(error))
                ]
            await self.target.settle()
            return []
        if isinstance(action, Bounce):
            return await self._issue(step, action)
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

    def _recipients(self, action: Inject) -> list[str]:
        if action.recipients is not None:
            return list(action.recipients)
        first = self.next_recipient
        self.next_recipient += action.count
        return [f"user{n}@{action.domain}" for n in range(first, self.next_recipient)]

    async def _inject(self, action: Inject) -> list[Check]:
        checks = await self._send(action, self._recipients(action))
        await self.target.settle()
        return checks

    def _start_traffic(self, step: Step, action: Traffic) -> list[Check]:
        recipients = self._recipients(action.inject)
        traffic = _TrafficRun(step, len(recipients))
        self.traffic.append(traffic)
        self._nursery.start_soon(self._run_traffic, traffic, action, recipients)
        return [
            Check(
                "traffic",
                f"{len(recipients)} messages by {format_duration(action.duration)} from now",
                "started",
                Verdict.PASSED,
            )
        ]

    async def _run_traffic(
        self, traffic: _TrafficRun, action: Traffic, recipients: list[str]
    ) -> None:
        """Send ``recipients`` a batch at a time, each on its schedule (not after the
        previous batch: a slow batch does not delay the next)."""
        started = trio.current_time()
        for number, first in enumerate(range(0, len(recipients), action.batch), 1):
            await trio.sleep_until(started + number * action.every / NANOS_PER_SECOND)
            batch = recipients[first : first + action.batch]
            try:
                checks = await self._send(action.inject, batch)
            except (httpx.HTTPError, OSError, trio.TooSlowError) as error:
                checks = [failed("request", "a reply", f"{type(error).__name__}: {error}")]
            traffic.sent += len(batch)
            traffic.problems += [check for check in checks if check.failed]
        traffic.done = True

    async def _send(self, action: Inject, recipients: list[str]) -> list[Check]:
        """Send one message to each of ``recipients`` as ``action`` says."""
        if action.via == "smtp":
            return await self._send_smtp(action, recipients)
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
        content = self._content(action)
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

    async def _send_smtp(self, action: Inject, recipients: list[str]) -> list[Check]:
        headers = "".join(
            f"{name}: {value}\r\n"
            for name, value in (("X-Campaign", action.campaign), ("X-Tenant", action.tenant))
            if value is not None
        )
        content = (headers + self._content(action)).encode()
        messages = [
            OutgoingMessage(f"{n}", action.sender, recipient, content)
            for n, recipient in enumerate(recipients)
        ]
        try:
            submitted = await self.target.send_smtp(messages)
        except OSError as error:
            return [failed("smtp", f"{len(messages)} messages accepted", str(error))]
        checks = [compare("accepted over SMTP", len(messages), submitted.accepted)]
        checks += [failed("refused over SMTP", "250", problem) for problem in submitted.problems]
        return checks

    def _content(self, action: Inject) -> str:
        return (
            f"From: <{action.sender}>\r\nSubject: {action.subject}\r\n\r\n"
            f"A message from the kumo scenario {self.scenario.name!r}.\r\n"
        )

    async def _issue(self, step: Step, action: Bounce) -> list[Check]:
        """A ``bounce`` or ``suspend`` step: POST its body to its verb's path, each
        ``{ready_queue:DOMAIN}`` in it replaced by the ready queue the target names."""
        try:
            body = fill_ready_queues(action.body, self.target.ready_queue)
        except KeyError as unknown:
            return [
                failed(
                    "ready queue",
                    f"the ready queue of {unknown.args[0]}",
                    f"{self.target.description} cannot tell: a domain without a destination "
                    "(in-process: a destination step; live: --sink)",
                )
            ]
        if action.expires_in is not None:
            body["expires"] = format_rfc3339(self.target.wall_now() + action.expires_in)
        reply = await self.target.request(
            "POST",
            ADMIN_VERBS[action.verb].path,
            headers=[("Content-Type", "application/json")],
            content=json.dumps(body).encode(),
        )
        checks = check_reply(action.reply, reply.status_code, reply.text)
        rule_id = None
        if reply.status_code == 200 and action.reply.status == 200:
            more, rule_id = check_issue_reply(action, reply.text)
            checks += more
        if rule_id is not None:
            self.issued.append((action.verb, rule_id))
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
                        "id",
                        f"the id of {action.verb} step {action.rule!r}",
                        f"none: that {action.verb} failed",
                    )
                ]
        else:
            assert action.id is not None
            rule_id = action.id
        reply = await self.target.request(
            "DELETE",
            ADMIN_VERBS[action.verb].path,
            headers=[("Content-Type", "application/json")],
            content=json.dumps({"id": rule_id}).encode(),
        )
        await self.target.settle()
        return check_reply(
            action.reply,
            reply.status_code,
            reply.text,
            default_body=cancel_reply_text(reply.status_code, rule_id, action.verb),
        )

    async def _expect(self, action: Expect, notes: list[str]) -> list[Check]:
        await self.target.settle()
        deadline = trio.current_time() + self.target.settle_timeout
        while True:
            seen = await self._observe(action)
            checks = evaluate(
                action,
                seen,
                self.rule_ids,
                remaining_slack=self.target.remaining_slack,
                age_slack=self.target.age_slack,
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
        suspensions: list[dict[str, Any]] | None = None
        suspensions_error = None
        if action.needs_suspensions:
            reply = await self.target.request("GET", SUSPEND_PATH)
            value = _json_value(reply.text)
            if reply.status_code == 200 and isinstance(value, list):
                suspensions = [item for item in value if isinstance(item, dict)]
            else:
                suspensions_error = f"{reply.status_code}: {reply.text[:300]}"
        if action.needs_metrics:
            reply = await self.target.request("GET", METRICS_PATH)
            if reply.status_code == 200:
                scheduled = parse_scheduled_counts(reply.text)
            else:
                scheduled_error = f"{reply.status_code}: {reply.text[:300]}"
        if action.needs_records:
            records, records_note = await self.target.read_records()
        return Observation(
            listing,
            listing_error,
            scheduled,
            scheduled_error,
            records,
            records_note,
            suspensions,
            suspensions_error,
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
    async with trio.open_nursery() as traffic:
        run = _Run(scenario, target, traffic)
        results = [await run.step(step) for step in scenario.steps]
        notes += run.unfinished_traffic()
        traffic.cancel_scope.cancel()
    if clean_up:
        notes += await _clean_up(target, run.issued)
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


async def _clean_up(target: Target, issued: Sequence[tuple[str, str]]) -> list[str]:
    """Cancel what the run issued (``(verb, id)`` pairs) and is still live."""
    cancelled = 0
    for verb, rule_id in issued:
        if not ADMIN_VERBS[verb].cancellable:
            continue
        try:
            reply = await target.request(
                "DELETE",
                ADMIN_VERBS[verb].path,
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
            async with InProcessTarget.open(
                directory,
                wall_origin=scenario.wall_origin,
                destinations=scenario.destination_domains,
                config=scenario.config,
            ) as target:
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
    smtp: tuple[str, int] | None = None,
    sinks: Mapping[str, tuple[str, int]] | None = None,
) -> ScenarioResult:
    """Run ``scenario`` against the server at ``endpoint``, in real time. Blocking.

    ``smtp`` is the server's SMTP listener (for messages sent ``via = "smtp"``),
    ``sinks`` the address of each destination domain's smtp-sink (the server delivers
    that domain there). Rules the scenario leaves live are cancelled at the end (see
    :func:`run_scenario`).
    """

    async def main() -> ScenarioResult:
        async with LiveTarget.open(
            endpoint,
            log_dir=log_dir,
            restart_command=restart_command,
            headers=headers,
            settle_timeout=settle_timeout,
            request_timeout=request_timeout,
            smtp=smtp,
            sinks=sinks,
        ) as target:
            result = await run_scenario(scenario, target, clean_up=True)
        notes = result.notes
        if scenario.config is not None:
            notes += (
                "[config] applies in-process only: the server delivers as its own "
                "configuration says",
            )
        return attrs.evolve(result, virtual_seconds=None, notes=notes)

    return trio.run(main)

"""The running engine, model-checked: a state machine drives it in-process, in virtual time.

:class:`EngineMachine` opens an engine on a fresh data directory (SQLite and file I/O
inline, small settings so that sweeps come in chunks, mailboxes overflow and followers
read the store) and drives it through inject, issue, cancel, time passing and restarts
(leaving the engine's context and opening the same directory again). After every step,
once the engine is idle, it checks what the API shows (listing, gauges, queued messages,
statistics) against :class:`tests.reference_model.ReferenceModel`, and the data directory
against a fresh fold (:func:`tests.runtime.invariants.check_invariants`) and
``kumo replay --verify`` (:func:`kumo.store.verify.verify_data_dir`).

Hypothesis calls the rules synchronously, while the engine lives in a Trio run: an
:class:`EngineHost` runs ``trio.run`` under a :class:`trio.testing.MockClock` (no
autojump: virtual time moves only when a rule makes it) in a thread of its own for the
lifetime of one machine; each rule runs its work there as a task and waits for the
answer (at most :data:`STEP_TIMEOUT` seconds: an engine that never gets idle fails the
step rather than hanging the suite).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kumo.model.criteria import Criteria
from kumo.model.requests import BounceRequest, NewMessage
from kumo.model.settings import EngineSettings
from kumo.runtime.clock import EngineClock
from kumo.runtime.engine import Engine, open_engine
from kumo.store.verify import verify_data_dir
from tests.reference_model import CRITERIA, QUEUES, ReferenceModel, criteria_key, matches
from tests.runtime.harness import WALL_ORIGIN
from tests.runtime.invariants import check_invariants

SECOND = 1_000_000_000
SETTINGS = EngineSettings(
    sweep_chunk=1,
    resume_chunk=2,
    mailbox_capacity=1,
    read_limit=2,
    tail_events=4,
    deliveries_per_yield=2,
    background_capacity=1,
)
"""Small bounds, so that a few messages exercise what a million do."""

T = TypeVar("T")

LIFETIMES = st.sampled_from([-20, 0, 1, 5, 60, 300, 3600])
"""Seconds from issue to expiry: in the past, now (issued already expired), or later."""
INJECTIONS = st.one_of(
    st.lists(st.sampled_from(QUEUES), min_size=1, max_size=3),
    st.tuples(st.sampled_from(QUEUES), st.integers(2, 5)).map(lambda qn: [qn[0]] * qn[1]),
)
"""The queues of one inject request's messages: a few queues, or several to one."""
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
STEP_TIMEOUT = 10.0
"""Seconds of real time a step may take: steps take milliseconds, unless the engine hangs."""


@attrs.frozen
class Request:
    """A client's request: what to ask the engine, and what to tell the reference of
    the answer (with the time it was committed at)."""

    ask: Callable[[Engine], Awaitable[Any]]
    tell: Callable[[Any, int], None]


@attrs.frozen
class Observation:
    """What the engine shows at one instant."""

    now: int
    listing: list[tuple[str, int, dict[str, int], int]]
    queue_counts: dict[str, int]
    queued: dict[str, list[str]]
    statistics: tuple[int, int, int, int, int]
    """received, bounced, queued, queues, live rules."""
    counters: dict[str, dict[str, int]]
    """Rule id -> queue -> bounced, for every rule (listed or not) that bounced any."""


class EngineHost:
    """An engine on ``data_dir``, running in a Trio run of its own thread.

    The run's clock is a :class:`trio.testing.MockClock` that moves only with
    :meth:`jump`. One :class:`EngineClock` serves every opening of the engine, so that
    a restart does not take time back. Every call waits at most :data:`STEP_TIMEOUT`
    seconds of real time: an engine that never gets idle fails the step, it does not
    hang the test.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.clock = trio.testing.MockClock()
        self._engine_clock = EngineClock(WALL_ORIGIN)
        self._engine: Engine | None = None
        self._leave: trio.Event | None = None
        self._reopened: trio.Event | None = None
        self._stopping = False
        self._error: BaseException | None = None
        self._ready: queue.Queue[trio.lowlevel.TrioToken | None] = queue.Queue()
        self._thread = threading.Thread(target=self._main, name="engine-machine", daemon=True)
        self._thread.start()
        try:
            token = self._ready.get(timeout=STEP_TIMEOUT)
        except queue.Empty:
            raise AssertionError("the engine did not open") from None
        if token is None:
            self._thread.join()
            assert self._error is not None
            raise self._error
        self._token = token

    def _main(self) -> None:
        try:
            trio.run(self._serve, clock=self.clock)
        except BaseException as exc:
            self._error = exc
            self._ready.put(None)

    async def _serve(self) -> None:
        token = trio.lowlevel.current_trio_token()
        while True:
            self._leave = leave = trio.Event()
            async with open_engine(
                self.data_dir, clock=self._engine_clock, settings=SETTINGS, threads=False
            ) as engine:
                await engine.wait_idle()
                self._engine = engine
                if self._reopened is None:
                    self._ready.put(token)
                else:
                    self._reopened.set()
                await leave.wait()
            self._engine = None
            if self._stopping:
                return

    def _call(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` as a task of the engine's run; return what it returns."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        async def task() -> None:
            try:
                done.set_result(await work())
            except BaseException as exc:
                done.set_exception(exc)
                if isinstance(exc, trio.Cancelled):
                    raise

        self._token.run_sync_soon(trio.lowlevel.spawn_system_task, task)
        try:
            return done.result(timeout=STEP_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise AssertionError(f"the engine did not get idle in {STEP_TIMEOUT} s") from None
        except trio.Cancelled:
            # The run ended under the call: report why.
            self._thread.join(timeout=STEP_TIMEOUT)
            if self._error is not None:
                raise self._error from None
            raise

    def run(self, action: Callable[[Engine], Awaitable[T]]) -> T:
        """Run ``action`` in the engine's thread, then wait until the engine is idle."""

        async def act() -> T:
            assert self._engine is not None
            result = await action(self._engine)
            await trio.testing.wait_all_tasks_blocked()
            await self._engine.wait_idle()
            return result

        return self._call(act)

    def read(self, look: Callable[[Engine], T]) -> T:
        """Call ``look`` in the engine's thread (the engine is idle between rules)."""

        async def call() -> T:
            assert self._engine is not None
            return look(self._engine)

        return self._call(call)

    def jump(self, seconds: float) -> None:
        """Move virtual time; let the rule expiry act; wait until the engine is idle."""

        async def jump(engine: Engine) -> None:
            self.clock.jump(seconds)

        self.run(jump)

    def restart(self) -> None:
        """Leave the engine's context (a clean shutdown) and open the directory again."""

        async def restart() -> None:
            assert self._leave is not None
            self._reopened = trio.Event()
            self._leave.set()
            await self._reopened.wait()

        self._call(restart)

    def stop(self) -> None:
        """Shut the engine down and end the run; re-raise whatever ended it early.

        A shutdown that does not finish (an engine that never gets idle) is let past
        its deadline by moving virtual time.
        """
        if self._thread.is_alive():

            async def stop() -> None:
                assert self._leave is not None
                self._stopping = True
                self._leave.set()

            with contextlib.suppress(trio.RunFinishedError):
                self._call(stop)
                self._thread.join(timeout=STEP_TIMEOUT)
                if self._thread.is_alive():
                    self._token.run_sync_soon(self.clock.jump, SETTINGS.shutdown_deadline + 1)
            self._thread.join(timeout=STEP_TIMEOUT)
            if self._thread.is_alive():
                raise AssertionError("the engine did not shut down")
        if self._error is not None:
            raise self._error


class EngineMachine(RuleBasedStateMachine):
    """See the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="kumo-machine-"))
        try:
            self.host = EngineHost(self.directory)
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        self.reference = ReferenceModel()
        self.criteria: dict[str, Mapping[str, Any]] = {}
        self.received = 0

    def teardown(self) -> None:
        try:
            self.host.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def now(self) -> int:
        return self.host.read(lambda engine: engine.clock.now())

    # -- what clients do ---------------------------------------------------------------
    # Each request is drawn as a Request: what to ask the engine, and what to tell the
    # reference of the answer. Virtual time stands still within a step, so every
    # request of a step commits at the ``now`` read before it.

    def inject_request(self, queues: list[str]) -> Request:
        messages = []
        for queue_name in queues:
            self.received += 1
            recipient = f"r{self.received}@example.com"
            messages.append(NewMessage("s@example.org", recipient, queue_name, b"hello\r\n"))

        async def ask(engine: Engine) -> list[str]:
            return await engine.inject(messages)

        def tell(ids: Any, now: int) -> None:
            for message_id, queue_name in zip(ids, queues, strict=True):
                self.reference.receive(message_id, queue_name, now)

        return Request(ask, tell)

    def issue_request(
        self, criteria: Mapping[str, Any], lifetime: int, suppress: bool, now: int
    ) -> Request:
        """A lifetime of 0, or an ``expires`` in the past, issues the rule already expired."""
        if lifetime < 0:
            request = BounceRequest(
                Criteria(**criteria),
                "why",
                expires_at=now + lifetime * SECOND,
                suppress_logging=suppress,
            )
        else:
            request = BounceRequest(
                Criteria(**criteria), "why", duration=lifetime * SECOND, suppress_logging=suppress
            )

        async def ask(engine: Engine) -> str:
            return await engine.issue_bounce(request, issued_by="ops")

        def tell(rule_id: Any, now: int) -> None:
            self.criteria[rule_id] = criteria
            self.reference.issue(rule_id, criteria, now, now + lifetime * SECOND)

        return Request(ask, tell)

    def cancel_request(self, rule_id: str) -> Request:
        async def ask(engine: Engine) -> bool:
            return await engine.cancel_bounce(rule_id, cancelled_by="ops")

        def tell(removed: Any, now: int) -> None:
            assert removed == self.reference.cancel(rule_id, now)

        return Request(ask, tell)

    def draw_request(self, data: st.DataObject, now: int) -> Request:
        """Any request, with what the reference knows at ``now`` to choose from."""
        match data.draw(st.sampled_from(["inject", "issue", "cancel"])):
            case "inject":
                return self.inject_request(data.draw(INJECTIONS))
            case "issue":
                criteria = data.draw(self.criteria_to_issue(now))
                lifetime, suppress = data.draw(LIFETIMES), data.draw(st.booleans())
                return self.issue_request(criteria, lifetime, suppress, now)
            case _:
                return self.cancel_request(data.draw(self.ids_to_cancel(now)))

    def criteria_to_issue(self, now: int) -> st.SearchStrategy[Mapping[str, Any]]:
        """One of a few criteria, or a live rule's (which the new rule replaces)."""
        live = [self.criteria[rule_id] for rule_id in self.reference.live_ids(now)]
        return st.one_of(st.sampled_from(CRITERIA), *([st.sampled_from(live)] if live else []))

    def ids_to_cancel(self, now: int) -> st.SearchStrategy[str]:
        """A live id, any id ever issued (replaced, cancelled, expired), or an unknown one."""
        live = self.reference.live_ids(now)
        return st.one_of(
            st.just(UNKNOWN_ID),
            *([st.sampled_from(live)] if live else []),
            *([st.sampled_from(list(self.criteria))] if self.criteria else []),
        )

    def perform(self, requests: list[Request], now: int) -> None:
        """Make the requests one after the other, each once the previous is answered
        (and so committed), without waiting for the engine to finish acting on them; then
        tell the reference, in the same order, and wait until the engine is idle."""

        async def ask_all(engine: Engine) -> list[Any]:
            assert engine.clock.now() == now
            return [await request.ask(engine) for request in requests]

        for request, answer in zip(requests, self.host.run(ask_all), strict=True):
            request.tell(answer, now)

    @initialize(data=st.data())
    def clients_begin(self, data: st.DataObject) -> None:
        """A few requests to start from: Hypothesis turns rules off at random for a
        whole example (swarm testing), and an example without any message or rule would
        check little."""
        now = self.now()
        count = data.draw(st.integers(0, 4))
        self.perform([self.draw_request(data, now) for _ in range(count)], now)

    @rule(queues=INJECTIONS)
    def inject(self, queues: list[str]) -> None:
        self.perform([self.inject_request(queues)], self.now())

    @rule(data=st.data(), lifetime=LIFETIMES, suppress=st.booleans())
    def issue(self, data: st.DataObject, lifetime: int, suppress: bool) -> None:
        now = self.now()
        criteria = data.draw(self.criteria_to_issue(now))
        self.perform([self.issue_request(criteria, lifetime, suppress, now)], now)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        now = self.now()
        self.perform([self.cancel_request(data.draw(self.ids_to_cancel(now)))], now)

    @rule(data=st.data())
    def requests_in_a_row(self, data: st.DataObject) -> None:
        """Several requests, each made as soon as the previous one is answered: sweeps
        and arrivals' bounces run while the next requests commit."""
        now = self.now()
        count = data.draw(st.integers(2, 4))
        self.perform([self.draw_request(data, now) for _ in range(count)], now)

    @rule(
        data=st.data(),
        lifetime=LIFETIMES,
        suppress=st.booleans(),
        queued=st.integers(0, 4),
        arrivals=st.integers(1, 3),
    )
    def arrivals_during_a_sweep(
        self, data: st.DataObject, lifetime: int, suppress: bool, queued: int, arrivals: int
    ) -> None:
        """Messages to a queue, a rule that matches it, then more messages to it, each
        request sent as soon as the one before is answered: they arrive while the sweep
        is under way (and the queue's actor, busy sweeping, falls behind and catches up
        from the log)."""
        now = self.now()
        criteria = data.draw(self.criteria_to_issue(now))
        key = criteria_key(criteria)
        target = data.draw(st.sampled_from([q for q in QUEUES if matches(key, q)] or QUEUES))
        requests = [self.inject_request([target] * queued)] if queued else []
        requests.append(self.issue_request(criteria, lifetime, suppress, now))
        requests += [self.inject_request([target]) for _ in range(arrivals)]
        self.perform(requests, now)

    # -- time, restarts ----------------------------------------------------------------

    @rule(data=st.data())
    def time_passes(self, data: st.DataObject) -> None:
        """Some seconds, or exactly to the next expiry."""
        now = self.now()
        choices = [st.integers(1, 30).map(float)]
        upcoming = [
            rule.expires_at
            for rule in self.reference.rules.values()
            if rule.expires_at > now and self.reference.is_live(rule.id, now)
        ]
        if upcoming:
            choices.append(st.just((min(upcoming) - now) / SECOND))
        self.host.jump(data.draw(st.one_of(choices)))

    @rule()
    def restart(self) -> None:
        self.host.restart()

    # -- the checks --------------------------------------------------------------------

    @invariant()
    def agrees_with_the_reference_and_the_data_directory(self) -> None:
        seen = self.host.read(observe)
        reference = self.reference
        listed = [
            (r.id, r.remaining, r.bounced, r.total_bounced) for r in reference.listing(seen.now)
        ]
        assert seen.listing == listed
        assert seen.queue_counts == reference.queue_counts()
        assert seen.queued == reference.queued()
        queued = sum(seen.queue_counts.values())
        assert seen.statistics == (
            len(reference.messages),
            len(reference.fates()),
            queued,
            len(seen.queue_counts),
            len(listed),
        )
        assert len(reference.messages) == queued + len(reference.fates())
        assert seen.counters == reference.bounced()
        self.host.read(lambda engine: check_invariants(self.directory, engine))
        report = self.host.read(lambda engine: verify_data_dir(self.directory))
        assert report.violations == []


def observe(engine: Engine) -> Observation:
    statistics = engine.statistics()
    return Observation(
        now=engine.clock.now(),
        listing=[
            (v.id, v.remaining, dict(v.bounced), v.total_bounced) for v in engine.list_bounces()
        ],
        queue_counts=dict(engine.queue_counts()),
        queued=engine.queued_messages(),
        statistics=(
            statistics.received_total,
            statistics.bounced_total,
            statistics.queued_total,
            statistics.queues,
            statistics.live_rules,
        ),
        counters={
            rule.id: dict(rule.bounced)
            for rule in engine.projection().rules.rules.values()
            if rule.bounced
        },
    )


EngineMachine.TestCase.settings = settings(max_examples=20, stateful_step_count=20, deadline=None)
TestEngineMachine = EngineMachine.TestCase

"""What the HTTP layer needs of the engine, as a structural type.

:class:`kumo.runtime.engine.Engine` satisfies it; tests of the handlers pass a fake
that does too. The HTTP layer never reaches past these calls.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from kumo.model.criteria import Criteria
from kumo.model.dry_run import DryRun, RebindDryRun
from kumo.model.fleet import FleetFigures
from kumo.model.inspection import InspectedMessage, InspectedQueue
from kumo.model.ready_queue_state import ReadyQueueState
from kumo.model.ready_suspension import ReadySuspensionView
from kumo.model.requests import BounceRequest, NewMessage, ReadySuspendRequest, RebindRequest
from kumo.model.state import LiveRules, RuleKind, RuleView
from kumo.runtime.delivery import DispatcherStatistics
from kumo.runtime.queue_actor import ActorStatistics


class AdminEngine(Protocol):
    """The engine calls behind the HTTP API; each async one is durable on return."""

    @property
    def node_id(self) -> str: ...

    def now(self) -> int:
        """The engine clock's reading, ns since the epoch."""
        ...

    async def inject(self, messages: Sequence[NewMessage]) -> list[str]: ...

    async def issue_bounce(self, request: BounceRequest, *, issued_by: str) -> str: ...

    async def cancel_bounce(self, rule_id: str, *, cancelled_by: str) -> bool: ...

    def list_bounces(self) -> list[RuleView]: ...

    def live_bounces(self) -> LiveRules: ...

    def preview(
        self,
        criteria: Criteria,
        *,
        replacing: RuleKind | None = None,
        expires_at: int | None = None,
    ) -> DryRun:
        """What a request with ``criteria`` would match now; changes nothing."""
        ...

    async def fleet_bounces(self) -> FleetFigures: ...

    async def issue_suspend(self, request: BounceRequest, *, issued_by: str) -> str: ...

    async def cancel_suspend(self, rule_id: str, *, cancelled_by: str) -> bool: ...

    def list_suspends(self) -> list[RuleView]: ...

    async def rebind(self, request: RebindRequest, *, issued_by: str) -> str: ...

    def preview_rebind(self, request: RebindRequest) -> RebindDryRun:
        """What ``request`` would move now; changes nothing."""
        ...

    async def issue_ready_suspend(self, request: ReadySuspendRequest, *, issued_by: str) -> str: ...

    async def cancel_ready_suspend(self, rule_id: str, *, cancelled_by: str) -> bool: ...

    def list_ready_suspends(self) -> list[ReadySuspensionView]: ...

    def ready_queue_states(
        self, queues: Collection[str] | None = None
    ) -> Sequence[ReadyQueueState]: ...

    def queue_counts(self) -> Mapping[str, int]: ...

    async def inspect_message(
        self, message_id: str, *, want_body: bool
    ) -> InspectedMessage | None: ...

    async def inspect_queue(
        self, name: str, *, want_body: bool, limit: int | None
    ) -> InspectedQueue | None: ...

    def statistics(self) -> object:
        """A statistics record (:mod:`kumo.model.statistics`)."""
        ...

    def actor_statistics(
        self, start: int = 0, stop: int | None = None
    ) -> Sequence[ActorStatistics]: ...

    def dispatcher_statistics(
        self, start: int = 0, stop: int | None = None
    ) -> Sequence[DispatcherStatistics]: ...

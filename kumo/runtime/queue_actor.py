"""One scheduled queue as a Trio task: holds its messages, decides and emits bounces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import attrs
import trio

from kumo.model.events import Bounced, Committed, MessageReceived
from kumo.model.state import QueueState
from kumo.model.statistics import counter, gauge, info
from kumo.runtime.log_writer import LogClosedError, LogWriter
from kumo.runtime.watermark import Watermark

MAILBOX_CAPACITY: Final = 64
"""Deliveries (one per committed batch that concerns the queue) an actor may lag."""


@attrs.frozen
class ActorStatistics:
    """One queue actor's holdings and progress."""

    queue: str = info("The scheduled queue the actor holds.")
    queued: int = gauge("Messages the actor holds.")
    live_rules: int = gauge("Live rules that match the actor's queue.")
    mailbox_used: int = gauge("Deliveries waiting in the actor's mailbox.")
    lagging: bool = gauge("1 while the actor catches up from the log after its mailbox overflowed.")
    catch_ups: int = counter("Times the actor's mailbox overflowed and it caught up from the log.")
    processed_seq: int = gauge("Sequence number of the last event the actor has processed.")
    bounced: int = counter("Messages the actor bounced in this process.")


def _only_arrivals(events: list[Committed]) -> bool:
    return all(type(committed.event) is MessageReceived for committed in events)


def merge_bounces(bounces: list[Bounced]) -> list[Bounced]:
    """Fold consecutive decisions of the same rule into one event (order kept)."""
    merged: list[Bounced] = []
    for bounce in bounces:
        if merged and merged[-1].rule_id == bounce.rule_id:
            last = merged[-1]
            merged[-1] = Bounced(last.rule_id, last.queue, last.messages + bounce.messages)
        else:
            merged.append(bounce)
    return merged


class QueueActor:
    """The task that owns one :class:`QueueState`.

    The broadcaster hands it the committed events that concern its queue with
    :meth:`deliver_nowait`, which never blocks; when its mailbox is full the actor is
    marked lagging and later reads what it missed from the log itself (up to the
    broadcaster's position), so that a slow actor never stalls the others.
    """

    __slots__ = (
        "_bounced",
        "_broadcast_position",
        "_catch_ups",
        "_idle",
        "_log",
        "_mailbox",
        "_send",
        "assigned",
        "lagging_from",
        "processed",
        "state",
    )

    def __init__(
        self, state: QueueState, log: LogWriter, broadcast_position: Callable[[], int]
    ) -> None:
        self.state = state
        self._log = log
        self._broadcast_position = broadcast_position
        self._send, self._mailbox = trio.open_memory_channel[tuple[list[Committed], int]](
            MAILBOX_CAPACITY
        )
        self.processed = Watermark()
        self.assigned = 0
        """The last seq the broadcaster made this actor responsible for."""
        self.lagging_from: int | None = None
        self._bounced = 0
        self._catch_ups = 0
        self._idle = False
        """True while the task waits on an empty mailbox with nothing handed to it."""

    @property
    def name(self) -> str:
        return self.state.name

    def deliver_nowait(self, events: list[Committed], upto: int) -> None:
        """Hand over ``events`` (in order); never blocks. ``upto``: the batch's last seq."""
        self.assigned = upto
        if self.lagging_from is not None:
            return
        if self._idle and not self.state.rules and _only_arrivals(events):
            # Nothing can be decided: no rule matches this queue, so each arrival just
            # joins the queue. The task waits idle on its mailbox, so doing that here,
            # in order, is what it would do, without waking it once per message.
            apply = self.state.apply
            for committed in events:
                apply(committed)
            self.processed.advance(upto)
            return
        try:
            self._send.send_nowait((events, upto))
        except trio.WouldBlock:
            self.lagging_from = events[0].seq
        self._idle = False

    def close(self) -> None:
        """No more deliveries: the actor finishes its mailbox, then returns."""
        self._send.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                try:
                    events, upto = self._mailbox.receive_nowait()
                except trio.WouldBlock:
                    if self.lagging_from is not None:
                        await self._catch_up()
                        continue
                    self._idle = True
                    try:
                        events, upto = await self._mailbox.receive()
                    except trio.EndOfChannel:
                        return
                    finally:
                        self._idle = False
                except trio.EndOfChannel:
                    return
                await self._process(events, upto)
        except LogClosedError:
            # Shutting down past its deadline: what this actor had not yet emitted is
            # found again by the restart (State.unfinished_bounces).
            return

    async def _process(self, events: list[Committed], upto: int, *, filtered: bool = True) -> None:
        bounces: list[Bounced] = []
        state = self.state
        for committed in events:
            if not filtered and not state.concerns(committed.event):
                continue
            bounce = state.apply(committed)
            if bounce is not None:
                bounces.append(bounce)
        if bounces:
            merged = merge_bounces(bounces)
            self._bounced += sum(len(bounce.messages) for bounce in merged)
            await self._log.submit(merged)
        self.processed.advance(upto)

    async def _catch_up(self) -> None:
        """Replay from the log what the broadcaster could not hand over."""
        assert self.lagging_from is not None
        self._catch_ups += 1
        position = self.lagging_from - 1
        while True:
            target = self._broadcast_position()
            if position >= target:
                # No await between this check and the reset: the broadcaster cannot
                # have skipped us in between.
                self.lagging_from = None
                self.processed.advance(target)
                return
            events = [c for c in await self._log.read_after(position) if c.seq <= target]
            if events:
                await self._process(events, events[-1].seq, filtered=False)
                position = events[-1].seq

    def statistics(self) -> ActorStatistics:
        return ActorStatistics(
            queue=self.state.name,
            queued=len(self.state.messages),
            live_rules=len(self.state.rules),
            mailbox_used=self._mailbox.statistics().current_buffer_used,
            lagging=self.lagging_from is not None,
            catch_ups=self._catch_ups,
            processed_seq=self.processed.value,
            bounced=self._bounced,
        )

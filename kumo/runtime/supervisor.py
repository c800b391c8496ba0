"""The queue actors' owner: one nursery holding every actor task, and their registry."""

from __future__ import annotations

from collections.abc import Iterator

import trio

from kumo.runtime.queue_actor import QueueActor


class QueueSupervisor:
    """Runs the queue actors in a nursery of its own.

    :meth:`run` opens the nursery and keeps it open until :meth:`close`; then every actor
    finishes its mailbox and returns, and :meth:`run` returns after the last one. An actor
    that fails takes the supervisor (and with it the engine) down: a queue that cannot
    decide is not something to run without.
    """

    def __init__(self) -> None:
        self._actors: dict[str, QueueActor] = {}
        self._nursery: trio.Nursery | None = None
        self._closing = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._closing.wait()
            for actor in self._actors.values():
                actor.close()
        self._nursery = None

    async def start(self, actor: QueueActor) -> None:
        """Start ``actor``'s task; returns once it runs. Its queue must be new."""
        if self._nursery is None or self._closing.is_set():
            raise RuntimeError("the supervisor is not running")
        if actor.name in self._actors:
            raise ValueError(f"queue {actor.name!r} already has an actor")
        self._actors[actor.name] = actor
        await self._nursery.start(actor.run)

    def close(self) -> None:
        """Close every mailbox: the actors finish what they hold, then :meth:`run` returns."""
        self._closing.set()

    def get(self, name: str) -> QueueActor | None:
        return self._actors.get(name)

    def __iter__(self) -> Iterator[QueueActor]:
        return iter(list(self._actors.values()))

    def __len__(self) -> int:
        return len(self._actors)

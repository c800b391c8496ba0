"""The reply to ``"dry_run": true`` (a kumo extension; docs/operations.md, "Dry runs").

One shape for the rule verbs (bounce, suspend): a handler asks the engine for a
:class:`~kumo.model.dry_run.DryRun` (:meth:`kumo.runtime.engine.Engine.preview`) and
answers with :func:`dry_run_reply`; rebind's answer says where each queue would go
(:func:`rebind_dry_run_reply`). Nothing was written, so nothing else is said.
"""

from __future__ import annotations

from typing import Any

from kumo.http.replies import Reply, json_reply
from kumo.model.dry_run import DryRun, RebindDryRun


def dry_run_body(result: DryRun) -> dict[str, Any]:
    """``{"dry_run": true, "queues": [{"queue", "messages"}...], "total_messages",
    "replaces"}``: the matching queues that hold messages, by name."""
    return {
        "dry_run": True,
        "queues": [{"queue": match.queue, "messages": match.messages} for match in result.queues],
        "total_messages": result.total_messages,
        "replaces": result.replaces,
    }


def dry_run_reply(result: DryRun) -> Reply:
    """200 with :func:`dry_run_body`."""
    return json_reply(dry_run_body(result))


def rebind_dry_run_body(result: RebindDryRun) -> dict[str, Any]:
    """``{"dry_run": true, "queues": [{"queue", "messages", "to", "flushed"}...],
    "total_messages", "total_moving"}``: ``to`` is null for a queue whose name would not
    change, and ``flushed`` says whether ``always_flush`` would make its waiting
    messages due (false for a queue that moves)."""
    return {
        "dry_run": True,
        "queues": [
            {
                "queue": move.queue,
                "messages": move.messages,
                "to": move.to_queue,
                "flushed": move.flushed,
            }
            for move in result.queues
        ],
        "total_messages": result.total_messages,
        "total_moving": result.total_moving,
    }


def rebind_dry_run_reply(result: RebindDryRun) -> Reply:
    """200 with :func:`rebind_dry_run_body`."""
    return json_reply(rebind_dry_run_body(result))

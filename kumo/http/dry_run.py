"""The reply to ``"dry_run": true`` (a kumo extension; docs/operations.md, "Dry runs").

One shape for every admin verb that takes ``dry_run``: a handler asks the engine for a
:class:`~kumo.model.dry_run.DryRun` (:meth:`kumo.runtime.engine.Engine.preview`) and
answers with :func:`dry_run_reply`; nothing was written, so nothing else is said.
"""

from __future__ import annotations

from typing import Any

from kumo.http.replies import Reply, json_reply
from kumo.model.dry_run import DryRun


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

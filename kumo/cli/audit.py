"""``kumo audit`` and ``kumo replay``: answers from the event log alone.

Both read the data directory through :class:`kumo.store.history.HistoryView` (the
archive segments and the live store as one log), a read-only view taken when the
command starts: they never write there, and they work
on a copy as well as beside a running server (which may go on appending; the command
sees the log as it was when it started).

- ``kumo audit``: the timeline of admin actions (issued, replaced, cancelled, expired),
  each with its rule's criteria, reason, fate and counters; ``--at`` the state as it
  was at a moment; ``--message`` the story of one message.
- ``kumo replay``: rebuild the projections from the log and print them; with
  ``--verify`` check every invariant (:func:`kumo.store.verify.verify_data_dir`) and
  exit 1 on a violation.

After retention deleted the oldest history, both start from the base at the cut
(:meth:`~kumo.store.history.HistoryView.base`); a question about a moment before the
cut is refused in one line, and a message the kept log does not know is said to be
from before it.

Times on the command line (``--since``, ``--until``, ``--at``) are RFC 3339 date-times
(``2026-01-01T09:30:00Z``, ``2026-01-01 10:30:00+01:00``), bare dates (midnight UTC),
or a humantime duration meaning that long before now (``90m``, ``2h``, ``1d``).
"""

from __future__ import annotations

import csv
import io
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import click
import orjson
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from kumo.cli.common import HELP
from kumo.config import DEFAULT_DATA_DIR
from kumo.model.audit import (
    LiveSuspension,
    MessageStory,
    RebindAction,
    Release,
    RuleAction,
    Timeline,
    TimelineFilter,
    state_at,
)
from kumo.model.duration import DurationError, format_duration, parse_duration
from kumo.model.events import (
    Committed,
    Delivered,
    Expired,
    Outcome,
    PermanentlyFailed,
    Suspended,
    TransientlyFailed,
    criteria_to_json,
)
from kumo.model.rfc3339 import TimestampError, format_rfc3339, parse_rfc3339
from kumo.model.state import RuleView, State
from kumo.store.archive import ArchiveCorruptError, HistoryCut
from kumo.store.event_log import LogCorruptError
from kumo.store.history import HistoryView
from kumo.store.layout import DATABASE
from kumo.store.verify import LogUnreadableError, VerifyReport, verify_data_dir

PROGRESS_AFTER: Final = 1.0
"""Seconds of work before a progress bar appears on stderr."""
FORMATS: Final = ("table", "json", "csv")
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")

T = TypeVar("T")


# -- times ---------------------------------------------------------------------------


def parse_when(text: str, now: int) -> int:
    """A command-line time as ns since the epoch; ``now`` anchors durations ("ago").

    Accepts an RFC 3339 date-time, a date (``2026-01-01``: midnight UTC) or a humantime
    duration before ``now`` (``2h``). Raises ValueError saying what it expected.
    """
    text = text.strip()
    if _DATE.fullmatch(text):
        text += "T00:00:00Z"
    try:
        return parse_rfc3339(text)
    except TimestampError as rfc_error:
        try:
            return now - parse_duration(text)
        except DurationError:
            raise ValueError(
                f"{text!r} is neither an RFC 3339 time ({rfc_error}), a date "
                "(YYYY-MM-DD) nor a duration ago (like 2h)"
            ) from None


def wall_clock_now() -> int:
    """The real time, ns since the epoch: what durations count back from."""
    return time.time_ns()


def _when_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_when(value, wall_clock_now())
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


# -- progress --------------------------------------------------------------------------


class ProgressBar:
    """A rich progress bar on stderr that appears only once work has taken a second,
    and only when stderr is a terminal.

    Call it as ``progress(stage, done, total)``; each stage gets its own bar. Use it as
    a context manager so that the bar is removed when the work ends.
    """

    def __init__(self, *, after: float = PROGRESS_AFTER, console: Console | None = None) -> None:
        self._started = time.monotonic()
        self._after = after
        self._console = console or Console(stderr=True)
        # Not on a terminal (a pipe, a CI log): a bar would only add noise.
        self._quiet = not self._console.is_terminal
        self._progress: Progress | None = None
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._progress is None:
            if self._quiet or time.monotonic() - self._started < self._after:
                return
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
        task = self._tasks.get(stage)
        if task is None:
            task = self._tasks[stage] = self._progress.add_task(stage, total=total)
        self._progress.update(task, completed=done, total=total)

    @property
    def shown(self) -> bool:
        """Whether the bar is on screen (work has gone on long enough)."""
        return self._progress is not None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


def _events(
    batches: Iterable[list[Committed]], progress: ProgressBar, last_seq: int
) -> Iterator[Committed]:
    for batch in batches:
        yield from batch
        progress("reading the event log", batch[-1].seq, last_seq)


# -- rendering -------------------------------------------------------------------------


def _flat(text: str) -> str:
    """One line of a table cell: line breaks become spaces (as in AdminBounce content)."""
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: int = 0) -> str:
    """Plain text columns two spaces apart; the last ``right`` columns right-aligned."""
    cells = [list(headers), *([_flat(cell) for cell in row] for row in rows)]
    widths = [max(len(row[index]) for row in cells) for index in range(len(headers))]
    first_right = len(headers) - right
    lines = []
    for row in cells:
        parts = [
            cell.rjust(width) if index >= first_right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def render_csv(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    return out.getvalue()


def _time(nanos: int | None) -> str | None:
    return format_rfc3339(nanos) if nanos is not None else None


TABLE_QUEUES: Final = 3
"""Queues a table cell lists per rule; JSON, CSV and ``--rule`` list them all."""


def per_queue(bounced: Mapping[str, int], limit: int | None = None) -> str:
    """``queue=count`` pairs, largest first, joined by ``; ``; ``limit`` of them at most."""
    ordered = sorted(bounced.items(), key=lambda item: (-item[1], item[0]))
    text = "; ".join(f"{queue}={count}" for queue, count in ordered[:limit])
    if limit is not None and len(ordered) > limit:
        text += f"; ... {len(ordered) - limit} more queue(s)"
    return text


def fate(action: RuleAction) -> str:
    """The rule's status and what ended it: ``replaced by <id>``, ``cancelled by <who>``."""
    if action.status == "replaced":
        return f"replaced by {action.ended_by}"
    if action.status == "cancelled":
        return f"cancelled by {action.ended_by or '?'}"
    return action.status


def who(action: RuleAction) -> str:
    """The table's PRINCIPAL cell: who, and for an action that came from another node
    of the fleet, that node: ``ops (node-a)``; ``-`` for an expiry."""
    principal = action.principal or "-"
    return f"{principal} ({action.origin})" if action.origin else principal


def action_json(action: RuleAction) -> dict[str, Any]:
    return {
        "time": format_rfc3339(action.time),
        "seq": action.seq,
        "action": action.action,
        "rule": action.rule_id,
        "principal": action.principal,
        "origin": action.origin or None,
        "criteria": None if action.criteria is None else criteria_to_json(action.criteria),
        "criteria_text": action.target,
        "reason": action.reason,
        "issued_at": format_rfc3339(action.issued_at),
        "expires": format_rfc3339(action.expires_at),
        "suppress_logging": action.suppress_logging,
        "status": action.status,
        "ended_at": _time(action.ended_at),
        "ended_by": action.ended_by,
        "bounced": dict(action.bounced),
        "total_bounced": action.total_bounced,
        "kind": action.kind,
        "held": dict(action.held),
        "total_held": action.total_held,
        "released": action.released,
        "ready_queue": action.ready_queue,
    }


def action_name(action: RuleAction) -> str:
    """The ACTION cell: ``issued``...; ``suspend issued``... for a suspension,
    ``suspend-ready-q issued``... for a ready-queue suspension."""
    return action.action if action.kind == "bounce" else f"{action.kind} {action.action}"


def what_it_did(action: RuleAction) -> str:
    """The BOUNCED cell: the messages a rule bounced; what a suspension held (and
    released at its end)."""
    if action.kind == "bounce":
        return f"{action.total_bounced:,}"
    text = f"held {action.total_held:,}"
    if action.status in ("cancelled", "expired"):
        text += f", released {action.released:,}"
    return text


def counts_per_queue(action: RuleAction, limit: int | None = None) -> str:
    """The PER QUEUE cell: bounced per queue, or held per queue for a suspension."""
    return per_queue(action.bounced if action.kind == "bounce" else action.held, limit)


_TIMELINE_HEADERS: Final = (
    "TIME",
    "ACTION",
    "RULE",
    "PRINCIPAL",
    "CRITERIA",
    "REASON",
    "STATUS",
    "BOUNCED",
    "PER QUEUE",
)
_CSV_TIMELINE_HEADERS: Final = (
    "time",
    "seq",
    "action",
    "rule",
    "principal",
    "criteria",
    "reason",
    "expires",
    "status",
    "ended_at",
    "ended_by",
    "total_bounced",
    "bounced",
    "kind",
    "total_held",
    "held",
    "released",
    "origin",
)


def rebind_json(action: RebindAction) -> dict[str, Any]:
    return {
        "time": format_rfc3339(action.time),
        "seq": action.seq,
        "rebind": action.rebind_id,
        "principal": action.principal,
        "origin": action.origin or None,
        "criteria": criteria_to_json(action.criteria),
        "criteria_text": action.criteria.describe(),
        "data": dict(action.data),
        "reason": action.reason,
        "always_flush": action.always_flush,
        "suppress_logging": action.suppress_logging,
        "moved": [
            {"from": old, "to": new, "messages": count}
            for (old, new), count in action.moved.items()
        ],
        "total_moved": action.total_moved,
    }


def moved_text(moved: Mapping[tuple[str, str], int]) -> str:
    return ", ".join(f"{old} -> {new}: {count:,}" for (old, new), count in moved.items()) or "-"


def render_rebinds(rebinds: Sequence[RebindAction]) -> str:
    """The rebinds of a timeline as a table (empty when there are none)."""
    if not rebinds:
        return ""
    table = render_table(
        ("TIME", "REBIND", "PRINCIPAL", "CRITERIA", "DATA", "REASON", "MOVED", "FROM -> TO"),
        (
            (
                format_rfc3339(r.time),
                r.rebind_id,
                f"{r.principal or '-'} ({r.origin})" if r.origin else r.principal or "-",
                r.criteria.describe(),
                ", ".join(f"{k}={v}" for k, v in sorted(r.data.items())) or "-",
                r.reason,
                f"{r.total_moved:,}",
                moved_text(r.moved),
            )
            for r in rebinds
        ),
    )
    return f"\n\n{table}\n\n{len(rebinds):,} rebind(s)"


def render_timeline(
    actions: list[RuleAction],
    fmt: str,
    *,
    header: Mapping[str, Any],
    all_queues: bool = False,
    rebinds: Sequence[RebindAction] = (),
) -> str:
    """The timeline in ``fmt``; a table lists a few queues per rule unless ``all_queues``.
    ``rebinds`` follow the rules' actions (JSON: under ``rebinds``; CSV: not shown)."""
    limit = None if all_queues else TABLE_QUEUES
    if fmt == "json":
        return orjson.dumps(
            {
                **header,
                "actions": [action_json(a) for a in actions],
                "rebinds": [rebind_json(r) for r in rebinds],
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    if fmt == "csv":
        return render_csv(
            _CSV_TIMELINE_HEADERS,
            (
                (
                    format_rfc3339(a.time),
                    "" if a.seq is None else a.seq,
                    a.action,
                    a.rule_id,
                    a.principal or "",
                    a.target,
                    a.reason,
                    format_rfc3339(a.expires_at),
                    a.status,
                    _time(a.ended_at) or "",
                    a.ended_by or "",
                    a.total_bounced,
                    per_queue(a.bounced),
                    a.kind,
                    a.total_held,
                    per_queue(a.held),
                    a.released,
                    a.origin,
                )
                for a in actions
            ),
        )
    table = render_table(
        _TIMELINE_HEADERS,
        (
            (
                format_rfc3339(a.time),
                action_name(a),
                a.rule_id,
                who(a),
                a.target,
                a.reason,
                fate(a),
                what_it_did(a),
                counts_per_queue(a, limit),
            )
            for a in actions
        ),
    )
    rules = len({a.rule_id for a in actions})
    cut = header["log"].get("cut")
    kept = (
        f" (the events up to seq {cut['seq']:,}, committed up to {cut['time']}, were deleted "
        "by retention: the actions before them are those their rules record)"
        if cut
        else ""
    )
    return (
        f"{table}\n\n{len(actions):,} action(s) on {rules:,} rule(s); "
        f"log seq {header['log']['first_seq']}..{header['log']['last_seq']}{kept}; "
        f"status as of {header['as_of']}"
    ) + render_rebinds(rebinds)


def rule_view_json(view: RuleView) -> dict[str, Any]:
    """A live rule as GET shows it, with kumo's extra keys."""
    return {
        "id": view.id,
        **{key: value for key, value in criteria_to_json(view.criteria).items()},
        "reason": view.reason,
        "duration": format_duration(max(view.remaining, 0)),
        "bounced": dict(view.bounced),
        "total_bounced": view.total_bounced,
        "expires": format_rfc3339(view.expires_at),
        "issued_at": format_rfc3339(view.issued_at),
        "issued_by": view.issued_by,
        "suppress_logging": view.suppress_logging,
    }


def live_suspension_json(suspension: LiveSuspension) -> dict[str, Any]:
    """A suspension live at a moment, in the timeline's words (``kind``,
    ``criteria_text``, ``held``...) and GET's (``duration``, ``expires``)."""
    criteria = suspension.criteria
    return {
        "id": suspension.id,
        "kind": suspension.kind,
        "criteria": None if criteria is None else criteria_to_json(criteria),
        "criteria_text": suspension.target,
        "ready_queue": suspension.ready_queue,
        "reason": suspension.reason,
        "duration": format_duration(max(suspension.remaining, 0)),
        "expires": format_rfc3339(suspension.expires_at),
        "issued_at": format_rfc3339(suspension.issued_at),
        "issued_by": suspension.issued_by,
        "origin": suspension.origin or None,
        "held": dict(suspension.held),
        "total_held": suspension.total_held,
    }


def render_state(
    state: State,
    at: int,
    fmt: str,
    queue: str | None,
    suspensions: Sequence[LiveSuspension] = (),
) -> str:
    """The state at ``at``: the live rules, the live ``suspensions`` (already narrowed
    to ``queue``: :meth:`Timeline.live_suspensions`) and the queue counts."""
    views = state.rules.views(at)
    counts = dict(sorted(state.queue_counts.items()))
    if queue is not None:
        views = [view for view in views if view.criteria.matches(queue)]
        counts = {queue: counts[queue]} if queue in counts else {}
    if fmt == "json":
        return orjson.dumps(
            {
                "at": format_rfc3339(at),
                "seq": state.last_seq,
                "rules": [rule_view_json(view) for view in views],
                "suspensions": [live_suspension_json(s) for s in suspensions],
                "queues": counts,
                "received_total": state.received_total,
                "bounced_total": state.bounced_total,
                "queued_total": sum(state.queue_counts.values()),
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    if fmt == "csv":
        rows: list[Sequence[object]] = [
            (
                "rule",
                view.id,
                view.total_bounced,
                view.criteria.describe(),
                view.reason,
                format_duration(max(view.remaining, 0)),
                view.issued_by,
                per_queue(view.bounced),
            )
            for view in views
        ]
        # A suspension in the rules' columns: count and bounced say what it held.
        rows.extend(
            (
                s.kind,
                s.id,
                s.total_held,
                s.target,
                s.reason,
                format_duration(max(s.remaining, 0)),
                s.issued_by,
                per_queue(s.held),
            )
            for s in suspensions
        )
        rows.extend(("queue", name, count, "", "", "", "", "") for name, count in counts.items())
        return render_csv(
            ("kind", "name", "count", "criteria", "reason", "remaining", "issued_by", "bounced"),
            rows,
        )
    rules_table = render_table(
        ("ID", "REASON", "REMAIN", "BOUNCED", "CRITERIA", "ISSUED BY", "PER QUEUE"),
        (
            (
                view.id,
                view.reason,
                format_duration(max(view.remaining, 0)),
                f"{view.total_bounced:,}",
                view.criteria.describe(),
                view.issued_by or "-",
                per_queue(view.bounced, TABLE_QUEUES),
            )
            for view in views
        ),
    )
    suspensions_table = render_table(
        ("ID", "KIND", "REASON", "REMAIN", "HELD", "CRITERIA", "ISSUED BY", "PER QUEUE"),
        (
            (
                s.id,
                s.kind,
                s.reason,
                format_duration(max(s.remaining, 0)),
                f"{s.total_held:,}",
                s.target,
                f"{s.issued_by} ({s.origin})" if s.origin else s.issued_by,
                per_queue(s.held, TABLE_QUEUES),
            )
            for s in suspensions
        ),
    )
    queues_table = render_table(
        ("QUEUE", "QUEUED"), ((name, f"{count:,}") for name, count in counts.items()), right=1
    )
    return (
        f"State at {format_rfc3339(at)} (log up to seq {state.last_seq})\n\n"
        f"Live rules: {len(views)}\n{rules_table}\n\n"
        f"Live suspensions: {len(suspensions)}\n{suspensions_table}\n\n"
        f"Scheduled queues: {len(counts)}\n{queues_table}\n\n"
        f"received {state.received_total:,}, bounced {state.bounced_total:,}, "
        f"queued {sum(state.queue_counts.values()):,}"
    )


def story_json(story: MessageStory) -> dict[str, Any]:
    return {
        "message": story.message_id,
        "status": story.status,
        "received": [
            {
                "seq": r.seq,
                "time": format_rfc3339(r.time),
                "queue": r.queue,
                "sender": r.sender,
                "recipient": r.recipient,
                "size": r.size,
                "protocol": r.protocol,
            }
            for r in story.received
        ],
        "bounced": [
            {
                "seq": b.seq,
                "time": format_rfc3339(b.time),
                "queue": b.queue,
                "rule": b.rule_id,
                "how": b.how,
                "reason": b.reason,
                "criteria": criteria_to_json(b.criteria) if b.criteria else None,
                "criteria_text": b.criteria.describe() if b.criteria else None,
                "issued_by": b.issued_by,
                "issued_at": _time(b.issued_at),
                "suppress_logging": b.suppress_logging,
            }
            for b in story.bounces()
        ],
        "attempts": [
            dict(
                zip(("time", "seq", "step", "queue", "detail"), outcome_row(committed), strict=True)
            )
            for committed in story.outcomes
        ],
        "rebound": [
            dict(zip(("time", "seq", "step", "queue", "detail"), row, strict=True))
            for row in rebound_rows(story)
        ],
        "released": [
            {
                "seq": r.seq,
                "time": format_rfc3339(r.time),
                "queue": r.queue,
                "suspension": r.rule_id,
                "end": r.end,
                "by": r.by,
                "ready_queue": r.ready_queue,
            }
            for r in story.releases
        ],
    }


def rebound_rows(story: MessageStory) -> list[tuple[str, str, str, str, str]]:
    """Each move of a message's story as a row: time, seq, ``rebound``, the new queue,
    and from where, by which rebind, asked by whom and why."""
    rows = []
    for committed, moved, request in story.moves:
        by = (
            f"by rebind {moved.rebind_id} ({request.criteria.describe()}; "
            + ", ".join(f"{k}={v}" for k, v in request.data)
            + f"), issued by {request.issued_by or '-'}"
            if request is not None
            else f"by rebind {moved.rebind_id}"
        )
        rows.append(
            (
                format_rfc3339(committed.time),
                str(committed.seq),
                "rebound",
                moved.to_queue,
                f"from {moved.queue} {by}: {moved.reason}",
            )
        )
    return rows


def release_row(release: Release) -> tuple[str, str, str, str, str]:
    """The end of a suspension that held the message, as a story row."""
    match release.end:
        case "cancelled":
            how = f"cancelled by {release.by or '?'}"
        case "replaced":
            how = f"replaced by {release.by or '?'}"
        case "expired":
            how = "expired"
    what = (
        f"suspension {release.rule_id}"
        if release.ready_queue is None
        else f"suspension {release.rule_id} of ready queue {release.ready_queue}"
    )
    return (
        format_rfc3339(release.time),
        str(release.seq),
        "released",
        release.queue,
        f"{what} {how}: due again at once",
    )


def outcome_row(committed: Committed) -> tuple[str, str, str, str, str]:
    """A mail-path event of a message's story as a row: time, seq, step, queue, detail."""
    event = committed.event
    assert isinstance(event, Outcome)
    match event:
        case Suspended() if event.ready_queue is not None:
            step, detail = (
                "held",
                f"by suspension {event.rule_id} of ready queue {event.ready_queue} until it "
                f"ends: {event.reason}",
            )
        case Suspended():
            step, detail = "held", f"by suspension {event.rule_id} until it ends: {event.reason}"
        case Expired():
            step, detail = (
                "expired",
                f"after {event.attempts} attempt(s): 551 5.4.7 {event.content}",
            )
        case Delivered() | PermanentlyFailed() | TransientlyFailed():
            attempt = event.attempt
            enhanced = (
                ""
                if attempt.enhanced_code is None
                else ".".join(map(str, attempt.enhanced_code)) + " "
            )
            where = attempt.site or "no destination"
            if attempt.peer is not None:
                where += f" ({attempt.peer.name} {attempt.peer.addr})"
            reply = f"{attempt.code} {enhanced}{attempt.content}"
            detail = f"attempt {event.attempts + 1} via {where}: {reply}"
            if isinstance(event, TransientlyFailed):
                step = "deferred"
                detail += (
                    f"; next attempt at {format_rfc3339(event.due)}"
                    if event.due is not None
                    else "; not retried"
                )
            else:
                step = "delivered" if isinstance(event, Delivered) else "failed"
    return (format_rfc3339(committed.time), str(committed.seq), step, event.queue, detail)


def render_story(story: MessageStory, fmt: str) -> str:
    if fmt == "json":
        return orjson.dumps(story_json(story), option=orjson.OPT_INDENT_2).decode()
    rows: list[tuple[str, str, str, str, str]] = []
    for r in story.received:
        how = (
            f"over {r.protocol}"
            if r.protocol is not None
            else "(its event was deleted by retention: as the base at the cut holds it)"
        )
        rows.append(
            (
                format_rfc3339(r.time),
                str(r.seq),
                "received",
                r.queue,
                f"from {r.sender} to {r.recipient}, {r.size:,} bytes {how}",
            )
        )
    for b in story.bounces():
        rule = (
            f"by rule {b.rule_id} ({b.criteria.describe()}) {b.how}, issued by "
            f"{b.issued_by or '-'}: {b.reason}"
            if b.criteria is not None
            else f"by rule {b.rule_id}, which the log never issued"
        )
        rows.append((format_rfc3339(b.time), str(b.seq), "bounced", b.queue, rule))
    rows += [outcome_row(committed) for committed in story.outcomes]
    rows += rebound_rows(story)
    rows += [release_row(release) for release in story.releases]
    rows.sort(key=lambda row: int(row[1]) if row[1] else 0)
    if story.status == "queued":
        rows.append(("", "", "queued", story.queue or "", "still waiting in its queue"))
    if fmt == "csv":
        return render_csv(("time", "seq", "step", "queue", "detail"), rows)
    table = render_table(("TIME", "SEQ", "STEP", "QUEUE", "DETAIL"), rows)
    return f"message {story.message_id}: {story.status}\n\n{table}"


# -- commands --------------------------------------------------------------------------


def _data_dir_option(function: Callable[..., T]) -> Callable[..., T]:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_DATA_DIR,
        show_default=True,
        help="The data directory (or a copy of it) whose event log to read.",
    )(function)


def _open(data_dir: Path) -> HistoryView:
    try:
        return HistoryView(data_dir)
    except (FileNotFoundError, ArchiveCorruptError) as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.DatabaseError as exc:
        raise click.ClickException(
            f"{data_dir / DATABASE} is not a kumo event log: {exc}"
        ) from None


def _base(history: HistoryView) -> State | None:
    """The state at the retention cut, where the log begins (``None``: no cut)."""
    try:
        return history.base()
    except ArchiveCorruptError as exc:
        raise click.ClickException(f"{exc}; run `kumo replay --verify`") from None


def deleted_before(cut: HistoryCut) -> str:
    """What retention took, in words."""
    return (
        f"the events up to seq {cut.seq:,} (committed up to {format_rfc3339(cut.time)}) "
        "were deleted by retention ([log] archive_retention)"
    )


def _refuse_before_cut(history: HistoryView, **moments: int | None) -> None:
    cut = history.cut
    if cut is None:
        return
    for option, moment in moments.items():
        if moment is not None and moment < cut.time:
            raise click.ClickException(
                f"--{option} {format_rfc3339(moment)} is before the history kept: "
                f"{deleted_before(cut)}; ask about {format_rfc3339(cut.time)} or later"
            )


@click.command(context_settings=HELP)
@_data_dir_option
@click.option("--since", callback=_when_option, help="Only actions at or after this time.")
@click.option(
    "--until",
    callback=_when_option,
    help="Only actions at or before this time; the log is read up to it, so counters "
    "and statuses are as they were then.",
)
@click.option("--rule", "rule_id", metavar="ID", help="Only this rule's actions.")
@click.option(
    "--queue",
    metavar="NAME",
    help="Only rules that match this scheduled queue or bounced (held) in it, counts in it "
    "only; or the suspensions of this ready queue.",
)
@click.option("--principal", metavar="WHO", help="Only actions this principal took.")
@click.option(
    "--at",
    "at",
    callback=_when_option,
    metavar="TIME",
    help="Instead of the timeline: the live rules, suspensions and queue counts at TIME.",
)
@click.option(
    "--message",
    "message_id",
    metavar="ID",
    help="Instead of the timeline: what became of this message.",
)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
def audit(
    data_dir: Path,
    since: int | None,
    until: int | None,
    rule_id: str | None,
    queue: str | None,
    principal: str | None,
    at: int | None,
    message_id: str | None,
    fmt: str,
) -> None:
    """Who bounced what, when, why, and how many messages it took, from the log alone.

    Times: RFC 3339 (2026-01-01T09:30:00Z), a date (2026-01-01, midnight UTC), or a
    duration before now (2h, 1d 12h). Reads a running server's directory or a copy;
    never writes to it.
    """
    if at is not None and message_id is not None:
        raise click.UsageError("--at and --message are different questions: ask one")
    narrowing = {"--since": since, "--until": until, "--rule": rule_id, "--principal": principal}
    given = [name for name, value in narrowing.items() if value is not None]
    if (at is not None or message_id is not None) and given:
        raise click.UsageError(f"{', '.join(given)} only apply to the timeline")
    if message_id is not None and queue is not None:
        raise click.UsageError("--queue does not apply to --message")
    with _open(data_dir) as snapshot, ProgressBar() as progress:
        _refuse_before_cut(snapshot, at=at, until=until)
        base = _base(snapshot)
        try:
            if at is not None:
                events = _events(snapshot.committed(until=at), progress, snapshot.last_seq)
                moment = Timeline() if base is None else Timeline.from_base(base)
                state = state_at(events, at, base, moment)
            elif message_id is not None:
                story = _message_story(snapshot, message_id.strip().lower(), progress, base)
            else:
                timeline = Timeline() if base is None else Timeline.from_base(base)
                apply = timeline.apply
                batches = snapshot.committed(until=until, skip=("MessageReceived",))
                for committed in _events(batches, progress, snapshot.last_seq):
                    apply(committed)
        except LogCorruptError as exc:
            raise click.ClickException(f"{exc}; run `kumo replay --verify`") from None
    if at is not None:
        click.echo(render_state(state, at, fmt, queue, moment.live_suspensions(at, queue)))
        return
    if message_id is not None:
        click.echo(render_story(story, fmt))
        if story.status == "unknown":
            raise click.ClickException(f"message {message_id} is not in the log")
        if story.status == "before the cut":
            assert snapshot.cut is not None
            raise click.ClickException(
                f"message {message_id} is not in the history kept: "
                f"{deleted_before(snapshot.cut)}, and a message received and gone before "
                "then left no trace"
            )
        return
    as_of = until if until is not None else max(wall_clock_now(), snapshot.last_time)
    where = TimelineFilter(
        since=since, until=until, rule_id=rule_id, queue=queue, principal=principal
    )
    header = {
        "as_of": format_rfc3339(as_of),
        "log": {
            "events": snapshot.event_count,
            "first_seq": snapshot.first_seq,
            "last_seq": snapshot.last_seq,
            "last_time": _time(snapshot.last_time or None),
            "cut": None
            if snapshot.cut is None
            else {"seq": snapshot.cut.seq, "time": format_rfc3339(snapshot.cut.time)},
        },
        "filter": {
            "since": _time(since),
            "until": _time(until),
            "rule": rule_id,
            "queue": queue,
            "principal": principal,
        },
    }
    actions = timeline.actions(as_of, where)
    click.echo(
        render_timeline(
            actions,
            fmt,
            header=header,
            all_queues=rule_id is not None,
            rebinds=timeline.rebinds(where),
        )
    )
    if (
        rule_id is not None
        and timeline.rule(rule_id) is None
        and not timeline.rebinds(TimelineFilter(rule_id=rule_id))
    ):
        raise click.ClickException(f"rule {rule_id} is not in the log")


def _message_story(
    snapshot: HistoryView, message_id: str, progress: ProgressBar, base: State | None
) -> MessageStory:
    story = MessageStory(message_id, base)
    batches = snapshot.committed(
        skip=("MessageReceived", "Bounced"), unless_containing=message_id.encode()
    )
    for committed in _events(batches, progress, snapshot.last_seq):
        story.apply(committed)
    return story


def render_report(report: VerifyReport, fmt: str) -> str:
    """What was checked, with counts, then every violation with where it is."""
    if fmt == "json":
        return orjson.dumps(
            {
                "ok": report.ok,
                "events": report.events,
                "first_seq": report.first_seq,
                "last_seq": report.last_seq,
                "received": report.received,
                "bounced": report.bounced,
                "queued": report.queued,
                "bounced_events": report.bounced_events,
                "rules": report.rules,
                "counters": report.counters,
                "owed": report.owed,
                "owed_rebinds": report.owed_rebinds,
                "checkpoint_seq": report.checkpoint_seq,
                "segments": report.segments,
                "records": report.records,
                "pending_records": report.pending_records,
                "snapshots": report.snapshots,
                "spooled": report.spooled,
                "records_due_through": report.records_due_through,
                "log_read": report.log_read,
                "cut": {
                    "seq": report.cut_seq,
                    "time": _time(report.cut_time),
                    "base": report.base,
                    "records_before": report.records_before_cut,
                    "queued_at_cut": report.queued_at_cut,
                }
                if report.base is not None
                else None,
                "violations": [
                    {"check": v.check, "where": v.where, "seq": v.seq, "problem": v.problem}
                    for v in report.violations
                ],
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    counts: dict[str, int] = {}
    for violation in report.violations:
        counts[violation.check] = counts.get(violation.check, 0) + 1

    def mark(*checks: str) -> str:
        found = sum(counts.get(check, 0) for check in checks)
        return "ok" if not found else f"{found:,} VIOLATION(S)"

    records = report.records
    if report.checkpoint_seq is not None:
        checkpoint = f"checkpoint at seq {report.checkpoint_seq:,}"
    elif sum(records.values()):
        checkpoint = (
            f"no checkpoint: every record up to seq {report.records_due_through:,} "
            "(the last event the files hold records for) required"
        )
    else:
        checkpoint = "no checkpoint (nothing written yet)"
    lines = [
        f"structure     {mark('structure')}: SQLite integrity_check of {DATABASE} (events, "
        "id index, spool, meta)",
        f"sequence      {mark('sequence')}: {report.events:,} events, "
        f"seq {report.first_seq:,}..{report.last_seq:,}, expected gapless from "
        + (f"{report.cut_seq + 1:,} (the retention cut)" if report.base else "1"),
        f"hash chain    {mark('chain')}: {report.events:,} links checked",
        f"decoding      {mark('decode')}: every body read as the type its row names",
        f"conservation  {mark('conservation')}: {report.received:,} received"
        + (f" ({report.queued_at_cut:,} of them queued at the cut)" if report.base else "")
        + " = "
        f"{report.queued:,} queued + {report.bounced:,} bounced "
        f"(in {report.bounced_events:,} Bounced events)",
        f"attribution   {mark('attribution')}: each bounce by the rule it counts to "
        "(docs/rules.md)",
        f"counters      {mark('counters')}: {report.counters:,} rule/queue counters of "
        f"{report.rules:,} rules equal their Bounced events; queue gauges match",
        f"spool         {mark('spool')}: {report.spooled:,} message content(s), one for each "
        "queued message and no other",
        f"delivery log  {mark('delivery-log', 'checkpoint')}: {report.segments} segment(s), "
        f"{records.get('Reception', 0):,} Reception + {records.get('AdminBounce', 0):,} "
        f"AdminBounce records, every field compared with the log, {checkpoint}",
        f"snapshots     {mark('snapshot')}: {report.snapshots} checked against the fold "
        "of the log at their seq",
    ]
    if report.base is not None:
        lines.append(
            f"retention     the events up to seq {report.cut_seq:,} (committed up to "
            f"{_time(report.cut_time)}) were deleted by retention: every check starts from "
            f"the state at the cut, {report.base} (its digest, and its chain against the "
            f"kept log's, checked); {report.records_before_cut:,} delivery-log record(s) "
            "of the deleted events not compared"
        )
    if not report.log_read:
        lines.append(
            "              the log could not be read to its end: the spool and the delivery "
            "log were not compared with it"
        )
    if report.pending_records:
        lines.append(
            f"              {report.pending_records:,} record(s) for events after the "
            "checkpoint not written yet (a server is running, or will write them at start)"
        )
    for rule_id, count in sorted(report.owed.items()):
        lines.append(
            f"note: rule {rule_id} still owes {count:,} bounce(s), cut short by a crash; "
            "the next start finishes them"
        )
    for rebind_id, count in sorted(report.owed_rebinds.items()):
        lines.append(
            f"note: rebind {rebind_id} still owes the move of {count:,} message(s), cut short "
            "by a crash; the next start finishes it"
        )
    if report.violations:
        lines.append("")
        lines.append(f"{len(report.violations):,} violation(s):")
        lines.extend(f"  {v.where}: [{v.check}] {v.problem}" for v in report.violations)
    else:
        lines.append("")
        lines.append("no violations")
    return "\n".join(lines)


@click.command(context_settings=HELP)
@_data_dir_option
@click.option("--verify", is_flag=True, help="Check every invariant; exit 1 on a violation.")
@click.option(
    "--format", "fmt", type=click.Choice(("text", "json")), default="text", show_default=True
)
def replay(data_dir: Path, verify: bool, fmt: str) -> None:
    """Rebuild the projections from the log (and with --verify, check them).

    --verify checks the database's pages (SQLite's integrity_check: the events, their
    id index, the spool, meta), the hash chain and the gapless sequence (a tampered,
    removed or truncated row is named by its seq), conservation of messages,
    attribution of each bounce, the counters, the spool (the content of every queued
    message, none of a message that is gone), and the delivery log (one Reception per
    received message, one AdminBounce per bounced message unless its rule suppresses
    logging, every field as the log says, no duplicates, a checkpoint within the log).
    Exit status 1 if anything is violated.
    """
    if not verify:
        with _open(data_dir) as snapshot, ProgressBar() as progress:
            base = _base(snapshot)
            timeline = Timeline() if base is None else Timeline.from_base(base)
            try:
                state = state_at(
                    _events(snapshot.committed(), progress, snapshot.last_seq),
                    max(snapshot.last_time, base.last_time if base is not None else 0),
                    base,
                    timeline,
                )
            except LogCorruptError as exc:
                raise click.ClickException(f"{exc}; run `kumo replay --verify`") from None
        now = max(wall_clock_now(), snapshot.last_time)
        click.echo(
            render_state(
                state,
                now,
                "json" if fmt == "json" else "table",
                None,
                timeline.live_suspensions(now),
            )
        )
        return
    if not (data_dir / DATABASE).is_file():
        raise click.ClickException(f"no event log at {data_dir / DATABASE}")
    try:
        with ProgressBar() as progress:
            report = verify_data_dir(data_dir, progress)
    except sqlite3.DatabaseError as exc:
        raise click.ClickException(
            f"{data_dir / DATABASE} is not a kumo event log: {exc}"
        ) from None
    except LogUnreadableError as exc:
        raise click.ClickException(f"cannot verify: {exc}") from None
    click.echo(render_report(report, fmt))
    if not report.ok:
        sys.exit(1)

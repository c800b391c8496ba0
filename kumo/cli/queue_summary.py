"""``kcli queue-summary``: KumoMTA's two tables, the ready queues and the scheduled
queues, from a ``/metrics`` page and the admin lists (reference section 9.2).

Pure: the kcli command fetches the lists and the page, and resolves domains for
``--domain``; everything it prints is decided here.

- **Ready queues**: one row per ready queue named in the ``service`` label
  (``<protocol>:<ready queue>``: the part after the first ``:``) of
  ``total_messages_delivered`` (D), ``total_messages_transfail`` (T),
  ``connection_count`` (C) and ``ready_count`` (Q); a global row (no ``:``) is not a
  queue. The name ``<source>-><site>@<protocol>`` is split into SITE, SOURCE and PROTO.
- **Scheduled queues**: one row per ``scheduled_count{queue}``.
- Both sorted by name (:func:`natural_lexical_compare`), or with ``--by-volume`` by
  D+T+C+Q (ready) or COUNT (scheduled), biggest first, ties by name.
- **Status**: what the admin lists say of a queue (:data:`SCHEDULED_STATUS`,
  :data:`READY_STATUS`). A scheduled queue shows the first marker that applies to it
  (a bounce before a suspension); a ready queue every one that does, then each state
  ``GET /api/admin/ready-q-states/v1`` gives it (:func:`ready_states`,
  ``<key>: <context> @ <since>``), joined by ``, ``.
"""

from __future__ import annotations

import functools
import math
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeVar

import attrs

from kumo.cli.tables import Align, format_count, format_table
from kumo.http.routes import BOUNCE_PATH, SUSPEND_PATH, SUSPEND_READY_Q_PATH
from kumo.model.prometheus_text import Sample, scheduled_counts
from kumo.model.queue_name import QueueName
from kumo.model.rfc3339 import format_rfc3339, parse_rfc3339

READY_FAMILIES: Final = {
    "total_messages_delivered": "delivered",
    "total_messages_transfail": "transfail",
    "connection_count": "connections",
    "ready_count": "ready",
}
"""The families a ready queue's row adds up, and the figure each one is."""

PROTOCOL_SUFFIXES: Final = ("@lua:", "@maildir:")
"""Protocols named with an argument, besides ``@smtp_client`` (KumoMTA's kcli knows
these three; any other stays part of SITE)."""

BOUNCE_MARK: Final = "🗑\ufe0f bounce: "
SUSPEND_MARK: Final = "🛑suspend: "

READY_COLUMNS: Final = (
    ("SITE", Align.LEFT),
    ("SOURCE", Align.LEFT),
    ("PROTO", Align.LEFT),
    ("D", Align.RIGHT),
    ("T", Align.RIGHT),
    ("C", Align.RIGHT),
    ("Q", Align.RIGHT),
    ("", Align.LEFT),
)
SCHEDULED_COLUMNS: Final = (
    ("SCHEDULED QUEUE", Align.LEFT),
    ("COUNT", Align.RIGHT),
    ("", Align.LEFT),
)


# -- the figures ------------------------------------------------------------------------


@attrs.frozen
class ReadyQueue:
    """One ready queue's figures, added up over the page."""

    name: str
    delivered: int = 0
    transfail: int = 0
    connections: int = 0
    ready: int = 0

    @property
    def source(self) -> str | None:
        """The egress source: what comes before the first ``->``, if there is one."""
        source, arrow, _ = self.name.partition("->")
        return source if arrow else None

    @property
    def protocol(self) -> str | None:
        """``smtp_client``, ``lua:<name>`` or ``maildir:<path>``; None for any other."""
        if self.name.endswith("@smtp_client"):
            return "smtp_client"
        for suffix in PROTOCOL_SUFFIXES:
            at = self.name.rfind(suffix)
            if at >= 0:
                return self.name[at + 1 :]
        return None

    @property
    def site(self) -> str:
        """The name without its source and ``->``, and without its ``@`` and protocol."""
        source, protocol = self.source, self.protocol
        start = 0 if source is None else len(source) + 2
        end = len(self.name) - (0 if protocol is None else len(protocol) + 1)
        return self.name[start : max(start, end)]

    @property
    def volume(self) -> int:
        return self.delivered + self.transfail + self.connections + self.ready


@attrs.frozen
class ScheduledQueue:
    """One scheduled queue's count."""

    name: str
    count: int

    @property
    def volume(self) -> int:
        return self.count


def _count(value: float) -> int:
    # As KumoMTA's kcli casts a sample to a count: NaN and negatives are 0.
    return int(value) if math.isfinite(value) and value > 0 else 0


def ready_queues(samples: Iterable[Sample]) -> list[ReadyQueue]:
    """The ready queues a page's samples name, with their figures (page order)."""
    figures: dict[str, dict[str, int]] = {}
    for sample in samples:
        figure = READY_FAMILIES.get(sample.name)
        service = sample.labels.get("service")
        if figure is None or service is None:
            continue
        _protocol, colon, queue = service.partition(":")
        if not colon:
            continue  # a global row
        counts = figures.setdefault(queue, {})
        counts[figure] = counts.get(figure, 0) + _count(sample.value)
    return [ReadyQueue(name, **counts) for name, counts in figures.items()]


def scheduled_queues(samples: Iterable[Sample]) -> list[ScheduledQueue]:
    """The scheduled queues of a page's ``scheduled_count`` samples, with their counts."""
    return [
        ScheduledQueue(name, max(count, 0)) for name, count in scheduled_counts(samples).items()
    ]


# -- order ------------------------------------------------------------------------------


def _folded(char: str) -> str:
    """A non-ASCII letter or digit as the ASCII it decomposes to (``é`` -> ``e``), or
    as it is when it has none."""
    ascii_only = "".join(
        part
        for part in unicodedata.normalize("NFKD", char)
        if part.isascii() and not unicodedata.combining(part)
    ).strip()
    return ascii_only.lower() if ascii_only else char


def _lexical(text: str) -> Iterator[str]:
    """``text`` as a lexical comparison reads it: ASCII in lower case, other letters
    and digits folded to ASCII, combining accents (U+0300 to U+036F) left out."""
    for char in text:
        if char.isascii():
            yield char.lower()
        elif char.isalnum():
            yield from _folded(char)
        elif not "\u0300" <= char <= "\u036f":
            yield char


def _ascii_digit(char: str) -> bool:
    return "0" <= char <= "9"


def _digit_run(chars: Sequence[str], start: int) -> int:
    end = start
    while end < len(chars) and _ascii_digit(chars[end]):
        end += 1
    return end


def natural_lexical_compare(left: str, right: str) -> int:
    """Negative, zero or positive as ``left`` sorts before, with or after ``right`` in
    KumoMTA kcli's order (the ``lexicmp`` crate's natural lexical order).

    Case does not count, accented letters count as their ASCII letters, a run of ASCII
    digits compares with a run of digits by its length, then by its value (``q2`` before
    ``q10``), and a letter or digit sorts after any other character. Names equal so far
    compare by their code points. (``lexicmp`` also spells out letters that do not
    decompose, such as ``ß`` as ``ss``; here they stay as they are.)
    """
    a, b = list(_lexical(left)), list(_lexical(right))
    i = j = 0
    while i < len(a) and j < len(b):
        x, y = a[i], b[j]
        if _ascii_digit(x) and _ascii_digit(y):
            end_a, end_b = _digit_run(a, i), _digit_run(b, j)
            if end_a - i != end_b - j:
                return -1 if end_a - i < end_b - j else 1
            value_a, value_b = int("".join(a[i:end_a])), int("".join(b[j:end_b]))
            if value_a != value_b:
                return -1 if value_a < value_b else 1
            i, j = end_a, end_b
            continue
        if x != y:
            if x.isalnum() != y.isalnum():
                return 1 if x.isalnum() else -1
            return -1 if x < y else 1
        i += 1
        j += 1
    if i < len(a):
        return 1
    if j < len(b):
        return -1
    return (left > right) - (left < right)


Q = TypeVar("Q", ReadyQueue, ScheduledQueue)


def ordered(queues: Iterable[Q], *, by_volume: bool) -> list[Q]:
    """``queues`` by name, or by volume (biggest first) and then by name."""
    by_name = functools.cmp_to_key(natural_lexical_compare)
    if by_volume:
        return sorted(queues, key=lambda queue: (-queue.volume, by_name(queue.name)))
    return sorted(queues, key=lambda queue: by_name(queue.name))


# -- status -----------------------------------------------------------------------------

Entry = Mapping[str, Any]
Describe = Callable[[Entry, str], str | None]
"""What an admin list's entry says of a queue (by name): its status text, or None."""


def _part_matches(wanted: object, have: str | None) -> bool:
    # A rule without the part matches any queue; one with it only a queue that has it.
    return wanted is None or (have is not None and wanted == have)


def criteria_marker(mark: str) -> Describe:
    """``mark`` and the entry's reason, for the scheduled queues whose campaign, tenant
    and domain the entry's (bounce or suspend list) allow, as KumoMTA's kcli matches
    them: ``queue_names`` and ``routing_domain`` are not looked at, so an entry with
    only those marks every queue."""

    def describe(entry: Entry, queue: str) -> str | None:
        name = QueueName.parse(queue)
        if not (
            _part_matches(entry.get("campaign"), name.campaign)
            and _part_matches(entry.get("tenant"), name.tenant)
            and _part_matches(entry.get("domain"), name.domain)
        ):
            return None
        return f"{mark}{entry.get('reason', '')}"

    return describe


def name_marker(mark: str) -> Describe:
    """``mark`` and the entry's reason, for the ready queue the entry names exactly
    (a ready-queue suspension's ``name``)."""

    def describe(entry: Entry, queue: str) -> str | None:
        return f"{mark}{entry.get('reason', '')}" if entry.get("name") == queue else None

    return describe


@attrs.frozen
class StatusSource:
    """An admin list (GET ``path``, a JSON array) whose entries mark queues."""

    path: str
    describe: Describe


SCHEDULED_STATUS: Final[tuple[StatusSource, ...]] = (
    StatusSource(BOUNCE_PATH, criteria_marker(BOUNCE_MARK)),
    StatusSource(SUSPEND_PATH, criteria_marker(SUSPEND_MARK)),
)
"""What marks a scheduled queue, first first: the first that applies is its status."""

READY_STATUS: Final[tuple[StatusSource, ...]] = (
    StatusSource(SUSPEND_READY_Q_PATH, name_marker(SUSPEND_MARK)),
)
"""What marks a ready queue: each that applies is part of its status."""

ADMIN_LISTS: Final = (SUSPEND_PATH, BOUNCE_PATH, SUSPEND_READY_Q_PATH)
"""The admin lists the sources read, in the order KumoMTA's kcli asks for them (then
``/api/admin/ready-q-states/v1``, then ``/metrics``)."""

Listed = Sequence[tuple[StatusSource, Sequence[Entry]]]
"""Each source with the entries its list gave."""


@attrs.frozen
class QueueStateMark:
    """One state of a ready queue, as a ready-q-states reply gives it."""

    key: str
    context: str
    since: int
    """ns since the epoch."""

    def __str__(self) -> str:
        return f"{self.key}: {self.context} @ {chrono_display(self.since)}"


ReadyStates = Mapping[str, Sequence[QueueStateMark]]
"""Ready queue -> its states."""


def chrono_display(nanos: int) -> str:
    """A UTC time as KumoMTA's kcli prints one (chrono's ``Display``):
    ``2025-01-23 10:11:12.123456789 UTC``, with 0, 3, 6 or 9 fraction digits."""
    date, _, time = format_rfc3339(nanos).removesuffix("Z").partition("T")
    return f"{date} {time} UTC"


def ready_states(document: object) -> dict[str, list[QueueStateMark]]:
    """The states of a ``GET /api/admin/ready-q-states/v1`` reply by ready queue, each
    queue's by key. ValueError for a reply of another shape (``since`` that is no RFC
    3339 time included); keys beside ``context`` and ``since`` are ignored."""
    by_queue = document.get("states_by_ready_queue") if isinstance(document, dict) else None
    if not isinstance(by_queue, dict):
        raise ValueError("no states_by_ready_queue object")
    marks: dict[str, list[QueueStateMark]] = {}
    for queue, states in by_queue.items():
        if not isinstance(states, dict):
            raise ValueError(f"the states of {queue} are no object")
        marks[queue] = []
        for key, state in sorted(states.items()):
            context = state.get("context") if isinstance(state, dict) else None
            since = state.get("since") if isinstance(state, dict) else None
            if not isinstance(context, str) or not isinstance(since, str):
                raise ValueError(f"state {key} of {queue} has no context and since")
            marks[queue].append(QueueStateMark(key, context, parse_rfc3339(since)))
    return marks


def _marks(listed: Listed, queue: str) -> Iterator[str]:
    """For each source, what its first entry that applies says of ``queue``."""
    for source, entries in listed:
        for entry in entries:
            text = source.describe(entry, queue)
            if text is not None:
                yield text
                break


def scheduled_status(listed: Listed, queue: str) -> str:
    """The status of a scheduled queue: the first mark, or empty."""
    return next(_marks(listed, queue), "")


def ready_status(listed: Listed, queue: str, states: ReadyStates | None = None) -> str:
    """The status of a ready queue: every mark, then each of its ``states``, joined by
    ``, ``."""
    marks = [*_marks(listed, queue), *map(str, (states or {}).get(queue, ()))]
    return ", ".join(marks)


# -- the tables -------------------------------------------------------------------------


def format_queue_summary(
    ready: Sequence[ReadyQueue],
    scheduled: Sequence[ScheduledQueue],
    *,
    ready_listed: Listed = (),
    scheduled_listed: Listed = (),
    ready_states: ReadyStates | None = None,
) -> str:
    """The output of ``kcli queue-summary``: the ready table, a blank line, the
    scheduled table; each line ends with its newline (and the padding of the status
    column before it)."""
    ready_rows = [
        [
            queue.site,
            queue.source or "",
            queue.protocol or "",
            format_count(queue.delivered),
            format_count(queue.transfail),
            format_count(queue.connections),
            format_count(queue.ready),
            ready_status(ready_listed, queue.name, ready_states),
        ]
        for queue in ready
    ]
    scheduled_rows = [
        [queue.name, format_count(queue.count), scheduled_status(scheduled_listed, queue.name)]
        for queue in scheduled
    ]
    return (
        format_table(READY_COLUMNS, ready_rows)
        + "\n\n"
        + format_table(SCHEDULED_COLUMNS, scheduled_rows)
        + "\n"
    )

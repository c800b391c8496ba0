"""GET /metrics: the engine's counters in the Prometheus text exposition format (0.0.4).

``scheduled_count{queue="<name>"}`` is KumoMTA's gauge of messages waiting per
scheduled queue; ``total_messages_received`` and ``total_messages_bounced`` are
counters named in KumoMTA's style. Every other number in the engine's
``statistics()`` record follows as ``kumo_engine_<field>`` (nested records flattened:
``kumo_engine_log_<field>``), so a new statistic shows up here without a change to
this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any, Final

import attrs

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_RECEIVED: Final = "received_total"
_BOUNCED: Final = "bounced_total"


def escape_label_value(value: str) -> str:
    r"""A label value as the text format quotes it: ``\``, ``"`` and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _statistics_fields(statistics: object, prefix: str = "") -> Iterator[tuple[str, int | float]]:
    """The numeric fields of a statistics record, nested records flattened with ``_``.

    Records are attrs classes, dataclasses or plain objects; other values are skipped.
    """
    kind: Any = type(statistics)
    if attrs.has(kind):
        names = [field.name for field in attrs.fields(kind)]
    elif dataclasses.is_dataclass(statistics) and not isinstance(statistics, type):
        names = [field.name for field in dataclasses.fields(statistics)]
    else:
        names = list(getattr(statistics, "__dict__", {}))
    for name in names:
        value = getattr(statistics, name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            yield prefix + name, value
        elif not isinstance(value, str | bytes | Mapping) and (
            attrs.has(type(value)) or dataclasses.is_dataclass(value)
        ):
            yield from _statistics_fields(value, f"{prefix}{name}_")


def _family(lines: list[str], name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")


def render_metrics(queue_counts: Mapping[str, int], statistics: object) -> str:
    """The /metrics page for these queue counts and this engine statistics record.

    Queues are listed by name, so that the page is stable between scrapes.
    """
    lines: list[str] = []
    _family(lines, "scheduled_count", "gauge", "Messages waiting in a scheduled queue.")
    for queue in sorted(queue_counts):
        label = escape_label_value(queue)
        lines.append(f'scheduled_count{{queue="{label}"}} {queue_counts[queue]}')
    fields = dict(_statistics_fields(statistics))
    for field, name, help_text in (
        (_RECEIVED, "total_messages_received", "Messages received since the log began."),
        (_BOUNCED, "total_messages_bounced", "Messages bounced by an administrator."),
    ):
        _family(lines, name, "counter", help_text)
        lines.append(f"{name} {fields.pop(field, 0)}")
    for field, value in fields.items():
        name = f"kumo_engine_{field}"
        # The record does not say which numbers only grow: leave the type open.
        _family(lines, name, "untyped", f"Engine statistic {field}.")
        lines.append(f"{name} {value}")
    return "\n".join(lines) + "\n"

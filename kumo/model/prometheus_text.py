"""Reading the Prometheus text exposition format (0.0.4), as ``GET /metrics`` serves it.

The one reader of metrics pages in kumo: ``kcli queue-summary``, the scenario runner's
expectations and the tests all go through :func:`parse_samples`. The parsing itself is
prometheus-client's; this module decides how forgiving to be: a line that does not
parse (a truncated page, another exporter's extension) is skipped instead of costing
the whole page, and every sample keeps the name it was written under (the library,
reading a ``# TYPE x counter`` line, would rename the samples of ``x`` to
``x_total``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

import attrs
from prometheus_client.parser import text_string_to_metric_families

SCHEDULED_COUNT: Final = "scheduled_count"
"""KumoMTA's gauge of messages waiting, one sample per scheduled queue."""


@attrs.frozen
class Sample:
    """One sample line: its metric name as written, its labels (unescaped), its value."""

    name: str
    labels: dict[str, str]
    value: float


def parse_samples(text: str) -> list[Sample]:
    """Every sample of a metrics page, in page order.

    Comment lines (``# HELP``, ``# TYPE``, others), blank lines and lines that do not
    parse are skipped; timestamps are dropped. Never raises, whatever ``text`` is.
    """
    # Lines end at "\n" only: a label value may hold any other character, "\r" included.
    lines = [line for line in map(str.strip, text.split("\n")) if line and line[0] != "#"]
    try:
        # Without its comment lines a page is read as untyped samples, each under the
        # name it was written with; one call for the page is much faster than one a line.
        return _samples("\n".join(lines) + "\n")
    except ValueError:
        pass
    samples: list[Sample] = []
    for line in lines:
        try:
            samples += _samples(line + "\n")
        except ValueError:
            continue
    return samples


def _samples(text: str) -> list[Sample]:
    return [
        Sample(sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def parse_scheduled_counts(text: str) -> dict[str, int]:
    """Queue name -> messages waiting, from the ``scheduled_count`` gauges of a page.

    Samples without a ``queue`` label and non-finite values are skipped; samples of one
    queue (from several nodes, say) are added up.
    """
    return scheduled_counts(parse_samples(text))


def scheduled_counts(samples: Iterable[Sample]) -> dict[str, int]:
    """:func:`parse_scheduled_counts` of samples already parsed."""
    counts: dict[str, int] = {}
    for sample in samples:
        queue = sample.labels.get("queue")
        if sample.name != SCHEDULED_COUNT or queue is None or not math.isfinite(sample.value):
            continue
        counts[queue] = counts.get(queue, 0) + int(sample.value)
    return counts

"""Statistics records whose fields say what they measure, and a fixed-bucket histogram.

A statistics record (trio's ``statistics()`` convention: a frozen snapshot) is a frozen
attrs class each of whose fields comes from one of the field makers below, which attach
the field's help text and its kind as attrs metadata::

    @attrs.frozen
    class LogStatistics:
        commits: int = counter("Transactions committed by this process.")
        urgent_waiting: int = gauge("Client requests waiting to be committed now.")

The help text is the field's docstring, and together with the kind it is data: the
``/metrics`` exporter reads it (:func:`declared_fields`), so a new field reaches the
page with its meaning and its type. The exporter refuses a record with a field declared
otherwise, and a test holds every record of the project to it.

Pure: no I/O, no clock. A :class:`Histogram` is a value; :meth:`Histogram.observe`
returns a new one.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
from collections.abc import Iterator
from typing import Any, Final

import attrs

_METADATA_KEY: Final = "kumo.statistics"


class Kind(enum.Enum):
    """What a field of a statistics record measures, as Prometheus types it."""

    COUNTER = "counter"
    """Only grows while the process runs (may restart from zero with it)."""
    GAUGE = "gauge"
    """A value now, which may go up or down (a bool is a gauge of 0 or 1)."""
    INFO = "info"
    """A string that describes the state (exported as a label, never as a number)."""
    HISTOGRAM = "histogram"
    """A :class:`Histogram` of observations."""
    RECORD = "record"
    """A nested statistics record, whose fields are exported with this one's name
    as their prefix."""


@attrs.frozen
class Declaration:
    """The kind and help text of one field of a statistics record."""

    kind: Kind
    help: str


@attrs.frozen
class DeclaredField:
    """A field of a statistics record with its declaration."""

    name: str
    kind: Kind
    help: str


def _declare(kind: Kind, help_text: str) -> Any:
    if not help_text.strip():
        raise ValueError("a statistics field needs a help text")
    return attrs.field(metadata={_METADATA_KEY: Declaration(kind, help_text)})


def counter(help_text: str) -> Any:
    """A field that counts something and only grows while the process runs."""
    return _declare(Kind.COUNTER, help_text)


def gauge(help_text: str) -> Any:
    """A field that holds a value now, which may go up or down."""
    return _declare(Kind.GAUGE, help_text)


def info(help_text: str) -> Any:
    """A string field that describes the state."""
    return _declare(Kind.INFO, help_text)


def histogram(help_text: str) -> Any:
    """A :class:`Histogram` field."""
    return _declare(Kind.HISTOGRAM, help_text)


def record(help_text: str) -> Any:
    """A field holding a nested statistics record."""
    return _declare(Kind.RECORD, help_text)


def is_statistics_record(cls: type) -> bool:
    """Whether ``cls`` is an attrs class whose every field comes from a field maker."""
    return attrs.has(cls) and all(_METADATA_KEY in f.metadata for f in attrs.fields(cls))


def declared_fields(cls: type) -> tuple[DeclaredField, ...]:
    """The fields of a statistics record class, in order, with their declarations.

    Raises :class:`TypeError` for a class that is not a statistics record.
    """
    if not attrs.has(cls):
        raise TypeError(f"{cls.__qualname__} is not a statistics record")
    out: list[DeclaredField] = []
    for field in attrs.fields(cls):
        declaration = field.metadata.get(_METADATA_KEY)
        if not isinstance(declaration, Declaration):
            raise TypeError(f"{cls.__qualname__}.{field.name} declares no kind and help text")
        out.append(DeclaredField(field.name, declaration.kind, declaration.help))
    return tuple(out)


# -- histograms -------------------------------------------------------------------------

LATENCY_BOUNDS: Final = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the latency buckets: fine around the 20 ms that an admin
request may take, coarse past a second."""


def _check_bounds(_: object, __: attrs.Attribute[tuple[float, ...]], bounds: object) -> None:
    if not isinstance(bounds, tuple) or not all(
        isinstance(b, float | int) and not isinstance(b, bool) and math.isfinite(b) for b in bounds
    ):
        raise TypeError(f"bounds must be a tuple of finite numbers, got {bounds!r}")
    if any(low >= high for low, high in itertools.pairwise(bounds)):
        raise ValueError(f"bounds must increase strictly, got {bounds!r}")


def _check_counts(instance: Histogram, _: attrs.Attribute[tuple[int, ...]], counts: object) -> None:
    if not isinstance(counts, tuple) or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts
    ):
        raise TypeError(f"counts must be a tuple of non-negative ints, got {counts!r}")
    if len(counts) != len(instance.bounds) + 1:
        raise ValueError(f"{len(instance.bounds)} bounds need {len(instance.bounds) + 1} counts")


def _check_total(_: object, __: attrs.Attribute[float], total: object) -> None:
    if isinstance(total, bool) or not isinstance(total, float | int) or not math.isfinite(total):
        raise TypeError(f"total must be a finite number, got {total!r}")


@attrs.frozen(slots=True)
class Histogram:
    """Observations counted in fixed buckets, as a Prometheus histogram holds them.

    ``counts[i]`` counts the observations ``v`` with ``bounds[i-1] < v <= bounds[i]``
    (not cumulative); the last count is of those over the last bound. ``total`` is the
    sum of every observation.
    """

    bounds: tuple[float, ...] = attrs.field(validator=_check_bounds)
    counts: tuple[int, ...] = attrs.field(validator=_check_counts)
    total: float = attrs.field(default=0.0, validator=_check_total)

    @classmethod
    def empty(cls, bounds: tuple[float, ...] = LATENCY_BOUNDS) -> Histogram:
        """No observation yet, in buckets with these upper bounds."""
        return cls(bounds, (0,) * (len(bounds) + 1))

    @property
    def count(self) -> int:
        """How many observations there were."""
        return sum(self.counts)

    def observe(self, value: float) -> Histogram:
        """This histogram with ``value`` counted too. Raises ValueError if not finite."""
        if not math.isfinite(value):
            raise ValueError(f"cannot observe {value!r}")
        index = bisect.bisect_left(self.bounds, value)
        counts = list(self.counts)
        counts[index] += 1
        # One more in one bucket keeps every invariant the validators check, and they
        # cost five times the rest: the log writer observes once per commit.
        made = object.__new__(Histogram)
        object.__setattr__(made, "bounds", self.bounds)
        object.__setattr__(made, "counts", tuple(counts))
        object.__setattr__(made, "total", self.total + value)
        return made

    def cumulative(self) -> Iterator[tuple[float, int]]:
        """``(upper bound, observations up to it)`` per bucket, ending with ``inf``."""
        seen = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            seen += count
            yield bound, seen

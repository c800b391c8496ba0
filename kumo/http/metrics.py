"""GET /metrics: the engine's statistics records as Prometheus metric families.

Names, as scrapers and KumoMTA's own tools read them:

- ``scheduled_count{queue="<name>"}``: KumoMTA's gauge of messages waiting per
  scheduled queue; ``total_messages_received`` and ``total_messages_bounced``:
  KumoMTA's counters (the engine's ``received_total`` and ``bounced_total``);
- ``kumo_engine_<field>`` for every other field of the engine's ``statistics()``
  record, nested records flattened (``kumo_engine_log_<field>``). Each field declares
  its kind and help text (:mod:`kumo.model.statistics`), so a new statistic shows up
  here, typed and explained, without a change to this module;
- ``kumo_actor_<field>{queue="<name>"}`` for the queue actors' fields an operator
  acts on (:data:`ACTOR_FIELDS`);
- ``kumo_admin_request_seconds{route,method}``: a histogram of the time the app took
  to answer each admin request (:class:`AdminLatency`).

The families are prometheus-client's (a custom collector in a registry of each app's
own), but the text is written here, not by ``prometheus_client.generate_latest``: that
writer renames every counter family to ``<name>_total`` and prints integers as floats
(``3.0``), which would change ``total_messages_received`` and every other existing name
and value on the page. :func:`exposition` writes the same format (0.0.4) with the names
as declared.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Final, Protocol, TypeVar

import attrs
import trio
from prometheus_client.metrics_core import (
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry
from prometheus_client.samples import Sample

from kumo.model.statistics import DeclaredField, Histogram, Kind, declared_fields
from kumo.runtime.queue_actor import ActorStatistics

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

ENGINE_PREFIX: Final = "kumo_engine_"
ACTOR_PREFIX: Final = "kumo_actor_"
ADMIN_LATENCY: Final = "kumo_admin_request_seconds"

KUMOMTA_NAMES: Final = {
    "received_total": "total_messages_received",
    "bounced_total": "total_messages_bounced",
}
"""Top-level fields of the engine's record exported under KumoMTA's names."""

ACTOR_FIELDS: Final = ("mailbox_used", "lagging", "catch_ups", "bounced")
"""The fields of :class:`~kumo.runtime.queue_actor.ActorStatistics` exported per queue:
a mailbox filling up, an actor lagging or catching up often, and what it bounced."""


def escape_label_value(value: str) -> str:
    r"""A label value as the text format quotes it: ``\``, ``"`` and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class AdminLatency:
    """Seconds each admin request took, by route and method, as histograms.

    Belongs to one app; the app observes, the collector reads a copy.
    """

    def __init__(self) -> None:
        self._histograms: dict[tuple[str, str], Histogram] = {}

    def observe(self, route: str, method: str, seconds: float) -> None:
        key = (route, method)
        histogram = self._histograms.get(key) or Histogram.empty()
        self._histograms[key] = histogram.observe(max(seconds, 0.0))

    def snapshot(self) -> dict[tuple[str, str], Histogram]:
        """``(route, method)`` -> its histogram so far (a copy)."""
        return dict(self._histograms)


@attrs.frozen
class Scrape:
    """What one scrape reads of the engine, all of it at one moment.

    ``statistics`` is a statistics record (:mod:`kumo.model.statistics`); the others
    are copies, so the families can be built away from the event loop.
    """

    queue_counts: Mapping[str, int]
    statistics: object
    actors: Sequence[ActorStatistics] = ()
    admin_latency: Mapping[tuple[str, str], Histogram] = attrs.field(factory=dict)


class MetricsEngine(Protocol):
    """The engine calls a scrape makes."""

    def queue_counts(self) -> Mapping[str, int]: ...

    def statistics(self) -> object: ...

    def actor_statistics(
        self, start: int = 0, stop: int | None = None
    ) -> Sequence[ActorStatistics]: ...


ACTORS_PER_READ: Final = 500
"""Actors whose statistics one hop to the event loop reads (about 1 ms of the loop)."""


T = TypeVar("T")


class RunOnLoop(Protocol):
    """Runs a read in the event loop's thread (``trio.from_thread.run_sync``)."""

    def __call__(self, read: Callable[[], T], /) -> T: ...


def _here(read: Callable[[], T], /) -> T:
    return read()


def read_scrape(engine: MetricsEngine, latency: AdminLatency, on_loop: RunOnLoop = _here) -> Scrape:
    """Read the engine for one scrape, each read through ``on_loop`` (which runs it in
    the event loop's thread): the actors :data:`ACTORS_PER_READ` at a time, so that a
    scrape of 10,000 queues never holds the loop for long."""
    scrape = on_loop(
        lambda: Scrape(
            queue_counts=dict(engine.queue_counts()),
            statistics=engine.statistics(),
            admin_latency=latency.snapshot(),
        )
    )
    actors: list[ActorStatistics] = []
    while True:
        start = len(actors)
        part = on_loop(functools.partial(engine.actor_statistics, start, start + ACTORS_PER_READ))
        actors.extend(part)
        if len(part) < ACTORS_PER_READ:
            return attrs.evolve(scrape, actors=actors)


# -- families ---------------------------------------------------------------------------


def _number(name: str, value: object) -> int | float:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    raise TypeError(f"{name}: a counter or gauge must be a number, got {value!r}")


def _histogram_buckets(histogram: Histogram) -> list[tuple[str, float]]:
    return [(_value(float(bound)), count) for bound, count in histogram.cumulative()]


def _field_family(field: DeclaredField, name: str, value: object) -> Metric:
    match field.kind:
        case Kind.COUNTER:
            # Named as declared: the sample carries the family's name, as KumoMTA's do.
            family = Metric(name, field.help, "counter")
            family.add_sample(name, {}, _number(name, value))
            return family
        case Kind.GAUGE:
            return GaugeMetricFamily(name, field.help, value=_number(name, value))
        case Kind.INFO:
            return InfoMetricFamily(name, field.help, value={field.name: str(value)})
        case Kind.HISTOGRAM:
            if not isinstance(value, Histogram):
                raise TypeError(f"{name}: a histogram field must hold a Histogram")
            return HistogramMetricFamily(
                name, field.help, buckets=_histogram_buckets(value), sum_value=value.total
            )
        case Kind.RECORD:
            raise AssertionError("records are flattened by the caller")


def _record_families(record: object, prefix: str, *, top: bool) -> Iterator[Metric]:
    for field in declared_fields(type(record)):
        value = getattr(record, field.name)
        if field.kind is Kind.RECORD:
            yield from _record_families(value, f"{prefix}{field.name}_", top=False)
        elif top and field.name in KUMOMTA_NAMES:
            continue  # exported first, under KumoMTA's name
        else:
            yield _field_family(field, prefix + field.name, value)


def _kumomta_families(statistics: object) -> Iterator[Metric]:
    fields = {field.name: field for field in declared_fields(type(statistics))}
    for field_name, name in KUMOMTA_NAMES.items():
        if field_name in fields:
            yield _field_family(fields[field_name], name, getattr(statistics, field_name))


class QueueSeries(Metric):
    """A family of one sample per scheduled queue, labelled ``queue``, in queue order.

    It keeps ``(queue, value)`` pairs and makes prometheus-client's ``Sample`` objects
    only when :attr:`samples` is read; :func:`exposition` writes it from the pairs. At
    10,000 queues a page has five such families: 50,000 samples, each a tuple holding a
    dict that the garbage collector then scans, cost more than all the rest of a scrape
    and stall the event loop while a collection runs.
    """

    def __init__(
        self, name: str, documentation: str, kind: str, values: list[tuple[str, int]]
    ) -> None:
        super().__init__(name, documentation, kind)
        self.values = values

    @property
    def samples(self) -> list[Sample]:
        return [Sample(self.name, {"queue": queue}, value) for queue, value in self.values]

    @samples.setter
    def samples(self, samples: list[Sample]) -> None:
        if samples:
            raise AttributeError("a QueueSeries holds its values as (queue, value) pairs")


def _actor_families(actors: Sequence[ActorStatistics]) -> Iterator[Metric]:
    declared = {field.name: field for field in declared_fields(ActorStatistics)}
    ordered = sorted(actors, key=lambda actor: actor.queue)
    for field_name in ACTOR_FIELDS:
        field = declared[field_name]
        kind = "counter" if field.kind is Kind.COUNTER else "gauge"
        values = [(actor.queue, int(getattr(actor, field_name))) for actor in ordered]
        yield QueueSeries(ACTOR_PREFIX + field_name, field.help, kind, values)


def _latency_family(latency: Mapping[tuple[str, str], Histogram]) -> Metric:
    family = HistogramMetricFamily(
        ADMIN_LATENCY,
        "Seconds the app took to answer an admin API request, by route and method.",
        labels=["route", "method"],
    )
    for (route, method), histogram in sorted(latency.items()):
        family.add_metric([route, method], _histogram_buckets(histogram), histogram.total)
    return family


def metric_families(scrape: Scrape) -> list[Metric]:
    """The families of the /metrics page for ``scrape``, in the page's order.

    Queues are listed by name, so that the page is stable between scrapes. Raises
    :class:`TypeError` if the statistics record declares a field without a kind.
    """
    counts = scrape.queue_counts
    scheduled = QueueSeries(
        "scheduled_count",
        "Messages waiting in a scheduled queue.",
        "gauge",
        [(queue, counts[queue]) for queue in sorted(counts)],
    )
    return [
        scheduled,
        *_kumomta_families(scrape.statistics),
        *_record_families(scrape.statistics, ENGINE_PREFIX, top=True),
        *_actor_families(scrape.actors),
        _latency_family(scrape.admin_latency),
    ]


class EngineCollector:
    """A prometheus-client collector over the engine's statistics records.

    It may be collected in the event loop's thread or in a worker thread of that loop
    (:func:`page`); either way the engine is read in the loop's thread, at once, and
    only the building of the families happens where the collector was called. (Outside
    any Trio run, as in a script, it reads the engine where it is called.)
    """

    def __init__(self, engine: MetricsEngine, latency: AdminLatency) -> None:
        self._engine = engine
        self._latency = latency

    def collect(self) -> Iterator[Metric]:
        # In a worker thread each read hops to the loop's thread: the engine's tasks
        # change what it reads.
        if _in_worker_thread():
            scrape = read_scrape(self._engine, self._latency, trio.from_thread.run_sync)
        else:
            scrape = read_scrape(self._engine, self._latency)
        yield from metric_families(scrape)


def _in_worker_thread() -> bool:
    """Whether this is a thread that Trio started for a task (``trio.to_thread``)."""
    if trio.lowlevel.in_trio_run():
        return False
    try:
        trio.from_thread.check_cancelled()
    except RuntimeError:
        return False
    return True


def metrics_registry(engine: MetricsEngine, latency: AdminLatency) -> CollectorRegistry:
    """A registry of the app's own (apps never share prometheus-client's global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, latency))
    return registry


def page(registry: CollectorRegistry) -> bytes:
    """The /metrics page of ``registry``.

    Call it in a worker thread (``trio.to_thread.run_sync``): at 10,000 queues a page
    has 50,000 samples and takes tens of milliseconds to build, which the event loop
    then does not wait for; or in the loop's thread, which it then blocks.
    """
    return exposition(registry.collect())


# -- text -------------------------------------------------------------------------------


def _value(value: float) -> str:
    if isinstance(value, int):  # exact, as KumoMTA prints its counts
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _exposed(family: Metric) -> tuple[str, str]:
    """The name and type the text format gives a family."""
    match family.type:
        case "info":
            return family.name + "_info", "gauge"
        case "unknown":
            return family.name, "untyped"
        case "counter" if not isinstance(family, QueueSeries) and any(
            sample.name == family.name + "_total" for sample in family.samples
        ):
            return family.name + "_total", "counter"  # built by CounterMetricFamily
        case kind:
            return family.name, kind


def _labels_text(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    pairs = ",".join(f'{key}="{escape_label_value(value)}"' for key, value in labels.items())
    return "{" + pairs + "}"


class _QueueLabels(dict[str, str]):
    """Queue name -> its formatted labels, made once per page though five families
    carry them."""

    def __missing__(self, queue: str) -> str:
        text = self[queue] = f'{{queue="{escape_label_value(queue)}"}} '
        return text


def exposition(families: Iterable[Metric]) -> bytes:
    """The Prometheus text format (0.0.4) of ``families``: HELP and TYPE, then samples.

    Labels are written in the order the sample gives them.
    """
    lines: list[str] = []
    append = lines.append
    queue_labels = _QueueLabels()
    for family in families:
        name, kind = _exposed(family)
        append(f"# HELP {name} {_escape_help(family.documentation)}")
        append(f"# TYPE {name} {kind}")
        if isinstance(family, QueueSeries):
            lines += [f"{name}{queue_labels[queue]}{value}" for queue, value in family.values]
            continue
        for sample in family.samples:
            append(f"{sample.name}{_labels_text(sample.labels)} {_value(sample.value)}")
    return ("\n".join(lines) + "\n").encode()


def render_metrics(
    queue_counts: Mapping[str, int],
    statistics: object,
    actors: Sequence[ActorStatistics] = (),
    admin_latency: Mapping[tuple[str, str], Histogram] | None = None,
) -> str:
    """The /metrics page for these queue counts, statistics record and actors."""
    scrape = Scrape(dict(queue_counts), statistics, actors, admin_latency or {})
    return exposition(metric_families(scrape)).decode()

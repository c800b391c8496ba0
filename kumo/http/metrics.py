"""GET /metrics and /metrics.json: the engine's statistics records as Prometheus
metric families.

Names, as scrapers and KumoMTA's own tools (``kcli queue-summary``) read them:

- ``scheduled_count{queue="<name>"}``: KumoMTA's gauge of the messages waiting in each
  scheduled queue (due later, or due now and not yet handed to a ready queue);
- ``total_messages_received`` and ``total_messages_bounced``: counters since the log
  began (the engine's ``received_total`` and ``bounced_total``);
- KumoMTA's per-service families (:data:`SERVICE_FAMILIES`), labelled
  ``service="<protocol>:<ready queue>"`` for each ready queue's dispatcher and with the
  global rows ``service="smtp_client"``, ``"esmtp_listener"`` (and
  ``"esmtp_listener:<HOST:PORT>"``) and ``"http_listener"``: ``ready_count``,
  ``connection_count``, ``total_messages_delivered``, ``total_messages_transfail``,
  ``total_messages_fail``, ``delayed_due_to_message_rate_throttle`` (ready queues with a
  ``max_message_rate`` only: kumo's throttle is the egress path's, and its messages wait
  in the ready queue, where KumoMTA labels the family by the scheduled queue it sends
  them back to), and ``total_messages_received`` by listener. The global
  ``smtp_client`` totals are the engine's (since the log began); every other service
  row counts since the process started, as KumoMTA's do;
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
as declared; :func:`json_exposition` writes the same families as KumoMTA's
``/metrics.json`` does.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Final, Protocol, TypeVar

import attrs
import orjson
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
from kumo.runtime.delivery import DispatcherStatistics
from kumo.runtime.queue_actor import ActorStatistics
from kumo.runtime.smtp_listener import SmtpListenerStatistics

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
JSON_CONTENT_TYPE: Final = "application/json; charset=utf-8"

ENGINE_PREFIX: Final = "kumo_engine_"
ACTOR_PREFIX: Final = "kumo_actor_"
ADMIN_LATENCY: Final = "kumo_admin_request_seconds"

SCHEDULED_COUNT: Final = "scheduled_count"
READY_COUNT: Final = "ready_count"
CONNECTION_COUNT: Final = "connection_count"
RECEIVED: Final = "total_messages_received"
DELIVERED: Final = "total_messages_delivered"
TRANSFAIL: Final = "total_messages_transfail"
FAIL: Final = "total_messages_fail"
RATE_DELAYED: Final = "delayed_due_to_message_rate_throttle"

SMTP_CLIENT: Final = "smtp_client"
"""The service of the SMTP client: the global row's label, and the protocol part of each
ready queue's (``smtp_client:<ready queue>``)."""
ESMTP_LISTENER: Final = "esmtp_listener"
HTTP_LISTENER: Final = "http_listener"

KUMOMTA_NAMES: Final = {
    "received_total": RECEIVED,
    "bounced_total": "total_messages_bounced",
}
"""Top-level fields of the engine's record exported under KumoMTA's names, unlabelled."""

SERVICE_TOTALS: Final = {
    "injected": (RECEIVED, HTTP_LISTENER),
    "delivered_total": (DELIVERED, SMTP_CLIENT),
    "transient_failures_total": (TRANSFAIL, SMTP_CLIENT),
    "failed_total": (FAIL, SMTP_CLIENT),
}
"""Top-level fields of the engine's record exported as a global service row of a
KumoMTA family: field -> (family, service)."""

SERVICE_FAMILIES: Final = {
    READY_COUNT: ("gauge", "number of messages in the ready queue"),
    CONNECTION_COUNT: ("gauge", "number of active connections"),
    DELIVERED: ("counter", "total number of messages ever delivered"),
    TRANSFAIL: ("counter", "total number of message delivery attempts that transiently failed"),
    FAIL: ("counter", "total number of message delivery attempts that permanently failed"),
    RATE_DELAYED: ("counter", "number of times a message was delayed due to max_message_rate"),
}
"""KumoMTA's families labelled by ``service``, in page order, with their kinds and
KumoMTA's help texts."""

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
    dispatchers: Sequence[DispatcherStatistics] = ()
    """One per ready queue (none without the mail path)."""
    listener: SmtpListenerStatistics | None = None
    """The SMTP listener's, if one runs."""


class MetricsEngine(Protocol):
    """The engine calls a scrape makes."""

    def queue_counts(self) -> Mapping[str, int]: ...

    def statistics(self) -> object: ...

    def actor_statistics(
        self, start: int = 0, stop: int | None = None
    ) -> Sequence[ActorStatistics]: ...

    def dispatcher_statistics(
        self, start: int = 0, stop: int | None = None
    ) -> Sequence[DispatcherStatistics]: ...


class ListenerSource(Protocol):
    """What a scrape reads of the SMTP listener
    (:class:`~kumo.runtime.smtp_listener.SmtpListener`)."""

    def statistics(self) -> SmtpListenerStatistics: ...


ACTORS_PER_READ: Final = 500
"""Actors (or dispatchers) whose statistics one hop to the event loop reads (about
1 ms of the loop)."""


T = TypeVar("T")


class RunOnLoop(Protocol):
    """Runs a read in the event loop's thread (``trio.from_thread.run_sync``)."""

    def __call__(self, read: Callable[[], T], /) -> T: ...


def _here(read: Callable[[], T], /) -> T:
    return read()


def read_scrape(
    engine: MetricsEngine,
    latency: AdminLatency,
    on_loop: RunOnLoop = _here,
    listener: ListenerSource | None = None,
) -> Scrape:
    """Read the engine (and ``listener``) for one scrape, each read through ``on_loop``
    (which runs it in the event loop's thread): the actors and the dispatchers
    :data:`ACTORS_PER_READ` at a time, so that a scrape of 10,000 queues never holds
    the loop for long.

    The first hop reads the counters, the queue counts, the listener and the first
    dispatchers together, so that a global row and the rows it sums are of one moment
    (unless there are more dispatchers than one hop reads). A queue's
    ``scheduled_count`` is its count less what its actor has handed to a ready queue,
    read in a later hop: a message that leaves meanwhile may still count as scheduled
    on this page.
    """
    scrape = on_loop(
        lambda: Scrape(
            queue_counts=dict(engine.queue_counts()),
            statistics=engine.statistics(),
            admin_latency=latency.snapshot(),
            dispatchers=engine.dispatcher_statistics(0, ACTORS_PER_READ),
            listener=None if listener is None else listener.statistics(),
        )
    )
    dispatchers = list(scrape.dispatchers)
    while len(dispatchers) % ACTORS_PER_READ == 0 and dispatchers:
        start = len(dispatchers)
        more = on_loop(
            functools.partial(engine.dispatcher_statistics, start, start + ACTORS_PER_READ)
        )
        if not more:
            break
        dispatchers.extend(more)
    actors: list[ActorStatistics] = []
    while True:
        start = len(actors)
        part = on_loop(functools.partial(engine.actor_statistics, start, start + ACTORS_PER_READ))
        actors.extend(part)
        if len(part) < ACTORS_PER_READ:
            return attrs.evolve(scrape, actors=actors, dispatchers=dispatchers)


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
        elif top and (field.name in KUMOMTA_NAMES or field.name in SERVICE_TOTALS):
            continue  # exported first, under KumoMTA's name
        else:
            yield _field_family(field, prefix + field.name, value)


class Series(Metric):
    """A family of samples with one label (``label``) each, but for at most one without
    any, in the order given.

    It keeps ``(label value, value)`` pairs (None: the unlabelled sample) and makes
    prometheus-client's ``Sample`` objects only when :attr:`samples` is read;
    :func:`exposition` writes it from the pairs. At 10,000 queues a page has five such
    families: 50,000 samples, each a tuple holding a dict that the garbage collector
    then scans, cost more than all the rest of a scrape and stall the event loop while
    a collection runs.
    """

    label = ""
    """The name of the one label."""

    def __init__(
        self,
        name: str,
        documentation: str,
        kind: str,
        values: list[tuple[str | None, int]],
    ) -> None:
        super().__init__(name, documentation, kind)
        self.values = values

    @property
    def samples(self) -> list[Sample]:
        return [
            Sample(self.name, {} if labelled is None else {self.label: labelled}, value)
            for labelled, value in self.values
        ]

    @samples.setter
    def samples(self, samples: list[Sample]) -> None:
        if samples:
            raise AttributeError("a Series holds its values as (label value, value) pairs")


class QueueSeries(Series):
    """A family of one sample per scheduled queue, labelled ``queue``, in queue order."""

    label = "queue"


class ServiceSeries(Series):
    """A family of KumoMTA's, labelled ``service`` (global rows first, then one per ready
    queue in name order)."""

    label = "service"


def _scheduled_family(scrape: Scrape) -> QueueSeries:
    """``scheduled_count``: what each queue holds but has not handed to a ready queue."""
    counts = scrape.queue_counts
    handed = {actor.queue: actor.handed for actor in scrape.actors if actor.handed}
    values: list[tuple[str | None, int]] = [
        (queue, max(counts[queue] - handed.get(queue, 0), 0)) for queue in sorted(counts)
    ]
    return QueueSeries(SCHEDULED_COUNT, "Messages waiting in a scheduled queue.", "gauge", values)


def _kind(field: DeclaredField) -> str:
    return "counter" if field.kind is Kind.COUNTER else "gauge"


def _kumomta_families(scrape: Scrape) -> Iterator[Metric]:
    """KumoMTA's families: ``total_messages_received`` (unlabelled, then by listener)
    and ``total_messages_bounced``, then :data:`SERVICE_FAMILIES`. A family without a
    sample is left out (the page of an engine without the mail path has none of them)."""
    statistics = scrape.statistics
    fields = {field.name: field for field in declared_fields(type(statistics))}

    def total(field_name: str) -> int:
        return int(_number(field_name, getattr(statistics, field_name)))

    rows: dict[str, list[tuple[str | None, int]]] = {RECEIVED: []}
    rows.update((name, []) for name in SERVICE_FAMILIES)
    listener = scrape.listener
    if listener is not None:
        rows[RECEIVED].append((ESMTP_LISTENER, listener.messages_received))
        if listener.address:
            service = f"{ESMTP_LISTENER}:{listener.address}"
            rows[RECEIVED].append((service, listener.messages_received))
        rows[CONNECTION_COUNT].append((ESMTP_LISTENER, listener.sessions))
    for field_name, (family, service) in SERVICE_TOTALS.items():
        if field_name in fields:
            rows[family].append((service, total(field_name)))
    dispatchers = sorted(scrape.dispatchers, key=lambda dispatcher: dispatcher.ready_queue)
    if rows[DELIVERED] or dispatchers:
        # KumoMTA's global gauges move with every ready queue's: they are the sums.
        rows[READY_COUNT].insert(0, (SMTP_CLIENT, sum(d.ready for d in dispatchers)))
        rows[CONNECTION_COUNT].insert(0, (SMTP_CLIENT, sum(d.connections for d in dispatchers)))
    for dispatcher in dispatchers:
        service = f"{SMTP_CLIENT}:{dispatcher.ready_queue}"
        rows[READY_COUNT].append((service, dispatcher.ready))
        rows[CONNECTION_COUNT].append((service, dispatcher.connections))
        rows[DELIVERED].append((service, dispatcher.delivered))
        rows[TRANSFAIL].append((service, dispatcher.transient_failures))
        rows[FAIL].append((service, dispatcher.failed))
        if dispatcher.message_rate:
            rows[RATE_DELAYED].append((service, dispatcher.rate_delayed))

    for field_name, name in KUMOMTA_NAMES.items():
        if field_name in fields:
            labelled = rows.pop(name, [])
            unlabelled: list[tuple[str | None, int]] = [(None, total(field_name))]
            yield ServiceSeries(
                name, fields[field_name].help, _kind(fields[field_name]), [*unlabelled, *labelled]
            )
    if rows.get(RECEIVED):
        yield ServiceSeries(
            RECEIVED, "total number of messages ever received", "counter", rows[RECEIVED]
        )
    for name, (kind, help_text) in SERVICE_FAMILIES.items():
        if rows[name]:
            yield ServiceSeries(name, help_text, kind, rows[name])


def _actor_families(actors: Sequence[ActorStatistics]) -> Iterator[Metric]:
    declared = {field.name: field for field in declared_fields(ActorStatistics)}
    ordered = sorted(actors, key=lambda actor: actor.queue)
    for field_name in ACTOR_FIELDS:
        field = declared[field_name]
        values: list[tuple[str | None, int]] = [
            (actor.queue, int(getattr(actor, field_name))) for actor in ordered
        ]
        yield QueueSeries(ACTOR_PREFIX + field_name, field.help, _kind(field), values)


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
    return [
        _scheduled_family(scrape),
        *_kumomta_families(scrape),
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

    def __init__(
        self,
        engine: MetricsEngine,
        latency: AdminLatency,
        listener: ListenerSource | None = None,
    ) -> None:
        self._engine = engine
        self._latency = latency
        self._listener = listener

    def collect(self) -> Iterator[Metric]:
        # In a worker thread each read hops to the loop's thread: the engine's tasks
        # change what it reads.
        on_loop: RunOnLoop = trio.from_thread.run_sync if _in_worker_thread() else _here
        yield from metric_families(
            read_scrape(self._engine, self._latency, on_loop, self._listener)
        )


def _in_worker_thread() -> bool:
    """Whether this is a thread that Trio started for a task (``trio.to_thread``)."""
    if trio.lowlevel.in_trio_run():
        return False
    try:
        trio.from_thread.check_cancelled()
    except RuntimeError:
        return False
    return True


def metrics_registry(
    engine: MetricsEngine, latency: AdminLatency, listener: ListenerSource | None = None
) -> CollectorRegistry:
    """A registry of the app's own (apps never share prometheus-client's global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, latency, listener))
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
        case "counter" if not isinstance(family, Series) and any(
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


class _SeriesLabels(dict[tuple[str, str | None], str]):
    """(label, value) -> its formatted labels and the space after them, made once per
    page though five families carry each queue."""

    def __missing__(self, key: tuple[str, str | None]) -> str:
        label, value = key
        text = " " if value is None else f'{{{label}="{escape_label_value(value)}"}} '
        self[key] = text
        return text


def exposition(families: Iterable[Metric]) -> bytes:
    """The Prometheus text format (0.0.4) of ``families``: HELP and TYPE, then samples.

    Labels are written in the order the sample gives them.
    """
    lines: list[str] = []
    append = lines.append
    labels = _SeriesLabels()
    for family in families:
        name, kind = _exposed(family)
        append(f"# HELP {name} {_escape_help(family.documentation)}")
        append(f"# TYPE {name} {kind}")
        if isinstance(family, Series):
            label = family.label
            lines += [f"{name}{labels[label, value]}{count}" for value, count in family.values]
            continue
        for sample in family.samples:
            append(f"{sample.name}{_labels_text(sample.labels)} {_value(sample.value)}")
    return ("\n".join(lines) + "\n").encode()


# -- json -------------------------------------------------------------------------------

JsonValue = int | float | str | None | list["JsonValue"] | dict[str, "JsonValue"]


def _json_number(value: float) -> int | float | None:
    # JSON has no NaN or infinity (KumoMTA would write them, unreadably).
    return value if isinstance(value, int) or math.isfinite(value) else None


@attrs.define
class _HistogramParts:
    """A histogram's ``_bucket``, ``_count`` and ``_sum`` samples of one label set."""

    count: float = 0
    total: float = 0.0
    buckets: list[JsonValue] = attrs.Factory(list)
    """KumoMTA's ``[upper bound, observations up to it]`` pairs, without +Inf."""

    def value(self) -> JsonValue:
        return {
            "count": _json_number(self.count),
            "sum": _json_number(self.total),
            "avg": _json_number(self.total / self.count) if self.count else 0.0,
            "bucket": self.buckets,
        }


def _family_values(family: Metric) -> list[tuple[dict[str, str], JsonValue]]:
    """Each labelled series of ``family`` with its JSON value, in page order."""
    if isinstance(family, Series):
        return [
            ({} if labelled is None else {family.label: labelled}, _json_number(value))
            for labelled, value in family.values
        ]
    if family.type != "histogram":
        return [(dict(sample.labels), _json_number(sample.value)) for sample in family.samples]
    series: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], _HistogramParts]] = {}
    for sample in family.samples:
        labels = {key: value for key, value in sample.labels.items() if key != "le"}
        _, parts = series.setdefault(tuple(labels.items()), (labels, _HistogramParts()))
        match sample.name.removeprefix(family.name):
            case "_bucket" if sample.labels.get("le") != "+Inf":
                bound = float(sample.labels["le"])
                parts.buckets.append([bound, _json_number(sample.value)])
            case "_count":
                parts.count = sample.value
            case "_sum":
                parts.total = sample.value
    return [(labels, parts.value()) for labels, parts in series.values()]


def _json_value(values: list[tuple[dict[str, str], JsonValue]]) -> JsonValue:
    """KumoMTA's shape of a family's value: null without a sample, the number of an
    unlabelled one, ``{label: {value: number}}`` when every series has the same one
    label, else ``[{label: value, ..., "@": number}]``. An unlabelled series beside
    labelled ones (kumo's totals since the log began, on the text page) is left out:
    KumoMTA's readers expect the label map."""
    labelled = [(labels, value) for labels, value in values if labels]
    if not labelled:
        return values[0][1] if values else None
    names = {tuple(labels) for labels, _ in labelled}
    if len(names) == 1 and len(next(iter(names))) == 1:
        [(label,)] = names
        return {label: {labels[label]: value for labels, value in labelled}}
    return [{**labels, "@": value} for labels, value in labelled]


def json_exposition(families: Iterable[Metric]) -> bytes:
    """``families`` as KumoMTA's ``/metrics.json`` writes its metrics: one key per
    family (named as on the text page), each ``{"help", "type", "value"}``."""
    document: dict[str, JsonValue] = {}
    for family in families:
        name, kind = _exposed(family)
        entry: dict[str, JsonValue] = {}
        if family.documentation:
            entry["help"] = family.documentation
        entry["type"] = kind
        entry["value"] = _json_value(_family_values(family))
        document[name] = entry
    return orjson.dumps(document)


def json_page(registry: CollectorRegistry) -> bytes:
    """The /metrics.json document of ``registry`` (call it as :func:`page`)."""
    return json_exposition(registry.collect())


def render_metrics(
    queue_counts: Mapping[str, int],
    statistics: object,
    actors: Sequence[ActorStatistics] = (),
    admin_latency: Mapping[tuple[str, str], Histogram] | None = None,
    *,
    dispatchers: Sequence[DispatcherStatistics] = (),
    listener: SmtpListenerStatistics | None = None,
) -> str:
    """The /metrics page for these queue counts, statistics record, actors,
    dispatchers and listener."""
    scrape = Scrape(
        dict(queue_counts), statistics, actors, admin_latency or {}, dispatchers, listener
    )
    return exposition(metric_families(scrape)).decode()

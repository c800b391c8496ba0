"""The Prometheus text of /metrics: names, kinds, help texts, per-queue series, histograms."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import attrs
import orjson
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from kumo.http.metrics import (
    ACTORS_PER_READ,
    AdminLatency,
    Scrape,
    escape_label_value,
    exposition,
    json_exposition,
    metric_families,
    metrics_registry,
    page,
    read_scrape,
    render_metrics,
)
from kumo.model.statistics import Histogram, counter, gauge, info, record
from kumo.runtime.admin_gate import AdminGateStatistics
from kumo.runtime.broadcaster import BroadcasterStatistics
from kumo.runtime.connection_leases import LeaseStatistics
from kumo.runtime.delivery import DispatcherStatistics
from kumo.runtime.delivery_log import DeliveryLogStatistics
from kumo.runtime.engine import EngineStatistics
from kumo.runtime.fleet import FleetStatistics
from kumo.runtime.log_writer import LogStatistics
from kumo.runtime.message_rates import MessageRateStatistics
from kumo.runtime.queue_actor import ActorStatistics
from kumo.runtime.smtp_listener import SmtpListenerStatistics
from kumo.runtime.snapshotter import SnapshotStatistics
from kumo.runtime.wal_checkpointer import CheckpointStatistics

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"

T = TypeVar("T")


@attrs.frozen
class LogStats:
    commits: int = counter("Commits.")
    healthy: bool = gauge("Whether the log is healthy.")


@attrs.frozen
class Stats:
    received_total: int = counter("Received.")
    bounced_total: int = counter("Bounced.")
    queues: int = gauge("Queues.")
    log: LogStats = record("The log.")
    name: str = info("A name.")


def samples_of(page_text: str) -> list[str]:
    return [line for line in page_text.splitlines() if not line.startswith("#")]


def engine_statistics() -> EngineStatistics:
    latency = Histogram.empty().observe(0.0004).observe(0.003).observe(0.003)
    return EngineStatistics(
        received_total=1048,
        bounced_total=1002,
        delivered_total=40,
        failed_total=2,
        expired_total=1,
        transient_failures_total=12,
        rebound_total=4,
        injected=5,
        queued_total=46,
        queues=3,
        live_rules=3,
        log=LogStatistics(1054, 1054, 1, 1, 5, 0, 0, 0, 5, 0, 0, latency, False, 7, 2, 20),
        broadcaster=BroadcasterStatistics(1054, 3, 0, 5, 1),
        delivery_log=DeliveryLogStatistics(1054, 5, 3325, 1, "00000000000000000001.jsonl"),
        wal=CheckpointStatistics(12, 40, 0),
        snapshots=SnapshotStatistics(1000, 1, 0, 0.25, 123456, 900, 300),
        fleet=FleetStatistics.off(),
        leases=LeaseStatistics.off(),
        message_rates=MessageRateStatistics.off(),
        admin_gate=AdminGateStatistics(closed=1, closures=7, waits=31, gave_way=5),
    )


def actor(queue: str, **fields: int | bool) -> ActorStatistics:
    defaults: dict[str, int | bool] = {
        "queued": 0,
        "live_rules": 0,
        "mailbox_used": 0,
        "lagging": False,
        "catch_ups": 0,
        "processed_seq": 0,
        "bounced": 0,
        "waiting": 0,
        "handed": 0,
    }
    return ActorStatistics(queue=queue, **{**defaults, **fields})  # type: ignore[arg-type]


def test_label_escaping() -> None:
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    assert escape_label_value("camp:tenant@example.com!mx") == "camp:tenant@example.com!mx"


def test_page() -> None:
    page_text = render_metrics(
        {"example.com": 3, 'we"ird\\q\n': 1, "c:t@a.org": 2},
        Stats(received_total=10, bounced_total=4, queues=3, log=LogStats(7, True), name="x"),
    )
    assert page_text.endswith("\n")
    lines = page_text.splitlines()
    samples = samples_of(page_text)
    assert samples[:7] == [
        'scheduled_count{queue="c:t@a.org"} 2',
        'scheduled_count{queue="example.com"} 3',
        'scheduled_count{queue="we\\"ird\\\\q\\n"} 1',
        "total_messages_received 10",
        "total_messages_bounced 4",
        "kumo_engine_queues 3",
        "kumo_engine_log_commits 7",
    ]
    # A bool is a gauge of 0 or 1; a string an info family.
    assert samples[7:9] == ["kumo_engine_log_healthy 1", 'kumo_engine_name_info{name="x"} 1']
    assert "# TYPE scheduled_count gauge" in lines
    assert "# TYPE total_messages_received counter" in lines
    assert "# TYPE total_messages_bounced counter" in lines
    assert "# TYPE kumo_engine_queues gauge" in lines
    assert "# TYPE kumo_engine_log_commits counter" in lines
    assert "# TYPE kumo_engine_name_info gauge" in lines
    # The help texts are the records' declarations.
    assert "# HELP total_messages_received Received." in lines
    assert "# HELP kumo_engine_log_commits Commits." in lines
    # Every sample's family is declared before it.
    declared: dict[str, str] = {}
    for line in lines:
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            declared[name] = kind
        elif not line.startswith("#"):
            name = line.split("{")[0].split(" ")[0]
            histogram = re.sub(r"_(bucket|count|sum)$", "", name)
            assert name in declared or declared.get(histogram) == "histogram", line


def test_empty_engine_and_float_values() -> None:
    @attrs.frozen
    class Plain:
        received_total: int = counter("Received.")
        bounced_total: int = counter("Bounced.")
        depth: float = gauge("Depth.")

    page_text = render_metrics({}, Plain(0, 0, 1.5))
    assert samples_of(page_text) == [
        "total_messages_received 0",
        "total_messages_bounced 0",
        "kumo_engine_depth 1.5",
    ]
    assert "scheduled_count{" not in page_text


def test_a_record_without_declarations_is_refused() -> None:
    @attrs.frozen
    class Undeclared:
        received_total: int

    @dataclasses.dataclass
    class Dataclass:
        received_total: int = 0

    for statistics in (Undeclared(1), Dataclass(), object()):
        with pytest.raises(TypeError, match=r"statistics record|declares no kind"):
            render_metrics({}, statistics)


def test_the_engine_page_reads_as_prometheus_text() -> None:
    latency = AdminLatency()
    latency.observe("/api/admin/bounce/v1", "GET", 0.004)
    latency.observe("/api/admin/bounce/v1", "GET", 0.03)
    latency.observe("/api/admin/bounce/v1", "POST", 0.002)
    page_text = render_metrics(
        {"example.com": 2},
        engine_statistics(),
        [actor("example.com", mailbox_used=3, catch_ups=2, bounced=5, lagging=True)],
        latency.snapshot(),
    )
    families = {family.name: family for family in text_string_to_metric_families(page_text)}
    assert families["total_messages_received"].type == "counter"
    assert families["kumo_engine_log_last_seq"].type == "gauge"
    assert families["kumo_engine_log_commits"].type == "counter"
    assert families["kumo_engine_delivery_log_segment_info"].type == "gauge"
    commit = families["kumo_engine_log_commit_seconds"]
    assert commit.type == "histogram"
    values = {(s.name, s.labels.get("le")): s.value for s in commit.samples}
    assert values[("kumo_engine_log_commit_seconds_bucket", "0.0005")] == 1
    assert values[("kumo_engine_log_commit_seconds_bucket", "0.005")] == 3
    assert values[("kumo_engine_log_commit_seconds_bucket", "+Inf")] == 3
    assert values[("kumo_engine_log_commit_seconds_count", None)] == 3
    assert values[("kumo_engine_log_commit_seconds_sum", None)] == pytest.approx(0.0064)
    admin = families["kumo_admin_request_seconds"]
    counts = {
        (s.labels["route"], s.labels["method"]): s.value
        for s in admin.samples
        if s.name.endswith("_count")
    }
    assert counts == {("/api/admin/bounce/v1", "GET"): 2, ("/api/admin/bounce/v1", "POST"): 1}
    samples = samples_of(page_text)
    assert 'kumo_actor_mailbox_used{queue="example.com"} 3' in samples
    assert 'kumo_actor_lagging{queue="example.com"} 1' in samples
    assert 'kumo_actor_catch_ups{queue="example.com"} 2' in samples
    assert 'kumo_actor_bounced{queue="example.com"} 5' in samples
    assert "# TYPE kumo_actor_catch_ups counter" in page_text.splitlines()
    assert "# TYPE kumo_actor_mailbox_used gauge" in page_text.splitlines()
    assert "kumo_engine_admin_gate_closed 1" in samples
    assert families["kumo_engine_admin_gate_waits"].type == "counter"


def test_actor_series_are_sorted_and_share_escaping() -> None:
    names = ["b.example", 'q"uote', "a.example"]
    page_text = render_metrics(
        dict.fromkeys(names, 1), engine_statistics(), [actor(n, bounced=1) for n in names]
    )
    bounced = [s for s in samples_of(page_text) if s.startswith("kumo_actor_bounced")]
    assert bounced == [
        'kumo_actor_bounced{queue="a.example"} 1',
        'kumo_actor_bounced{queue="b.example"} 1',
        'kumo_actor_bounced{queue="q\\"uote"} 1',
    ]


def test_documented_metrics_are_the_page() -> None:
    """docs/operations.md lists every family of the page, with its type."""
    # A ready queue with a max_message_rate, whose family only such queues have.
    throttled = attrs.evolve(dispatcher(), message_rate="10/s")
    page_text = render_metrics(
        {"a": 1}, engine_statistics(), [actor("a")], {}, dispatchers=[throttled]
    )
    on_page = {
        match.group(1): match.group(2)
        for match in re.finditer(r"^# TYPE (\S+) (\S+)$", page_text, re.MULTILINE)
    }
    documented: dict[str, str] = {}
    for row in re.finditer(r"^\| (`.*?) \| (\w+) \|", OPERATIONS.read_text(), re.MULTILINE):
        for name in re.findall(r"`([a-z_]+)(?:\{[^`]*\})?`", row.group(1)):
            documented[name] = row.group(2)
    assert documented == on_page


async def test_each_app_has_its_own_registry() -> None:
    class Engine:
        def __init__(self, received: int) -> None:
            self.received = received

        def queue_counts(self) -> dict[str, int]:
            return {}

        def statistics(self) -> Stats:
            return Stats(self.received, 0, 0, LogStats(0, True), "n")

        def actor_statistics(
            self, start: int = 0, stop: int | None = None
        ) -> list[ActorStatistics]:
            return []

        def dispatcher_statistics(
            self, start: int = 0, stop: int | None = None
        ) -> list[DispatcherStatistics]:
            return []

    before = list(REGISTRY.collect())
    one = metrics_registry(Engine(1), AdminLatency())
    two = metrics_registry(Engine(2), AdminLatency())
    assert "total_messages_received 1\n" in page(one).decode()
    assert "total_messages_received 2\n" in page(two).decode()
    assert [family.name for family in REGISTRY.collect()] == [family.name for family in before]


def test_ten_thousand_queues() -> None:
    names = [f"camp{n}:tenant@domain{n}.example" for n in range(10_000)]
    scrape = Scrape(
        dict.fromkeys(names, 7), engine_statistics(), [actor(name, queued=7) for name in names]
    )
    text = exposition(metric_families(scrape)).decode()
    assert sum(line.startswith("scheduled_count{") for line in text.splitlines()) == 10_000
    assert sum(line.startswith("kumo_actor_") for line in text.splitlines()) == 40_000


def test_queue_series_make_samples_on_demand() -> None:
    [scheduled, *_] = metric_families(Scrape({"b": 2, "a": 1}, engine_statistics()))
    assert scheduled.samples == [
        Sample("scheduled_count", {"queue": "a"}, 1),
        Sample("scheduled_count", {"queue": "b"}, 2),
    ]


def test_a_scrape_reads_the_actors_a_slice_at_a_time() -> None:
    """Each read runs on the event loop; between them the loop serves others."""

    class ManyActors:
        def queue_counts(self) -> dict[str, int]:
            return {}

        def statistics(self) -> Stats:
            return Stats(0, 0, 0, LogStats(0, True), "n")

        def actor_statistics(
            self, start: int = 0, stop: int | None = None
        ) -> list[ActorStatistics]:
            every = [ActorStatistics(f"q{n}", n, 0, 0, False, 0, 0, 0, n, 0) for n in range(1_234)]
            return every[start:stop]

        def dispatcher_statistics(
            self, start: int = 0, stop: int | None = None
        ) -> list[DispatcherStatistics]:
            return []

    reads: list[object] = []

    def on_loop(read: Callable[[], T], /) -> T:
        reads.append(read)
        return read()

    scrape = read_scrape(ManyActors(), AdminLatency(), on_loop)
    assert [actor.queue for actor in scrape.actors] == [f"q{n}" for n in range(1_234)]
    assert len(reads) == 1 + -(-1_234 // ACTORS_PER_READ)


# -- KumoMTA's service families -------------------------------------------------------

READY_QUEUE = "unspecified->mx_list:127.0.0.1:2600@smtp_client"


def dispatcher(ready_queue: str = READY_QUEUE, **fields: int) -> DispatcherStatistics:
    defaults = {
        "ready": 0,
        "connections": 0,
        "in_flight": 0,
        "delivered": 0,
        "transient_failures": 0,
        "failed": 0,
        "connection_limited": 0,
        "rate_delayed": 0,
    }
    return DispatcherStatistics(ready_queue=ready_queue, message_rate="", **{**defaults, **fields})


LISTENER = SmtpListenerStatistics(
    address="127.0.0.1:2025",
    sessions=2,
    connections=10,
    refused=0,
    messages_received=9,
    rejections=1,
)


def test_the_service_families_as_kumomta_names_them() -> None:
    page_text = render_metrics(
        {"example.com": 5},
        engine_statistics(),
        [actor("example.com", queued=5, handed=4)],
        dispatchers=[
            dispatcher(ready=3, connections=1, in_flight=1, delivered=7, transient_failures=2),
            dispatcher("unspecified->(a|b).example.net@smtp_client", connections=2, failed=1),
        ],
        listener=LISTENER,
    )
    samples = [line for line in samples_of(page_text) if not line.startswith("kumo_")]
    net = "smtp_client:unspecified->(a|b).example.net@smtp_client"
    mx_list = f"smtp_client:{READY_QUEUE}"
    assert samples == [
        # Held 5, of which 4 are ready or in a connection.
        'scheduled_count{queue="example.com"} 1',
        "total_messages_received 1048",
        'total_messages_received{service="esmtp_listener"} 9',
        'total_messages_received{service="esmtp_listener:127.0.0.1:2025"} 9',
        'total_messages_received{service="http_listener"} 5',
        "total_messages_bounced 1002",
        'ready_count{service="smtp_client"} 3',
        f'ready_count{{service="{net}"}} 0',
        f'ready_count{{service="{mx_list}"}} 3',
        'connection_count{service="smtp_client"} 3',
        'connection_count{service="esmtp_listener"} 2',
        f'connection_count{{service="{net}"}} 2',
        f'connection_count{{service="{mx_list}"}} 1',
        # The global rows are the engine's, since the log began; the others this process's.
        'total_messages_delivered{service="smtp_client"} 40',
        f'total_messages_delivered{{service="{net}"}} 0',
        f'total_messages_delivered{{service="{mx_list}"}} 7',
        'total_messages_transfail{service="smtp_client"} 12',
        f'total_messages_transfail{{service="{net}"}} 0',
        f'total_messages_transfail{{service="{mx_list}"}} 2',
        'total_messages_fail{service="smtp_client"} 2',
        f'total_messages_fail{{service="{net}"}} 1',
        f'total_messages_fail{{service="{mx_list}"}} 0',
    ]
    lines = page_text.splitlines()
    for name, kind, help_text in [
        ("ready_count", "gauge", "number of messages in the ready queue"),
        ("connection_count", "gauge", "number of active connections"),
        ("total_messages_delivered", "counter", "total number of messages ever delivered"),
        (
            "total_messages_transfail",
            "counter",
            "total number of message delivery attempts that transiently failed",
        ),
        (
            "total_messages_fail",
            "counter",
            "total number of message delivery attempts that permanently failed",
        ),
    ]:
        assert f"# HELP {name} {help_text}" in lines
        assert f"# TYPE {name} {kind}" in lines
    # Exported under KumoMTA's names only.
    assert not any(
        line.startswith(("kumo_engine_delivered", "kumo_engine_failed", "kumo_engine_inject"))
        for line in samples_of(page_text)
    )
    assert "kumo_engine_expired_total 1" in samples_of(page_text)


def test_the_page_parses_and_every_family_is_declared_once() -> None:
    page_text = render_metrics(
        {"example.com": 5},
        engine_statistics(),
        [actor("example.com")],
        dispatchers=[dispatcher(ready=1)],
        listener=LISTENER,
    )
    families = [family.name for family in text_string_to_metric_families(page_text)]
    assert len(families) == len(set(families))
    assert {"ready_count", "connection_count", "total_messages_fail"} <= set(families)


def test_an_idle_mail_path_still_has_its_global_rows() -> None:
    samples = samples_of(render_metrics({}, engine_statistics()))
    assert 'ready_count{service="smtp_client"} 0' in samples
    assert 'connection_count{service="smtp_client"} 0' in samples
    assert 'total_messages_received{service="http_listener"} 5' in samples
    assert not any("esmtp_listener" in line for line in samples)


def test_scheduled_count_leaves_out_what_a_queue_handed_over() -> None:
    scrape = Scrape(
        {"a.example": 5, "b.example": 2, "c.example": 1},
        engine_statistics(),
        # b's actor saw a message leave that the counts (read first) still hold.
        [actor("a.example", handed=2), actor("b.example", handed=3)],
    )
    [scheduled, *_] = metric_families(scrape)
    assert scheduled.samples == [
        Sample("scheduled_count", {"queue": "a.example"}, 3),
        Sample("scheduled_count", {"queue": "b.example"}, 0),
        Sample("scheduled_count", {"queue": "c.example"}, 1),
    ]


def test_json_is_kumomtas_shape() -> None:
    latency = AdminLatency()
    latency.observe("/api/admin/bounce/v1", "GET", 0.004)
    scrape = Scrape(
        {"example.com": 2},
        engine_statistics(),
        [actor("example.com")],
        latency.snapshot(),
        [dispatcher(ready=1, delivered=3)],
        LISTENER,
    )
    document = orjson.loads(json_exposition(metric_families(scrape)))
    # One label: {label: {value: number}}.
    assert document["scheduled_count"] == {
        "help": "Messages waiting in a scheduled queue.",
        "type": "gauge",
        "value": {"queue": {"example.com": 2}},
    }
    assert document["ready_count"] == {
        "help": "number of messages in the ready queue",
        "type": "gauge",
        "value": {"service": {"smtp_client": 1, f"smtp_client:{READY_QUEUE}": 1}},
    }
    # The total since the log began is on the text page only: KumoMTA's readers
    # expect the service map.
    assert document["total_messages_received"]["value"] == {
        "service": {
            "esmtp_listener": 9,
            "esmtp_listener:127.0.0.1:2025": 9,
            "http_listener": 5,
        }
    }
    # No label: the number.
    assert document["total_messages_bounced"] == {
        "help": "Messages bounced by an administrator.",
        "type": "counter",
        "value": 1002,
    }
    assert document["kumo_engine_delivery_log_segment_info"]["value"] == {
        "segment": {"00000000000000000001.jsonl": 1}
    }
    # A histogram: count, sum, avg and the buckets without +Inf.
    commit = document["kumo_engine_log_commit_seconds"]
    assert commit["type"] == "histogram"
    assert commit["value"]["count"] == 3
    assert commit["value"]["sum"] == pytest.approx(0.0064)
    assert commit["value"]["avg"] == pytest.approx(0.0064 / 3)
    assert commit["value"]["bucket"][:4] == [[0.0005, 1], [0.001, 1], [0.002, 1], [0.005, 3]]
    assert len(commit["value"]["bucket"]) == 14
    # Two labels: a list of objects, the value under "@".
    [request] = document["kumo_admin_request_seconds"]["value"]
    assert request["route"] == "/api/admin/bounce/v1"
    assert request["method"] == "GET"
    assert request["@"]["count"] == 1
    # Every family of the text page is a key, in the page's order.
    text_families = re.findall(
        r"^# TYPE (\S+) ", exposition(metric_families(scrape)).decode(), re.MULTILINE
    )
    assert list(document) == text_families


def test_json_of_a_family_without_samples_is_null() -> None:
    document = orjson.loads(json_exposition(metric_families(Scrape({}, engine_statistics()))))
    assert document["kumo_admin_request_seconds"]["value"] is None
    assert document["scheduled_count"]["value"] is None


@pytest.mark.parametrize(("count", "hops"), [(0, 2), (3, 2), (ACTORS_PER_READ, 3), (1_234, 4)])
def test_a_scrape_reads_the_first_dispatchers_with_the_counters(count: int, hops: int) -> None:
    """The global rows and the first ready queues' are of one moment; more than a hop
    reads come a slice at a time (then the actors, in one hop here)."""

    class ManyDispatchers:
        def queue_counts(self) -> dict[str, int]:
            return {}

        def statistics(self) -> Stats:
            return Stats(0, 0, 0, LogStats(0, True), "n")

        def actor_statistics(
            self, start: int = 0, stop: int | None = None
        ) -> list[ActorStatistics]:
            return []

        def dispatcher_statistics(
            self, start: int = 0, stop: int | None = None
        ) -> list[DispatcherStatistics]:
            every = [dispatcher(f"q{n}", ready=n) for n in range(count)]
            return every[start:stop]

    reads: list[object] = []

    def on_loop(read: Callable[[], T], /) -> T:
        reads.append(read)
        return read()

    scrape = read_scrape(ManyDispatchers(), AdminLatency(), on_loop)
    assert [d.ready_queue for d in scrape.dispatchers] == [f"q{n}" for n in range(count)]
    assert len(reads) == hops

"""``kumo serve`` as a process: binding, printing its URL, stopping cleanly on signals."""

from __future__ import annotations

import gc
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing
from click.testing import CliRunner

from kumo.cli.kumo import kumod, main
from kumo.cli.serve import (
    GC_SERVING_THRESHOLDS,
    GC_THRESHOLDS,
    SWITCH_INTERVAL,
    ListenError,
    collect_young,
    resolve_config,
    run_server,
    serving_started,
    tune_for_serving,
)
from kumo.config import Config, SmtpListenerSettings
from kumo.http.routes import BOUNCE_PATH, INJECT_PATH, LIVENESS_PATH, METRICS_PATH
from kumo.model.events import MessageReceived
from kumo.model.prometheus_text import parse_samples
from kumo.runtime.engine import open_engine
from kumo.store.archive import history_cut
from kumo.store.data_dir import open_event_log
from kumo.store.integrity import PARTS
from kumo.store.layout import ARCHIVE, DATABASE, LOGS, SNAPSHOTS
from kumo.store.snapshots import take_snapshot
from tests.history_days import DAY, days_of_history
from tests.live_server import (
    ServerProcess,
    build_queued,
    delivery_records,
    running_server,
    start_server,
    wait_until,
)
from tests.page_damage import build_store, damage

NO_SMTP = SmtpListenerSettings(listen=None)
"""In-process servers listen for HTTP only: the SMTP default port is one per machine."""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_on_a_free_port_and_exits_0_on_signal(tmp_path: Path, sig: int) -> None:
    server = start_server(tmp_path / "data")
    try:
        assert server.url.startswith("http://127.0.0.1:")
        port = int(server.url.rsplit(":", 1)[1])
        assert port > 0
        reply = httpx.get(f"{server.url}{LIVENESS_PATH}")
        assert (reply.status_code, reply.text) == (200, "OK")
    finally:
        status = server.stop(sig)
    assert status == 0, server.stderr_text()
    assert (tmp_path / "data" / "logs").is_dir()


def test_stops_with_an_idle_keep_alive_connection_open(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    with httpx.Client() as client:  # keeps its connection open
        assert client.get(f"{server.url}{LIVENESS_PATH}").status_code == 200
        assert server.stop(timeout=10) == 0


def test_ipv6_loopback(tmp_path: Path) -> None:
    try:
        server = start_server(tmp_path / "data", host="::1")
    except AssertionError as error:
        pytest.skip(f"no IPv6 loopback here: {error}")
    try:
        assert server.url.startswith("http://[::1]:")
        assert httpx.get(f"{server.url}{METRICS_PATH}").status_code == 200  # ::1 is trusted
    finally:
        assert server.stop() == 0


def test_help_shows_the_defaults() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    assert "127.0.0.1:8000" in result.output
    assert "./kumo-data" in result.output
    assert "--config" in result.output


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--listen", "nowhere"], "not HOST:PORT"),
        (["--listen", "127.0.0.1:70000"], "over 65535"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], why: str) -> None:
    result = CliRunner().invoke(main, ["serve", *args])
    assert result.exit_code == 2
    assert why in result.output


def test_bad_config_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "kumo.toml"
    path.write_text("trusted_hosts = ['somewhere']\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "kumo.cli.serve", "--config", str(path), "--smtp-listen", "off"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "trusted_hosts" in result.stderr


def test_options_win_over_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "kumo.toml"
    path.write_text('data_dir = "d"\nlisten = "127.0.0.1:1"\nbody_limit = 10\n', "utf-8")
    from_file = resolve_config(listen=None, data_dir=None, config_path=path)
    assert (from_file.listen, from_file.data_dir, from_file.body_limit) == (
        "127.0.0.1:1",
        tmp_path / "d",
        10,
    )
    both = resolve_config(listen="[::1]:0", data_dir=Path("x"), config_path=path)
    assert (both.listen, both.data_dir, both.body_limit) == ("[::1]:0", Path("x"), 10)
    defaults = resolve_config(listen=None, data_dir=None, config_path=None)
    assert (defaults.listen, defaults.data_dir) == ("127.0.0.1:8000", Path("kumo-data"))


def test_body_limit_from_config_is_enforced(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", config="body_limit = 100\n")
    try:
        body = b'{"reason": "' + b"x" * 100 + b'"}'
        reply = httpx.post(
            f"{server.url}{BOUNCE_PATH}",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert reply.status_code == 413
    finally:
        assert server.stop() == 0


def test_sigterm_mid_traffic_loses_no_acknowledged_message(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    acknowledged: list[int] = []
    statuses: set[int] = set()
    body = {
        "envelope_sender": "s@example.com",
        "recipients": [{"email": f"r{i}@load.example"} for i in range(5)],
        "content": "Subject: load\r\n\r\nx",
    }

    def traffic() -> None:
        with httpx.Client(timeout=30) as client:
            while True:
                try:
                    reply = client.post(f"{server.url}{INJECT_PATH}", json=body)
                except httpx.TransportError:
                    return  # the server stopped listening
                statuses.add(reply.status_code)
                if reply.status_code != 200:
                    return
                acknowledged.append(reply.json()["success_count"])

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(acknowledged) >= 20)
    assert server.stop() == 0, server.stderr_text()
    for thread in threads:
        thread.join(30)
    assert statuses <= {200, 503}
    server = start_server(data)
    try:
        page = httpx.get(f"{server.url}{METRICS_PATH}").text
    finally:
        assert server.stop() == 0
    # The unlabelled total (since the log began), not a listener's row (since the start).
    [received] = [
        s.value for s in parse_samples(page) if s.name == "total_messages_received" and not s.labels
    ]
    # A request in flight when the server stopped may be durable without an answer.
    assert int(received) >= sum(acknowledged)


async def test_run_server_in_process_until_stop_is_set(tmp_path: Path) -> None:
    stop = trio.Event()
    config = Config(listen="127.0.0.1:0", data_dir=tmp_path / "data", smtp_listener=NO_SMTP)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(partial(run_server, config, stop=stop))
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"{url}{LIVENESS_PATH}")
        assert (reply.status_code, reply.text) == (200, "OK")
        stop.set()
    assert (tmp_path / "data" / "events.sqlite3").exists()


@contextmanager
def occupied_port() -> Iterator[int]:
    """A loopback port on which another socket listens."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def serve_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kumo.cli.serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with occupied_port() as port:
        result = serve_process(
            "--listen", f"127.0.0.1:{port}", "--data-dir", str(data), "--smtp-listen", "127.0.0.1:0"
        )

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"kumo: cannot listen on 127.0.0.1:{port}: address already in use\n"
    # The engine had opened the directory: it closed it cleanly (the WAL checkpointed away).
    assert (data / DATABASE).exists()
    assert not (data / f"{DATABASE}-wal").exists()


async def test_run_server_on_a_port_in_use_raises_listen_error_after_a_clean_close(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with occupied_port() as port:
        config = Config(listen=f"127.0.0.1:{port}", data_dir=data, smtp_listener=NO_SMTP)
        why = f"^cannot listen on 127.0.0.1:{port}: address already in use$"
        with pytest.RaisesGroup(pytest.RaisesExc(ListenError, match=why), flatten_subgroups=True):
            await run_server(config)

    assert not (data / f"{DATABASE}-wal").exists()
    async with open_engine(data):  # nothing of the first engine is left holding it
        pass


def test_a_data_directory_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    try:
        result = serve_process(
            "--listen", "127.0.0.1:0", "--data-dir", str(data), "--smtp-listen", "127.0.0.1:0"
        )
    finally:
        assert server.stop() == 0

    assert result.returncode == 1
    assert result.stdout == ""
    pid = server.process.pid
    assert result.stderr == (
        f"kumo: data directory {data} is in use by another kumo process (pid {pid})\n"
    )


@pytest.mark.parametrize(
    ("args", "status"),
    [(["--help"], 0), (["--listen", "nowhere"], 2)],
)
def test_kumod_is_serve_under_its_own_name(
    args: list[str],
    status: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "argv", ["kumod", *args])

    with pytest.raises(SystemExit) as exited:
        kumod()

    assert exited.value.code == status
    output = capsys.readouterr()
    text = output.out + output.err
    assert text.startswith("Usage: kumod [OPTIONS]\n")
    assert "kumod serve" not in text
    if status == 0:
        assert "--listen" in text
        assert "--data-dir" in text


def test_a_log_lost_behind_its_snapshot_is_one_line_and_exit_1(tmp_path: Path) -> None:
    # Issue 12: a zero-byte events.sqlite3 was served as a fresh log, its history gone.
    data = tmp_path / "data"
    data.mkdir()
    store = open_event_log(data)
    store.commit(
        [MessageReceived(f"{n:032x}", "a.com", "s@x", "r@a.com", 10) for n in range(5)],
        time=1,
        bodies={},
    )
    store.close()
    take_snapshot(data)
    for path in data.glob(f"{DATABASE}*"):
        path.unlink()
    (data / DATABASE).write_bytes(b"")

    result = serve_process("--listen", "127.0.0.1:0", "--data-dir", str(data))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "kumo: event log corrupt at seq 1: the log ends at seq 0 but snapshot "
        f"{5:020d}.snapshot was taken at seq 5: events 1..5 are missing from the log "
        "(restore the data directory from a backup)\n"
    )


def test_a_damaged_base_without_a_usable_snapshot_is_one_line_and_exit_1(tmp_path: Path) -> None:
    days_of_history(tmp_path, 5, retention=2 * DAY)
    cut = history_cut(tmp_path / ARCHIVE)
    assert cut is not None
    cut.path.write_bytes(cut.path.read_bytes()[:-1])
    shutil.rmtree(tmp_path / SNAPSHOTS)

    result = serve_process("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"kumo: archive segment {cut.path.name} unreadable: ")
    assert result.stderr.count("\n") == 1


def test_a_log_that_cannot_be_opened_is_one_line_and_exit_1(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / DATABASE).write_bytes(b"this is not a database, and long enough to tell" * 100)

    result = serve_process("--listen", "127.0.0.1:0", "--data-dir", str(data))

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (f"kumo: cannot open the event log in {data}: file is not a database\n")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("spool", "internal"),
        ("events", "internal"),
        ("sqlite_autoindex_events_1", "leaf"),
        ("meta", "leaf"),
    ],
)
def test_a_damaged_page_is_refused_at_start_in_one_line(
    tmp_path: Path, name: str, kind: str
) -> None:
    # Issue 12: a damaged interior page of the spool was served (a bounce accepted, then
    # the server stopped listening and exited 30 s later, at every start); a damaged
    # events table was refused with a 70-line traceback.
    data = tmp_path / "data"
    build_store(data / DATABASE)
    page = damage(data / DATABASE, name, kind)

    result = serve_process(
        "--listen", "127.0.0.1:0", "--smtp-listen", "off", "--data-dir", str(data)
    )

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        f"kumo: the event log {data / DATABASE} is damaged: {PARTS[name]}: "
    )
    assert f" {page}" in result.stderr
    assert result.stderr.endswith(
        f"; run `kumo replay --verify --data-dir {data}` for the whole report, and restore "
        "the data directory from a backup\n"
    )


def test_a_truncated_delivery_log_checkpoint_is_one_line_and_rebuilt(tmp_path: Path) -> None:
    # Issue 12: a truncated checkpoint.json killed serve with a raw JSON traceback.
    data = tmp_path / "data"
    body = {
        "envelope_sender": "s@example.com",
        "recipients": [{"email": f"r{i}@a.example"} for i in range(3)],
        "content": "Subject: x\r\n\r\nx",
    }
    with running_server(data) as url:
        assert httpx.post(f"{url}{INJECT_PATH}", json=body).status_code == 200
        wait_until(lambda: len(delivery_records(data)) == 3)
    checkpoint = data / LOGS / "checkpoint.json"
    checkpoint.write_bytes(checkpoint.read_bytes()[:15])

    server = start_server(data)
    try:
        assert httpx.post(f"{server.url}{INJECT_PATH}", json=body).status_code == 200
        wait_until(lambda: len(delivery_records(data)) == 6)
    finally:
        assert server.stop() == 0
    stderr = server.stderr_text()
    assert "Traceback" not in stderr
    # (A shutdown stage may mention the delivery log too: "... delivery log at seq ...".)
    [line] = [line for line in stderr.splitlines() if line.startswith("kumo: delivery log:")]
    assert line.startswith("kumo: delivery log: logs/checkpoint.json is unreadable (not JSON: ")
    assert "rebuilt from the segments" in line
    result = CliRunner().invoke(main, ["replay", "--verify", "--data-dir", str(data)])
    assert result.exit_code == 0, result.output


# -- repeated signals (kumo.cli.shutdown) ---------------------------------------------

QUEUED = 40_000
"""Messages in a busy data directory: its server has a second or more of work under
way when it is stopped (their Reception records, then the sweep of all of them)."""


@pytest.fixture(scope="module")
def busy_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("busy") / "data"
    build_queued(data, QUEUED)
    return data


@pytest.fixture
def busy(busy_template: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(busy_template, data)
    return data


def stopping_with_work_under_way(data: Path, sig: int) -> ServerProcess:
    """A server on ``data`` that sweeps every queued message, sent ``sig`` once and
    closing its engine, the sweep not done."""
    server = start_server(data)
    reply = httpx.post(f"{server.url}{BOUNCE_PATH}", json={"reason": "everything"})
    assert reply.status_code == 200, reply.text
    server.process.send_signal(sig)
    wait_until(lambda: "kumo: closing the engine: waiting" in server.stderr_text())
    return server


def assert_the_next_start_finishes_the_work(data: Path) -> None:
    server = start_server(data)
    try:

        def finished() -> bool:
            samples = parse_samples(httpx.get(f"{server.url}{METRICS_PATH}").text)
            value = {s.name: s.value for s in samples if not s.labels}
            return value["total_messages_bounced"] == QUEUED and (
                value["kumo_engine_delivery_log_position"] == value["kumo_engine_log_last_seq"]
            )

        wait_until(finished, timeout=60)
    finally:
        assert server.stop() == 0, server.stderr_text()
    verify = CliRunner().invoke(main, ["replay", "--verify", "--data-dir", str(data)])
    assert verify.exit_code == 0, verify.output
    assert f"{QUEUED:,} Reception + {QUEUED:,} AdminBounce records" in verify.output


def test_a_second_signal_stops_waiting_closes_the_store_and_exits_0(busy: Path) -> None:
    # SIGINT once hung for the whole engine deadline (30 s), then printed a traceback
    # and exited 1; a second SIGTERM killed the server (143). The third-signal test
    # below sends SIGTERM twice on the way.
    server = stopping_with_work_under_way(busy, signal.SIGINT)
    status = server.stop(signal.SIGINT, timeout=20)
    text = server.stderr_text()

    assert status == 0, text
    assert "Traceback" not in text
    assert text.splitlines() == [
        "kumo: SIGINT: stopping gracefully (a second signal stops waiting, a third exits at once)",
        "kumo: no longer accepting connections; waiting up to 1 s for requests in flight",
        text.splitlines()[2],  # what the engine waits for: below
        "kumo: SIGINT again: not waiting any longer; closing the store (requests in flight "
        "are dropped, work under way is left to the next start)",
        "kumo: the engine closed before its work under way was done; the next start finishes it",
        "kumo stopped",
    ]
    assert text.splitlines()[2].startswith(
        "kumo: closing the engine: waiting up to 30 s for work under way ("
    )
    assert not (busy / f"{DATABASE}-wal").exists()  # the store was closed cleanly
    assert_the_next_start_finishes_the_work(busy)


def test_a_third_signal_exits_at_once_with_status_3(busy: Path) -> None:
    server = stopping_with_work_under_way(busy, signal.SIGTERM)
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "SIGTERM again" in server.stderr_text())
    status = server.stop(signal.SIGTERM, timeout=10)
    text = server.stderr_text()

    assert status == 3, text
    assert "Traceback" not in text
    assert text.splitlines()[-1] == (
        "kumo: SIGTERM a third time: exiting now with status 3, store not closed "
        "(nothing acknowledged is lost: the next start recovers)"
    )
    assert_the_next_start_finishes_the_work(busy)


def test_a_second_signal_drops_a_request_in_flight_at_once(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as client:
        # A request whose body never ends holds the first stop for GRACEFUL_TIMEOUT.
        client.sendall(
            f"POST {BOUNCE_PATH} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n{".encode()
        )
        wait_until(lambda: httpx.get(f"{server.url}{LIVENESS_PATH}").status_code == 200)
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "waiting up to 1 s for requests in flight" in server.stderr_text())
        status = server.stop(signal.SIGTERM, timeout=10)
    text = server.stderr_text()
    assert status == 0, text
    assert "SIGTERM again" in text
    assert "closing the engine without waiting for work under way" in text
    assert text.endswith("kumo stopped\n")


def test_the_collector_is_tuned_for_the_start_then_for_serving() -> None:
    thresholds, interval = gc.get_threshold(), sys.getswitchinterval()
    try:
        tune_for_serving()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        kept = [[n] for n in range(3)]  # what a replay built (tracked objects)
        serving_started()
        assert gc.get_threshold() == GC_SERVING_THRESHOLDS
        assert gc.get_freeze_count() > len(kept)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        sys.setswitchinterval(interval)


async def test_young_collections_run_every_period_whatever_the_thresholds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    before = gc.get_stats()[0]["collections"]
    with trio.move_on_after(1.1):
        await collect_young(0.25)
    assert gc.get_stats()[0]["collections"] - before >= 4

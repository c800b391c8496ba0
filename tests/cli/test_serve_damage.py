"""``kumo serve`` on a store that is damaged while it serves (issue 12): the write that
meets the damage and every later one get a 503 that says why, reads and ``/metrics``
go on, and a SIGTERM stops the server at once, cleanly."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from kumo.http.routes import BOUNCE_PATH, INJECT_PATH, METRICS_PATH
from kumo.store.layout import DATABASE
from tests.live_server import start_server
from tests.page_damage import build_store, damage


def test_a_store_damaged_while_serving_stops_writes_and_keeps_reads(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    build_store(data_dir / DATABASE)
    server = start_server(data_dir, smtp=False)
    try:
        damage(data_dir / DATABASE, "spool", "internal")
        body = {
            "envelope_sender": "s@example.net",
            "recipients": [{"email": "r@example.com"}],
            "content": "Subject: x\r\n\r\nx\r\n",
        }
        refused = httpx.post(server.url + INJECT_PATH, json=body)
        assert refused.status_code == 503
        assert "the event log's store is damaged" in refused.text
        assert "SQLITE_CORRUPT" in refused.text
        later = httpx.post(server.url + BOUNCE_PATH, json={"reason": "r", "domain": "x.test"})
        assert later.status_code == 503
        assert "writes are stopped" in later.text

        assert httpx.get(server.url + BOUNCE_PATH).json() == []
        metrics = httpx.get(server.url + METRICS_PATH).text
        assert "kumo_engine_log_damaged 1" in metrics.splitlines()

        started = time.monotonic()
        status = server.stop(signal.SIGTERM)
        assert status == 0, server.stderr_text()
        assert time.monotonic() - started < 15  # not the 30 s shutdown wait
    finally:
        if server.process.poll() is None:
            server.kill()
    stderr = server.stderr_text()
    assert stderr.count("the event log's store is damaged") == 1, stderr
    assert "Traceback" not in stderr

"""scripts/mail_peers.py keeps working: the timestamping sink and the paced client, the
delivery-log counter, CPU accounting, and a private Postfix relaying to smtp-sink.

The benchmarks that use them (scripts/mail_bench.py) run in ``scripts/bench.py --quick``
(``.ci/run``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from tests.postfix import require_smtp_sink

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import mail_peers  # noqa: E402  # a script beside the package, found through the path above


def test_the_paced_client_reaches_the_timestamping_sink() -> None:
    sink = mail_peers.TimestampingSink()
    try:
        sent = trio.run(mail_peers.paced_client, sink.port, 200.0, 20, 2, 300)
        sink.wait_for(20, timeout=30)
    finally:
        sink.stop()
    assert sorted(s.seq for s in sent) == list(range(20))
    assert sorted(sink.received) == list(range(20))
    for message in sent:
        # Sent when due or later; received before its 250 came back.
        assert message.due <= sink.received[message.seq] <= message.acked
    dues = sorted(s.due for s in sent)
    assert dues[-1] - dues[0] == pytest.approx(19 / 200.0)


def test_latency_messages_carry_their_sequence_number_and_size() -> None:
    message = mail_peers.latency_message(42, 1000)
    assert b"\r\nX-Bench-Seq: 42\r\n\r\n" in message
    assert message.endswith(b"\r\n.\r\n")
    body = message.split(b"\r\n\r\n", 1)[1]
    assert len(body) == 1000 + len(b"\r\n.\r\n")
    assert all(len(line) <= 78 for line in body.split(b"\r\n"))


def test_the_record_counter_reads_only_complete_new_lines(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    count = mail_peers.RecordCounter(tmp_path, "TransientFailure")
    assert count() == 0
    first = logs / "00000000000000000001.jsonl"
    first.write_bytes(b'{"type":"Reception","id":"a"}\n{"type":"TransientFailure","id":"a"}\n')
    assert count() == 1
    with first.open("ab") as segment:
        segment.write(b'{"type":"TransientFailure","id":"b"')  # not yet a whole line
    assert count() == 1
    with first.open("ab") as segment:
        segment.write(b"}\n")
    (logs / "00000000000000000002.jsonl").write_bytes(b'{"type":"TransientFailure","id":"c"}\n')
    assert count() == 3


def test_cpu_seconds_counts_what_this_process_spends() -> None:
    before = mail_peers.cpu_seconds(os.getpid())
    started = time.monotonic()
    while mail_peers.cpu_seconds(os.getpid()) < before + 0.05:
        sum(range(10_000))
        assert time.monotonic() - started < 30, "no CPU time counted"


def test_cpu_seconds_counts_a_process_that_ran_less_than_a_clock_tick() -> None:
    # /proc's stat counts whole ticks: a short-lived helper (each of Postfix's) reads 0 there.
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        # The scheduler adds a task's time up when it stops running: wait until it sleeps.
        started = time.monotonic()
        while Path(f"/proc/{sleeper.pid}/stat").read_text().rpartition(")")[2].split()[0] != "S":
            assert time.monotonic() - started < 30, "sleep(1) never went to sleep"
        assert 0 < mail_peers.cpu_seconds(sleeper.pid) < 1
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_private_postfix_relays_to_smtp_sink() -> None:
    require_smtp_sink()
    why = mail_peers.missing_tools()
    if why is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run this test: {why}")
        pytest.skip(why)
    with mail_peers.smtp_sink() as sink:
        with mail_peers.postfix(sink.port) as instance:
            base = instance.base
            assert mail_peers.smtp_source(instance.port, 5, 2, 200) > 0
            sink.wait_for(5, timeout=60)
            assert mail_peers.cpu_seconds(instance.master) > 0
            # Logged once the sink's 250 is back, a moment after the sink counted it.
            instance.wait_until(lambda: instance.logged("status=sent") == 5, "5 sent", 30)
        assert not base.exists()


def test_a_count_cut_by_a_read_is_read_whole_with_the_next_one() -> None:
    counts, rest = mail_peers.sink_counts(b"sess=1 quit=0 mesg=9999\rsess=1 quit=0 mesg=1000")
    assert (counts, rest) == ([9999], b"sess=1 quit=0 mesg=1000")
    assert mail_peers.sink_counts(rest + b"1\r") == ([10001], b"")
    assert mail_peers.sink_counts(b"mesg=5") == ([], b"mesg=5")

"""``kumo serve``'s SMTP listener spoken to by swaks, a client no one here wrote: pipelining,
dot-stuffing, 8-bit content, STARTTLS with a test certificate, and a client that stops
half-way. Each test skips without swaks (Debian: apt-get install swaks), and fails in CI.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kumo.http.routes import INSPECT_MESSAGE_PATH
from kumo.store.verify import verify_data_dir
from tests.live_server import ServerProcess, delivery_records, start_server, wait_until
from tests.required_tools import require_tool

SWAKS = shutil.which("swaks")

# Lines that start with dots (stuffed on the wire, unstuffed in the spool), 8-bit UTF-8,
# and a line of 900 octets (within SMTP's 998).
CONTENT = (
    "From: news@example.org\r\nSubject: swaks\r\nContent-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n\r\n.a line that starts with a dot\r\n..two dots\r\n"
    "na\u00efve caf\u00e9 \u2014 \u65e5\u672c\r\n" + "x" * 900 + "\r\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    require_tool(SWAKS, "swaks", "swaks")
    trustme = pytest.importorskip("trustme", reason="trustme makes the test certificate")
    directory = tmp_path_factory.mktemp("swaks")
    issued = trustme.CA().issue_cert("localhost")
    issued.private_key_pem.write_to_path(str(directory / "key.pem"))
    issued.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    config = '[smtp_listener]\ntls_certificate = "cert.pem"\ntls_private_key = "key.pem"\n'
    data = directory / "data"
    process = start_server(data, config=config)
    try:
        yield process, data
    finally:
        assert process.stop() == 0, process.stderr_text()
    report = verify_data_dir(data)
    assert report.ok, report.violations


def swaks(server: ServerProcess, *arguments: str) -> subprocess.CompletedProcess[str]:
    assert SWAKS is not None
    return subprocess.run(
        [SWAKS, "--server", "127.0.0.1", "--port", str(server.smtp_port), *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def received(data: Path, recipient: str) -> dict[str, Any] | None:
    for record in delivery_records(data):
        if record["type"] == "Reception" and record["recipient"] == recipient:
            return record
    return None


def spooled(server: ServerProcess, message_id: str) -> str:
    reply = httpx.get(
        server.url + INSPECT_MESSAGE_PATH, params={"id": message_id, "want_body": "true"}
    )
    assert reply.status_code == 200, reply.text
    data: str = reply.json()["message"]["data"]
    return data


def test_pipelined_dot_stuffed_8bit_mail_is_spooled_byte_for_byte(
    server: tuple[ServerProcess, Path], tmp_path: Path
) -> None:
    process, data = server
    message = tmp_path / "message.eml"
    message.write_bytes(CONTENT.encode())
    run = swaks(
        process,
        "--pipeline",
        "--from",
        "news@example.org",
        "--to",
        "p1@example.com,p2@example.com,p3@example.net",
        "--data",
        f"@{message}",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PIPELINING" in run.stdout
    recipients = ("p1@example.com", "p2@example.com", "p3@example.net")
    wait_until(lambda: all(received(data, r) for r in recipients))
    for recipient in recipients:
        record = received(data, recipient)
        assert record is not None
        assert record["reception_protocol"] == "ESMTP"
        # After kumo's Received: line, the content as sent (swaks ends it with a blank
        # line of its own), its dots unstuffed.
        assert CONTENT in spooled(process, record["id"])


def test_starttls_then_mail(server: tuple[ServerProcess, Path]) -> None:
    process, data = server
    run = swaks(process, "--tls", "--from", "news@example.org", "--to", "tls@example.com")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "STARTTLS" in run.stdout
    assert "TLS started" in run.stdout
    wait_until(lambda: received(data, "tls@example.com"))


def test_a_client_that_quits_after_rcpt_queues_nothing(server: tuple[ServerProcess, Path]) -> None:
    process, data = server
    run = swaks(
        process, "--quit-after", "RCPT", "--from", "news@example.org", "--to", "gone@example.com"
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # A later message on a new session is queued; the abandoned one never is.
    assert swaks(process, "--from", "news@example.org", "--to", "after@example.com").returncode == 0
    wait_until(lambda: received(data, "after@example.com"))
    assert received(data, "gone@example.com") is None


def test_a_refused_recipient_among_pipelined_ones(server: tuple[ServerProcess, Path]) -> None:
    process, data = server
    run = swaks(
        process,
        "--pipeline",
        "--from",
        "news@example.org",
        "--to",
        "ok@example.com,not-an-address",
    )
    # The refused recipient gets its 501 in the pipelined replies; the message goes to
    # the one accepted.
    assert run.returncode == 0, run.stdout + run.stderr
    assert "<** 501 5.1.3 Invalid recipient address syntax" in run.stdout
    wait_until(lambda: received(data, "ok@example.com"))
    rejections = [r for r in delivery_records(data) if r["type"] == "Rejection"]
    assert any("not-an-address" in str(r["response"]["command"]) for r in rejections)

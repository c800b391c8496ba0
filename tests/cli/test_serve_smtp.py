"""``kumo serve`` with its SMTP listener, as a process, spoken to with Python's smtplib."""

from __future__ import annotations

import smtplib
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kumo.cli.kumo import main
from kumo.cli.serve import resolve_config
from kumo.model.events import MessageReceived
from kumo.store.verify import verify_data_dir
from tests.live_server import delivery_records, logged_events, start_server, wait_until

MESSAGE = b"From: news@example.org\r\nX-Tenant: acme\r\nSubject: hi\r\n\r\nhello\r\n"


def _when_three(records: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    return records if len(records) == 3 else None


def test_mail_sent_with_smtplib_is_queued_and_logged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data, config='[smtp_listener]\nhostname = "mx.example.net"\n')
    try:
        assert server.smtp is not None
        assert server.smtp.startswith("127.0.0.1:")
        with smtplib.SMTP("127.0.0.1", server.smtp_port, local_hostname="client.example") as smtp:
            code, banner = smtp.ehlo()
            assert (code, banner.split(b"\n")[0]) == (250, b"mx.example.net Aloha client.example")
            refused = smtp.sendmail("news@example.org", ["a@example.com", "b@example.net"], MESSAGE)
            assert refused == {}
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                smtp.sendmail("news@example.org", ["nobody"], MESSAGE)
        records = wait_until(lambda: _when_three(delivery_records(data)))
    finally:
        assert server.stop() == 0, server.stderr_text()

    receptions = [r for r in records if r["type"] == "Reception"]
    assert sorted(r["queue"] for r in receptions) == ["acme@example.com", "acme@example.net"]
    for record in receptions:
        assert record["reception_protocol"] == "ESMTP"
        assert record["peer_address"] == {"name": "client.example", "addr": "127.0.0.1"}
    [rejection] = [r for r in records if r["type"] == "Rejection"]
    assert rejection["response"]["code"] == 501
    assert rejection["response"]["command"] == "rcpt TO:<nobody>"  # as smtplib sent it
    events = [c.event for c in logged_events(data) if isinstance(c.event, MessageReceived)]
    assert {e.message_id for e in events} == {r["id"] for r in receptions}
    report = verify_data_dir(data)
    assert report.ok, report.violations
    assert report.records == {"Reception": 2, "Rejection": 1}


def test_starttls_with_the_configured_certificate(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme", reason="trustme makes the test certificate")
    authority = trustme.CA()
    issued = authority.issue_cert("localhost")
    issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    config = '[smtp_listener]\ntls_certificate = "cert.pem"\ntls_private_key = "key.pem"\n'
    context = ssl.create_default_context()
    authority.configure_trust(context)
    data = tmp_path / "data"
    server = start_server(data, config=config)
    try:
        with smtplib.SMTP("127.0.0.1", server.smtp_port) as smtp:
            smtp.ehlo("client.example")
            assert smtp.has_extn("starttls")
            smtp._host = "localhost"  # type: ignore[attr-defined]  # the certificate's name
            smtp.starttls(context=context)
            smtp.ehlo("client.example")
            assert not smtp.has_extn("starttls")
            assert smtp.sendmail("news@example.org", ["a@example.com"], MESSAGE) == {}
        wait_until(lambda: delivery_records(data))
    finally:
        assert server.stop() == 0, server.stderr_text()


def test_sigterm_says_421_to_an_open_session_and_exits_0(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", config='[smtp_listener]\nhostname = "mx"\n')
    with socket.create_connection(("127.0.0.1", server.smtp_port)) as client:
        reader = client.makefile("rb")
        assert reader.readline() == b"220 mx KumoMTA\r\n"
        client.sendall(b"EHLO c.example\r\n")
        while not reader.readline().startswith(b"250 "):
            pass
        server.process.terminate()
        assert reader.readline() == b"421 4.3.2 mx shutting down\r\n"
        assert reader.readline() == b""
    assert server.stop() == 0, server.stderr_text()


def test_smtp_listen_off_runs_no_listener(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", smtp=False)
    try:
        assert server.smtp is None
    finally:
        assert server.stop() == 0


def test_an_smtp_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = subprocess.run(
            [
                *(sys.executable, "-m", "kumo.cli.serve", "--listen", "127.0.0.1:0"),
                *("--data-dir", str(tmp_path / "data"), "--smtp-listen", f"127.0.0.1:{port}"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"kumo: cannot listen for SMTP on 127.0.0.1:{port}: address already in use\n"
    )


@pytest.mark.parametrize(
    ("args", "config", "why"),
    [
        (
            ["--smtp-listen", "nowhere"],
            "",
            "--smtp-listen: listen address 'nowhere' is not HOST:PORT (or \"off\")",
        ),
        ([], '[smtp_listener]\ninvalid_line_endings = "Fix"\n', 'only "Deny"'),
        (
            [],
            '[smtp_listener]\ntls_certificate = "none.pem"\ntls_private_key = "none.pem"\n',
            "smtp_listener.tls_certificate: cannot load",
        ),
    ],
)
def test_what_the_listener_cannot_run_with_is_a_usage_error(
    tmp_path: Path, args: list[str], config: str, why: str
) -> None:
    path = tmp_path / "kumo.toml"
    path.write_text(config, encoding="utf-8")
    result = CliRunner().invoke(main, ["serve", "--config", str(path), *args])
    assert result.exit_code == 2
    assert why in result.output


def test_smtp_listen_wins_over_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "kumo.toml"
    path.write_text('[smtp_listener]\nlisten = "127.0.0.1:2526"\n', "utf-8")
    from_file = resolve_config(listen=None, data_dir=None, config_path=path)
    assert from_file.smtp_listener.listen == "127.0.0.1:2526"
    option = resolve_config(listen=None, data_dir=None, config_path=path, smtp_listen="[::1]:0")
    assert option.smtp_listener.listen == "[::1]:0"
    off = resolve_config(listen=None, data_dir=None, config_path=path, smtp_listen="off")
    assert off.smtp_listener.listen is None
    defaults = resolve_config(listen=None, data_dir=None, config_path=None)
    assert defaults.smtp_listener.listen == "127.0.0.1:2025"

"""kcli against a recording fake server (`httpx.MockTransport`): requests and output."""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from kumo.cli.kcli import (
    BOUNCE_ASYNC_NOTE,
    Target,
    batch_recipients,
    cli,
    reason_phrase,
)
from kumo.http.routes import (
    BOUNCE_PATH,
    INJECT_PATH,
    INSPECT_MESSAGE_PATH,
    INSPECT_QUEUE_PATH,
    METRICS_PATH,
    READY_Q_STATES_PATH,
    SUSPEND_PATH,
    SUSPEND_READY_Q_PATH,
)
from kumo.model.mx_resolution import (
    Destination,
    DnsErrorKind,
    HostSource,
    Resolution,
    mx_lookup_failure,
)

ID_A = "0f8d6c8e-5b7e-4a52-9a55-7f3f2f1f6a01"
ID_B = "5e1c2d3b-8a9f-4c6d-b7e8-f9a0b1c2d3e4"
ID_C = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
SPOOL_ID = "d7ef132b5d7711eea8c8000c29c33806"

Handler = Callable[[httpx.Request], httpx.Response]


class FakeServer:
    """Records every request and answers each with `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[httpx.Request] = []
        self._handler = handler
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._handler(request)

    def bodies(self) -> list[Any]:
        return [json.loads(request.content) for request in self.requests]


def replying(status: int = 200, *, json_body: object = None, text: str | None = None) -> FakeServer:
    def handler(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text)
        return httpx.Response(status, json=json_body)

    return FakeServer(handler)


def run(server: FakeServer, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
    environment: dict[str, str | None] = {"KUMO_KCLI_ENDPOINT": None, "KUMO_KCLI_TOKEN": None}
    environment.update(env or {})
    result = CliRunner().invoke(
        cli, list(args), obj=Target(transport=server.transport), env=environment
    )
    # Anything but a clean exit would be a traceback for the user.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


# --- bounce ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--domain", "example.com"],
            {"domain": "example.com", "reason": "r", "suppress_logging": False},
        ),
        (
            [
                "--domain",
                "example.com",
                "--routing-domain",
                "relay.example",
                "--campaign",
                "spring",
                "--tenant",
                "acme",
                "--duration",
                "1h 30m",
                "--suppress-logging",
            ],
            {
                "domain": "example.com",
                "routing_domain": "relay.example",
                "campaign": "spring",
                "tenant": "acme",
                "reason": "r",
                "duration": "1h 30m",
                "suppress_logging": True,
            },
        ),
        (["--tenant", "acme"], {"tenant": "acme", "reason": "r", "suppress_logging": False}),
        (
            ["--campaign", "c", "--duration", "0"],
            {"campaign": "c", "reason": "r", "duration": "0", "suppress_logging": False},
        ),
        (
            ["--routing-domain", "relay"],
            {"routing_domain": "relay", "reason": "r", "suppress_logging": False},
        ),
        (
            ["--queue", "camp:acme@example.com", "--queue", "example.org!relay"],
            {
                "queue_names": ["camp:acme@example.com", "example.org!relay"],
                "reason": "r",
                "suppress_logging": False,
            },
        ),
        (["--everything"], {"reason": "r", "suppress_logging": False}),
        (
            ["--everything", "--duration", "5m", "--suppress-logging"],
            {"reason": "r", "duration": "5m", "suppress_logging": True},
        ),
    ],
)
def test_bounce_posts_the_given_criteria(args: list[str], expected: dict[str, object]) -> None:
    server = replying(json_body={"id": ID_A, "bounced": {}, "total_bounced": 0})

    result = run(server, "bounce", "--reason", "r", *args)

    assert result.exit_code == 0, result.output
    (request,) = server.requests
    assert request.method == "POST"
    assert request.url == f"http://127.0.0.1:8000{BOUNCE_PATH}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == expected


def test_bounce_prints_note_on_stderr_and_id_alone_on_stdout() -> None:
    server = replying(json_body={"id": ID_A, "bounced": {}, "total_bounced": 0})

    result = run(server, "bounce", "--everything", "--reason", "purge")

    assert result.exit_code == 0
    assert result.stdout == f"{ID_A}\n"
    assert result.stderr == BOUNCE_ASYNC_NOTE + "\n"
    assert BOUNCE_ASYNC_NOTE == (
        "NOTE: the bounce is running async. Use the bounce-list command to review ongoing status!"
    )


def test_bounce_without_selector_refuses_and_sends_nothing() -> None:
    server = replying(json_body={"id": ID_A})

    result = run(server, "bounce", "--reason", "r")

    assert result.exit_code != 0
    assert server.requests == []
    assert result.stdout == ""
    assert "Use --everything if you intend to purge all queues" in result.stderr


@pytest.mark.parametrize(
    ("args", "mentioned"),
    [
        (["--everything", "--domain", "d"], ["--everything", "--domain"]),
        (["--everything", "--routing-domain", "r"], ["--everything", "--routing-domain"]),
        (["--everything", "--campaign", "c"], ["--everything", "--campaign"]),
        (["--everything", "--tenant", "t"], ["--everything", "--tenant"]),
        (["--everything", "--queue", "q"], ["--everything", "--queue"]),
        (["--queue", "q", "--domain", "d"], ["--queue", "--domain"]),
        (["--queue", "q", "--routing-domain", "r"], ["--queue", "--routing-domain"]),
        (["--queue", "q", "--campaign", "c"], ["--queue", "--campaign"]),
        (["--queue", "q", "--tenant", "t", "--domain", "d"], ["--queue", "--tenant", "--domain"]),
    ],
)
def test_bounce_conflicting_selectors_refuse_and_send_nothing(
    args: list[str], mentioned: list[str]
) -> None:
    server = replying(json_body={"id": ID_A})

    result = run(server, "bounce", "--reason", "r", *args)

    assert result.exit_code != 0
    assert server.requests == []
    assert result.stdout == ""
    assert "cannot be combined" in result.stderr
    for flag in mentioned:
        assert flag in result.stderr


def test_bounce_requires_a_reason() -> None:
    server = replying(json_body={"id": ID_A})

    result = run(server, "bounce", "--everything")

    assert result.exit_code != 0
    assert server.requests == []
    assert "--reason" in result.stderr


def test_bounce_rejected_by_server_reports_status_and_body() -> None:
    body = "Failed to deserialize the JSON body into the target type: duration: bad"
    server = replying(422, text=body)

    result = run(server, "bounce", "--domain", "d", "--reason", "r", "--duration", "5 parsecs")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"request status 422: Unprocessable Entity. Response body: {body}\n"


def test_bounce_with_a_reply_lacking_an_id_fails_cleanly() -> None:
    server = replying(json_body={"bounced": {}})

    result = run(server, "bounce", "--domain", "d", "--reason", "r")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert "unexpected reply" in result.stderr


# --- bounce-list -----------------------------------------------------------------------


def entry(
    bounce_id: str,
    reason: str,
    duration: str,
    total_bounced: int,
    **criteria: object,
) -> dict[str, object]:
    listed: dict[str, object] = {
        "id": bounce_id,
        "campaign": None,
        "tenant": None,
        "domain": None,
        "routing_domain": None,
        "reason": reason,
        "duration": duration,
        "bounced": {},
        "total_bounced": total_bounced,
    }
    listed.update(criteria)
    return listed


LISTING = [
    entry(ID_A, "purge", "4m 59s 998ms 52us 371ns", 1234567),
    entry(
        ID_B,
        "maintenance window",
        "1h",
        0,
        campaign="spring",
        tenant="acme",
        domain="example.com",
        routing_domain="relay",
    ),
    entry(
        ID_C,
        "by queue",
        "2days 3h",
        42,
        queue_names=["spring:acme@example.com", "example.org"],
        suppress_logging=False,
    ),
]


def test_bounce_list_prints_an_aligned_table() -> None:
    server = replying(json_body=LISTING)

    result = run(server, "bounce-list")

    assert result.exit_code == 0
    (request,) = server.requests
    assert request.method == "GET"
    assert request.url == f"http://127.0.0.1:8000{BOUNCE_PATH}"
    # One space between columns, every column padded to its widest cell (the last
    # included), BOUNCED right-aligned: the layout of KumoMTA's kcli.
    criteria_b = "campaign=spring, tenant=acme, domain=example.com, routing_domain=relay"
    criteria_c = "queue=spring:acme@example.com, queue=example.org"
    width = len(criteria_b)
    assert result.stdout == (
        f"ID                                   REASON             REMAIN                  "
        f"  BOUNCED {'CRITERIA'.ljust(width)}\n"
        f"{ID_A} purge              4m 59s 998ms 52us 371ns "
        f"1,234,567 {'everything'.ljust(width)}\n"
        f"{ID_B} maintenance window 1h                      "
        f"        0 {criteria_b}\n"
        f"{ID_C} by queue           2days 3h                "
        f"       42 {criteria_c.ljust(width)}\n"
    )
    assert result.stderr == ""


def test_bounce_list_columns_line_up() -> None:
    server = replying(json_body=LISTING)

    lines = run(server, "bounce-list").stdout.splitlines()

    assert len({len(line) for line in lines}) == 1
    header = lines[0]
    for name in ("REASON", "REMAIN", "CRITERIA"):
        start = header.index(name)
        assert all(line[start - 1] == " " and line[start] != " " for line in lines)
    bounced_end = header.index("BOUNCED") + len("BOUNCED")
    assert all(line[bounced_end] == " " and line[bounced_end - 1] != " " for line in lines)


def test_bounce_list_with_no_rules_prints_the_header_only() -> None:
    server = replying(json_body=[])

    result = run(server, "bounce-list")

    assert result.exit_code == 0
    assert result.stdout == "ID REASON REMAIN BOUNCED CRITERIA\n"


def test_bounce_list_criteria_ignore_empty_queue_names_and_flatten_line_breaks() -> None:
    server = replying(
        json_body=[
            entry(ID_A, "line one\r\nline two\nthree", "5m", 7, domain="d", queue_names=[]),
        ]
    )

    result = run(server, "bounce-list")

    assert (
        result.stdout.splitlines()[1] == f"{ID_A} line one line two three 5m           7 domain=d"
    )


def test_bounce_list_json_prints_the_reply_with_two_space_indent() -> None:
    server = replying(json_body=LISTING)

    result = run(server, "bounce-list", "--json")

    assert result.exit_code == 0
    assert result.stdout == json.dumps(LISTING, indent=2) + "\n"
    assert result.stdout.startswith('[\n  {\n    "id": ')


def test_bounce_list_json_prints_non_ascii_as_is_in_utf8() -> None:
    listing = [entry(ID_A, "café 日本 \u2028", "5m", 1, domain="bücher.example")]
    server = replying(json_body=listing)

    result = run(server, "bounce-list", "--json")

    assert result.exit_code == 0
    assert result.stdout == json.dumps(listing, indent=2, ensure_ascii=False) + "\n"
    assert '"reason": "café 日本 \u2028"' in result.stdout
    assert "\\u" not in result.stdout
    assert json.loads(result.stdout_bytes.decode("utf-8")) == listing


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_bounce_list_json_does_not_depend_on_the_stdout_encoding(encoding: str) -> None:
    listing = [entry(ID_A, "café 日本", "5m", 1)]
    script = (
        "import httpx, sys\n"
        "from kumo.cli.kcli import Target, cli\n"
        f"reply = httpx.Response(200, json={listing!r})\n"
        "transport = httpx.MockTransport(lambda request: reply)\n"
        "cli.main(['bounce-list', '--json'], obj=Target(transport=transport), prog_name='kcli')\n"
    )
    root = Path(__file__).resolve().parents[2]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), *sys.path]),
        "PYTHONIOENCODING": encoding,
    }
    environment.pop("KUMO_KCLI_ENDPOINT", None)
    environment.pop("KUMO_KCLI_TOKEN", None)
    completed = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        env=environment,
        capture_output=True,
        check=False,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    assert (
        completed.stdout.decode("utf-8") == json.dumps(listing, indent=2, ensure_ascii=False) + "\n"
    )


def test_bounce_list_json_of_nothing() -> None:
    result = run(replying(json_body=[]), "bounce-list", "--json")

    assert result.stdout == "[]\n"


@pytest.mark.parametrize("reply", [{"not": "a list"}, [1, 2]])
def test_bounce_list_rejects_a_reply_of_the_wrong_shape(reply: object) -> None:
    result = run(replying(json_body=reply), "bounce-list")

    assert result.exit_code == 1
    assert "unexpected reply" in result.stderr


def test_bounce_list_reply_that_is_not_json_fails_cleanly() -> None:
    result = run(replying(200, text="<html>"), "bounce-list")

    assert result.exit_code == 1
    assert result.stderr == "parsing response as json: <html>\n"


# --- bounce-cancel ---------------------------------------------------------------------


def test_bounce_cancel_deletes_by_id_and_prints_the_reply() -> None:
    server = replying(text=f"removed {ID_A}")

    result = run(server, "bounce-cancel", "--id", ID_A)

    assert result.exit_code == 0
    (request,) = server.requests
    assert request.method == "DELETE"
    assert request.url == f"http://127.0.0.1:8000{BOUNCE_PATH}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"id": ID_A}
    assert result.stdout == f"removed {ID_A}\n"


def test_bounce_cancel_of_an_unknown_id_fails_with_the_server_text() -> None:
    server = replying(404, text=f"bounce entry {ID_B} not found")

    result = run(server, "bounce-cancel", "--id", ID_B)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"request status 404: Not Found. Response body: bounce entry {ID_B} not found\n"
    )


def test_bounce_cancel_requires_an_id() -> None:
    server = replying(text="")

    result = run(server, "bounce-cancel")

    assert result.exit_code != 0
    assert server.requests == []


# --- failures common to every command --------------------------------------------------


@pytest.mark.parametrize(
    ("status", "phrase"),
    [
        (400, "Bad Request"),
        (401, "Unauthorized"),
        (413, "Payload Too Large"),
        (415, "Unsupported Media Type"),
        (422, "Unprocessable Entity"),
        (500, "Internal Server Error"),
        (599, ""),
    ],
)
def test_non_2xx_reply_names_status_and_phrase(status: int, phrase: str) -> None:
    result = run(replying(status, text="nope"), "bounce-list")

    assert result.exit_code == 1
    assert result.stderr == f"request status {status}: {phrase}. Response body: nope\n"


def test_reason_phrases_follow_kumomta_not_the_python_release() -> None:
    assert reason_phrase(404) == "Not Found"
    assert reason_phrase(413) == "Payload Too Large"
    assert reason_phrase(422) == "Unprocessable Entity"
    assert reason_phrase(299) == ""


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "cannot connect to"),
        (httpx.ReadTimeout("timed out"), "timed out"),
        (httpx.RemoteProtocolError("peer closed connection"), "failed"),
    ],
)
def test_transport_failure_is_one_clear_line(error: httpx.HTTPError, expected: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    result = run(FakeServer(handler), "bounce-list")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert expected in result.stderr
    assert "http://127.0.0.1:8000" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


CREDENTIALS_ENDPOINT = "http://alice:s3cr%40t@127.0.0.1:1"
PROXY_VARIABLES = [
    name for base in ("http_proxy", "https_proxy", "all_proxy") for name in (base, base.upper())
]


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("peer closed connection"),
    ],
)
def test_transport_failure_does_not_print_the_credentials(error: httpx.HTTPError) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    result = run(FakeServer(handler), "--endpoint", CREDENTIALS_ENDPOINT, "bounce-list")

    assert result.exit_code == 1
    assert "http://127.0.0.1:1" in result.stderr
    assert "alice" not in result.stderr
    assert "s3cr" not in result.stderr


def test_unreachable_server_does_not_print_the_credentials() -> None:
    result = CliRunner().invoke(
        cli,
        ["--endpoint", CREDENTIALS_ENDPOINT, "bounce-list"],
        obj=Target(),  # a real transport: nothing listens on port 1
        env={name: None for name in ("KUMO_KCLI_ENDPOINT", *PROXY_VARIABLES)},
    )

    assert result.exit_code == 1
    assert result.stderr.startswith("cannot connect to http://127.0.0.1:1: ")
    assert "alice" not in result.stderr
    assert "s3cr" not in result.stderr


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://alice:s3/cr@example.com",  # an unescaped '/' in the password
        "http://alice:s3cr@",
        "ftp://alice:s3cr@example.com",
        "alice:s3cr@example.com:8000",
    ],
)
def test_a_refused_endpoint_is_shown_without_the_credentials(endpoint: str) -> None:
    server = replying(json_body=[])

    result = run(server, "--endpoint", endpoint, "bounce-list")

    assert result.exit_code == 2
    assert server.requests == []
    assert "--endpoint" in result.stderr
    assert "alice" not in result.stderr
    assert "s3" not in result.stderr


# --- endpoint --------------------------------------------------------------------------


def test_endpoint_defaults_to_localhost_8000() -> None:
    server = replying(json_body=[])

    run(server, "bounce-list")

    assert str(server.requests[0].url) == f"http://127.0.0.1:8000{BOUNCE_PATH}"


def test_endpoint_from_the_environment() -> None:
    server = replying(json_body=[])

    run(server, "bounce-list", env={"KUMO_KCLI_ENDPOINT": "http://env.example:9000"})

    assert str(server.requests[0].url) == f"http://env.example:9000{BOUNCE_PATH}"


def test_endpoint_flag_wins_over_the_environment() -> None:
    server = replying(json_body=[])

    run(
        server,
        "--endpoint",
        "https://flag.example:8443",
        "bounce-list",
        env={"KUMO_KCLI_ENDPOINT": "http://env.example:9000"},
    )

    assert str(server.requests[0].url) == f"https://flag.example:8443{BOUNCE_PATH}"


@pytest.mark.parametrize("endpoint", ["localhost:8000", "ftp://example.com", "http://"])
def test_an_unusable_endpoint_is_refused_before_sending(endpoint: str) -> None:
    server = replying(json_body=[])

    result = run(server, "--endpoint", endpoint, "bounce-list")

    assert result.exit_code == 2
    assert server.requests == []
    assert "--endpoint" in result.stderr


# --- credentials -----------------------------------------------------------------------

TOKEN = "kZ3_x-Q9.~+/abc="


def test_no_credentials_no_authorization_header() -> None:
    server = replying(json_body=[])

    run(server, "bounce-list")

    assert "authorization" not in server.requests[0].headers


@pytest.mark.parametrize(
    "command",
    [
        ["bounce-list"],
        ["bounce", "--everything", "--reason", "r"],
        ["bounce-cancel", "--id", ID_A],
        ["queue-summary"],
        ["inject", "--from", "s@x.com", "--to", "r@x.org"],
        ["inspect-message", SPOOL_ID],
        ["inspect-sched-q", "example.com"],
    ],
)
def test_token_is_sent_as_a_bearer_on_every_command(command: list[str]) -> None:
    server = FakeServer(
        lambda request: (
            httpx.Response(200, json={"id": ID_A, "success_count": 1})
            if request.method == "POST" or "/inspect-" in request.url.path
            else httpx.Response(200, json={"states_by_ready_queue": {}})
            if request.url.path == READY_Q_STATES_PATH
            else httpx.Response(200, json=[])
        )
    )

    result = run(server, "--token", TOKEN, *command)

    assert result.exit_code == 0, result.output

    # queue-summary reads the suspend, bounce and suspend-ready-q lists, the ready-queue
    # states, then the metrics.
    assert len(server.requests) == (5 if command == ["queue-summary"] else 1)
    for request in server.requests:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"


def test_token_from_the_environment_and_the_flag_winning_over_it() -> None:
    server = replying(json_body=[])

    run(server, "bounce-list", env={"KUMO_KCLI_TOKEN": "from-env"})
    run(server, "--token", "from-flag", "bounce-list", env={"KUMO_KCLI_TOKEN": "from-env"})

    assert [request.headers["authorization"] for request in server.requests] == [
        "Bearer from-env",
        "Bearer from-flag",
    ]


def test_basic_credentials_come_from_the_endpoint_userinfo() -> None:
    server = replying(json_body=[])

    run(server, "--endpoint", "http://alice:s3cr%40t@kumo.example:8000", "bounce-list")

    (request,) = server.requests
    expected = base64.b64encode(b"alice:s3cr@t").decode()
    assert request.headers["authorization"] == f"Basic {expected}"


def test_token_and_basic_credentials_together_are_refused() -> None:
    server = replying(json_body=[])

    result = run(
        server, "--endpoint", "http://alice:pw@kumo.example", "--token", TOKEN, "bounce-list"
    )

    assert result.exit_code == 2
    assert server.requests == []
    assert "--token cannot be combined" in result.stderr
    assert TOKEN not in result.stderr
    assert "pw" not in result.stderr


@pytest.mark.parametrize("token", ["", "two words", "line\nbreak", "tab\t", "caf\u00e9"])
def test_a_token_that_cannot_be_a_header_is_refused_without_echoing_it(token: str) -> None:
    server = replying(json_body=[])

    result = run(server, "--token", token, "bounce-list")

    assert result.exit_code == 2
    assert server.requests == []
    assert "--token" in result.stderr
    if token:
        assert token not in result.stderr


def test_target_repr_hides_the_token() -> None:
    assert TOKEN not in repr(Target(token=TOKEN))


def test_help_documents_basic_and_bearer_credentials() -> None:
    result = CliRunner().invoke(cli, ["--help"], env={"KUMO_KCLI_TOKEN": None})

    assert result.exit_code == 0
    assert "--token TOKEN" in result.output
    assert "$KUMO_KCLI_TOKEN" in result.output
    assert "Authorization: Bearer TOKEN" in result.output
    assert "http://USER:PASSWORD@HOST:PORT" in result.output
    assert "HTTP Basic" in result.output


# --- inject ----------------------------------------------------------------------------


def inject_server(fail_count: int = 0) -> FakeServer:
    def handler(request: httpx.Request) -> httpx.Response:
        recipients = json.loads(request.content)["recipients"]
        return httpx.Response(
            200,
            json={
                "success_count": len(recipients) - fail_count,
                "fail_count": fail_count,
                "failed_recipients": [r["email"] for r in recipients[:fail_count]],
                "errors": ["boom"] * fail_count,
            },
        )

    return FakeServer(handler)


def test_inject_posts_one_message_per_recipient_with_metadata() -> None:
    server = inject_server()

    result = run(
        server,
        "inject",
        "--from",
        "sender@example.com",
        "--to",
        "a@example.org",
        "--to",
        "b@example.net",
        "--campaign",
        "spring",
        "--tenant",
        "acme",
        "--routing-domain",
        "relay.example",
        "--subject",
        "Hello there",
    )

    assert result.exit_code == 0, result.output
    assert result.stdout == "injected 2 message(s)\n"
    (request,) = server.requests
    assert request.method == "POST"
    assert request.url == f"http://127.0.0.1:8000{INJECT_PATH}"
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.content)
    assert set(body) == {"envelope_sender", "recipients", "content"}
    assert body["envelope_sender"] == "sender@example.com"
    metadata = {"campaign": "spring", "tenant": "acme", "routing_domain": "relay.example"}
    assert body["recipients"] == [
        {"email": "a@example.org", "metadata": metadata},
        {"email": "b@example.net", "metadata": metadata},
    ]
    message = email.message_from_string(body["content"], policy=email.policy.default)
    assert message["From"] == "sender@example.com"
    assert message["To"] == "a@example.org, b@example.net"
    assert message["Subject"] == "Hello there"
    assert message["Date"] is not None
    assert message["Message-ID"].endswith("@example.com>")
    assert message.get_content().strip() != ""
    assert "\r\n\r\n" in body["content"]


def test_inject_without_metadata_options_sends_empty_metadata() -> None:
    server = inject_server()

    run(server, "inject", "--from", "s@example.com", "--to", "r@example.org")

    assert server.bodies()[0]["recipients"] == [{"email": "r@example.org", "metadata": {}}]


def test_inject_subject_is_encoded_and_line_breaks_refused() -> None:
    server = inject_server()

    run(server, "inject", "--from", "s@example.com", "--to", "r@x.org", "--subject", "Grüße")
    content = server.bodies()[0]["content"]
    assert content.isascii()
    message = email.message_from_string(content, policy=email.policy.default)
    assert message["Subject"] == "Grüße"

    refused = run(
        server, "inject", "--from", "s@example.com", "--to", "r@x.org", "--subject", "a\nBcc: x"
    )
    assert refused.exit_code == 2
    assert len(server.requests) == 1


def test_inject_count_is_batched_at_1000_recipients_per_request() -> None:
    server = inject_server()

    result = run(
        server,
        "inject",
        "--from",
        "s@example.com",
        "--to",
        "a@example.org",
        "--to",
        "b@example.org",
        "--count",
        "1250",
    )

    assert result.exit_code == 0
    assert result.stdout == "injected 2500 message(s)\n"
    sizes = [len(body["recipients"]) for body in server.bodies()]
    assert sizes == [1000, 1000, 500]
    per_address = Counter(r["email"] for body in server.bodies() for r in body["recipients"])
    assert per_address == {"a@example.org": 1250, "b@example.org": 1250}


def test_inject_count_must_be_positive() -> None:
    server = inject_server()

    result = run(server, "inject", "--from", "s@x.com", "--to", "r@x.org", "--count", "0")

    assert result.exit_code == 2
    assert server.requests == []


def test_inject_requires_from_and_to() -> None:
    server = inject_server()

    assert run(server, "inject", "--to", "r@x.org").exit_code == 2
    assert run(server, "inject", "--from", "s@x.com").exit_code == 2
    assert server.requests == []


def test_inject_reports_failed_recipients_and_exits_non_zero() -> None:
    server = inject_server(fail_count=1)

    result = run(server, "inject", "--from", "s@x.com", "--to", "a@x.org", "--to", "b@x.org")

    assert result.exit_code == 1
    assert result.stdout == "injected 1 message(s)\n"
    assert "failed 1 message(s)" in result.stderr
    assert "boom" in result.stderr


def test_inject_stops_at_a_refused_batch_and_counts_what_went_through() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if len(server.requests) > 1:
            return httpx.Response(401, text="unauthorized")
        count = len(json.loads(request.content)["recipients"])
        return httpx.Response(200, json={"success_count": count, "fail_count": 0})

    server = FakeServer(handler)

    result = run(server, "inject", "--from", "s@x.com", "--to", "a@x.org", "--count", "3000")

    assert result.exit_code == 1
    assert len(server.requests) == 2
    assert result.stdout == "injected 1000 message(s)\n"
    assert result.stderr == "request status 401: Unauthorized. Response body: unauthorized\n"


def test_batch_recipients_is_lazy_and_bounded() -> None:
    recipients = [{"email": "a"}, {"email": "b"}, {"email": "c"}]

    batches = batch_recipients(recipients, 1_000_000, batch_size=1000)

    first = next(batches)
    assert len(first) == 1000
    assert [r["email"] for r in first[:4]] == ["a", "b", "c", "a"]
    sizes = [len(b) for b in batch_recipients(recipients, 1000, batch_size=1000)]
    assert sizes == [1000, 1000, 1000]
    assert [len(b) for b in batch_recipients(recipients, 1, batch_size=2)] == [2, 1]


# --- queue-summary ---------------------------------------------------------------------

METRICS = "\n".join(
    [
        "# HELP scheduled_count number of messages in a scheduled queue",
        "# TYPE scheduled_count gauge",
        'scheduled_count{queue="example.com"} 1234567',
        'scheduled_count{queue="camp:acme@example.org!relay"} 42',
        'scheduled_count{queue="a\\\\b"} 42',
        'scheduled_count{queue="say \\"hi\\"@example.net"} 7',
        'scheduled_count{queue="zero.example"} 0',
        'received_count{queue="example.com"} 99',
        "messages_bounced_total 5",
        "",
    ]
)


READY_METRICS = "\n".join(
    [
        "# TYPE connection_count gauge",
        'connection_count{service="smtp_client"} 3',
        'connection_count{service="esmtp_listener"} 4',
        'connection_count{service="smtp_client:unspecified->mx.example.com@smtp_client"} 3',
        'connection_count{service="smtp_client:unspecified->日本.example@smtp_client"} 0',
        "# TYPE ready_count gauge",
        'ready_count{service="smtp_client:unspecified->mx.example.com@smtp_client"} 1024',
        "# TYPE total_messages_delivered counter",
        'total_messages_delivered{service="smtp_client"} 99999',
        'total_messages_delivered{service="smtp_client:unspecified->mx.example.com@smtp_client"}'
        " 1234567",
        'total_messages_delivered{service="smtp_client:unspecified->日本.example@smtp_client"} 2',
        "# TYPE total_messages_transfail counter",
        'total_messages_transfail{service="smtp_client:unspecified->日本.example@smtp_client"} 5',
        "",
    ]
)


def metrics_server(
    page: str = METRICS,
    *,
    bounces: list[dict[str, Any]] | None = None,
    suspends: list[dict[str, Any]] | None = None,
    ready_suspends: list[dict[str, Any]] | None = None,
    states: Any = None,
) -> FakeServer:
    """Answers the bounce, suspend and suspend-ready-q lists with ``bounces``,
    ``suspends`` and ``ready_suspends``, ready-q-states with ``states`` (by default
    none), and /metrics with ``page``."""

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == BOUNCE_PATH:
            return httpx.Response(200, json=bounces or [])
        if request.url.path == SUSPEND_PATH:
            return httpx.Response(200, json=suspends or [])
        if request.url.path == SUSPEND_READY_Q_PATH:
            return httpx.Response(200, json=ready_suspends or [])
        if request.url.path == READY_Q_STATES_PATH:
            empty: dict[str, Any] = {"states_by_ready_queue": {}}
            return httpx.Response(200, json=empty if states is None else states)
        return httpx.Response(200, text=page)

    return FakeServer(handler)


def test_queue_summary_prints_kumomtas_two_tables() -> None:
    server = metrics_server()

    result = run(server, "queue-summary")

    assert result.exit_code == 0, result.output
    # The admin lists and the ready-queue states first, then the metrics, in the
    # order KumoMTA's kcli asks (reference 9.2).
    assert [(r.method, str(r.url)) for r in server.requests] == [
        ("GET", f"http://127.0.0.1:8000{SUSPEND_PATH}"),
        ("GET", f"http://127.0.0.1:8000{BOUNCE_PATH}"),
        ("GET", f"http://127.0.0.1:8000{SUSPEND_READY_Q_PATH}"),
        ("GET", f"http://127.0.0.1:8000{READY_Q_STATES_PATH}"),
        ("GET", f"http://127.0.0.1:8000{METRICS_PATH}"),
    ]
    # No ready queue; the scheduled ones by name (natural order), counts right-aligned
    # with separators, every line padded to the (empty) status column.
    assert result.stdout == (
        "SITE SOURCE PROTO D T C Q \n"
        "\n"
        "SCHEDULED QUEUE                 COUNT \n"
        "a\\b                                42 \n"
        "camp:acme@example.org!relay        42 \n"
        "example.com                 1,234,567 \n"
        'say "hi"@example.net                7 \n'
        "zero.example                        0 \n"
    )


def test_queue_summary_ready_queues_and_a_bounce() -> None:
    bounces = [{"id": ID_A, "campaign": None, "tenant": None, "domain": "example.com",
                "routing_domain": None, "reason": "too many complaints"}]  # fmt: skip
    server = metrics_server(READY_METRICS + METRICS, bounces=bounces)

    result = run(server, "queue-summary", "--by-volume", "--limit", "3")

    assert result.exit_code == 0, result.output
    # 日本 is four cells wide; 🗑️ two.
    assert result.stdout == (
        "SITE           SOURCE      PROTO               D T C     Q \n"
        "mx.example.com unspecified smtp_client 1,234,567 0 3 1,024 \n"
        "日本.example   unspecified smtp_client         2 5 0     0 \n"
        "\n"
        "SCHEDULED QUEUE                 COUNT                               \n"
        "example.com                 1,234,567 🗑\ufe0f bounce: too many complaints\n"
        "a\\b                                42                               \n"
        "camp:acme@example.org!relay        42                               \n"
    )


def test_queue_summary_marks_a_suspended_ready_queue() -> None:
    ready_suspends = [{"id": ID_A, "name": "unspecified->mx.example.com@smtp_client",
                       "reason": "maintenance", "duration": "4m", "expires": "x"}]  # fmt: skip
    server = metrics_server(READY_METRICS, ready_suspends=ready_suspends)

    result = run(server, "queue-summary")

    assert result.exit_code == 0, result.output
    # The status column is as wide as its marker: the emoji counts two cells.
    blank = " " * len("XXsuspend: maintenance")
    assert result.stdout.splitlines()[:3] == [
        "SITE           SOURCE      PROTO               D T C     Q " + blank,
        "mx.example.com unspecified smtp_client 1,234,567 0 3 1,024 🛑suspend: maintenance",
        "日本.example   unspecified smtp_client         2 5 0     0 " + blank,
    ]


def test_queue_summary_shows_the_states_of_a_ready_queue() -> None:
    name = "unspecified->mx.example.com@smtp_client"
    context = f"TooManyLeases for kumomta.connection_limit.{name}"
    ready_suspends = [{"id": ID_A, "name": name, "reason": "maintenance"}]
    states = {"states_by_ready_queue": {name: {"connection_limited": {
        "context": context, "since": "2026-12-01T15:50:37.868730446Z"}}}}  # fmt: skip
    server = metrics_server(READY_METRICS, ready_suspends=ready_suspends, states=states)

    result = run(server, "queue-summary")

    assert result.exit_code == 0, result.output
    status = (
        f"🛑suspend: maintenance, connection_limited: {context} @ 2026-12-01 15:50:37.868730446 UTC"
    )
    blank = " " * (len(status) + 1)  # the emoji counts two cells
    assert result.stdout.splitlines()[:3] == [
        "SITE           SOURCE      PROTO               D T C     Q " + blank,
        "mx.example.com unspecified smtp_client 1,234,567 0 3 1,024 " + status,
        "日本.example   unspecified smtp_client         2 5 0     0 " + blank,
    ]


@pytest.mark.parametrize(
    "states",
    [
        [],
        {"states_by_ready_queue": {"q": {"connection_limited": {"context": "c", "since": "x"}}}},
    ],
)
def test_queue_summary_refuses_a_ready_q_states_reply_of_another_shape(states: Any) -> None:
    result = run(metrics_server(READY_METRICS, states=states), "queue-summary")

    assert result.exit_code == 1
    assert result.stderr == f"unexpected reply from server: {json.dumps(states)}\n"


def test_suspend_ready_q_list_and_cancel() -> None:
    listed = [{"id": ID_A, "name": "unspecified->mx.example.com@smtp_client", "reason": "r",
               "duration": "4m 59s", "expires": "2026-01-01T00:05:00Z"}]  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"id": ID_A})
        if request.method == "GET":
            return httpx.Response(200, json=listed)
        if json.loads(request.content) == {"id": ID_A}:
            return httpx.Response(200, text=f"removed {ID_A}")
        return httpx.Response(404, text=f"suspend-ready-q entry {ID_B} not found")

    server = FakeServer(handler)
    name = "unspecified->mx.example.com@smtp_client"
    result = run(server, "suspend-ready-q", "--name", name, "--reason", "r", "--duration", "1h")
    assert (result.exit_code, result.stdout) == (0, f'{{\n  "id": "{ID_A}"\n}}\n')
    assert json.loads(server.requests[0].content) == {"name": name, "reason": "r", "duration": "1h"}
    assert server.requests[0].url.path == SUSPEND_READY_Q_PATH
    result = run(server, "suspend-ready-q-list")
    assert (result.exit_code, json.loads(result.stdout)) == (0, listed)
    assert result.stdout.startswith('[\n  {\n    "id": ')
    result = run(server, "suspend-ready-q-cancel", "--id", ID_A)
    assert (result.exit_code, result.stdout) == (0, f"removed {ID_A}\n")
    result = run(server, "suspend-ready-q-cancel", "--id", ID_B)
    assert result.exit_code == 1
    assert result.stderr == (
        f"request status 404: Not Found. Response body: suspend-ready-q entry {ID_B} not found\n"
    )
    assert run(server, "suspend-ready-q", "--reason", "r").exit_code == 2


def test_queue_summary_domain_keeps_the_queues_of_its_site() -> None:
    page = "\n".join(
        [
            'ready_count{service="smtp_client:unspecified->mx.example.com@smtp_client"} 1',
            'ready_count{service="smtp_client:unspecified->other.example@smtp_client"} 2',
            'scheduled_count{queue="example.com"} 1',
            'scheduled_count{queue="example.net"} 2',
            'scheduled_count{queue="camp:example.org"} 3',
            'scheduled_count{queue="other.example"} 4',
            'scheduled_count{queue="nxdomain.example"} 5',
            "",
        ]
    )
    sites = {
        "example.com": "mx.example.com",
        "example.net": "mx.example.com",
        "other.example": "other.example",
    }
    resolver = FakeResolver(sites)
    server = metrics_server(page)
    target = Target(transport=server.transport, resolver=resolver)
    result = CliRunner().invoke(cli, ["queue-summary", "--domain", "example.com"], obj=target)

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "SITE           SOURCE      PROTO       D T C Q \n"
        "mx.example.com unspecified smtp_client 0 0 0 1 \n"
        "\n"
        "SCHEDULED QUEUE COUNT \n"
        "example.com         1 \n"
        "example.net         2 \n"
    )
    # The domain first, then every scheduled queue's name.
    assert resolver.asked[0] == "example.com"
    assert sorted(resolver.asked[1:]) == sorted(
        ["camp:example.org", "example.com", "example.net", "nxdomain.example", "other.example"]
    )


def test_queue_summary_domain_that_does_not_resolve() -> None:
    target = Target(transport=metrics_server().transport, resolver=FakeResolver({}))
    result = CliRunner().invoke(cli, ["queue-summary", "--domain", "nope.example"], obj=target)

    assert result.exit_code == 1
    assert result.stderr == "MX lookup for nope.example failed after 0ns: NXDOMAIN\n"


def test_queue_summary_with_no_queues() -> None:
    result = run(metrics_server("# nothing here\n"), "queue-summary")

    assert result.stdout == "SITE SOURCE PROTO D T C Q \n\nSCHEDULED QUEUE COUNT \n"


def test_queue_summary_failure_is_reported() -> None:
    result = run(replying(401, text="not trusted"), "queue-summary")

    assert result.exit_code == 1
    assert result.stderr == "request status 401: Unauthorized. Response body: not trusted\n"


def test_queue_summary_refuses_a_negative_limit() -> None:
    result = run(metrics_server(), "queue-summary", "--limit", "-1")

    assert result.exit_code == 2
    assert "--limit" in result.stderr


class FakeResolver:
    """Resolves the domains of ``sites`` to those site names; any other is NXDOMAIN."""

    def __init__(self, sites: Mapping[str, str]) -> None:
        self.sites = sites
        self.asked: list[str] = []

    async def resolve(self, domain: str, *, mx_list: Sequence[str] = ()) -> Resolution:
        self.asked.append(domain)
        site = self.sites.get(domain)
        if site is None:
            return mx_lookup_failure(domain, DnsErrorKind.NXDOMAIN, "NXDOMAIN", 0)
        return Destination(domain, HostSource.MX, site, (), ())


# --- inspect-message and inspect-sched-q -------------------------------------------------

MESSAGE_REPLY = {
    "id": SPOOL_ID,
    "message": {
        "sender": "news@example.org",
        "recipient": "bücher@example.com",
        "meta": {"campaign": "spring", "tenant": "acme"},
        "data": None,
    },
}
QUEUE_REPLY = {
    "queue_name": "spring:acme@example.com",
    "messages": [],
    "num_scheduled": 0,
    "queue_config": {"max_age": "7days", "protocol": {"smtp": {"mx_list": []}}},
    "delayed_metric": 0,
    "now": "2026-01-01T00:00:01Z",
    "last_changed": "2026-01-01T00:00:00Z",
}


@pytest.mark.parametrize(
    ("args", "query"),
    [
        ([SPOOL_ID], {"id": SPOOL_ID}),
        (["--want-body", SPOOL_ID], {"id": SPOOL_ID, "want_body": "true"}),
        # Any spelling of a UUID, sent as kumo and KumoMTA write spool ids.
        (["D7EF132B-5D77-11EE-A8C8-000C29C33806"], {"id": SPOOL_ID}),
    ],
)
def test_inspect_message_asks_for_the_id_and_prints_the_reply_pretty(
    args: list[str], query: dict[str, str]
) -> None:
    server = replying(json_body=MESSAGE_REPLY)

    result = run(server, "inspect-message", *args)

    assert result.exit_code == 0, result.output
    (request,) = server.requests
    assert (request.method, request.url.path) == ("GET", INSPECT_MESSAGE_PATH)
    assert dict(request.url.params) == query
    assert (
        result.stdout_bytes
        == json.dumps(MESSAGE_REPLY, indent=2, ensure_ascii=False).encode() + b"\n"
    )
    assert result.stdout.startswith('{\n  "id": "d7ef132b5d7711eea8c8000c29c33806",\n')


def test_inspect_message_refuses_an_id_that_is_no_uuid_and_sends_nothing() -> None:
    server = replying(json_body=MESSAGE_REPLY)

    result = run(server, "inspect-message", "nope")

    assert result.exit_code == 2
    assert server.requests == []
    assert (
        "Invalid value for 'ID': invalid character: expected an optional prefix of `urn:uuid:`"
        " followed by [0-9a-fA-F-], found `n` at 1"
    ) in result.stderr


def test_inspect_message_of_an_unknown_id_fails_with_the_server_text() -> None:
    text = f"Error: no such message {SPOOL_ID}"

    result = run(replying(404, text=text), "inspect-message", SPOOL_ID)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"request status 404: Not Found. Response body: {text}\n"


@pytest.mark.parametrize(
    ("args", "query"),
    [
        ([], {"queue_name": "spring:acme@example.com", "limit": "5"}),
        (["--limit", "0"], {"queue_name": "spring:acme@example.com", "limit": "0"}),
        (
            ["--want-body", "--limit", "12"],
            {"queue_name": "spring:acme@example.com", "want_body": "true", "limit": "12"},
        ),
        (["--no-limit"], {"queue_name": "spring:acme@example.com"}),
        (
            ["--no-limit", "--want-body"],
            {"queue_name": "spring:acme@example.com", "want_body": "true"},
        ),
    ],
)
def test_inspect_sched_q_asks_for_five_messages_unless_told_and_prints_the_reply(
    args: list[str], query: dict[str, str]
) -> None:
    server = replying(json_body=QUEUE_REPLY)

    result = run(server, "inspect-sched-q", *args, "spring:acme@example.com")

    assert result.exit_code == 0, result.output
    (request,) = server.requests
    assert (request.method, request.url.path) == ("GET", INSPECT_QUEUE_PATH)
    assert dict(request.url.params) == query
    assert result.stdout == json.dumps(QUEUE_REPLY, indent=2) + "\n"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--no-limit", "--limit", "5"], "--no-limit cannot be combined with --limit"),
        (["--limit", "-1"], "Invalid value for '--limit'"),
        ([], "Missing argument 'QUEUE_NAME'"),
    ],
)
def test_inspect_sched_q_usage_errors_send_nothing(args: list[str], error: str) -> None:
    server = replying(json_body=QUEUE_REPLY)

    result = run(server, "inspect-sched-q", *args, *(["q.example"] if args else []))

    assert result.exit_code == 2
    assert error in result.stderr
    assert server.requests == []


def test_inspect_sched_q_of_an_unknown_queue_fails_with_the_server_text() -> None:
    result = run(
        replying(404, text="Error: no such queue q.example"), "inspect-sched-q", "q.example"
    )

    assert result.exit_code == 1
    assert result.stderr == (
        "request status 404: Not Found. Response body: Error: no such queue q.example\n"
    )


@pytest.mark.parametrize("command", [["inspect-message", SPOOL_ID], ["inspect-sched-q", "q"]])
def test_inspection_rejects_a_reply_that_is_not_an_object(command: list[str]) -> None:
    result = run(replying(json_body=[1, 2]), *command)

    assert result.exit_code == 1
    assert result.stderr == "unexpected reply from server: [1, 2]\n"


# --- the module as a program -----------------------------------------------------------


def test_module_runs_as_a_program() -> None:
    # Run from the checkout, whether or not the package is installed.
    root = Path(__file__).resolve().parents[2]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), *sys.path])}
    completed = subprocess.run(
        [sys.executable, "-m", "kumo.cli.kcli", "--help"],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert completed.returncode == 0
    assert completed.stdout.startswith("Usage: kcli ")
    for command in (
        "bounce",
        "bounce-list",
        "bounce-cancel",
        "inject",
        "queue-summary",
        "inspect-message",
        "inspect-sched-q",
    ):
        assert command in completed.stdout

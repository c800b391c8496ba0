"""kcli's kumo extensions against a fake server: `--dry-run` and `bounce --wait`."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import httpx
import pytest
from click.testing import CliRunner, Result
from rich.console import Console

from kumo.cli.kcli import BOUNCE_ASYNC_NOTE, DRY_RUN_NOTE, REBIND_DRY_RUN_NOTE, Target, cli
from kumo.http.routes import BOUNCE_PATH, REBIND_PATH, SUSPEND_PATH
from tests.cli.test_kcli import ID_A, ID_B, FakeServer, entry, replying

DRY_REPLY = {
    "dry_run": True,
    "queues": [
        {"queue": "acme@example.com", "messages": 1234},
        {"queue": "example.com", "messages": 7},
    ],
    "total_messages": 1241,
    "replaces": ID_B,
}


def invoke(server: FakeServer, *args: str, **target: object) -> Result:
    result = CliRunner().invoke(
        cli,
        list(args),
        obj=Target(transport=server.transport, **target),  # type: ignore[arg-type]
        env={"KUMO_KCLI_ENDPOINT": None, "KUMO_KCLI_TOKEN": None},
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


@pytest.mark.parametrize(("command", "path"), [("bounce", BOUNCE_PATH), ("suspend", SUSPEND_PATH)])
def test_dry_run_sends_the_flag_and_prints_a_table_and_the_total(command: str, path: str) -> None:
    server = replying(json_body=DRY_REPLY)

    result = invoke(server, command, "--domain", "example.com", "--reason", "r", "--dry-run")

    assert result.exit_code == 0, result.output
    (request,) = server.requests
    assert (request.method, request.url.path) == ("POST", path)
    body = json.loads(request.content)
    assert body["dry_run"] is True
    assert body["domain"] == "example.com"
    assert result.stderr == DRY_RUN_NOTE + "\n"
    assert result.stdout == (
        "QUEUE            MESSAGES\n"
        "acme@example.com    1,234\n"
        "example.com             7\n"
        "total: 1,241 message(s) in 2 queue(s)\n"
        f"would replace: {ID_B}\n"
    )


def test_a_rebind_dry_run_prints_where_each_queue_would_go() -> None:
    server = replying(
        json_body={
            "dry_run": True,
            "queues": [
                {"queue": "acme@example.com", "messages": 1234, "to": "x!relay", "flushed": False},
                {"queue": "example.com!relay", "messages": 7, "to": None, "flushed": True},
                {"queue": "z.example", "messages": 2, "to": None, "flushed": False},
            ],
            "total_messages": 1243,
            "total_moving": 1234,
        }
    )

    result = invoke(
        server,
        "rebind",
        "--domain",
        "example.com",
        "--set",
        "queue=x!relay",
        "--reason",
        "r",
        "--always-flush",
        "--dry-run",
    )

    assert result.exit_code == 0, result.output
    (request,) = server.requests
    assert (request.method, request.url.path) == ("POST", REBIND_PATH)
    body = json.loads(request.content)
    assert (body["dry_run"], body["data"], body["always_flush"]) == (
        True,
        {"queue": "x!relay"},
        True,
    )
    assert result.stderr == REBIND_DRY_RUN_NOTE + "\n"
    assert result.stdout == (
        "QUEUE             MESSAGES MOVES TO                          \n"
        "acme@example.com     1,234 x!relay                           \n"
        "example.com!relay        7 (unchanged; always_flush: due now)\n"
        "z.example                2 (unchanged)                       \n"
        "total: 1,243 message(s) in 3 queue(s), 1,234 moving\n"
    )


def test_a_rebind_without_dry_run_sends_no_flag() -> None:
    server = replying(json_body={})
    result = invoke(server, "rebind", "--everything", "--reason", "r")
    assert result.exit_code == 0, result.output
    assert "dry_run" not in json.loads(server.requests[0].content)


def test_without_dry_run_the_body_is_kumomtas() -> None:
    server = replying(json_body={"id": ID_A})
    assert invoke(server, "suspend", "--domain", "d", "--reason", "r").exit_code == 0
    assert "dry_run" not in json.loads(server.requests[0].content)


def test_a_dry_run_matching_nothing() -> None:
    reply = {"dry_run": True, "queues": [], "total_messages": 0, "replaces": None}
    result = invoke(
        replying(json_body=reply), "bounce", "--everything", "--reason", "r", "--dry-run"
    )
    assert result.exit_code == 0
    assert result.stdout == (
        "QUEUE MESSAGES\ntotal: 0 message(s) in 0 queue(s)\nwould replace: none\n"
    )


def test_a_server_that_ignores_dry_run_is_reported() -> None:
    # KumoMTA ignores unknown fields of a suspend: it would have suspended for real.
    result = invoke(
        replying(json_body={"id": ID_A}), "suspend", "--everything", "--reason", "r", "--dry-run"
    )
    assert result.exit_code == 1
    assert "did not answer the dry run" in result.stderr


def test_dry_run_and_wait_do_not_combine() -> None:
    server = replying(json_body={})
    result = invoke(server, "bounce", "--everything", "--reason", "r", "--dry-run", "--wait")
    assert result.exit_code == 2
    assert "nothing to --wait for" in result.stderr
    assert server.requests == []


# --- --wait ----------------------------------------------------------------------------


def progressing(*polls: tuple[dict[str, int], int] | None) -> FakeServer:
    """A server whose POST issues ID_A and whose successive GETs show ``polls``:
    (bounced per queue, pending), or None for a listing without the rule."""
    listings: Iterator[tuple[dict[str, int], int] | None] = iter(polls)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"id": ID_A, "bounced": {}, "total_bounced": 0})
        seen = next(listings)
        if seen is None:
            return httpx.Response(200, json=[])
        bounced, pending = seen
        listed = entry(ID_A, "r", "4m", sum(bounced.values()), bounced=bounced, pending=pending)
        return httpx.Response(200, json=[entry(ID_B, "other", "1h", 0, pending=5), listed])

    return FakeServer(handler)


def test_wait_polls_until_nothing_is_pending_then_prints_the_counts() -> None:
    server = progressing(
        ({}, 3000),
        ({"a.example": 1000}, 2000),
        ({"a.example": 1000}, 2000),
        ({"a.example": 2500, "b.example": 500}, 0),
    )
    pauses: list[float] = []

    result = invoke(
        server,
        "bounce",
        "--everything",
        "--reason",
        "r",
        "--wait",
        "--interval",
        "0.5",
        pause=pauses.append,
    )

    assert result.exit_code == 0, result.output
    assert [request.method for request in server.requests] == ["POST", "GET", "GET", "GET", "GET"]
    assert pauses == [0.5, 0.5, 0.5]
    # Not a terminal: a plain line each time the counts change, no async note.
    assert result.stderr == (
        "bounced 0, pending 3,000\nbounced 1,000, pending 2,000\nbounced 3,000, pending 0\n"
    )
    assert result.stdout == (
        f"{ID_A}\nQUEUE     BOUNCED\na.example   2,500\nb.example     500\ntotal bounced: 3,000\n"
    )


def test_wait_draws_a_progress_bar_on_a_terminal() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=80)
    server = progressing(({}, 10), ({"a.example": 10}, 0))

    result = invoke(
        server,
        "bounce",
        "--everything",
        "--reason",
        "r",
        "--wait",
        console=console,
        pause=lambda seconds: None,
    )

    assert result.exit_code == 0, result.output
    assert "bouncing" in screen.getvalue()
    assert result.stderr == ""
    assert result.stdout.endswith("total bounced: 10\n")


def test_ctrl_c_stops_waiting_not_the_rule() -> None:
    server = progressing(({}, 10), ({}, 10))

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    result = invoke(server, "bounce", "--everything", "--reason", "r", "--wait", pause=interrupted)

    assert result.exit_code == 130
    assert f"rule {ID_A} stays in force" in result.stderr
    # No DELETE: the rule goes on.
    assert [request.method for request in server.requests] == ["POST", "GET"]


def test_wait_for_a_rule_that_ends_first_or_is_never_listed() -> None:
    ended = invoke(
        progressing(({"a.example": 4}, 6), None),
        "bounce",
        "--everything",
        "--reason",
        "r",
        "--wait",
        pause=lambda seconds: None,
    )
    assert ended.exit_code == 1
    assert "ended (expired, cancelled or replaced) before its sweep was done" in ended.stderr
    assert "6 message(s) were still owed" in ended.stderr
    assert ended.stdout.endswith("a.example       4\ntotal bounced: 4\n")

    never = invoke(
        progressing(None), "bounce", "--everything", "--reason", "r", "--duration", "0", "--wait"
    )
    assert never.exit_code == 1
    assert f"rule {ID_A} is not listed" in never.stderr


def test_wait_needs_a_server_that_reports_pending() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"id": ID_A, "bounced": {}, "total_bounced": 0})
        return httpx.Response(200, json=[entry(ID_A, "r", "4m", 0)])

    result = invoke(FakeServer(handler), "bounce", "--everything", "--reason", "r", "--wait")
    assert result.exit_code == 1
    assert "no `pending`" in result.stderr


def test_without_wait_the_note_and_the_id_are_unchanged() -> None:
    result = invoke(progressing(), "bounce", "--everything", "--reason", "r")
    assert (result.stdout, result.stderr) == (f"{ID_A}\n", BOUNCE_ASYNC_NOTE + "\n")

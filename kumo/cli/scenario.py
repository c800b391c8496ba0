"""``kumo scenario``: list the scenario library, run scenarios in-process or against a server.

In-process (the default) each file runs on a fresh engine with a virtual clock: an hour
of waits takes milliseconds and a run repeats exactly. With ``--endpoint URL`` the same
files run over HTTP against a running server (kumo or KumoMTA) in real time, SMTP going
to ``--smtp`` and each destination being Postfix's smtp-sink at its ``--sink`` address.
A scenario is named by its path, or by its name in the library that ships with kumo
(:mod:`kumo.scenario.library`).
"""

from __future__ import annotations

import ipaddress
import sys
from importlib.resources.abc import Traversable
from pathlib import Path

import click

from kumo.cli.common import HELP
from kumo.config import ConfigError, parse_listen
from kumo.scenario.format import ScenarioError, parse_scenario
from kumo.scenario.library import UnknownScenarioError, library_file, library_names
from kumo.scenario.report import format_result, format_summary, junit_xml
from kumo.scenario.runner import (
    LIVE_SETTLE_TIMEOUT,
    REQUEST_TIMEOUT,
    ScenarioResult,
    run_in_process,
    run_live,
)


def _header(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[str, str]]:
    headers = []
    for value in values:
        name, colon, text = value.partition(":")
        if not colon or not name.strip():
            raise click.BadParameter(f"{value!r} is not NAME: VALUE", ctx, param)
        headers.append((name.strip(), text.strip()))
    return headers


def _ip_and_port(text: str) -> tuple[str, int] | None:
    """``IP:PORT`` (``[v6]:PORT``), port not 0; None if ``text`` is not one."""
    try:
        host, port = parse_listen(text)
        ipaddress.ip_address(host)
    except (ConfigError, ValueError):
        return None
    return (host, port) if port else None


def _smtp(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    address = _ip_and_port(value)
    if address is None:
        raise click.BadParameter(f"{value!r} is not IP:PORT", ctx, param)
    return address


def _sinks(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, tuple[str, int]]:
    sinks: dict[str, tuple[str, int]] = {}
    for value in values:
        domain, _, text = value.partition("=")
        domain = domain.strip().lower()
        address = _ip_and_port(text.strip())
        if not domain or address is None:
            raise click.BadParameter(f"{value!r} is not DOMAIN=IP:PORT", ctx, param)
        if domain in sinks:
            raise click.BadParameter(f"{domain} is given twice", ctx, param)
        sinks[domain] = address
    return sinks


def _endpoint(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise click.BadParameter(f"{value!r} is not an http:// or https:// URL", ctx, param)
    return value


class NoSuchScenarioError(click.ClickException):
    """An argument of ``kumo scenario run`` that names no file and no library scenario.

    One line on stderr (``Error: ...``), without the usage text of a
    :class:`click.UsageError`, and exit status 2, as for any wrong command line.
    """

    exit_code = 2


def _resolve(argument: str) -> tuple[str, Path | Traversable]:
    """``(stem, file)`` for a scenario argument: an existing file, else a library name."""
    path = Path(argument)
    if path.is_file():
        return path.stem, path
    try:
        found = library_file(argument)
    except UnknownScenarioError:
        raise NoSuchScenarioError(
            f"{argument!r} is neither a scenario file nor a library scenario; "
            "`kumo scenario list` lists the library"
        ) from None
    return found.name.removesuffix(".toml"), found


@click.group(context_settings=HELP)
def scenario() -> None:
    """Scenario scripts: rehearse bounces, pin behaviour down (docs/scenarios.md)."""


@scenario.command("list")
def list_() -> None:
    """List the scenario library: each name, and what the scenario shows.

    Run one from any directory with ``kumo scenario run NAME``.
    """
    names = library_names()
    width = max(map(len, names), default=0)
    for name in names:
        file = library_file(name)
        summary = parse_scenario(file.read_text(encoding="utf-8"), str(file)).summary
        click.echo(f"{name:<{width}}  {summary}".rstrip())


@scenario.command()
@click.argument("scenarios", nargs=-1, required=True, metavar="FILE_OR_NAME...")
@click.option(
    "--endpoint",
    metavar="URL",
    default=None,
    callback=_endpoint,
    help="Run against the server at URL in real time instead of in-process.",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With --endpoint: the server's delivery-log directory, for record checks.",
)
@click.option(
    "--restart-command",
    metavar="CMD",
    default=None,
    help="With --endpoint: a shell command that restarts the server (else restarts are skipped).",
)
@click.option(
    "--header",
    "headers",
    multiple=True,
    metavar="'NAME: VALUE'",
    callback=_header,
    help="With --endpoint: a header for every request (e.g. Authorization). Repeatable.",
)
@click.option(
    "--smtp",
    metavar="IP:PORT",
    default=None,
    callback=_smtp,
    help="With --endpoint: the server's SMTP listener, for messages sent over SMTP.",
)
@click.option(
    "--sink",
    "sinks",
    multiple=True,
    metavar="DOMAIN=IP:PORT",
    callback=_sinks,
    help="With --endpoint: run Postfix's smtp-sink at IP:PORT as DOMAIN's destination "
    "(the server delivers DOMAIN there). Repeatable.",
)
@click.option(
    "--settle-timeout",
    type=click.FloatRange(min=0),
    default=LIVE_SETTLE_TIMEOUT,
    show_default=True,
    help="With --endpoint: seconds to retry an expectation before it fails.",
)
@click.option(
    "--timeout",
    "request_timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=REQUEST_TIMEOUT,
    show_default=True,
    help="With --endpoint: seconds a request may take before the step fails.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="In-process: keep each scenario's engine data in DIR/<file name> (for kumo audit).",
)
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the results as JUnit XML to this file.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show every check, not only failures.")
def run(
    scenarios: tuple[str, ...],
    endpoint: str | None,
    log_dir: Path | None,
    restart_command: str | None,
    headers: list[tuple[str, str]],
    smtp: tuple[str, int] | None,
    sinks: dict[str, tuple[str, int]],
    settle_timeout: float,
    request_timeout: float,
    data_dir: Path | None,
    junit_path: Path | None,
    verbose: bool,
) -> None:
    """Run scenarios, in-process on virtual time, or against --endpoint.

    Each argument is a scenario file, or else the name of a library scenario
    (`kumo scenario list`). Each step is reported PASS, FAIL (with expected and actual
    values) or SKIP. The exit status is 1 if any step fails or any file is malformed,
    2 for an argument that names no scenario, else 0.
    """
    if endpoint is None:
        for option, value in (
            ("--log-dir", log_dir),
            ("--restart-command", restart_command),
            ("--header", headers or None),
            ("--smtp", smtp),
            ("--sink", sinks or None),
        ):
            if value is not None:
                raise click.UsageError(f"{option} needs --endpoint")
    elif data_dir is not None:
        raise click.UsageError("--data-dir is for in-process runs; it conflicts with --endpoint")
    # Every argument is resolved before anything runs, so a typo costs no half run.
    files = [_resolve(argument) for argument in scenarios]
    results: list[ScenarioResult] = []
    for stem, file in files:
        source = str(file)
        try:
            parsed = parse_scenario(file.read_text(encoding="utf-8"), source)
        except (ScenarioError, UnicodeDecodeError, OSError) as error:
            message = str(error) if isinstance(error, ScenarioError) else f"{source}: {error}"
            result = ScenarioResult(None, source, endpoint or "in-process", error=message)
        else:
            if endpoint is None:
                directory = None
                if data_dir is not None:
                    directory = data_dir / stem
                    if directory.exists() and any(directory.iterdir()):
                        raise click.UsageError(f"{directory} is not empty")
                result = run_in_process(parsed, directory)
            else:
                result = run_live(
                    parsed,
                    endpoint,
                    log_dir=log_dir,
                    restart_command=restart_command,
                    headers=headers,
                    settle_timeout=settle_timeout,
                    request_timeout=request_timeout,
                    smtp=smtp,
                    sinks=sinks,
                )
        results.append(result)
        click.secho(
            format_result(result, verbose=verbose),
            fg=None if result.passed else "red",
        )
        click.echo()
    click.secho(format_summary(results), fg="green" if all(r.passed for r in results) else "red")
    if junit_path is not None:
        junit_path.write_bytes(junit_xml(results))
    sys.exit(0 if all(result.passed for result in results) else 1)

"""``kumo scenario run``: run scenario scripts in-process or against a live server.

In-process (the default) each file runs on a fresh engine with a virtual clock: an hour
of waits takes milliseconds and a run repeats exactly. With ``--endpoint URL`` the same
files run over HTTP against a running server (kumo or KumoMTA) in real time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kumo.scenario.format import ScenarioError, parse_scenario
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


def _endpoint(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise click.BadParameter(f"{value!r} is not an http:// or https:// URL", ctx, param)
    return value


@click.group()
def scenario() -> None:
    """Scenario scripts: rehearse bounces, pin behaviour down (docs/scenarios.md)."""


@scenario.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
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
    files: tuple[Path, ...],
    endpoint: str | None,
    log_dir: Path | None,
    restart_command: str | None,
    headers: list[tuple[str, str]],
    settle_timeout: float,
    request_timeout: float,
    data_dir: Path | None,
    junit_path: Path | None,
    verbose: bool,
) -> None:
    """Run scenario FILES, in-process on virtual time, or against --endpoint.

    Each step is reported PASS, FAIL (with expected and actual values) or SKIP. The
    exit status is 1 if any step fails or any file is malformed, else 0.
    """
    if endpoint is None:
        for option, value in (
            ("--log-dir", log_dir),
            ("--restart-command", restart_command),
            ("--header", headers or None),
        ):
            if value is not None:
                raise click.UsageError(f"{option} needs --endpoint")
    elif data_dir is not None:
        raise click.UsageError("--data-dir is for in-process runs; it conflicts with --endpoint")
    results: list[ScenarioResult] = []
    for path in files:
        source = str(path)
        try:
            parsed = parse_scenario(path.read_text(encoding="utf-8"), source)
        except (ScenarioError, UnicodeDecodeError, OSError) as error:
            message = str(error) if isinstance(error, ScenarioError) else f"{source}: {error}"
            result = ScenarioResult(None, source, endpoint or "in-process", error=message)
        else:
            if endpoint is None:
                directory = None
                if data_dir is not None:
                    directory = data_dir / path.stem
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

"""What every command of ``kumo``, ``kumod`` and ``kcli`` offers: ``-h`` beside
``--help``, and ``--version``."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

import click

HELP: Final[dict[str, Any]] = {"help_option_names": ["-h", "--help"]}
"""``context_settings`` of every command: ``-h`` too (subcommands inherit it)."""


def kumo_version() -> str:
    """The installed package's version (``unknown`` when it runs from a bare tree)."""
    try:
        return version("kumo")
    except PackageNotFoundError:
        return "unknown"


def _print_version(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"{ctx.find_root().info_name} {kumo_version()}")
        ctx.exit()


def with_version(command: click.Command) -> click.Command:
    """Give ``command`` (and, for a group, each of its subcommands) ``--version``."""
    if not any("--version" in getattr(p, "opts", ()) for p in command.params):
        command.params.append(
            click.Option(
                ["--version"],
                is_flag=True,
                expose_value=False,
                is_eager=True,
                callback=_print_version,
                help="Show kumo's version and exit.",
            )
        )
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            with_version(sub)
    return command

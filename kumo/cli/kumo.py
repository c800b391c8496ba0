"""The ``kumo`` command: one group, one module per subcommand."""

from __future__ import annotations

import importlib

import click

from kumo.cli.common import HELP, with_version

# name -> "module:attribute" of a click command; imported only when used, so that
# `kumo serve` does not pay for the audit or scenario code.
_SUBCOMMANDS = {
    "serve": "kumo.cli.serve:serve",
    "audit": "kumo.cli.audit:audit",
    "replay": "kumo.cli.audit:replay",
    "scenario": "kumo.cli.scenario:scenario",
    "compact": "kumo.cli.compact:compact",
}


def _load(name: str) -> click.Command:
    module_name, attribute = _SUBCOMMANDS[name].split(":")
    command = getattr(importlib.import_module(module_name), attribute)
    assert isinstance(command, click.Command)
    return command


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return with_version(_load(cmd_name)) if cmd_name in _SUBCOMMANDS else None


@with_version
@click.group(cls=_LazyGroup, context_settings=HELP)
def main() -> None:
    """kumo: an event-sourced administrative bounce control plane for MTAs."""


def kumod() -> None:
    """The ``kumod`` console script: ``kumo serve`` under another name.

    The serve command runs on its own (not through the group), so that its usage and
    error lines read ``kumod [OPTIONS]``, not ``kumod serve [OPTIONS]``.
    """
    with_version(_load("serve")).main(prog_name="kumod")

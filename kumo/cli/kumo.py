"""The ``kumo`` command: one group, one module per subcommand."""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command; imported only when used, so that
# `kumo serve` does not pay for the audit or scenario code.
_SUBCOMMANDS = {
    "serve": "kumo.cli.serve:serve",
    "audit": "kumo.cli.audit:audit",
    "replay": "kumo.cli.audit:replay",
    "scenario": "kumo.cli.scenario:scenario",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=_LazyGroup)
def main() -> None:
    """kumo: an event-sourced administrative bounce control plane for MTAs."""


def kumod() -> None:
    """The ``kumod`` console script: ``kumo serve`` under another name."""
    main(["serve", *__import__("sys").argv[1:]])

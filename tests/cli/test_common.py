"""What every command offers (issue 12): ``-h`` beside ``--help``, and ``--version``;
and a data directory that cannot be used is one line and exit 1, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kumo.cli.common import kumo_version, with_version
from kumo.cli.kcli import cli as kcli
from kumo.cli.kumo import main as kumo

KUMO_COMMANDS = [[], ["serve"], ["audit"], ["replay"], ["scenario"], ["scenario", "run"],
                 ["scenario", "list"], ["compact"]]  # fmt: skip
KCLI_COMMANDS = [[], ["bounce"], ["bounce-list"], ["suspend"], ["rebind"], ["queue-summary"]]


@pytest.mark.parametrize("words", KUMO_COMMANDS)
def test_every_kumo_command_has_short_help_and_a_version(words: list[str]) -> None:
    runner = CliRunner()
    helped = runner.invoke(kumo, [*words, "-h"], prog_name="kumo")
    assert helped.exit_code == 0, helped.output
    assert helped.output.startswith(f"Usage: kumo {' '.join(words)}".rstrip())
    shown = runner.invoke(kumo, [*words, "--version"], prog_name="kumo")
    assert (shown.exit_code, shown.output) == (0, f"kumo {kumo_version()}\n")


@pytest.mark.parametrize("words", KCLI_COMMANDS)
def test_every_kcli_command_has_short_help_and_a_version(words: list[str]) -> None:
    runner = CliRunner()
    command = with_version(kcli)
    assert runner.invoke(command, [*words, "-h"], prog_name="kcli").exit_code == 0
    shown = runner.invoke(command, [*words, "--version"], prog_name="kcli")
    assert (shown.exit_code, shown.output) == (0, f"kcli {kumo_version()}\n")


def test_a_data_directory_under_a_file_is_one_line_and_exit_1(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "kumo.cli.serve", "--data-dir", str(afile / "sub")),
            *("--listen", "127.0.0.1:0", "--smtp-listen", "off"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"kumo: cannot use the data directory {afile / 'sub'}: not a directory ({afile / 'sub'})\n"
    )

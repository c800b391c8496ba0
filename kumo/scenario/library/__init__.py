"""The scenario library: scenario files that ship inside the package, found by name.

Each ``NAME.toml`` beside this module is a scenario (docs/scenarios.md) that the test
suite runs. ``kumo scenario list`` lists them and ``kumo scenario run NAME`` runs one
from any directory. The files are package data (``pyproject.toml`` says so) read through
:mod:`importlib.resources`, so they are found alike in a checkout, an editable install
and an installed wheel.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Final

__all__ = ["UnknownScenarioError", "library_file", "library_names"]

SUFFIX: Final = ".toml"


class UnknownScenarioError(LookupError):
    """No scenario of the library has this name."""


def _files() -> dict[str, Traversable]:
    return {
        entry.name.removesuffix(SUFFIX): entry
        for entry in files(__name__).iterdir()
        if entry.name.endswith(SUFFIX) and entry.is_file()
    }


def library_names() -> tuple[str, ...]:
    """The names of the library's scenarios (their file names without ``.toml``), sorted."""
    return tuple(sorted(_files()))


def library_file(name: str) -> Traversable:
    """The file of the library scenario ``name`` (``sweep`` or ``sweep.toml``).

    Only the library's own names are found, so a name can never reach a file outside
    it. Raises :class:`UnknownScenarioError` for any other name.
    """
    found = _files().get(name.removesuffix(SUFFIX))
    if found is None:
        raise UnknownScenarioError(name)
    return found

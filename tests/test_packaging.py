"""pyproject.toml and constraints.txt: ranges for users, one pinned set for CI, in agreement."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
    return project


def _requirements() -> list[Requirement]:
    project = _project()
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return [Requirement(text) for text in declared]


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        name, equals, version = line.partition("==")
        assert equals, f"constraints.txt: {line!r} is not name==version"
        pins[canonicalize_name(name)] = Version(version)
    return pins


@pytest.mark.parametrize("requirement", _requirements(), ids=str)
def test_dependency_is_a_range_that_its_pin_satisfies(requirement: Requirement) -> None:
    # A range lets kumo be installed beside other packages; the pin keeps CI reproducible.
    assert not any(spec.operator in ("==", "===") for spec in requirement.specifier), (
        f"{requirement} pins an exact version: state a compatible range"
    )
    assert requirement.specifier, f"{requirement} states no range at all"
    pinned = _pins().get(canonicalize_name(requirement.name))
    assert pinned is not None, f"constraints.txt does not pin {requirement.name}"
    assert requirement.specifier.contains(pinned, prereleases=True), (
        f"constraints.txt pins {requirement.name}=={pinned}, outside {requirement.specifier}"
    )


def test_prometheus_client_is_a_runtime_dependency() -> None:
    names = {canonicalize_name(Requirement(text).name) for text in _project()["dependencies"]}
    assert "prometheus-client" in names

"""The examples of docs/scenarios.md are valid scenario TOML."""

from __future__ import annotations

import re
from pathlib import Path

from kumo.scenario.format import parse_scenario

DOC = Path(__file__).resolve().parents[2] / "docs" / "scenarios.md"


def test_doc_examples_parse_as_one_scenario() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 8
    scenario = parse_scenario("\n".join(blocks), str(DOC))
    kinds = {step.kind for step in scenario.steps}
    assert kinds == {
        "inject",
        "traffic",
        "destination",
        "bounce",
        "suspend",
        "rebind",
        "suspend-ready-q",
        "cancel",
        "wait",
        "restart",
        "request",
        "expect",
    }
    assert scenario.delivers
    assert scenario.config is not None

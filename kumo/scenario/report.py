"""Scenario results as text for people and as JUnit XML for CI. No I/O: strings out."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Final

from kumo.model.duration import format_duration
from kumo.scenario.expect import Check, Verdict
from kumo.scenario.runner import ScenarioResult, StepResult

_MARKS: Final = {Verdict.PASSED: "PASS", Verdict.FAILED: "FAIL", Verdict.SKIPPED: "SKIP"}


def describe_check(check: Check) -> str:
    """``what: expected X, actual Y``."""
    if check.verdict is Verdict.SKIPPED:
        return f"{check.what}: {check.actual}"
    return f"{check.what}: expected {check.expected}, actual {check.actual}"


def _step_lines(result: StepResult, *, verbose: bool) -> list[str]:
    step = result.step
    where = f" (line {step.line})" if step.line is not None else ""
    summary = "" if step.name is not None and not verbose else f": {step.summary}"
    lines = [f"  {_MARKS[result.verdict]}  {step.label}{summary}{where}"]
    for check in result.checks:
        if verbose or check.verdict is not Verdict.PASSED:
            mark = "ok  " if check.verdict is Verdict.PASSED else ""
            lines.append(f"          {mark}{describe_check(check)}")
    for note in result.notes:
        if result.verdict is not Verdict.SKIPPED:
            lines.append(f"          note: {note}")
    return lines


def format_result(result: ScenarioResult, *, verbose: bool = False) -> str:
    """A scenario's report: a header, a line per step, the failed checks, a verdict."""
    title = f'scenario "{result.name}" ({result.source}) on {result.target}'
    lines = [title]
    lines.extend(f"  note: {note}" for note in result.notes)
    for step in result.steps:
        lines.extend(_step_lines(step, verbose=verbose))
    if result.error is not None:
        lines.append(f"  ERROR  {result.error}")
    counts = {verdict: 0 for verdict in Verdict}
    for step in result.steps:
        counts[step.verdict] += 1
    tally = ", ".join(
        f"{counts[verdict]} {verdict.value}" for verdict in Verdict if counts[verdict]
    )
    timing = f"{result.seconds:.2f} s"
    if result.virtual_seconds is not None:
        virtual = format_duration(round(result.virtual_seconds * 1_000_000) * 1_000)
        timing += f", {virtual} of virtual time"
    verdict = "PASSED" if result.passed else "FAILED"
    lines.append(f"  {verdict}: {len(result.steps)} steps ({tally or 'none run'}) in {timing}")
    return "\n".join(lines)


def format_summary(results: Sequence[ScenarioResult]) -> str:
    passed = sum(1 for result in results if result.passed)
    failed = len(results) - passed
    noun = "scenario" if len(results) == 1 else "scenarios"
    text = f"{len(results)} {noun}: {passed} passed, {failed} failed"
    if failed:
        names = ", ".join(result.name for result in results if not result.passed)
        text += f" ({names})"
    return text


def junit_xml(results: Sequence[ScenarioResult], *, suite_name: str = "kumo scenarios") -> bytes:
    """JUnit XML: a ``testsuite`` per scenario, a ``testcase`` per step.

    A failed check is a ``failure`` (its message says expected and actual); a scenario
    that could not run is an ``error``; a skipped step is ``skipped``.
    """
    root = ET.Element("testsuites", name=suite_name)
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    for result in results:
        suite = ET.SubElement(root, "testsuite", name=result.name, file=result.source)
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="target", value=result.target)
        if result.notes:
            ET.SubElement(suite, "system-out").text = "\n".join(result.notes)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for step in result.steps:
            counts["tests"] += 1
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"scenario.{result.name}",
                name=step.step.label,
                file=result.source,
                time=f"{step.seconds:.3f}",
            )
            if step.step.line is not None:
                case.set("line", str(step.step.line))
            if step.verdict is Verdict.FAILED:
                counts["failures"] += 1
                failures = [describe_check(check) for check in step.failures]
                failure = ET.SubElement(
                    case, "failure", message=failures[0], type="ScenarioFailure"
                )
                failure.text = "\n".join(failures + [f"note: {note}" for note in step.notes])
            elif step.verdict is Verdict.SKIPPED:
                counts["skipped"] += 1
                ET.SubElement(case, "skipped", message="; ".join(step.notes) or "skipped")
            else:
                text = "\n".join(describe_check(check) for check in step.checks)
                if text:
                    ET.SubElement(case, "system-out").text = text
        if result.error is not None:
            counts["tests"] += 1
            counts["errors"] += 1
            case = ET.SubElement(
                suite, "testcase", classname=f"scenario.{result.name}", name="scenario", time="0"
            )
            ET.SubElement(
                case, "error", message=result.error, type="ScenarioError"
            ).text = result.error
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", f"{result.seconds:.3f}")
        total_time += result.seconds
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("time", f"{total_time:.3f}")
    ET.indent(root)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document + b"\n"

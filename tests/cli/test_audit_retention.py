"""``kumo audit``, ``kumo replay`` and ``kumo compact`` on a log that retention cut."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from kumo.cli.kumo import main
from kumo.model.rfc3339 import format_rfc3339
from kumo.store.archive import HistoryCut, archive_segments, history_cut
from kumo.store.history import HistoryView
from kumo.store.layout import ARCHIVE
from kumo.store.verify import verify_data_dir
from tests.history_days import DAY, days_of_history, serve_day


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[str]]]:
    """Six days of traffic, two kept: the first days' history was deleted."""
    data_dir = tmp_path_factory.mktemp("retained")
    return data_dir, days_of_history(data_dir, 6, retention=2 * DAY)


def cut_of(data_dir: Path) -> HistoryCut:
    cut = history_cut(data_dir / ARCHIVE)
    assert cut is not None
    return cut


def kumo(*arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(arguments))
    return result.exit_code, result.output


def test_the_story_of_a_message_deleted_by_retention_says_so(
    history: tuple[Path, list[list[str]]],
) -> None:
    data_dir, ids = history
    cut = cut_of(data_dir)
    code, output = kumo("audit", "--data-dir", str(data_dir), "--message", ids[0][0])
    assert code == 1
    assert f"message {ids[0][0]}: before the cut" in output
    assert (
        f"message {ids[0][0]} is not in the history kept: the events up to seq {cut.seq:,} "
        f"(committed up to {format_rfc3339(cut.time)}) were deleted by retention "
        "([log] archive_retention), and a message received and gone before then left no "
        "trace"
    ) in output
    assert "not in the log" not in output


def test_the_story_of_a_message_queued_at_the_cut_comes_from_the_base(
    history: tuple[Path, list[list[str]]],
) -> None:
    data_dir, ids = history
    cut = cut_of(data_dir)
    with HistoryView(data_dir) as view:
        base = view.base()
    assert base is not None
    assert base.queues
    queued = {mid for queue in base.queues.values() for mid in queue.ids()}
    # A message received before the cut and still queued there.
    message_id = next(mid for day_ids in ids for mid in day_ids if mid in queued)
    code, output = kumo(
        "audit", "--data-dir", str(data_dir), "--message", message_id, "--format", "json"
    )
    assert code == 0, output
    story = orjson.loads(output)
    [received] = story["received"]
    assert received["seq"] <= cut.seq
    assert received["protocol"] is None
    assert story["status"] in ("queued", "bounced")
    code, table = kumo("audit", "--data-dir", str(data_dir), "--message", message_id)
    assert "(its event was deleted by retention: as the base at the cut holds it)" in table


def test_the_timeline_still_tells_every_rule(history: tuple[Path, list[list[str]]]) -> None:
    data_dir, _ = history
    cut = cut_of(data_dir)
    code, output = kumo("audit", "--data-dir", str(data_dir), "--format", "json")
    assert code == 0, output
    timeline = orjson.loads(output)
    assert timeline["log"]["cut"] == {"seq": cut.seq, "time": format_rfc3339(cut.time)}
    assert timeline["log"]["first_seq"] == cut.seq + 1
    issued = [a for a in timeline["actions"] if a["action"] == "issued"]
    # One rule a day, the deleted days' included, each with what it bounced.
    assert len(issued) == 6
    assert all(a["total_bounced"] > 0 for a in issued)
    assert sum(1 for a in issued if a["seq"] <= cut.seq) >= 3
    code, table = kumo("audit", "--data-dir", str(data_dir))
    assert f"the events up to seq {cut.seq:,}" in table
    assert "were deleted by retention" in table


def test_a_moment_before_the_cut_is_refused_in_one_line(
    history: tuple[Path, list[list[str]]],
) -> None:
    data_dir, _ = history
    cut = cut_of(data_dir)
    before = format_rfc3339(cut.time - 1)
    for option in ("--at", "--until"):
        code, output = kumo("audit", "--data-dir", str(data_dir), option, before)
        assert code == 1
        [line] = output.strip().splitlines()
        assert f"{option} {before} is before the history kept" in line
        assert f"ask about {format_rfc3339(cut.time)} or later" in line
    code, output = kumo("audit", "--data-dir", str(data_dir), "--at", format_rfc3339(cut.time))
    assert code == 0, output


def test_replay_and_verify_start_from_the_base(history: tuple[Path, list[list[str]]]) -> None:
    data_dir, _ = history
    cut = cut_of(data_dir)
    code, output = kumo("replay", "--data-dir", str(data_dir), "--format", "json")
    assert code == 0, output
    state = orjson.loads(output)
    report = verify_data_dir(data_dir)
    assert state["queued_total"] == report.queued
    code, output = kumo("replay", "--data-dir", str(data_dir), "--verify")
    assert code == 0, output
    assert f"expected gapless from {cut.seq + 1:,} (the retention cut)" in output
    assert f"({report.queued_at_cut:,} of them queued at the cut) = " in output
    assert f"retention     the events up to seq {cut.seq:,}" in output
    assert f"archive/{cut.path.name}" in output
    code, output = kumo("replay", "--data-dir", str(data_dir), "--verify", "--format", "json")
    assert orjson.loads(output)["cut"]["seq"] == cut.seq


def test_compact_takes_the_retention_from_its_option_or_the_config(tmp_path: Path) -> None:
    days_of_history(tmp_path, 4, retention=None)
    serve_day(tmp_path, 40)
    code, output = kumo("compact", "--data-dir", str(tmp_path), "--archive-retention", "forever")
    assert code == 2
    assert "--archive-retention" in output
    assert "'forever' is not a duration" in output
    config = tmp_path / "kumo.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n[log]\narchive_retention = "1day"\n')
    code, output = kumo("compact", "--config", str(config))
    assert code == 0, output
    assert "archive segment(s) past retention deleted" in output
    cut = cut_of(tmp_path)
    # By the wall clock (later than these days of January and February 2026) every
    # segment up to the newest snapshot is past a day: the log now begins in the live
    # store.
    assert archive_segments(tmp_path / ARCHIVE) == []
    with HistoryView(tmp_path) as view:
        assert (view.first_seq, view.archived_through) == (cut.seq + 1, cut.seq)
    assert verify_data_dir(tmp_path).violations == []
    code, output = kumo("compact", "--data-dir", str(tmp_path))
    assert code == 0, output
    assert f"the log begins after seq {cut.seq:,} (retention)" in output
    config.write_text('[log]\narchive_retention = "soon"\n')
    code, output = kumo("compact", "--data-dir", str(tmp_path), "--config", str(config))
    assert code == 2
    assert "log.archive_retention: 'soon' is not a duration" in output

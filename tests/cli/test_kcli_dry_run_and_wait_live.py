"""`kcli bounce --dry-run` and `kcli bounce --wait` against a real ``kumo serve``."""

from __future__ import annotations

import re
from pathlib import Path

from kumo.model.events import Bounced, BounceIssued
from tests.cli.test_kcli_live import SENDER, kcli, live_rules, scheduled_counts, server
from tests.live_server import last_seq, logged_events

__all__ = ["server"]  # the fixture, imported for the tests below

DOMAINS = 10
PER_DOMAIN = 1000
TOTAL = DOMAINS * PER_DOMAIN
_PROGRESS = re.compile(r"bounced ([\d,]+), pending ([\d,]+)")


def test_dry_run_then_wait_follows_the_sweep_over_several_polls(server: tuple[str, Path]) -> None:
    url, data = server
    recipients = [arg for n in range(DOMAINS) for arg in ("--to", f"user@d{n:02}.example")]
    run = kcli(url, "inject", "--from", SENDER, *recipients, "--count", str(PER_DOMAIN))
    assert run.status == 0, run.stderr
    assert run.stdout == f"injected {TOTAL} message(s)\n"

    # -- the dry run: what it would match, and nothing written ---------------------------
    before = last_seq(data)
    dry = kcli(url, "bounce", "--everything", "--reason", "purge", "--dry-run")
    assert dry.status == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "MESSAGES"]
    assert lines[1:-2] == [f"d{n:02}.example    1,000" for n in range(DOMAINS)]
    assert lines[-2:] == [
        f"total: {TOTAL:,} message(s) in {DOMAINS} queue(s)",
        "would replace: none",
    ]
    assert last_seq(data) == before
    assert live_rules(url) == []

    # -- the bounce, followed -------------------------------------------------------------
    wait = kcli(url, "bounce", "--everything", "--reason", "purge", "--wait", "--interval", "0.01")
    assert wait.status == 0, wait.stderr
    rule_id, header, *rows, total = wait.stdout.splitlines()
    assert header.split() == ["QUEUE", "BOUNCED"]
    assert rows == [f"d{n:02}.example   1,000" for n in range(DOMAINS)]
    assert total == f"total bounced: {TOTAL:,}"
    # Plain progress lines (stderr is not a terminal): counts that only grow, ending at 0.
    progress = [
        (int(done.replace(",", "")), int(owed.replace(",", "")))
        for done, owed in _PROGRESS.findall(wait.stderr)
    ]
    assert len(progress) >= 3, wait.stderr
    assert progress[0][1] > 0
    assert progress[-1] == (TOTAL, 0)
    assert all(done + owed == TOTAL for done, owed in progress)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)

    # The log and the counters agree with what was printed.
    [rule] = live_rules(url)
    assert (rule["id"], rule["total_bounced"], rule["pending"]) == (rule_id, TOTAL, 0)
    assert scheduled_counts(url) == {}
    events = [committed.event for committed in logged_events(data)]
    assert [e.rule_id for e in events if isinstance(e, BounceIssued)] == [rule_id]
    assert sum(len(e.messages) for e in events if isinstance(e, Bounced)) == TOTAL

"""Shared helpers for engine tests: messages, requests, reading the delivery log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from kumo.model.criteria import Criteria
from kumo.model.queue_name import queue_name_for, recipient_domain
from kumo.model.requests import BounceRequest, NewMessage
from kumo.store.delivery_files import read_records
from kumo.store.layout import LOGS

WALL_ORIGIN = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z, fixed so runs repeat


def message(
    recipient: str,
    *,
    campaign: str | None = None,
    tenant: str | None = None,
    routing_domain: str | None = None,
    sender: str = "sender@example.org",
    body: bytes = b"Subject: hi\r\n\r\nhello\r\n",
) -> NewMessage:
    queue = queue_name_for(
        domain=recipient_domain(recipient),
        campaign=campaign,
        tenant=tenant,
        routing_domain=routing_domain,
    )
    return NewMessage(sender=sender, recipient=recipient, queue=queue, body=body)


def bounce(
    reason: str = "testing", *, duration: int | None = None, **criteria: object
) -> BounceRequest:
    suppress = bool(criteria.pop("suppress_logging", False))
    return BounceRequest(
        criteria=Criteria(**criteria),  # type: ignore[arg-type]
        reason=reason,
        duration=duration,
        suppress_logging=suppress,
    )


def log_records(data_dir: Path) -> list[dict[str, object]]:
    """Every delivery-log record under ``data_dir/logs``, in log order."""
    return read_records(data_dir / LOGS)


ROOT = Path(__file__).resolve().parents[2]


def run_and_kill(
    module: str, arguments: list[str], acks: Path, after: float, *, from_start: bool = False
) -> None:
    """Run ``python -m module *arguments`` and SIGKILL it ``after`` seconds after it
    first appends to ``acks`` (its acknowledgements: on a busy machine a start can
    take longer than ``after``), or after its start with ``from_start`` (to kill it
    during its recovery)."""
    child = subprocess.Popen(
        [sys.executable, "-m", module, *arguments],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
    )
    size = acks.stat().st_size if acks.exists() else 0
    while (
        not from_start
        and child.poll() is None
        and (not acks.exists() or acks.stat().st_size == size)
    ):
        time.sleep(0.05)
    try:
        child.wait(timeout=after)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
        child.wait()
        return
    raise AssertionError(
        f"child exited early: {child.stderr.read().decode() if child.stderr else ''}"
    )

"""Shared helpers for engine tests: messages, requests, reading the delivery log."""

from __future__ import annotations

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

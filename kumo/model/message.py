"""A queued message, as the queues, the events and the log records need it."""

from __future__ import annotations

from typing import Final, NamedTuple

HTTP: Final = "HTTP"
"""The reception protocol of a message injected over HTTP: every message's until it
says otherwise (events and snapshots written before messages kept theirs say nothing)."""
ESMTP: Final = "ESMTP"
"""The reception protocol of a message received by the SMTP listener."""


class Message(NamedTuple):
    """A queued message as the queues and the log records need it.

    The body is not here: it lives in the spool table of the store, so memory holds
    only what a log record and the routing need. Queues and events do not keep these
    (see :mod:`kumo.model.message_queue`): one is built when a message is read out of
    them, and dropped soon after. A named tuple: quick to build, immutable.
    """

    id: str
    sender: str
    recipient: str
    size: int
    received_at: int
    """Commit time of the message's ``MessageReceived``, ns since the epoch."""
    seq: int
    """Sequence number of the message's ``MessageReceived``."""
    protocol: str = HTTP
    """How it came in (``"HTTP"`` or ``"ESMTP"``): its records' ``reception_protocol``,
    which KumoMTA keeps in the message's meta."""

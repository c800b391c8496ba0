"""What inspection shows of a queued message and of a scheduled queue, as values.

``GET /api/admin/inspect-message/v1`` and ``GET /api/admin/inspect-sched-q/v1`` answer
with these (:mod:`kumo.http.inspect_api` gives them KumoMTA's JSON shapes). Three things
are decided here, once:

- what kumo knows of a message's *metadata*: it keeps none beyond what names its queue
  (the campaign, tenant and routing domain a rule matches), so that is what
  :func:`message_meta` gives;
- when a message is *due* and how many *attempts* it had (:func:`schedule`): until the
  mail path delivers, a message is due from its arrival and has had none. The mail path
  replaces that one function;
- the *settings* of a queue that inspection reports (:class:`QueueConfig`).

Pure: no trio, no I/O.
"""

from __future__ import annotations

import attrs

from kumo.model.message import Message
from kumo.model.queue_name import QueueName
from kumo.model.retry import RetryPolicy


@attrs.frozen(slots=True)
class Schedule:
    """When a queued message is next due, and how many delivery attempts it had."""

    due: int
    """ns since the epoch."""
    num_attempts: int


def schedule(message: Message, due: int | None = None, attempts: int = 0) -> Schedule:
    """``message``'s schedule: due at ``due`` (its retry, or the end of a suspension),
    else from the moment it arrived (its ``MessageReceived`` commit time), after
    ``attempts`` attempts."""
    return Schedule(due=message.received_at if due is None else due, num_attempts=attempts)


def message_meta(queue: str) -> dict[str, str]:
    """The metadata of a message in ``queue``: ``campaign``, ``tenant`` and
    ``routing_domain``, each when the queue name has it (KumoMTA names a queue from
    these metadata keys; kumo keeps no other metadata). An empty part is an absent one
    (``camp:@example.com`` has no tenant), as it was when the name was made. Keys in
    sorted order, as KumoMTA's JSON has them."""
    parsed = QueueName.parse(queue)
    parts = {
        "campaign": parsed.campaign,
        "routing_domain": parsed.routing_domain,
        "tenant": parsed.tenant,
    }
    return {key: value for key, value in parts.items() if value}


@attrs.frozen(slots=True)
class QueueConfig:
    """The settings of a scheduled queue that inspection reports (``queue_config``):
    the retry policy and the delivery hosts (``kumo.config.QueueSettings``)."""

    retry: RetryPolicy = attrs.field(factory=RetryPolicy)
    mx_list: tuple[str, ...] = ()
    """Empty: the hosts come from the destination's MX records."""


@attrs.frozen(slots=True)
class InspectedMessage:
    """A queued message as inspection shows it."""

    id: str
    queue: str
    sender: str
    recipient: str
    schedule: Schedule
    body: bytes | None
    """The content from the spool, when it was asked for."""

    @classmethod
    def of(
        cls,
        queue: str,
        message: Message,
        body: bytes | None = None,
        *,
        due: int | None = None,
        attempts: int = 0,
    ) -> InspectedMessage:
        return cls(
            id=message.id,
            queue=queue,
            sender=message.sender,
            recipient=message.recipient,
            schedule=schedule(message, due, attempts),
            body=body,
        )


@attrs.frozen(slots=True)
class InspectedQueue:
    """A scheduled queue as inspection shows it: a sample of its messages and counts."""

    name: str
    messages: tuple[InspectedMessage, ...]
    """Its first messages in arrival order, as many as were asked for."""
    scheduled: int
    """Messages it holds."""
    last_changed: int
    """When a message last arrived in it (ns since the epoch)."""
    now: int
    """The engine clock's reading when it was inspected."""

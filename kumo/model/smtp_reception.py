"""What the SMTP listener's session hands over becomes events: arrivals and rejections.

The session (:mod:`kumo.model.smtp_server`) decides every reply; this module decides
what the log records of it, so that the listener's shell only draws spool ids, reads
the clock and appends:

- a :class:`~kumo.model.smtp_server.MessagesReceived` becomes one ``MessageReceived``
  per recipient (KumoMTA's ``BifurcateAlways``), each queued as HTTP inject queues it
  (docs/rules.md): the recipient's domain, with campaign and tenant from the
  ``X-Campaign`` and ``X-Tenant`` headers, ``protocol="ESMTP"``, and the client as
  ``peer``. Every message of the transaction has the same content: a ``Received:``
  header, then the data as the client sent it (dot-unstuffed).
- a :class:`~kumo.model.smtp_server.Rejection` becomes a ``Rejected`` event, which the
  delivery-log writer turns into a ``Rejection`` record (reference 4.5).
"""

from __future__ import annotations

import datetime as dt
import email.utils
from collections.abc import Mapping, Sequence
from typing import Final

from kumo.model.cidr_set import rust_ip_text
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.events import MessageReceived, PeerAddress, Rejected
from kumo.model.message_headers import QUEUE_HEADERS, content_headers_of_bytes
from kumo.model.queue_name import queue_name_for, recipient_domain
from kumo.model.smtp_server import MessagesReceived, Peer, Rejection

PROTOCOL: Final = "ESMTP"
"""``reception_protocol`` of every message received over SMTP."""


def peer_address(ehlo_name: str, peer: Peer) -> PeerAddress:
    """The ``peer_address`` of a record: the EHLO name and the IP as Rust writes it
    (an IPv4 client of a dual-stack socket is ``::ffff:10.0.0.5``, as in KumoMTA)."""
    return PeerAddress(name=ehlo_name, addr=rust_ip_text(peer.ip))


def reception_queue(recipient: str, headers: Mapping[str, str], *, local_domain: str) -> str:
    """The scheduled queue of a message to ``recipient``, as HTTP inject names it.

    ``RCPT TO:<Postmaster>`` (the one recipient without a domain, RFC 5321 4.5.1) is
    the postmaster of this host: it is queued for ``local_domain``.
    """
    try:
        domain = recipient_domain(recipient)
    except ValueError:
        domain = local_domain
    return queue_name_for(
        domain=domain, campaign=headers.get("x-campaign"), tenant=headers.get("x-tenant")
    )


def received_header(
    received: MessagesReceived, *, hostname: str, local_ip: str, received_at: int
) -> bytes:
    """The ``Received:`` trace header (RFC 5321 4.4) the listener puts on top, in
    KumoMTA's layout. It names no spool id and no recipient (KumoMTA writes ``id`` and
    ``for``): one header serves every message of the transaction, so that a message to a
    thousand recipients is held once in memory, not a thousand times."""
    ehlo = received.ehlo_name or "unspecified"
    protocol = "ESMTPS" if received.tls else "ESMTP"
    when = dt.datetime.fromtimestamp(received_at // NANOS_PER_SECOND, dt.UTC)
    return (
        f"Received: from {ehlo} ({rust_ip_text(received.peer.ip)})\r\n"
        f"  by {hostname} (KumoMTA {local_ip}) \r\n"
        f"  with {protocol};\r\n"
        f"  {email.utils.format_datetime(when)}\r\n"
    ).encode()


def plan_reception(
    received: MessagesReceived,
    ids: Sequence[str],
    *,
    hostname: str,
    local_ip: str,
    received_at: int,
) -> tuple[list[MessageReceived], bytes]:
    """The events of a transaction's messages, one per recipient in order with the
    spool ids ``ids``, and the content they all share (``Received:`` header included;
    each event's ``size`` is its length).

    Raises ValueError if ``ids`` are not one per recipient.
    """
    if len(ids) != len(received.recipients):
        raise ValueError(f"{len(ids)} ids for {len(received.recipients)} recipients")
    content = (
        received_header(received, hostname=hostname, local_ip=local_ip, received_at=received_at)
        + received.content
    )
    headers = content_headers_of_bytes(received.content, QUEUE_HEADERS)
    peer = peer_address(received.ehlo_name, received.peer)
    size = len(content)
    events = [
        MessageReceived(
            message_id=message_id,
            queue=reception_queue(recipient, headers, local_domain=hostname),
            sender=received.sender,
            recipient=recipient,
            size=size,
            protocol=PROTOCOL,
            peer=peer,
        )
        for message_id, recipient in zip(ids, received.recipients, strict=True)
    ]
    return events, content


def rejected_event(rejection: Rejection) -> Rejected:
    """The ``Rejected`` event of a rejection the session decided."""
    reply = rejection.reply
    return Rejected(
        code=reply.code,
        text=reply.text,
        command=rejection.command,
        sender=rejection.sender,
        recipient=rejection.recipient,
        peer=peer_address(rejection.ehlo_name, rejection.peer),
    )

"""POST /api/inject/v1: one message per recipient, into its scheduled queue.

The queue of each message comes from the recipient's ``metadata`` (``queue`` verbatim,
else ``campaign``, ``tenant``, ``routing_domain``), else from the ``X-Campaign`` and
``X-Tenant`` headers of the content, and the recipient's domain (docs/rules.md).
A recipient that cannot be queued (no domain in its address, metadata that is not a
string) is reported in ``failed_recipients`` and ``errors`` and the others are still
injected, as KumoMTA does. Content given as an object is rendered into a simple
RFC 5322 message per recipient. Substitutions and templates are accepted and not
expanded: kumo does not deliver mail, so no one reads the rendered text.
"""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
import functools
import uuid
from collections.abc import Callable, Mapping
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Final

import attrs

from kumo.http.bodies import (
    BuiltContent,
    InjectRecipient,
    InjectRequest,
    Mailbox,
    parse_inject_request,
)
from kumo.http.engine_protocol import AdminEngine
from kumo.http.errors import RequestRefused
from kumo.http.replies import Reply, json_reply
from kumo.model.message_headers import QUEUE_HEADERS, content_headers
from kumo.model.queue_name import queue_name_for, recipient_domain
from kumo.model.requests import NewMessage
from kumo.runtime.blocking import RunBlocking, in_thread

DEFAULT_MAX_INJECT_BYTES: Final = 256 * 2**20
"""Most message bytes one request may create: the body limit bounds the request, not
what it expands to (a 1 MiB message to 50,000 recipients is 50 GB of spool)."""

_THREAD_THRESHOLD: Final = 512
"""Above this many recipients, messages of text content are planned in a worker thread,
off the loop. Object content is always rendered there: the email package takes about
half a millisecond a recipient, and encoding the shared body milliseconds a megabyte."""

_QUEUE_KEYS: Final = ("queue", "campaign", "tenant", "routing_domain")


@attrs.frozen(slots=True)
class InjectionPlan:
    """The messages to inject and the recipients that failed, in request order."""

    messages: tuple[NewMessage, ...]
    failed_recipients: tuple[str, ...]
    errors: tuple[str, ...]


def _format_address(mailbox: Mailbox) -> str:
    address = Address(display_name=mailbox.name or "", addr_spec=mailbox.email)
    return str(address)


_OWN_HEADERS: Final = frozenset({"to", "message-id"})
"""The header fields that differ between the recipients of one request."""


def render_shared(content: BuiltContent, *, date: dt.datetime) -> bytes:
    """The part of a rendered message that all recipients share: every header but
    their own (:func:`render_own_headers`), then the MIME body. Rendered once per
    request, and held once: the recipients' messages refer to this one object.

    Headers given in ``content.headers`` replace the ones kumo would write. Raises
    ValueError (or another error of the ``email`` package) for values it cannot encode.
    """
    message = EmailMessage(policy=email.policy.SMTP)
    if content.from_ is not None:
        message["From"] = _format_address(content.from_)
    if content.reply_to is not None:
        message["Reply-To"] = _format_address(content.reply_to)
    if content.subject is not None:
        message["Subject"] = content.subject
    message["Date"] = email.utils.format_datetime(date)
    for name, value in content.headers:
        del message[name]
        message[name] = value
    if content.text_body is not None:
        message.set_content(content.text_body)
        if content.html_body is not None:
            message.add_alternative(content.html_body, subtype="html")
    elif content.html_body is not None:
        message.set_content(content.html_body, subtype="html")
    else:
        message.set_content("")
    return message.as_bytes()


def render_own_headers(
    content: BuiltContent, recipient: InjectRecipient, *, message_id: str
) -> bytes:
    """The header lines of one recipient's message (To:, Message-ID:, CRLF-ended) that
    go before :func:`render_shared`; those that ``content.headers`` sets are left to it.

    Raises ValueError (or another error of the ``email`` package) for an address it
    cannot encode, even when ``content.headers`` replaces the To: line.
    """
    own = EmailMessage(policy=email.policy.SMTP)
    own["To"] = _format_address(Mailbox(recipient.email, recipient.name))
    own["Message-ID"] = message_id
    for name in _OWN_HEADERS & {name.lower() for name, _ in content.headers}:
        del own[name]
    return own.as_bytes()[: -len(b"\r\n")]  # without the empty line that ends a header block


def render_message(
    content: BuiltContent, recipient: InjectRecipient, *, date: dt.datetime, message_id: str
) -> bytes:
    """A simple RFC 5322 message (CRLF line ends) from the object form of content: the
    recipient's own headers, then the shared part (see the two functions it joins)."""
    return render_own_headers(content, recipient, message_id=message_id) + render_shared(
        content, date=date
    )


def _metadata_string(metadata: Mapping[str, object], key: str) -> str | None:
    value = metadata.get(key)
    if value is None or isinstance(value, str):
        return value or None
    raise ValueError(f"metadata `{key}` must be a string")


def plan_injection(
    request: InjectRequest,
    *,
    now: dt.datetime,
    new_message_id: Callable[[], str] = lambda: f"<{uuid.uuid4().hex}@kumo.invalid>",
    max_bytes: int = DEFAULT_MAX_INJECT_BYTES,
) -> InjectionPlan:
    """Build the messages ``request`` asks for; a pure function of its arguments.

    Raises :class:`RequestRefused` (413) if the messages would total more than
    ``max_bytes``; per-recipient problems are in the plan, not raised.
    """
    content = request.content
    # Every recipient's message refers to the very same ``shared`` bytes object: no copy
    # per message (the store joins each message's own head to it as it writes the row).
    head: Callable[[InjectRecipient], bytes]
    shared_error: Exception | None = None
    if isinstance(content, str):
        shared = content.encode()
        headers = content_headers(content, QUEUE_HEADERS)
        _check_expansion(len(shared) * len(request.recipients), max_bytes)
        head = lambda _: b""  # noqa: E731
    else:
        built = content
        headers = {name.lower(): value for name, value in content.headers if value}
        try:
            shared = render_shared(built, date=now)
        except Exception as exc:  # the email package raises assorted types on odd input
            shared, shared_error = b"", exc
        head = lambda recipient: render_own_headers(  # noqa: E731
            built, recipient, message_id=new_message_id()
        )
    messages: list[NewMessage] = []
    failed: list[str] = []
    errors: list[str] = []
    total = 0
    for recipient in request.recipients:
        try:
            if shared_error is not None:
                raise shared_error
            queue = _queue_for(recipient, headers)
            own = head(recipient)
        except Exception as exc:  # the email package raises assorted types on odd input
            failed.append(recipient.email)
            errors.append(f"{recipient.email}: {exc}")
            continue
        message = NewMessage(request.envelope_sender, recipient.email, queue, shared, own)
        total += message.size
        _check_expansion(total, max_bytes)
        messages.append(message)
    return InjectionPlan(tuple(messages), tuple(failed), tuple(errors))


def _queue_for(recipient: InjectRecipient, headers: Mapping[str, str]) -> str:
    domain = recipient_domain(recipient.email)
    meta = {key: _metadata_string(recipient.metadata, key) for key in _QUEUE_KEYS}
    if meta["queue"] is not None:
        return meta["queue"]
    return queue_name_for(
        domain=domain,
        campaign=meta["campaign"] or headers.get("x-campaign"),
        tenant=meta["tenant"] or headers.get("x-tenant"),
        routing_domain=meta["routing_domain"],
    )


def _check_expansion(total: int, max_bytes: int) -> None:
    if total > max_bytes:
        raise RequestRefused(
            413,
            f"the injection would create {total} bytes of messages or more, "
            f"over the limit of {max_bytes} bytes per request",
        )


async def inject(
    engine: AdminEngine,
    *,
    content_type: str | None,
    body: bytes,
    now: dt.datetime,
    max_bytes: int = DEFAULT_MAX_INJECT_BYTES,
    run_blocking: RunBlocking = in_thread,
) -> Reply:
    """Validate, build the messages, inject them durably, and count the outcome.

    ``run_blocking`` builds the messages of a large request (off the loop by default;
    :func:`kumo.runtime.blocking.inline` keeps virtual time deterministic).
    """
    request = parse_inject_request(content_type, body)
    if not isinstance(request.content, str) or len(request.recipients) > _THREAD_THRESHOLD:
        plan = await run_blocking(
            functools.partial(plan_injection, request, now=now, max_bytes=max_bytes)
        )
    else:
        plan = plan_injection(request, now=now, max_bytes=max_bytes)
    if plan.messages:
        await engine.inject(plan.messages)
    return json_reply(
        {
            "success_count": len(plan.messages),
            "fail_count": len(plan.failed_recipients),
            "failed_recipients": list(plan.failed_recipients),
            "errors": list(plan.errors),
        }
    )

"""What clients ask of the engine, as validated values.

The HTTP layer turns request bodies into these; the engine turns them into events.
An instance is valid by construction: the validators refuse what the admin API refuses
(docs/rules.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, TypeAlias

import attrs
from attrs.validators import instance_of

from kumo.model.criteria import Criteria
from kumo.model.duration import NANOS_PER_MINUTE, NANOS_PER_YEAR
from kumo.model.events import INT64_MAX, INT64_MIN
from kumo.model.queue_name import REBINDABLE_KEYS

DEFAULT_LIFETIME: Final = 5 * NANOS_PER_MINUTE
"""A rule without ``duration`` or ``expires`` lives five minutes, as in KumoMTA."""
MAX_LIFETIME: Final = 100 * NANOS_PER_YEAR
"""A lifetime over 100 years is refused, whether given as text or as a number."""


def _check_lifetime(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is None:
        return
    if type(value) is not int:
        raise TypeError(f"{attribute.name} must be an int or None, got {value!r}")
    if not 0 <= value <= MAX_LIFETIME:
        raise ValueError(f"{attribute.name} must be between 0 and 100 years, got {value} ns")


def _check_expiry(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is None:
        return
    if type(value) is not int:
        raise TypeError(f"{attribute.name} must be an int or None, got {value!r}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{attribute.name} must fit in 64 bits, got {value}")


_text = instance_of(str)


@attrs.frozen(slots=True)
class BounceRequest:
    """A request to bounce what matches ``criteria``.

    The rule ends at ``expires_at`` when given (absolute, ns since the epoch), else
    ``duration`` after it is issued, else :data:`DEFAULT_LIFETIME` after it is issued.
    """

    criteria: Criteria = attrs.field(validator=instance_of(Criteria))
    reason: str = attrs.field(validator=_text)
    """Any string, the empty one too (the API takes it); never None."""
    duration: int | None = attrs.field(default=None, validator=_check_lifetime)
    expires_at: int | None = attrs.field(default=None, validator=_check_expiry)
    """May be in the past, before 1970 too: the rule is then born expired."""
    suppress_logging: bool = attrs.field(default=False, validator=instance_of(bool))
    dry_run: bool = attrs.field(default=False, validator=instance_of(bool))
    """Only answer what the request would match now (a kumo extension): the engine
    issues nothing for it (:meth:`kumo.runtime.engine.Engine.preview`)."""

    def expiry(self, issued_at: int) -> int:
        """When a rule issued at ``issued_at`` (ns since the epoch) stops matching."""
        if self.expires_at is not None:
            return self.expires_at
        lifetime = self.duration if self.duration is not None else DEFAULT_LIFETIME
        return issued_at + lifetime


def _to_dict(data: Mapping[str, str]) -> dict[str, str]:
    return dict(data)


def _check_rebind_data(
    _: object, attribute: attrs.Attribute[Mapping[str, str]], value: Mapping[str, str]
) -> None:
    if not all(type(key) is str and type(item) is str for key, item in value.items()):
        raise TypeError(f"{attribute.name} must map strings to strings, got {value!r}")
    unknown = sorted(set(value) - set(REBINDABLE_KEYS))
    if unknown:
        raise ValueError(f"{attribute.name} may set only {REBINDABLE_KEYS}, not {unknown}")


@attrs.frozen(slots=True)
class RebindRequest:
    """A request to rebind the scheduled messages of the queues ``criteria`` match:
    merge ``data`` into their metadata and move each to the queue that names
    (docs/operations.md, "Rebinding messages"). ``data``'s keys are
    :data:`~kumo.model.queue_name.REBINDABLE_KEYS`."""

    criteria: Criteria = attrs.field(validator=instance_of(Criteria))
    reason: str = attrs.field(validator=_text)
    data: Mapping[str, str] = attrs.field(converter=_to_dict, validator=_check_rebind_data)
    always_flush: bool = attrs.field(default=False, validator=instance_of(bool))
    suppress_logging: bool = attrs.field(default=False, validator=instance_of(bool))
    trigger_rebind_event: bool = attrs.field(default=False, validator=instance_of(bool))
    """Accepted for KumoMTA's clients and ignored: KumoMTA then runs a Lua
    ``rebind_message`` hook instead of merging ``data``; kumo has no Lua."""
    dry_run: bool = attrs.field(default=False, validator=instance_of(bool))
    """Only answer what the rebind would move now (a kumo extension): the engine issues
    nothing for it (:meth:`kumo.runtime.engine.Engine.preview_rebind`)."""


@attrs.frozen(slots=True)
class ReadySuspendRequest:
    """A request to suspend the ready queue ``name`` (its exact name), with the lifetime
    rules of a :class:`BounceRequest` (default five minutes, ``expires_at`` first)."""

    name: str = attrs.field(validator=_text)
    reason: str = attrs.field(validator=_text)
    duration: int | None = attrs.field(default=None, validator=_check_lifetime)
    expires_at: int | None = attrs.field(default=None, validator=_check_expiry)

    def expiry(self, issued_at: int) -> int:
        """When a suspension issued at ``issued_at`` (ns since the epoch) ends."""
        if self.expires_at is not None:
            return self.expires_at
        lifetime = self.duration if self.duration is not None else DEFAULT_LIFETIME
        return issued_at + lifetime


Content: TypeAlias = bytes | tuple[bytes, bytes]
"""A message's content as the store takes it: the bytes, or ``(head, body)`` whose
concatenation they are. The store joins a pair one row at a time as it writes it."""


@attrs.frozen(slots=True)
class NewMessage:
    """A message to receive: its envelope, its scheduled queue and its content.

    The content is ``head + body``. ``head`` holds what is the message's own (the To:
    and Message-ID: lines of a message kumo renders) so that the recipients of one
    request share one ``body`` object: 500 recipients of a 500 KB message hold 500 KB
    and 500 short heads, not 250 MB, until the store writes them.
    """

    sender: str
    recipient: str
    queue: str
    body: bytes
    head: bytes = b""

    def __attrs_post_init__(self) -> None:
        # One check rather than five validators: one of these is built per recipient.
        if not type(self.sender) is type(self.recipient) is type(self.queue) is str or (
            not type(self.body) is type(self.head) is bytes
        ):
            raise TypeError("sender, recipient and queue must be strings, head and body bytes")

    @property
    def size(self) -> int:
        """Bytes of the content."""
        return len(self.head) + len(self.body)

    @property
    def content(self) -> Content:
        """The content as the store takes it, without joining head and body."""
        return (self.head, self.body) if self.head else self.body

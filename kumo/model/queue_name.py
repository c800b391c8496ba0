"""Scheduled queue names: ``campaign:tenant@domain!routing_domain`` and its shorter forms.

A message waits in the scheduled queue named from four parts (docs/rules.md):

=========  ======  ==============  ===================================
campaign   tenant  routing_domain  name
=========  ======  ==============  ===================================
yes        yes     no              ``campaign:tenant@domain``
yes        yes     yes             ``campaign:tenant@domain!routing_domain``
no         yes     no              ``tenant@domain``
no         yes     yes             ``tenant@domain!routing_domain``
yes        no      no              ``campaign:@domain``
yes        no      yes             ``campaign:@domain!routing_domain``
no         no      no              ``domain``
no         no      yes             ``domain!routing_domain``
=========  ======  ==============  ===================================

Every string is a queue name: parsing never fails, and formatting what was parsed gives
back the very same string, so a name read off the wire can be stored and echoed
unchanged. A ``:port`` suffix is just part of the domain or routing domain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

__all__ = [
    "REBINDABLE_KEYS",
    "QueueName",
    "queue_name_for",
    "rebound_queue_name",
    "recipient_domain",
]


@attrs.frozen(slots=True)
class QueueName:
    """The parts of a scheduled queue name.

    ``None`` means the part is absent; ``""`` is a present but empty part, which only
    parsing produces (``camp:@d`` has tenant ``""``, ``d!`` has routing domain ``""``)
    and which formatting keeps. Parts are not validated: KumoMTA builds names from
    message metadata verbatim, so a campaign holding ``:`` or a tenant holding ``@``
    formats to a name that parses into different parts, as it does in KumoMTA.
    """

    domain: str
    campaign: str | None = None
    tenant: str | None = None
    routing_domain: str | None = None

    @classmethod
    def parse(cls, name: str) -> QueueName:
        """Split ``name`` into its parts. Never raises: every string is a name.

        The first ``@`` ends the campaign/tenant part (no ``@``: there is none); in it,
        the first ``:`` separates campaign from tenant (no ``:``: it is all tenant). The
        first ``!`` after the ``@`` starts the routing domain. Guarantees
        ``QueueName.parse(name).format() == name``.
        """
        campaign: str | None = None
        tenant: str | None = None
        left, at, domain = name.partition("@")
        if not at:
            domain = name
        else:
            campaign, colon, tenant = left.partition(":")
            if not colon:
                campaign, tenant = None, left
        domain, bang, routing_domain = domain.partition("!")
        return cls(domain, campaign, tenant, routing_domain if bang else None)

    def format(self) -> str:
        """The name these parts spell, per the table in this module's docstring.

        A campaign without a tenant gives ``campaign:@domain``.
        """
        name = self.domain
        if self.routing_domain is not None:
            name = f"{name}!{self.routing_domain}"
        if self.campaign is not None:
            return f"{self.campaign}:{self.tenant or ''}@{name}"
        if self.tenant is not None:
            return f"{self.tenant}@{name}"
        return name

    def __str__(self) -> str:
        return self.format()


def queue_name_for(
    *,
    domain: str,
    campaign: str | None = None,
    tenant: str | None = None,
    routing_domain: str | None = None,
) -> str:
    """The scheduled queue name for a message to ``domain`` with the given metadata.

    The domain is lower-cased; an empty campaign, tenant or routing domain counts as
    absent, so ``queue_name_for(domain="D", tenant="")`` is ``d``.
    """
    return QueueName(
        domain.lower(), campaign or None, tenant or None, routing_domain or None
    ).format()


REBINDABLE_KEYS: Final = ("campaign", "tenant", "routing_domain", "queue")
"""The metadata keys a rebind may set (``/api/admin/rebind/v1``'s ``data``). kumo keeps
no metadata of a message beyond what names its queue, so these are the only keys that
can change anything: the three optional parts of the name, and ``queue``, which names
the whole queue (KumoMTA's ``queue`` meta, which wins over the parts)."""


def rebound_queue_name(name: str, data: Mapping[str, str]) -> str:
    """The queue a message of queue ``name`` belongs to once ``data`` is merged into its
    metadata (a rebind, docs/operations.md "Rebinding messages").

    ``data`` holds only :data:`REBINDABLE_KEYS` (KeyError otherwise). A non-empty
    ``queue`` is the new name, whatever the rest; else each of ``campaign``, ``tenant``
    and ``routing_domain`` given replaces that part of the parsed name, an empty value
    taking the part away (as an empty meta value names no part, :func:`queue_name_for`).
    The domain is the recipient's and never changes. Guarantees: an empty ``data``
    gives ``name`` back unchanged, and so does ``data`` that repeats the name's parts.
    """
    unknown = set(data) - set(REBINDABLE_KEYS)
    if unknown:
        raise KeyError(f"not a key kumo can rebind: {sorted(unknown)}")
    queue = data.get("queue")
    if queue:
        return queue
    # An empty part names nothing (``camp:@d`` has no tenant), as an empty meta value.
    parsed = QueueName.parse(name)
    base = QueueName(
        parsed.domain, parsed.campaign or None, parsed.tenant or None, parsed.routing_domain or None
    )

    def part(key: str, value: str | None) -> str | None:
        return (data[key] or None) if key in data else value

    changed = QueueName(
        base.domain,
        part("campaign", base.campaign),
        part("tenant", base.tenant),
        part("routing_domain", base.routing_domain),
    )
    # Nothing changed: the very name, spelt as it came (``camp:@d``, ``d!``).
    return name if changed == base else changed.format()


def recipient_domain(address: str) -> str:
    """The lower-cased domain of an email ``address``: what follows its last ``@``.

    Raises ValueError if ``address`` has no ``@`` or nothing after the last one.
    """
    _, at, domain = address.rpartition("@")
    if not at:
        raise ValueError(f"recipient address {address!r} has no '@' before a domain")
    if not domain:
        raise ValueError(f"recipient address {address!r} has an empty domain after '@'")
    return domain.lower()

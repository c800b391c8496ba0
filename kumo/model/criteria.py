"""Bounce criteria and how they match scheduled queues (docs/rules.md, "Matching").

Matching is a pure function of the queue *name*: the runtime calls it once per
(rule, queue) pair when a rule is issued or a queue appears, never per message.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from kumo.model.queue_name import QueueName


def _to_names(names: Iterable[str]) -> frozenset[str]:
    if isinstance(names, str):
        raise TypeError(f"queue_names must be a collection of names, not the string {names!r}")
    return frozenset(names)


def _check_names(_: object, __: attrs.Attribute[frozenset[str]], names: frozenset[str]) -> None:
    if not all(type(name) is str for name in names):
        raise TypeError(f"queue_names must be strings, got {sorted(map(repr, names))}")


_part = attrs.validators.optional(attrs.validators.instance_of(str))


@attrs.frozen(slots=True, cache_hash=True)
class Criteria:
    """What a bounce rule selects: each part a string or None, the names strings.

    Two criteria are equal (and a new rule replaces a live one) when the four parts
    are equal and the ``queue_names`` are equal as sets (order and duplicates do not
    matter).
    """

    campaign: str | None = attrs.field(default=None, validator=_part)
    tenant: str | None = attrs.field(default=None, validator=_part)
    domain: str | None = attrs.field(default=None, validator=_part)
    routing_domain: str | None = attrs.field(default=None, validator=_part)
    queue_names: frozenset[str] = attrs.field(
        default=frozenset(), converter=_to_names, validator=_check_names
    )

    @property
    def everything(self) -> bool:
        """True when the rule sets nothing and so matches every queue."""
        return not self.queue_names and (
            self.campaign is None
            and self.tenant is None
            and self.domain is None
            and self.routing_domain is None
        )

    def matches(self, queue: QueueName | str) -> bool:
        """Whether a rule with these criteria selects ``queue``.

        With ``queue_names`` set, only the exact full names match and the four parts
        are ignored. Otherwise every part the rule sets must be present in the queue
        name and equal byte for byte (case-sensitive); unset parts match anything.
        """
        if self.queue_names:
            name = queue if isinstance(queue, str) else queue.format()
            return name in self.queue_names
        parts = QueueName.parse(queue) if isinstance(queue, str) else queue
        return (
            (self.campaign is None or parts.campaign == self.campaign)
            and (self.tenant is None or parts.tenant == self.tenant)
            and (self.domain is None or parts.domain == self.domain)
            and (self.routing_domain is None or parts.routing_domain == self.routing_domain)
        )

    def describe(self) -> str:
        """Human-readable summary, as kcli's CRITERIA column shows it."""
        if self.queue_names:
            return ", ".join(f"queue={name}" for name in sorted(self.queue_names))
        parts = [
            f"{key}={value}"
            for key, value in (
                ("campaign", self.campaign),
                ("tenant", self.tenant),
                ("domain", self.domain),
                ("routing_domain", self.routing_domain),
            )
            if value is not None
        ]
        return ", ".join(parts) if parts else "everything"

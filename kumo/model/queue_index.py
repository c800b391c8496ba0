"""Queues by the parts of their names, so that a rule finds its queues without a scan.

A rule that sets a domain (or a campaign, a tenant, a routing domain) can only match
queues whose name has that part, byte for byte; the index keeps the queues under each
part's value, so issuing a rule costs what it matches, not the number of queues. The
answer is always :meth:`Criteria.matches` applied to the candidates: the index only
narrows the search.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from kumo.model.criteria import Criteria
from kumo.model.queue_name import QueueName

T = TypeVar("T")


class QueueIndex(Generic[T]):
    """Items (one per queue name), in the order they were added."""

    __slots__ = ("_by_campaign", "_by_domain", "_by_name", "_by_routing_domain", "_by_tenant")

    def __init__(self) -> None:
        self._by_name: dict[str, tuple[QueueName, T]] = {}
        self._by_domain: dict[str, list[tuple[QueueName, T]]] = {}
        self._by_campaign: dict[str, list[tuple[QueueName, T]]] = {}
        self._by_tenant: dict[str, list[tuple[QueueName, T]]] = {}
        self._by_routing_domain: dict[str, list[tuple[QueueName, T]]] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def add(self, name: str, parsed: QueueName, item: T) -> None:
        """Index ``item`` under the queue ``name`` (parsed as ``parsed``); names are unique."""
        if name in self._by_name:
            raise ValueError(f"queue {name!r} is already indexed")
        entry = (parsed, item)
        self._by_name[name] = entry
        self._by_domain.setdefault(parsed.domain, []).append(entry)
        for index, part in (
            (self._by_campaign, parsed.campaign),
            (self._by_tenant, parsed.tenant),
            (self._by_routing_domain, parsed.routing_domain),
        ):
            if part is not None:
                index.setdefault(part, []).append(entry)

    def matching(self, criteria: Criteria) -> list[T]:
        """The items whose queue ``criteria`` matches (in the order they were added,
        except for ``queue_names`` criteria, which come in no particular order)."""
        if criteria.queue_names:
            return [entry[1] for n in criteria.queue_names if (entry := self._by_name.get(n))]
        candidates: list[tuple[QueueName, T]] | None
        if criteria.domain is not None:
            candidates = self._by_domain.get(criteria.domain)
        elif criteria.campaign is not None:
            candidates = self._by_campaign.get(criteria.campaign)
        elif criteria.tenant is not None:
            candidates = self._by_tenant.get(criteria.tenant)
        elif criteria.routing_domain is not None:
            candidates = self._by_routing_domain.get(criteria.routing_domain)
        else:
            return [item for _, item in self._by_name.values()]
        if not candidates:
            return []
        return [item for parsed, item in candidates if criteria.matches(parsed)]

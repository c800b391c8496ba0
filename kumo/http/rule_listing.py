"""GET /api/admin/bounce/v1's body, built from each rule's parts encoded once.

Between two GETs a live rule's entry changes in three places: its remaining
``duration`` (every time), its counters (``bounced`` and ``total_bounced``, while its
sweep runs) and ``pending``. The rest (id, criteria, reason, times, who issued it) is
fixed for a rule id and is encoded once; the ``bounced`` map (10,000 queues for a rule
that matches everything) is encoded again only when ``total_bounced`` moved. Under a
probe that issues a rule every 20 ms and reads GET every 10 ms, thousands of rules are
live, and encoding each entry whole on every GET kept the event loop busy most of the
time (docs/benchmarks.md, "Admin latency under a sweep"). So the listing reads the
live rules themselves (:class:`~kumo.model.state.LiveRules`) and asks for a rule's view
only when its figures moved: per unchanged rule, a GET looks up its ``pending``,
formats its duration and joins three byte strings. And a GET lists its rules
:data:`SLICE` at a time, letting the other tasks run in between
(:meth:`RuleListing.encode_in_slices`), so that no step of it holds the event loop
for long.

The body is byte for byte ``orjson.dumps([rule_entry(view) for view in live.views()])``,
and :func:`rule_entry` is the one definition of an entry's keys and their order.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
import trio

from kumo.model.duration import format_duration, format_duration_ascii
from kumo.model.rfc3339 import format_rfc3339
from kumo.model.state import LiveRules, Rule, RuleView

_BOUNCED: Final = b',"bounced":'
_TOTAL: Final = b',"total_bounced":'
SLICE: Final = 64
"""Rules :meth:`RuleListing.encode_in_slices` lists between two checkpoints (0.04 ms
alone; in a server under a sweep 0.16 ms at the median, 1.8 ms at p99, against 0.74 and
3.4-3.9 ms for 256). Each step a request takes through the event loop waits for the
steps of the tasks ahead of it, a slice of a listing among them: under a sweep probed
by a POST every 20 ms and a GET every 10 ms, slices of 64 instead of 256 gave a quicker
POST p99 in eight pairs of eight, GET p99 unchanged (docs/benchmarks.md, "GET's listing
a quarter cheaper")."""


def rule_entry(view: RuleView) -> dict[str, Any]:
    """One element of GET's array: KumoMTA's keys first, kumo's extra keys after."""
    criteria = view.criteria
    return {
        "id": view.id,
        "campaign": criteria.campaign,
        "tenant": criteria.tenant,
        "domain": criteria.domain,
        "routing_domain": criteria.routing_domain,
        "reason": view.reason,
        "duration": format_duration(max(view.remaining, 0)),
        "bounced": dict(view.bounced),
        "total_bounced": view.total_bounced,
        "queue_names": sorted(criteria.queue_names),
        "suppress_logging": view.suppress_logging,
        "expires": format_rfc3339(view.expires_at),
        "issued_at": format_rfc3339(view.issued_at),
        "issued_by": view.issued_by,
        "pending": view.pending,
    }


class RuleListing:
    """Encodes GET's array of live rules, keeping what it encoded for the rules it
    listed last time (and only those: an ended rule's parts are dropped).

    Each rule's entry is kept as two byte strings around its ``duration``: what comes
    before it (fixed for the rule's id) and what follows it, encoded again only when
    the rule's ``total_bounced`` or ``pending`` moved. A GET then formats one duration
    per rule and joins the pieces of all entries at once. It takes a rule's ``bounced``
    map as unchanged while its ``total_bounced`` is: true of one node's counters, which
    only grow (the fleet's sums are encoded whole).
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    async def encode_in_slices(
        self,
        live: LiveRules,
        *,
        rules_per_slice: int = SLICE,
        give_way: Callable[[], Awaitable[None]] = trio.lowlevel.checkpoint,
    ) -> bytes:
        """The JSON array of ``live.views()``, in order, awaiting ``give_way`` after
        each ``rules_per_slice`` rules (by default a checkpoint; the app's gives way to
        the writes in flight, :meth:`kumo.runtime.admin_gate.AdminGate.reader`): a
        listing of thousands of rules otherwise holds the event loop for milliseconds,
        and every step of every request in flight waits for it.

        ``live.now`` is read once, so the durations are of one moment; each rule's
        counters and ``pending`` are as the slice that lists it finds them (a commit
        folded between two slices shows in the rules listed after it)."""
        kept: dict[str, _Entry] = {}
        rules = live.rules
        pieces: list[bytes] = []
        for start in range(0, len(rules), rules_per_slice):
            if start:
                await give_way()
            pieces += self._pieces(live, rules[start : start + rules_per_slice], kept)
        self._entries = kept
        if not pieces:
            return b"[]"
        pieces[0] = b"[" + pieces[0][1:]  # each entry follows a comma: not the first
        pieces.append(b"]")
        return b"".join(pieces)

    def _pieces(self, live: LiveRules, rules: list[Rule], kept: dict[str, _Entry]) -> list[bytes]:
        """Each of ``rules``' entries after a comma, its entry recorded in ``kept``.

        Per rule whose figures did not move: a look-up of its entry and its ``pending``,
        its duration formatted, three pieces added (docs/benchmarks.md, "GET's listing
        a quarter cheaper")."""
        entries = self._entries
        now, pending = live.now, live.pending
        # A duration is ASCII with nothing to escape, and its quotes are in head and rest.
        pieces: list[bytes] = []
        add = pieces.extend
        for rule in rules:
            rule_id = rule.id
            held = pending(rule.criteria)
            entry = entries.get(rule_id)
            if entry is None:
                entry = _Entry(live.view(rule, held))
            elif entry.total != rule.total_bounced or entry.pending != held:
                entry = entry.counted(live.view(rule, held))
            kept[rule_id] = entry
            add((entry.head, format_duration_ascii(rule.expires_at - now), entry.rest))
        return pieces


class _Entry:
    """One rule's entry but its ``duration``: :attr:`head` up to it (after the comma that
    separates it from the entry before), :attr:`rest` after."""

    __slots__ = ("bounced", "head", "pending", "rest", "tail", "total")

    def __init__(
        self,
        view: RuleView,
        head_tail: tuple[bytes, bytes] | None = None,
        bounced: bytes | None = None,
    ) -> None:
        self.head, self.tail = head_tail or _fixed_parts(view)
        self.total = view.total_bounced
        self.pending = view.pending
        self.bounced = orjson.dumps(dict(view.bounced)) if bounced is None else bounced
        self.rest = self._rest()

    def counted(self, view: RuleView) -> _Entry:
        """This entry with ``view``'s counters (its ``bounced`` map encoded again only
        when ``total_bounced`` moved)."""
        same = view.total_bounced == self.total
        return _Entry(view, (self.head, self.tail), self.bounced if same else None)

    def _rest(self) -> bytes:
        return b"".join(
            (
                b'"',
                _BOUNCED,
                self.bounced,
                _TOTAL,
                str(self.total).encode(),
                self.tail,
                str(self.pending).encode(),
                b"}",
            )
        )


def _fixed_parts(view: RuleView) -> tuple[bytes, bytes]:
    """What comes before ``duration`` (with its key, after a comma) and between
    ``total_bounced`` and ``pending``'s value (with its key), as :func:`rule_entry`
    orders the keys."""
    entry = rule_entry(view)
    head = {key: entry[key] for key in ("id", "campaign", "tenant", "domain")}
    head |= {key: entry[key] for key in ("routing_domain", "reason")}
    tail = {
        key: entry[key]
        for key in ("queue_names", "suppress_logging", "expires", "issued_at", "issued_by")
    }
    return (
        b"," + orjson.dumps(head)[:-1] + b',"duration":"',
        b"," + orjson.dumps(tail)[1:-1] + b',"pending":',
    )

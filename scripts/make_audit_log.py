"""Build a large, consistent data directory for audit benchmarks, fast.

``python scripts/make_audit_log.py DIR [--events N] [--seed S] [--no-delivery-log]``

It simulates a busy day (hundreds of queues over several tenants and campaigns, rules
issued, replaced, cancelled and expiring, sweeps and bounces at arrival) with the
model's own decisions (:class:`kumo.model.state.QueueState`, :class:`RuleBook`), and
appends the events straight through :meth:`SqliteEventStore.commit` in batches, without
the engine, so a million events take seconds rather than minutes. The delivery log is
written as the engine's writer would (same records, segments and checkpoint), so that
``kumo replay --verify`` finds the directory clean.

:func:`make_audit_log` is the entry point that benchmarks call.
"""

from __future__ import annotations

import itertools
import random
import sys
import time
from pathlib import Path
from typing import Final

import attrs
import click

from kumo.model.criteria import Criteria
from kumo.model.events import (
    BounceCancelled,
    Bounced,
    BounceExpired,
    BounceIssued,
    Committed,
    Event,
    Expired,
    MessageReceived,
    Rebound,
)
from kumo.model.queue_name import queue_name_for
from kumo.model.settings import EngineSettings
from kumo.model.state import QueueState, RuleBook, SweepRule
from kumo.runtime.delivery_log import encode_records
from kumo.store.delivery_files import DeliveryFiles
from kumo.store.layout import DATABASE, LOGS
from kumo.store.sqlite_log import SqliteEventStore

START: Final = 1_767_225_600_000_000_000
"""2026-01-01T00:00:00Z: the simulated day starts here."""
NODE_ID: Final = "00000000-0000-4000-8000-00000000a0d1"
_SECOND: Final = 1_000_000_000
_DAY: Final = 86_400 * _SECOND
_BATCH: Final = 2_000
"""Events per commit (one commit per simulated tick), at most."""
_SWEEP_EVENT: Final = 4_096
"""Messages per ``Bounced`` event of a sweep, as the engine splits them."""

_TENANTS: Final = tuple(f"tenant{n:02d}" for n in range(12))
_CAMPAIGNS: Final = (None, "newsletter", "promo", "receipts", "welcome")
_DOMAINS: Final = (
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "hotmail.com",
    "icloud.com",
    "aol.com",
    "gmx.de",
    "web.de",
    "orange.fr",
    "example.net",
)
_PRINCIPALS: Final = ("127.0.0.1", "10.0.0.7", "alice", "bob", "ops-automation")
_REASONS: Final = (
    "complaint spike",
    "tenant suspended for abuse",
    "campaign pulled by customer",
    "domain blocklisted us",
    "list hygiene: stale addresses",
    "legal hold\nsee ticket 4711",
)
_LIFETIMES: Final = (0, 10 * 60 * _SECOND, 30 * 60 * _SECOND, 3600 * _SECOND, 3 * 3600 * _SECOND)


@attrs.frozen
class AuditLogSummary:
    """What :func:`make_audit_log` wrote."""

    events: int
    received: int
    bounced: int
    rules: int
    last_seq: int
    seconds: float


class _Day:
    """The simulation: decides events with the model and stamps them with seqs."""

    def __init__(self, rng: random.Random, first_seq: int) -> None:
        self.rng = rng
        self.next_seq = first_seq
        self.rules = RuleBook()
        self.queues: dict[str, QueueState] = {}
        self.names = [
            queue_name_for(domain=domain, campaign=campaign, tenant=tenant)
            for tenant in _TENANTS
            for campaign in _CAMPAIGNS
            for domain in _DOMAINS
        ]
        self.cumulative = list(itertools.accumulate(rng.paretovariate(1.2) for _ in self.names))
        self.batch: list[Committed] = []
        self.received = 0
        self.bounced = 0

    def emit(self, event: Event, now: int) -> Committed:
        committed = Committed(self.next_seq, now, event)
        self.next_seq += 1
        self.batch.append(committed)
        self.rules.apply(committed)
        if isinstance(event, Bounced):
            self.bounced += len(event.messages)
        return committed

    def emit_bounce(self, bounce: Bounced | Expired | Rebound | None, now: int) -> None:
        if bounce is None:
            return
        if isinstance(bounce, Expired | Rebound):
            self.emit(bounce, now)
            return
        messages = bounce.messages
        for start in range(0, len(messages), _SWEEP_EVENT):
            chunk = messages[start : start + _SWEEP_EVENT]
            self.emit(Bounced(bounce.rule_id, bounce.queue, chunk), now)

    def route(self, committed: Committed, now: int) -> None:
        for state in self.queues.values():
            if state.concerns(committed.event):
                self.emit_bounce(state.apply(committed), now)

    def receive(self, now: int) -> None:
        name = self.rng.choices(self.names, cum_weights=self.cumulative)[0]
        state = self.queues.get(name)
        if state is None:
            live = [SweepRule.of(rule) for rule in self.rules.matching_live(name)]
            state = self.queues[name] = QueueState(name, rules=live)
        local = self.rng.getrandbits(32)
        event = MessageReceived(
            message_id=f"{self.rng.getrandbits(128):032x}",
            queue=name,
            sender="bulk@mailer.example",
            recipient=f"u{local}@{state.parsed.domain}",
            size=self.rng.randrange(800, 60_000),
        )
        committed = self.emit(event, now)
        self.received += 1
        self.emit_bounce(state.apply(committed), now)

    def criteria(self) -> Criteria:
        rng = self.rng
        pick = rng.random()
        if pick < 0.3:
            return Criteria(tenant=rng.choice(_TENANTS))
        if pick < 0.55:
            return Criteria(campaign=rng.choice(_CAMPAIGNS[1:]), tenant=rng.choice(_TENANTS))
        if pick < 0.75:
            return Criteria(domain=rng.choice(_DOMAINS))
        if pick < 0.9:
            return Criteria(tenant=rng.choice(_TENANTS), domain=rng.choice(_DOMAINS))
        return Criteria(queue_names=rng.sample(self.names, 2))

    def administer(self, now: int) -> None:
        rng = self.rng
        for rule in self.rules.due_to_expire(now):
            self.route(self.emit(BounceExpired(rule.id), now), now)
        live = [rule for rule in self.rules.live_rules() if rule.live_at(now)]
        pick = rng.random()
        if live and pick < 0.15:
            victim = rng.choice(live)
            event: Event = BounceCancelled(victim.id, cancelled_by=rng.choice(_PRINCIPALS))
        else:
            criteria = rng.choice(live).criteria if live and pick < 0.3 else self.criteria()
            event = BounceIssued(
                rule_id=f"{rng.getrandbits(128):032x}",
                criteria=criteria,
                reason=rng.choice(_REASONS),
                expires_at=now + rng.choice(_LIFETIMES),
                suppress_logging=rng.random() < 0.1,
                issued_by=rng.choice(_PRINCIPALS),
            )
        self.route(self.emit(event, now), now)


class _DeliveryLog:
    """Writes records as :class:`kumo.runtime.delivery_log.DeliveryLogWriter` would:
    through :class:`DeliveryFiles`, one round per commit."""

    def __init__(self, directory: Path, rules: RuleBook) -> None:
        self.files = DeliveryFiles(directory, segment_bytes=EngineSettings().segment_bytes)
        self.files.recover()
        self.rules = rules

    def write(self, batch: list[Committed]) -> None:
        rules = {
            rule.id: (rule.reason, rule.suppress_logging) for rule in self.rules.rules.values()
        }
        lines = encode_records(batch, rules, NODE_ID)
        self.files.append(lines, batch[0].seq, batch[-1].seq)

    def close(self) -> None:
        self.files.close()


def make_audit_log(
    data_dir: Path,
    *,
    events: int = 1_000_000,
    seed: int = 0,
    start: int = START,
    delivery_log: bool = True,
) -> AuditLogSummary:
    """Fill ``data_dir`` (created; must not hold a log yet) with about ``events`` events.

    The log covers one simulated day from ``start``; it is deterministic for a given
    ``seed`` (message and rule ids included) and obeys every invariant that
    ``kumo replay --verify`` checks. Stops at the first commit that reaches ``events``
    (a commit is never split), so the count may exceed ``events`` by a sweep's size.
    """
    began = time.perf_counter()
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteEventStore(data_dir / DATABASE)
    try:
        if store.last_seq:
            raise ValueError(f"{data_dir} already holds an event log")
        store.set_meta("node_id", NODE_ID)
        day = _Day(random.Random(seed), first_seq=1)
        log = _DeliveryLog(data_dir / LOGS, day.rules) if delivery_log else None
        # Small logs get smaller commits, so that they still see a day of rules.
        batch_size = max(50, min(_BATCH, events // 500))
        step = _DAY // max(1, events // batch_size)
        tick = 0
        while day.next_seq <= events:
            now = start + tick * step
            tick += 1
            if day.rng.random() < 0.16:
                day.administer(now)
            while len(day.batch) < batch_size and day.next_seq <= events:
                day.receive(now)
            batch, day.batch = day.batch, []
            store.commit([c.event for c in batch], time=now, bodies={})
            if log is not None:
                log.write(batch)
        if log is not None:
            log.close()
        return AuditLogSummary(
            events=store.last_seq,
            received=day.received,
            bounced=day.bounced,
            rules=len(day.rules.rules),
            last_seq=store.last_seq,
            seconds=time.perf_counter() - began,
        )
    finally:
        store.close()


@click.command()
@click.argument("data_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--events", default=1_000_000, show_default=True, help="About how many events.")
@click.option("--seed", default=0, show_default=True, help="Random seed: same seed, same log.")
@click.option("--no-delivery-log", is_flag=True, help="Skip logs/*.jsonl (faster, smaller).")
def main(data_dir: Path, events: int, seed: int, no_delivery_log: bool) -> None:
    """Build a benchmark data directory in DATA_DIR."""
    summary = make_audit_log(data_dir, events=events, seed=seed, delivery_log=not no_delivery_log)
    click.echo(
        f"{summary.events:,} events ({summary.received:,} received, {summary.bounced:,} "
        f"bounced, {summary.rules:,} rules) in {summary.seconds:.1f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()

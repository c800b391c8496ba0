"""The policy of fleet-wide connection leases (kumo/model/connection_lease.py)."""

from __future__ import annotations

import math

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kumo.model.connection_lease import (
    Lease,
    LeaseSettings,
    LeaseTable,
    Renewal,
    after_renewal,
    lease_key,
    lease_label,
    lease_member,
    refusal_context,
    retry_delay,
)

READY = "unspecified->mx_list:127.0.0.1:2525@smtp_client"


def test_names_are_kumomtas() -> None:
    assert lease_label(READY) == f"kumomta.connection_limit.{READY}"
    assert lease_key(READY, "kumo:admin") == f"kumo:admin:kumomta.connection_limit.{READY}"
    assert refusal_context(READY) == f"TooManyLeases for kumomta.connection_limit.{READY}"
    assert lease_member("node-a", "t1") == "node-a:t1"


def test_default_settings_and_their_checks() -> None:
    defaults = LeaseSettings()
    assert (defaults.duration, defaults.renew_interval, defaults.margin) == (60.0, 10.0, 20.0)
    assert defaults.duration_ms == 60_000
    assert defaults.held_for == 59.999
    with pytest.raises(ValueError, match="renewed while it is still usable"):
        LeaseSettings(duration=10, renew_interval=5, margin=5)
    with pytest.raises(ValueError, match="positive"):
        LeaseSettings(margin=0)
    with pytest.raises(ValueError, match="positive"):
        LeaseSettings(duration=math.inf)
    with pytest.raises(ValueError, match="10 ms"):
        LeaseSettings(duration=0.005, renew_interval=0.001, margin=0.001)
    with pytest.raises(ValueError, match="retry_initial"):
        LeaseSettings(retry_initial=3, retry_max=2)


def test_a_lease_is_held_from_before_its_acquire_was_sent() -> None:
    policy = LeaseSettings()
    lease = Lease.acquired("k", "n:1", sent_at=100.0, settings=policy)
    assert lease.deadline == 100.0 + 59.999
    assert lease.renew_at(policy) == 110.0
    assert lease.usable_until(policy) == pytest.approx(139.999)
    assert lease.usable(139.9, policy)
    assert not lease.usable(140.0, policy)


def test_a_renewal_moves_the_deadline_from_when_it_was_sent() -> None:
    policy = LeaseSettings()
    lease = Lease.acquired("k", "n:1", sent_at=100.0, settings=policy)
    renewed = after_renewal(lease, Renewal.RENEWED, 110.0, policy)
    assert renewed is not None
    assert (renewed.confirmed, renewed.deadline) == (110.0, 110.0 + 59.999)
    assert renewed.renew_at(policy) == 120.0
    # A renewal answered late (sent before the one already counted) never shortens it.
    late = after_renewal(renewed, Renewal.RENEWED, 105.0, policy)
    assert late == renewed


def test_a_failed_renewal_keeps_the_deadline_and_a_gone_lease_is_lost() -> None:
    policy = LeaseSettings()
    lease = Lease.acquired("k", "n:1", sent_at=0.0, settings=policy)
    assert after_renewal(lease, Renewal.FAILED, 10.0, policy) == lease
    assert after_renewal(lease, Renewal.GONE, 10.0, policy) is None


def test_refusals_back_off_doubling_up_to_the_cap() -> None:
    policy = LeaseSettings(retry_initial=0.05, retry_max=2.0)
    assert [retry_delay(n, policy) for n in range(1, 9)] == [
        0.05,
        0.1,
        0.2,
        0.4,
        0.8,
        1.6,
        2.0,
        2.0,
    ]
    assert retry_delay(10_000, policy) == 2.0


def test_the_table_acquires_up_to_the_limit_and_drops_expired_leases() -> None:
    table = LeaseTable()
    assert table.acquire("k", 2, 1000, "a:1", now_ms=0)
    assert table.acquire("k", 2, 1000, "b:1", now_ms=10)
    assert not table.acquire("k", 2, 1000, "c:1", now_ms=999)
    # a:1 expires at 1000 (live while now < 1000): c takes its place then.
    assert table.acquire("k", 2, 1000, "c:1", now_ms=1000)
    assert not table.renew("k", 1000, "a:1", now_ms=1000)
    assert table.renew("k", 1000, "b:1", now_ms=1005)
    assert table.live("k", 1500) == 2
    assert table.release("k", "b:1")
    assert not table.release("k", "b:1")
    assert table.live("k", 1500) == 1
    # A member that expired is never revived by a late renewal.
    assert not table.renew("k", 1000, "c:1", now_ms=2000)


# -- the property: what nodes count as held never exceeds the limit -----------------------

STEP = st.tuples(
    st.integers(min_value=0, max_value=3),  # node
    st.sampled_from(["acquire", "renew", "release", "fail-renew", "wait"]),
    st.integers(min_value=0, max_value=400_000),  # microseconds from send to execution
    st.integers(min_value=0, max_value=400_000),  # microseconds from execution to reply
)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=4),
    redis_offset=st.integers(min_value=-(10**9), max_value=10**9),
    node_offsets=st.lists(st.integers(min_value=-(10**9), max_value=10**9), min_size=4, max_size=4),
    steps=st.lists(STEP, max_size=80),
)
def test_the_leases_nodes_count_as_held_never_exceed_the_limit(
    limit: int, redis_offset: int, node_offsets: list[int], steps: list[tuple[int, str, int, int]]
) -> None:
    """Four nodes with clocks of their own (offsets up to 1000 s from Redis's) take,
    renew, release leases of one key; commands reach Redis late and answers come back
    late; renewals fail. At every moment every lease a node counts as held (and
    usable) is live in Redis, so there are never more than ``limit``."""
    policy = LeaseSettings(duration=1.0, renew_interval=0.2, margin=0.3)
    table = LeaseTable()
    held: list[dict[str, Lease]] = [{} for _ in node_offsets]
    now_us = 0  # true time, microseconds

    def node_time(node: int, at_us: int) -> float:
        return (at_us + node_offsets[node]) / 1_000_000

    def redis_ms(at_us: int) -> int:
        return (at_us + redis_offset) // 1000

    def check(at_us: int) -> None:
        counted = 0
        for node, leases in enumerate(held):
            for lease in leases.values():
                if lease.deadline > node_time(node, at_us):
                    counted += 1
                    assert lease.member in table.sets.get("k", {})
                    assert table.sets["k"][lease.member] > redis_ms(at_us), "held, not live"
        assert counted <= limit
        assert table.live("k", redis_ms(at_us)) <= limit

    serial = 0
    for node, action, to_redis, to_reply in steps:
        sent = now_us
        leases = held[node]
        if action == "acquire":
            serial += 1
            member = lease_member(f"n{node}", str(serial))
            executed = sent + to_redis
            check(executed)
            granted = table.acquire("k", limit, policy.duration_ms, member, redis_ms(executed))
            now_us = executed + to_reply
            check(now_us)
            if granted:
                leases[member] = Lease.acquired("k", member, node_time(node, sent), policy)
        elif action in ("renew", "fail-renew") and leases:
            member = sorted(leases)[0]
            executed = sent + to_redis
            check(executed)
            if action == "renew":
                alive = table.renew("k", policy.duration_ms, member, redis_ms(executed))
                outcome = Renewal.RENEWED if alive else Renewal.GONE
            else:
                outcome = Renewal.FAILED
            now_us = executed + to_reply
            check(now_us)
            after = after_renewal(leases[member], outcome, node_time(node, sent), policy)
            if after is None:
                del leases[member]
            else:
                leases[member] = after
        elif action == "release" and leases:
            # The connection has ended: the node stops counting it, then tells Redis.
            member = sorted(leases)[0]
            del leases[member]
            now_us = sent + to_redis
            check(now_us)
            table.release("k", member)
        else:
            now_us = sent + to_redis + to_reply
        check(now_us)


def test_a_usable_lease_is_renewed_before_it_stops_being_usable() -> None:
    policy = LeaseSettings(duration=1.0, renew_interval=0.2, margin=0.3)
    lease = Lease.acquired("k", "n:1", 0.0, policy)
    assert lease.renew_at(policy) < lease.usable_until(policy) < lease.deadline
    assert attrs.evolve(lease, confirmed=5.0).renew_at(policy) == 5.2

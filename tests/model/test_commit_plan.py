"""The commit plan: what each transaction takes from the two lanes, and which are fsynced."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kumo.model.commit_plan import CommitPlan, CommitPlanner
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.settings import EngineSettings

SECOND = NANOS_PER_SECOND


def test_clients_events_can_be_committed_alone() -> None:
    planner = CommitPlanner(EngineSettings(urgent_batch_messages=0))
    plan = planner.plan(0, [1, 1], [100] * 10, 10)
    assert plan == CommitPlan(requests=2, background=0, durable=True)


def test_a_stream_of_requests_does_not_starve_a_sweep() -> None:
    """Clients' transactions back to back: every second one takes a background event."""
    planner = CommitPlanner(EngineSettings(urgent_batch_messages=0))
    taken = []
    for step in range(6):
        plan = planner.plan(step, [1], [100] * 10, 10)
        planner.committed(plan)
        taken.append((plan.requests, plan.background))
    assert taken == [(1, 0), (1, 1), (1, 0), (1, 1), (1, 0), (1, 1)]


def test_background_alone_follows_the_client_window() -> None:
    settings = EngineSettings(max_batch_messages=1_000, client_batch_messages=300)
    planner = CommitPlanner(settings)
    planner.committed(planner.plan(0, [1], [100] * 20, 20))
    # Within a second of a client's append: short transactions.
    assert planner.plan(SECOND // 2, [], [100] * 20, 20).background == 3
    # Long after: long ones.
    assert planner.plan(5 * SECOND, [], [100] * 20, 20).background == 10


def test_clients_transactions_take_a_little_background_by_default() -> None:
    planner = CommitPlanner(EngineSettings())  # 256 messages
    assert planner.plan(0, [1], [100] * 10, 10) == CommitPlan(1, 3, durable=True)


def test_near_clients_every_background_transaction_is_fsynced() -> None:
    """A client's fsync writes out what the transactions before it left unsynced: near
    clients those are fsynced as they go, so that the client's own has little to write."""
    planner = CommitPlanner(EngineSettings(max_batch_messages=100, client_batch_messages=100))
    planner.committed(planner.plan(0, [1], [], 0))
    near = [planner.plan(SECOND // 10, [], [100] * 20, 20) for _ in range(3)]
    assert [plan.durable for plan in near] == [True, True, True]
    far = []
    for _ in range(9):
        plan = planner.plan(5 * SECOND, [], [100] * 20, 20)
        planner.committed(plan)
        far.append(plan.durable)
    assert far == [False] * 7 + [True, False]  # durable_every (8) alone


def test_while_admin_requests_are_answered_the_background_waits() -> None:
    planner = CommitPlanner(EngineSettings())
    assert planner.plan(0, [1, 2], [100] * 10, 10, admin_first=True) == CommitPlan(
        2, 0, durable=True
    )
    idle = planner.plan(0, [], [100] * 10, 10, admin_first=True)
    assert idle == CommitPlan(0, 0, durable=False)
    assert idle.empty
    # Once the gate opens, the sweep goes on (a client was seen: short transactions).
    assert planner.plan(1, [], [100] * 10, 10) == CommitPlan(0, 6, durable=True)


@given(
    steps=st.lists(
        st.tuples(
            st.lists(st.integers(1, 50), max_size=4),  # the waiting appends' sizes
            st.lists(st.integers(1, 600), max_size=30),  # the background events' weights
            st.integers(0, 3 * SECOND),  # time since the previous plan
            st.booleans(),  # admin requests are being answered
        ),
        min_size=1,
        max_size=30,
    ),
    urgent=st.integers(0, 600),
)
def test_every_plan_makes_progress_and_no_lane_starves(
    steps: list[tuple[list[int], list[int], int, bool]], urgent: int
) -> None:
    """Without admin requests, every plan takes something; with them, clients' events
    alone. Either way clients go first and are fsynced."""
    settings = EngineSettings(urgent_batch_messages=urgent, max_batch_events=64)
    planner = CommitPlanner(settings)
    now = 0
    previous: CommitPlan | None = None
    waited_before = False
    for requests, background, gap, admin in steps:
        now += gap
        plan = planner.plan(now, requests, background, len(background), admin_first=admin)
        if plan.empty and admin:  # only the background waits, for the admin requests
            assert not requests
            continue
        planner.committed(plan)
        assert plan.requests + plan.background > 0 or not (requests or background)
        assert plan.requests <= len(requests)
        assert plan.background <= len(background)
        if requests:
            assert plan.requests >= 1  # clients' appends always go first
            assert plan.durable  # and they are fsynced
        if admin:
            assert plan.background == 0
            continue
        if background and not requests:
            assert plan.background >= 1
        if not requests and not background[plan.background :]:
            assert plan.durable  # the last transaction before idle is fsynced
        # Two client transactions in a row never both leave the background waiting.
        if previous is not None and waited_before and background and requests:
            assert previous.background > 0 or plan.background > 0
        waited_before = bool(requests) and bool(background)
        previous = plan


def test_purges_wait_for_clients_the_gate_the_background_lane_and_the_window() -> None:
    settings = EngineSettings(spool_purge_batch=100, spool_purge_owed_max=1_000)
    planner = CommitPlanner(settings)
    second = NANOS_PER_SECOND
    assert planner.purge(0, 0, clients=False, background=False, admin_first=False) == (0, None)
    assert planner.purge(0, 250, clients=False, background=False, admin_first=False) == (100, None)
    assert planner.purge(0, 50, clients=False, background=False, admin_first=False) == (50, None)
    for waits in ({"clients": True}, {"background": True}, {"admin_first": True}):
        flags = {"clients": False, "background": False, "admin_first": False} | waits
        assert planner.purge(0, 250, **flags) == (0, None)
    planner.plan(10 * second, [1], (), 0)  # a client appends at 10 s
    window_ends = 10 * second + int(settings.client_window * second)
    purge = planner.purge(10 * second, 250, clients=False, background=False, admin_first=False)
    assert purge == (0, window_ends)
    assert planner.purge(
        10 * second, 250, clients=False, background=False, admin_first=False, asked=True
    ) == (100, None)
    assert planner.purge(window_ends, 250, clients=False, background=False, admin_first=False) == (
        100,
        None,
    )
    # Past spool_purge_owed_max, the lane and the window do not hold purges back.
    assert planner.purge(10 * second, 1_000, clients=False, background=True, admin_first=False) == (
        100,
        None,
    )
    assert planner.purge(10 * second, 1_000, clients=True, background=False, admin_first=False) == (
        0,
        None,
    )

"""The states of ready queues (kumo/model/ready_queue_state.py): what a state may be,
and which the ``queues`` of a ready-q-states request select."""

from __future__ import annotations

import pytest

from kumo.model.ready_queue_state import (
    CONNECTION_LIMITED,
    CONNECTION_RATE_THROTTLED,
    STATE_KEYS,
    ReadyQueueState,
    select_states,
)

A = ReadyQueueState("a", CONNECTION_LIMITED, "TooManyLeases for kumomta.connection_limit.a", 1)
B = ReadyQueueState("b", CONNECTION_LIMITED, "TooManyLeases for kumomta.connection_limit.b", 2)
B_RATE = ReadyQueueState("b", CONNECTION_RATE_THROTTLED, "rate", 3)


def test_kumomtas_two_keys_and_no_other() -> None:
    assert STATE_KEYS == ("connection_limited", "connection_rate_throttled")
    with pytest.raises(ValueError, match="'key' must be in"):
        ReadyQueueState("a", "suspended", "why", 0)


@pytest.mark.parametrize(
    ("queues", "selected"),
    [
        (None, [A, B, B_RATE]),
        ((), []),
        (("b",), [B, B_RATE]),
        # Kept in the order of the states, whatever the order of the names.
        (("b", "a", "b"), [A, B, B_RATE]),
        (("c",), []),
    ],
)
def test_naming_queues_keeps_only_those(
    queues: tuple[str, ...] | None, selected: list[ReadyQueueState]
) -> None:
    assert select_states([A, B, B_RATE], queues) == selected

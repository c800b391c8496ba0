"""Snapshots of the folded state: what is encoded decodes to the same state, and any
damage is refused with a reason."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kumo.model.criteria import Criteria
from kumo.model.events import (
    Attempt,
    BounceCancelled,
    Bounced,
    BounceIssued,
    Committed,
    Event,
    MessageReceived,
    RebindIssued,
    Rebound,
    TransientlyFailed,
)
from kumo.model.message import Message
from kumo.model.snapshot import (
    MAGIC,
    SnapshotError,
    decode_snapshot,
    encode_snapshot,
    snapshot_position,
    state_differences,
)
from kumo.model.state import State

CHAIN = bytes(range(16))
QUEUES = ["a.example", "camp:b.example", "c.example!relay"]
text_ids = st.text(max_size=12)
recipients = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=8)


@st.composite
def folded_states(draw: st.DrawFn) -> State:
    """A state folded from a random log: arrivals, rules issued and cancelled, bounces."""
    state = State()
    seq, time = 0, 1_000
    rules: list[str] = []
    for _ in range(draw(st.integers(0, 40))):
        seq += 1
        time += draw(st.integers(0, 10))
        queue = draw(st.sampled_from(QUEUES))
        event: Event
        match draw(st.sampled_from(["received", "received", "issue", "cancel", "bounce"])):
            case "received":
                # The replay's path, which takes ids of old logs that are not spool ids.
                sender = draw(st.sampled_from(["s@x", "t@y"]))
                size = draw(st.integers(0, 2**40))
                # Unique, as ids are: a spool id, or an id of an old log's spelling.
                message_id = f"{seq:032x}" if draw(st.booleans()) else f"{draw(text_ids)}-{seq}"
                protocol = draw(st.sampled_from(["HTTP", "ESMTP"]))
                state.apply_received(
                    seq, time, queue, message_id, sender, draw(recipients), size, protocol
                )
                continue
            case "issue":
                rules.append(f"rule-{seq}")
                event = BounceIssued(
                    rule_id=rules[-1],
                    criteria=Criteria(domain=draw(st.sampled_from(["a.example", "b.example"]))),
                    reason="why",
                    expires_at=time + draw(st.integers(-5, 100)),
                    issued_by="tester",
                )
            case "cancel" if rules:
                event = BounceCancelled(rule_id=draw(st.sampled_from(rules)), cancelled_by="x")
            case "bounce" if rules and state.queues and queue in state.queues:
                queued = list(state.queues[queue])
                taken = draw(st.integers(1, len(queued)))
                event = Bounced(
                    rule_id=draw(st.sampled_from(rules)), queue=queue, messages=queued[:taken]
                )
            case _:
                continue
        state.apply(Committed(seq, time, event))
    return state


@given(folded_states())
def test_a_snapshot_decodes_to_the_state_it_was_taken_of(state: State) -> None:
    data = encode_snapshot(state, CHAIN)
    restored, position = decode_snapshot(data)
    assert state_differences(state, restored) == []
    assert restored.queue_counts == state.queue_counts
    assert [rule.id for rule in restored.rules.live_rules()] == [
        rule.id for rule in state.rules.live_rules()
    ]
    assert (position.seq, position.time, position.chain) == (
        state.last_seq,
        state.last_time,
        CHAIN,
    )
    assert snapshot_position(data) == position
    # Deterministic: the restored state encodes to the same bytes.
    assert encode_snapshot(restored, CHAIN) == data


@given(folded_states(), st.data())
def test_any_damage_is_refused(state: State, data: st.DataObject) -> None:
    snapshot = bytearray(encode_snapshot(state, CHAIN))
    index = data.draw(st.integers(0, len(snapshot) - 1))
    snapshot[index] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(SnapshotError):
        decode_snapshot(bytes(snapshot))
    with pytest.raises(SnapshotError):
        snapshot_position(bytes(snapshot))


@given(folded_states(), st.data())
def test_a_truncated_snapshot_is_refused(state: State, data: st.DataObject) -> None:
    snapshot = encode_snapshot(state, CHAIN)
    cut = data.draw(st.integers(0, len(snapshot) - 1))
    with pytest.raises(SnapshotError):
        decode_snapshot(snapshot[:cut])


def test_refusals_say_what_is_wrong() -> None:
    with pytest.raises(SnapshotError, match="no magic"):
        decode_snapshot(b"SQLite format 3\x00")
    with pytest.raises(SnapshotError, match="digest"):
        decode_snapshot(MAGIC + b"\x00" * 40)


def test_differences_name_the_queue_and_the_counters() -> None:
    state = State()
    for seq in (1, 2):
        state.apply(
            Committed(seq, 5, MessageReceived(f"{seq:032x}", "a.example", "s@x", "r@a", 10))
        )
    restored, _ = decode_snapshot(encode_snapshot(state, CHAIN))
    assert restored.queues is not None
    restored.queues["a.example"].remove({f"{1:032x}"})
    restored.received_total = 3
    assert state_differences(state, restored) == [
        "received_total: 3 instead of 2",
        "queue 'a.example': 1 messages, the log says 2",
    ]


def test_a_state_without_its_messages_cannot_be_snapshotted() -> None:
    with pytest.raises(ValueError, match="holds its messages"):
        encode_snapshot(State(keep_messages=False), CHAIN)


def test_the_mail_path_counters_survive_a_snapshot() -> None:
    state = State()
    received = MessageReceived(f"{1:032x}", "a.example", "s@x", "r@a.example", 10)
    state.apply(Committed(1, 5, received))
    message = Message(received.message_id, "s@x", "r@a.example", 10, 5, 1)
    refused = Attempt(
        site="unspecified->a.example@smtp_client",
        code=451,
        enhanced_code=(4, 4, 1),
        content="try later",
        command="RCPT TO:<r@a.example>\r\n",
    )
    for seq, attempts in ((2, 0), (3, 1)):
        event = TransientlyFailed("a.example", message, attempts, refused, 1_000 * seq)
        state.apply(Committed(seq, 10 * seq, event))
    assert state.transient_failures_total == 2
    restored, _ = decode_snapshot(encode_snapshot(state, CHAIN))
    assert restored.transient_failures_total == 2
    assert state_differences(state, restored) == []
    restored.transient_failures_total = 1
    assert state_differences(state, restored) == ["transient_failures_total: 1 instead of 2"]


def _received(state: State, seq: int, protocol: str) -> None:
    state.apply_received(seq, 1_000 + seq, "a.example", f"{seq:032x}", "s@x", "r@a", 5, protocol)


def test_a_queue_keeps_its_messages_protocols_through_a_snapshot() -> None:
    state = State()
    for seq, protocol in enumerate(["ESMTP", "HTTP", "ESMTP"], start=1):
        _received(state, seq, protocol)
    restored, _ = decode_snapshot(encode_snapshot(state, CHAIN))
    assert restored.queues is not None
    assert [m.protocol for m in restored.queues["a.example"]] == ["ESMTP", "HTTP", "ESMTP"]


def test_a_snapshot_of_http_messages_is_written_as_before_queues_kept_the_protocol() -> None:
    """No ``protocols`` in its header: a snapshot written before reads the same way, its
    messages injected over HTTP (the only way in then)."""
    state = State()
    for seq in (1, 2):
        _received(state, seq, "HTTP")
    data = encode_snapshot(state, CHAIN)
    assert b'"protocols"' not in data
    restored, _ = decode_snapshot(data)
    assert restored.queues is not None
    assert list(restored.queues["a.example"]) == [
        Message(f"{seq:032x}", "s@x", "r@a", 5, 1_000 + seq, seq) for seq in (1, 2)
    ]


def test_a_snapshot_keeps_the_queues_each_rebind_moved_out_of() -> None:
    """What a restart needs to finish a rebind a crash cut short; a snapshot written
    before kumo kept it reads as a rebind that owes nothing, and is not taken for a
    snapshot that disagrees with the log."""
    state = State()
    _received(state, 1, "HTTP")
    issued = RebindIssued("b", Criteria(domain="a.example"), {"tenant": "t"}, "move")
    state.apply(Committed(2, 1_002, issued))
    state.apply(Committed(3, 1_003, RebindIssued("c", Criteria(domain="x"), {}, "none")))
    moved = Message(f"{1:032x}", "s@x", "r@a", 5, 1_001, 1)
    state.apply(Committed(4, 1_004, Rebound("b", "a.example", "t@a.example", [moved], [0], "m")))
    restored, _ = decode_snapshot(encode_snapshot(state, CHAIN))
    assert restored.rebinds == state.rebinds
    assert restored.rebinds["b"].moved_from == frozenset({"a.example"})
    assert restored.rebinds["c"].moved_from == frozenset()
    assert state_differences(state, restored) == []
    # As written before kumo kept them: [seq, body], no third element.
    before = State()
    before.rebinds = {
        key: attrs.evolve(seen, moved_from=None) for key, seen in state.rebinds.items()
    }
    encoded = encode_snapshot(before, CHAIN)
    unknown, _ = decode_snapshot(encoded)
    assert {key: seen.moved_from for key, seen in unknown.rebinds.items()} == {
        "b": None,
        "c": None,
    }
    # A fold of the same log knows; the snapshot does not: no difference reported.
    assert not [p for p in state_differences(state, unknown) if p.startswith("rebinds")]

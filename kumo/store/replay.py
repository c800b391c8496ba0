"""Folding a stored log into :class:`kumo.model.state.State`, fast.

A restart folds every event ever committed, most of them ``MessageReceived``: those
are decoded straight into queued messages, without building the event first, and the
strings and numbers that repeat (senders, commit times) are shared, which keeps a
million queued messages within the engine's memory budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from kumo.model.events import Committed, EventDecodeError, decode_event, decode_received
from kumo.model.state import State
from kumo.store.event_log import EventStore, LogCorruptError


def fold_log(
    store: EventStore,
    state: State | None = None,
    *,
    until: Callable[[int, int], bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> State:
    """Fold the events of ``store`` (after ``state.last_seq``) into ``state``.

    ``until(seq, time)`` returning True stops before that event. ``progress`` is called
    with the last folded seq after each chunk. Raises :class:`LogCorruptError` naming
    the seq of a gap or of a body that cannot be decoded.
    """
    state = state if state is not None else State()
    return fold_rows(store.scan_rows(state.last_seq), state, until=until, progress=progress)


def fold_rows(
    batches: Iterable[Sequence[tuple[int, int, str, bytes]]],
    state: State,
    *,
    until: Callable[[int, int], bool] | None = None,
    progress: Callable[[int], None] | None = None,
) -> State:
    """Fold stored ``(seq, time, type, body)`` rows, in log order, into ``state``; as
    :func:`fold_log` does, for rows read from elsewhere (archive segments)."""
    senders: dict[str, str] = {}
    last_time = -1
    for rows in batches:
        for seq, time, kind, body in rows:
            if until is not None and until(seq, time):
                return state
            if time != last_time:
                last_time = time
            try:
                if kind == "MessageReceived":
                    queue, message_id, sender, recipient, size, protocol = decode_received(
                        body, senders
                    )
                    state.apply_received(
                        seq, last_time, queue, message_id, sender, recipient, size, protocol
                    )
                else:
                    state.apply(Committed(seq, last_time, decode_event(body)))
            except EventDecodeError as exc:
                raise LogCorruptError(seq, str(exc)) from None
        if progress is not None:
            progress(state.last_seq)
    return state

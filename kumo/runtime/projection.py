"""The running fold that the API reads: rules, counters, queue gauges."""

from __future__ import annotations

from kumo.model.events import BounceIssued, Committed
from kumo.model.state import State
from kumo.runtime.watermark import Watermark


class Projection:
    """:class:`State` without messages, folded by the log writer after each commit.

    The writer calls :meth:`apply` synchronously, before it wakes the appenders, so
    whatever an API call reads after its append returned already shows that append.
    """

    __slots__ = ("rules_issued", "state")

    def __init__(self, state: State) -> None:
        self.state = state
        self.rules_issued = Watermark()
        """How many ``BounceIssued`` have been folded: the rule expiry waits on it."""

    def apply(self, committed: list[Committed]) -> None:
        apply = self.state.apply
        issued = 0
        for item in committed:
            apply(item)
            if type(item.event) is BounceIssued:
                issued += 1
        if issued:
            self.rules_issued.advance(self.rules_issued.value + issued)

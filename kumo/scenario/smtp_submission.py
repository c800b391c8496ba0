"""Sending a scenario's messages to kumo over SMTP, with kumo's own SMTP client.

The messages go one transaction each (one recipient), in order, over as few connections
as the client allows (``max_deliveries_per_connection`` each), through the same
:class:`~kumo.runtime.smtp_connection.SmtpConnection` that delivers mail: to the SMTP
listener of a live server over TCP, or, in-process, through a memory stream to the
engine's listener (the caller's ``connector`` decides which).
"""

from __future__ import annotations

import functools
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Final

import trio

from kumo.model.ready_queue import ResolvedAddress
from kumo.model.smtp_client import ClientSettings, TlsMode
from kumo.model.smtp_reply import Disposition
from kumo.runtime.smtp_connection import (
    ConnectionSettings,
    Connector,
    MessageOutcome,
    OutgoingMessage,
    SmtpConnection,
    client_tls_context,
)

__all__ = ["EHLO_DOMAIN", "Submitted", "submit"]

EHLO_DOMAIN: Final = "scenario.invalid"
"""The name the scenario's client gives in EHLO (RFC 2606: reserved, never a real host)."""
SITE: Final = "scenario"


@functools.cache
def _unused_tls() -> ssl.SSLContext:
    # The client never starts TLS (Disabled), but its settings need a context.
    return client_tls_context(verify=False)


def _settings(connector: Connector) -> ConnectionSettings:
    tls = _unused_tls()
    return ConnectionSettings(
        ClientSettings(EHLO_DOMAIN, enable_tls=TlsMode.DISABLED),
        verifying_tls=tls,
        insecure_tls=tls,
        connector=connector,
    )


class Submitted:
    """What became of the messages of one :func:`submit`: ``accepted`` of them got a
    ``250``; ``problems`` says why the others did not (one line each, at most a few)."""

    MAX_PROBLEMS: Final = 3

    def __init__(self) -> None:
        self.accepted = 0
        self.refused = 0
        self.problems: list[str] = []

    def note(self, problem: str) -> None:
        if len(self.problems) < self.MAX_PROBLEMS:
            self.problems.append(problem)


async def submit(
    messages: Sequence[OutgoingMessage], *, server: ResolvedAddress, connector: Connector
) -> Submitted:
    """Send ``messages`` to ``server`` (see the module docstring); return how it went.

    A connection that fails leaves the messages it did not take unsent (counted
    refused, with the failure as the problem): nothing is retried.
    """
    result = Submitted()
    pending = _Pending(messages)
    settings = _settings(connector)

    async def report(outcome: MessageOutcome) -> None:
        await trio.lowlevel.checkpoint()
        if outcome.disposition is Disposition.DELIVERY:
            result.accepted += 1
            return
        result.refused += 1
        response = outcome.response
        result.note(f"{outcome.message.recipient}: {response.code} {response.content}")

    while pending:
        connection = SmtpConnection(settings, [server], site=SITE, messages=pending, report=report)
        summary = await connection.run()
        ended = summary.error or (summary.failures[-1].error if summary.exhausted else None)
        if ended is not None and pending:
            result.refused += len(pending)
            result.note(f"{len(pending)} not sent: the connection ended: {ended}")
            pending.clear()
    return result


class _Pending:
    """The messages not yet taken by a connection, in order (an async iterator that
    never waits)."""

    def __init__(self, messages: Sequence[OutgoingMessage]) -> None:
        self._messages = deque(messages)

    def __len__(self) -> int:
        return len(self._messages)

    def clear(self) -> None:
        self._messages.clear()

    def __aiter__(self) -> _Pending:
        return self

    async def __anext__(self) -> OutgoingMessage:
        await trio.lowlevel.checkpoint()
        if not self._messages:
            raise StopAsyncIteration
        return self._messages.popleft()

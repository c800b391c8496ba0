"""ASGI middleware: each HTTP request is in flight in the engine's admin gate from the
moment the app is called until it returns, so that the mail path's sessions wait their
turn meanwhile (:mod:`kumo.model.admin_first`); a request of any method but ``GET``,
``HEAD`` and ``OPTIONS`` is a write, to which GET's listing gives way."""

from __future__ import annotations

from typing import Final

from kumo.http.connection_guard import ASGIApp, ASGIReceive, ASGISend, Scope
from kumo.runtime.admin_gate import AdminGate

READS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


class AdminFirst:
    """The middleware of the module docstring around ``app``."""

    def __init__(self, app: ASGIApp, gate: AdminGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self.gate.request(writes=scope.get("method") not in READS):
            await self.app(scope, receive, send)

"""The one exception the engine raises to refuse work, whatever the reason.

The engine refuses a request when it cannot take it now, through no fault of the
client: it is shutting down (:class:`~kumo.runtime.engine.EngineClosedError`), or its
event log no longer takes events (:class:`~kumo.runtime.log_writer.LogClosedError`).
Each such exception derives from :class:`RefusedError`, so that the HTTP layer answers
every one of them, present and future, with a 503 and the exception's text rather than
a 500.
"""

from __future__ import annotations


class RefusedError(Exception):
    """The engine refuses this work now; the same request may succeed later (after a
    restart). Its text says why, for the client."""

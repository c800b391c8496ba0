"""The quart-trio application: routes, access control, and the replies to bad requests.

The app is thin: each route reads the body (bounded) or the query string, hands it to
a handler of :mod:`kumo.http.bounce_api`, :mod:`kumo.http.suspend_api`,
:mod:`kumo.http.suspend_ready_q_api`, :mod:`kumo.http.ready_q_states_api`,
:mod:`kumo.http.inject_api` or :mod:`kumo.http.inspect_api`, and turns the handler's
:class:`~kumo.http.replies.Reply` into a response. Refusals come in the order that
docs/operations.md ("Error replies") states: access (401) before the body is read, then
size (413, from ``Content-Length`` before the body is read, else as soon as the body
grows over the limit: a body over the limit is never held whole; see
:mod:`kumo.http.connection_guard` for what an early answer does to the connection),
then content type (415), JSON syntax (400) and shape (422). Whatever a client sends gets
a 2xx or a 4xx with a plain-text reason; a 503 means the engine refused the work for now
(it is shutting down, or its event log is closed:
:class:`~kumo.runtime.refusal.RefusedError`), and a 500 that kumo itself failed.

The app starts no background task: the engine and the server run in the nursery of
whoever serves it (:mod:`kumo.cli.serve`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import orjson
import trio
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from kumo.http import (
    bounce_api,
    inject_api,
    inspect_api,
    ready_q_states_api,
    rebind_api,
    suspend_api,
    suspend_ready_q_api,
)
from kumo.http.access import AccessPolicy, Denied, PasswordCheck
from kumo.http.admin_first import AdminFirst
from kumo.http.connection_guard import ASGIApp as ASGIApp
from kumo.http.connection_guard import ASGIMessage as ASGIMessage
from kumo.http.connection_guard import ConnectionGuard
from kumo.http.connection_guard import Scope as Scope
from kumo.http.engine_protocol import AdminEngine
from kumo.http.errors import (
    BODY_TOO_LARGE,
    DEFAULT_BODY_LIMIT,
    RequestRefused,
    too_many_attempts,
    unauthorized,
)
from kumo.http.gatekeeper import AttemptLimits, Gatekeeper, Throttled
from kumo.http.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from kumo.http.metrics import JSON_CONTENT_TYPE as METRICS_JSON_CONTENT_TYPE
from kumo.http.metrics import AdminLatency, ListenerSource, json_page, metrics_registry, page
from kumo.http.openapi import OPENAPI
from kumo.http.replies import TEXT, Reply, text_reply
from kumo.http.routes import (
    BOUNCE_PATH,
    INJECT_PATH,
    INSPECT_MESSAGE_PATH,
    INSPECT_QUEUE_PATH,
    LIVENESS_PATH,
    METRICS_JSON_PATH,
    METRICS_PATH,
    OPENAPI_PATH,
    READY_Q_STATES_PATH,
    REBIND_PATH,
    ROUTES,
    SUSPEND_PATH,
    SUSPEND_READY_Q_PATH,
)
from kumo.http.rule_listing import RuleListing
from kumo.model.duration import NANOS_PER_SECOND
from kumo.model.inspection import QueueConfig
from kumo.runtime.admin_gate import AdminGate
from kumo.runtime.blocking import RunBlocking, in_thread
from kumo.runtime.refusal import RefusedError

BODY_TIMEOUT: Final = 15
"""Seconds a client has to send a whole body before it gets 408."""

_PROTECTED_PATHS: Final = frozenset(ROUTES) - {LIVENESS_PATH, OPENAPI_PATH}
"""Routes served only to trusted or authenticated peers (docs/operations.md, "Access
control"): every route but the liveness check and the OpenAPI document, so that a new
route is protected unless it is named here."""
_ADMIN_PREFIX: Final = "/api/admin/"
"""Routes whose answer times /metrics reports (``kumo_admin_request_seconds``)."""

_log = logging.getLogger(__name__)


def _response(reply: Reply) -> Response:
    response = Response(reply.body, status=reply.status, content_type=reply.content_type)
    for name, value in reply.headers:
        response.headers[name] = value
    return response


def _peer() -> str | None:
    client = request.scope.get("client")
    return None if client is None else str(client[0])


def _query() -> dict[str, list[str]]:
    """The query string's parameters, each name with every value given for it."""
    return {name: request.args.getlist(name) for name in request.args}


async def _body() -> bytes:
    """The request body; 413 as soon as it grows over the limit (Quart's Body stops
    keeping data past ``MAX_CONTENT_LENGTH``), 408 if it does not arrive in time."""
    return await request.get_data(cache=False, as_text=False, parse_form_data=False)


def create_app(
    engine: AdminEngine,
    *,
    access: AccessPolicy | None = None,
    body_limit: int = DEFAULT_BODY_LIMIT,
    max_inject_bytes: int = inject_api.DEFAULT_MAX_INJECT_BYTES,
    body_timeout: float = BODY_TIMEOUT,
    run_blocking: RunBlocking = in_thread,
    attempt_limits: AttemptLimits | None = None,
    queue_configs: inspect_api.QueueConfigs | None = None,
    smtp_listener: ListenerSource | None = None,
    admin_gate: AdminGate | None = None,
) -> QuartTrio:
    """The ASGI app serving ``engine``; ``access`` defaults to loopback-only trust.

    ``run_blocking`` runs the app's CPU-heavy steps (building a large injection, the
    /metrics page); pass :func:`kumo.runtime.blocking.inline` beside an engine opened
    with ``threads=False``. ``attempt_limits`` bounds failed authentication attempts
    (:mod:`kumo.http.gatekeeper`). ``queue_configs`` gives each queue's settings for
    inspect-sched-q (default: KumoMTA's defaults for every queue). ``smtp_listener``:
    the SMTP listener whose figures /metrics shows beside the engine's, if one runs.
    ``admin_gate``: the engine's, which each request enters so that the mail path waits
    its turn meanwhile (:mod:`kumo.http.admin_first`).
    """
    configs = queue_configs or (lambda _: QueueConfig())
    gate = Gatekeeper(access if access is not None else AccessPolicy(), attempt_limits)
    # scrypt costs ~16 MiB and tens of ms of a CPU: one at a time bounds both, and leaves
    # the other CPU to the event loop whatever guessers send.
    password_checks = trio.CapacityLimiter(1)

    app = QuartTrio(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = body_limit
    app.config["BODY_TIMEOUT"] = body_timeout
    app.asgi_app = ConnectionGuard(app.asgi_app, body_timeout=body_timeout)  # type: ignore[assignment,arg-type]
    if admin_gate is not None:
        app.asgi_app = AdminFirst(app.asgi_app, admin_gate)  # type: ignore[assignment,arg-type]
    latency = AdminLatency()
    listing = RuleListing()
    registry = metrics_registry(engine, latency, smtp_listener)

    # Registered first, so that the time of an admin request includes its access check.
    @app.before_request
    async def start_clock() -> None:
        g.started = trio.current_time()

    @app.after_request
    async def time_admin_request(response: Response) -> Response:
        rule = request.url_rule
        started = g.get("started")
        if rule is not None and rule.rule.startswith(_ADMIN_PREFIX) and started is not None:
            latency.observe(rule.rule, request.method, trio.current_time() - started)
        return response

    @app.before_request
    async def check_access() -> None:
        rule = request.url_rule
        if rule is None or rule.rule not in _PROTECTED_PATHS:
            return  # open, or no such route: routing answers 404 or 405
        peer = _peer()
        authorization = request.headers.get("Authorization")
        decision = gate.admit(peer, authorization, now=trio.current_time())
        if isinstance(decision, PasswordCheck):
            try:
                verified = await trio.to_thread.run_sync(
                    gate.policy.verify, decision, limiter=password_checks
                )
            except BaseException:
                gate.abandon(decision)
                raise
            decision = gate.conclude(decision, verified, now=trio.current_time())
        if isinstance(decision, Throttled):
            raise too_many_attempts(decision.why, decision.retry_after)
        if isinstance(decision, Denied):
            raise unauthorized(decision.why)
        g.principal = decision.principal

    async def admin(
        handler: Callable[..., Awaitable[Reply]],
    ) -> Response:
        body = await _body()
        reply = await handler(
            engine,
            principal=g.principal,
            content_type=request.headers.get("Content-Type"),
            body=body,
        )
        return _response(reply)

    @app.post(BOUNCE_PATH)
    async def post_bounce() -> Response:
        return await admin(bounce_api.issue_bounce)

    @app.get(BOUNCE_PATH)
    async def get_bounces() -> Response:
        give_way = trio.lowlevel.checkpoint if admin_gate is None else admin_gate.reader()
        return _response(await bounce_api.list_bounces(engine, _query(), listing, give_way))

    @app.delete(BOUNCE_PATH)
    async def delete_bounce() -> Response:
        return await admin(bounce_api.cancel_bounce)

    @app.post(SUSPEND_PATH)
    async def post_suspend() -> Response:
        return await admin(suspend_api.issue_suspend)

    @app.get(SUSPEND_PATH)
    async def get_suspends() -> Response:
        return _response(suspend_api.list_suspends(engine))

    @app.delete(SUSPEND_PATH)
    async def delete_suspend() -> Response:
        return await admin(suspend_api.cancel_suspend)

    @app.post(REBIND_PATH)
    async def post_rebind() -> Response:
        return await admin(rebind_api.rebind)

    @app.post(SUSPEND_READY_Q_PATH)
    async def post_suspend_ready_q() -> Response:
        return await admin(suspend_ready_q_api.issue_ready_suspend)

    @app.get(SUSPEND_READY_Q_PATH)
    async def get_suspend_ready_q() -> Response:
        return _response(suspend_ready_q_api.list_ready_suspends(engine))

    @app.delete(SUSPEND_READY_Q_PATH)
    async def delete_suspend_ready_q() -> Response:
        return await admin(suspend_ready_q_api.cancel_ready_suspend)

    @app.get(READY_Q_STATES_PATH)
    async def get_ready_q_states() -> Response:
        return _response(ready_q_states_api.list_ready_q_states(engine, _query()))

    @app.post(INJECT_PATH)
    async def inject() -> Response:
        body = await _body()
        reply = await inject_api.inject(
            engine,
            content_type=request.headers.get("Content-Type"),
            body=body,
            now=dt.datetime.fromtimestamp(engine.now() / NANOS_PER_SECOND, dt.UTC),
            max_bytes=max_inject_bytes,
            run_blocking=run_blocking,
        )
        return _response(reply)

    @app.get(INSPECT_MESSAGE_PATH)
    async def inspect_message() -> Response:
        return _response(await inspect_api.inspect_message(engine, _query()))

    @app.get(INSPECT_QUEUE_PATH)
    async def inspect_queue() -> Response:
        return _response(await inspect_api.inspect_queue(engine, _query(), configs))

    @app.get(LIVENESS_PATH)
    async def liveness() -> Response:
        return _response(text_reply("OK"))

    @app.get(METRICS_PATH)
    async def metrics() -> Response:
        text = await run_blocking(functools.partial(page, registry))
        return Response(text, status=200, content_type=METRICS_CONTENT_TYPE)

    @app.get(METRICS_JSON_PATH)
    async def metrics_json() -> Response:
        document = await run_blocking(functools.partial(json_page, registry))
        return Response(document, status=200, content_type=METRICS_JSON_CONTENT_TYPE)

    @app.get(OPENAPI_PATH)
    async def openapi() -> Response:
        return Response(orjson.dumps(OPENAPI), status=200, content_type="application/json")

    @app.errorhandler(RequestRefused)
    async def refused(error: RequestRefused) -> Response:
        response = _response(text_reply(error.text, error.status))
        if error.status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="kumo", Bearer realm="kumo"'
        if error.retry_after is not None:
            response.headers["Retry-After"] = str(error.retry_after)
        return response

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response | HTTPException:
        code = error.code
        if code is None or code < 400:
            return error  # a routing redirect: let Quart send it
        text = BODY_TOO_LARGE if code == 413 else f"{code} {error.name}: {error.description}"
        response = Response(text, status=code, content_type=TEXT)
        if code == 405:
            allowed = getattr(error, "valid_methods", None) or ()
            response.headers["Allow"] = ", ".join(sorted(allowed))
        return response

    @app.errorhandler(RefusedError)
    async def refused_by_engine(error: RefusedError) -> Response:
        # Shutting down, or the event log closed: the client may retry later.
        reason = str(error) or "kumo cannot take this request now"
        return Response(f"{reason}; retry later", status=503, content_type=TEXT)

    @app.errorhandler(Exception)
    async def internal_error(error: Exception) -> Response:
        _log.exception("request %s %s failed", request.method, request.path, exc_info=error)
        return Response(
            f"kumo failed to serve this request: {type(error).__name__}",
            status=500,
            content_type=TEXT,
        )

    return app

"""The two middlewares every request passes: observation (request id, metrics, security headers) and
errors (every failure an agent can meet becomes a small page in their language, never a traceback)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

from aiohttp import WSCloseCode, web

from . import context
from .appkeys import COMPANY, CSP, METRICS, REQUEST_ID, STARTED
from .errors import Code, PanelError
from .observability import monotonic
from .panel.pages import error_response, not_found_error
from .redaction import fault_line

log = logging.getLogger("sobot_panel")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, metrics, and the security headers every response carries (one layer for all three)."""
    request_id = _clean_id(request.headers.get("X-Request-Id", "")) or os.urandom(8).hex()  # secrets.token_hex
    request[REQUEST_ID] = request_id
    # Every log line written while this request is handled, and every call to the customer API, carry it.
    id_token = context.REQUEST_ID.set(request_id)
    trace_token = context.TRACEPARENT.set(context.valid_traceparent(request.headers.get("traceparent", "")))
    started = monotonic()
    status = 500
    long_lived = False
    try:
        response = await handler(request)
        status = response.status
        headers = response.headers
        company = request.get(COMPANY)  # its own framing origins, once the request was routed to one
        headers.setdefault("Content-Security-Policy", company.csp if company is not None else request.app[CSP])
        headers["X-Content-Type-Options"] = "nosniff"
        # A panel's address is Sobot's signed URL (the agent's email, the customer's phone, the sign): no
        # request the page makes, to us or anyone, may carry it as a Referer.
        headers["Referrer-Policy"] = "no-referrer"
        headers["X-Request-Id"] = request_id
        long_lived = isinstance(response, web.WebSocketResponse) or headers.get("Content-Type", "").startswith(
            "text/event-stream"
        )
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        routed = request.get(COMPANY)  # `tenant` only ever takes the names of companies served here
        tenant = routed.label if routed is not None else ""
        request.app[METRICS].request_done(route, status, monotonic() - started, tenant=tenant, long_lived=long_lived)
        context.REQUEST_ID.reset(id_token)
        context.TRACEPARENT.reset(trace_token)


def _clean_id(value: str) -> str:
    """A caller's request id, if it is a plain token (it lands in logs and in headers we send on)."""
    value = value.strip()[:64]
    return value if value and all(ch.isalnum() or ch in "-_.:" for ch in value) else ""


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure an agent can meet becomes a small page in their language; never a traceback.

    Except once a response is on the wire (a websocket after its upgrade): a page written then would land
    inside it (raw HTTP read as websocket frames), so that response is ended instead."""
    try:
        return await handler(request)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        started = request.get(STARTED)
        if started is not None and started.prepared:
            return await _end_started(request, started, error)
        return _error_page(request, error)


def _error_page(request: web.Request, error: Exception) -> web.StreamResponse:
    """The page for a failure before any response started (called while `error` is being handled)."""
    if isinstance(error, PanelError):
        return error_response(request, error)
    if isinstance(error, web.HTTPNotFound):
        return error_response(request, not_found_error(request))
    if isinstance(error, web.HTTPException):
        raise error
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(request, PanelError(Code.INTERNAL_ERROR), status=500)


async def _end_started(request: web.Request, started: web.StreamResponse, error: Exception) -> web.StreamResponse:
    """A started response whose handler failed: a websocket is closed with 1011, an event stream ends.
    Logged once, by where it failed, without the exception's message (which may quote personal data)."""
    log.error("unhandled error on %s %s after its response started: %s", request.method, request.path,
              fault_line(error))  # fmt: skip
    if isinstance(started, web.WebSocketResponse):
        with contextlib.suppress(Exception):
            await started.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
    return started  # already prepared: aiohttp only finishes it

"""Probes and metrics: `/healthz` (alive, no I/O), `/readyz` (can take traffic), `/metrics` (Prometheus).

Readiness (CONTRACT `/readyz`): started, not draining, and able to record sends, through Redis or, when
Redis is away, the local spool. A shared Redis outage must not take every replica out of the Service at
once: pages keep loading (the stale-if-error cache, the customer API) and sends go to the spool, so a
replica stays ready as long as its spool can keep records. Redis health is the gauge `panel_redis_up`,
for an alert, not a readiness condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .appkeys import COMPANIES, LIFECYCLE, METRICS, REDIS, SETTINGS
from .audit.reader import update_metrics
from .redis import REDIS_DOWN

PING_TIMEOUT_S = 0.5


async def healthz(request: web.Request) -> web.Response:
    # The pid tells an operator (and a test) which worker of `serve --workers N` answered.
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    if app[LIFECYCLE].draining:
        return web.json_response({"status": "draining"}, status=503)
    body: dict[str, Any] = {"status": "ready", "redis": "up", "audit": "redis"}
    try:
        await asyncio.wait_for(app[REDIS].ping(), timeout=PING_TIMEOUT_S)
        app[METRICS].redis_up.set(1)
        return web.json_response(body)
    except REDIS_DOWN:
        app[METRICS].redis_up.set(0)
    # Every company's sends must have somewhere to go: its own spool (one directory each).
    spools = [company.audit.spool for company in app[COMPANIES]]
    if spools and all(spool is not None for spool in spools):
        if all(await asyncio.gather(*(asyncio.to_thread(spool.can_take) for spool in spools if spool is not None))):
            return web.json_response({**body, "redis": "down", "audit": "spool"})
        return web.json_response({"status": "unavailable", "redis": "down", "audit": "spool_full"}, status=503)
    return web.json_response({"status": "unavailable", "redis": "down", "audit": "none"}, status=503)


async def metrics(request: web.Request) -> web.Response:
    return await metrics_of(request.app)


async def metrics_of(app: web.Application, _request: web.Request | None = None) -> web.Response:
    """The exposition for `app`; also served alone on PANEL_METRICS_PORT, away from the ingress."""
    hard_limit = app[SETTINGS].audit_hard_limit
    for company in app[COMPANIES]:
        update = update_metrics(app[METRICS], app[REDIS], company.keys, company.audit.spool, hard_limit,
                                tenant=company.label)  # fmt: skip
        with contextlib.suppress(*REDIS_DOWN):
            await asyncio.wait_for(update, 1.0)
    return web.Response(body=app[METRICS].exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

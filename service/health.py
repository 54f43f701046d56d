"""Probes and metrics: `/healthz` (alive, no I/O), `/readyz` (can take traffic), `/metrics` (Prometheus)."""

from __future__ import annotations

import asyncio
import contextlib
import os

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .appkeys import AUDIT, KEYS, METRICS, REDIS, SETTINGS
from .audit.reader import update_metrics
from .redis import REDIS_DOWN


async def healthz(request: web.Request) -> web.Response:
    # The pid tells an operator (and a test) which worker of `serve --workers N` answered.
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    try:
        await asyncio.wait_for(request.app[REDIS].ping(), timeout=1.0)
    except REDIS_DOWN as error:
        return web.json_response({"status": "unavailable", "redis": type(error).__name__}, status=503)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    app = request.app
    with contextlib.suppress(*REDIS_DOWN):
        await asyncio.wait_for(update_metrics(app[METRICS], app[REDIS], app[KEYS], app[AUDIT].spool,
                                            app[SETTINGS].audit_hard_limit), 1.0)  # fmt: skip
    return web.Response(body=app[METRICS].exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

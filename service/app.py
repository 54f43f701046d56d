"""`create_app(settings)`: the whole service assembled in one place.

Every resource (the embedded redis-server, the Redis client, the directory's HTTP session, background
listeners) is opened and closed in one `cleanup_ctx` generator; nothing is opened at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from redis.exceptions import RedisError

from . import audit, devhost, live, ops, views
from .appkeys import (
    AUDIT,
    CACHE,
    CATALOG,
    DIRECTORY,
    EMBEDDED_REDIS,
    JINJA,
    KEYS,
    METRICS,
    REDIS,
    RENDERER,
    SETTINGS,
    SIGNER,
    TICKET_FIELDS,
    WEB_DIR,
    Signer,
    make_jinja,
)
from .audit_reader import update_metrics
from .directory.cache import CustomerCache
from .directory.plugins import load_directory
from .errors import PanelError
from .i18n import Catalog
from .observability import REQUEST_ID, Metrics, monotonic
from .redis import EmbeddedRedis, connect_any, keys_for, parse_redis_url
from .rendering import Renderer
from .security import content_security_policy
from .settings import Settings
from .ticket_fields import load_ticket_fields
from .wecom import WecomSecretClient

log = logging.getLogger("sobot_panel")

# --- resources -------------------------------------------------------------------------------


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    url = settings.redis_url
    watcher: asyncio.Task[None] | None = None
    if url is None:
        server = EmbeddedRedis(settings.data_dir / "redis")
        await asyncio.to_thread(server.start)
        app[EMBEDDED_REDIS] = server
        url = server.url
        log.info("embedded redis-server started (AOF on) under %s", server.data_dir)
        watcher = asyncio.create_task(_watch_embedded(server), name="embedded-redis-watch")
    else:
        log.info("using %s", parse_redis_url(url, cluster=settings.redis_cluster).describe())
    client = connect_any(url, cluster=settings.redis_cluster, tls_ca=settings.redis_tls_ca)
    app[REDIS] = client
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await client.aclose()
        if EMBEDDED_REDIS in app:
            await asyncio.to_thread(app[EMBEDDED_REDIS].stop)


async def _watch_embedded(server: EmbeddedRedis) -> None:
    """A crashed child is reported loudly and started again, never hidden."""
    delay = 0.5
    while True:
        await asyncio.sleep(1.0)
        if server.running:
            delay = 0.5
            continue
        log.error("embedded redis-server died (%s); restarting it", server.log_tail(3))
        try:
            await asyncio.to_thread(server.start)
            log.warning("embedded redis-server is back")
        except (OSError, RuntimeError, TimeoutError) as error:
            log.error("embedded redis-server did not restart: %s", error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def _directory_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    metrics = app[METRICS]
    directory = load_directory(settings, on_call=metrics.observe_upstream)
    app[DIRECTORY] = directory
    app[CACHE] = CustomerCache(
        app[REDIS],
        directory,
        app[KEYS],
        ttl=settings.directory_ttl,
        negative_ttl=settings.directory_negative_ttl,
        local_ttl=settings.local_cache_ttl,
        local_size=settings.local_cache_size,
    )
    try:
        yield
    finally:
        await directory.close()


async def _wecom_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if settings.wecom_secret is not None or not (settings.wecom_gateway and settings.wecom_temp_id):
        yield
        return
    client = WecomSecretClient(
        app[REDIS], app[KEYS], gateway=settings.wecom_gateway, temp_id=settings.wecom_temp_id.get_secret_value()
    )
    try:
        app[SIGNER].use_wecom_secret(await client.current_secret())
    except PanelError as error:
        log.error("WeCom secret could not be fetched (%s); WeCom signs are checked without it", error.code)
    refresher = asyncio.create_task(_refresh_wecom(app, client), name="wecom-secret-refresh")
    try:
        yield
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await client.close()


async def _refresh_wecom(app: web.Application, client: WecomSecretClient) -> None:
    while True:
        await asyncio.sleep(client.ttl_s / 2)
        with contextlib.suppress(PanelError):
            app[SIGNER].use_wecom_secret(await client.current_secret())


CSP = web.AppKey("content_security_policy", str)

# --- middlewares -----------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, metrics, and the security headers every response carries (one layer for all three)."""
    request_id = request.headers.get("X-Request-Id", "")[:64] or secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    started = monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        headers = response.headers
        headers.setdefault("Content-Security-Policy", request.app[CSP])
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "strict-origin-when-cross-origin"
        headers["X-Request-Id"] = request_id
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[METRICS].request_done(route, status, monotonic() - started)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure an agent can meet becomes a small page in their language; never a traceback."""
    try:
        return await handler(request)
    except PanelError as error:
        return views.error_response(request, error)
    except web.HTTPNotFound:
        return views.error_response(request, views.not_found_error(request))
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return views.error_response(request, PanelError("internal_error"), status=500)


# --- health ----------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    # The pid tells an operator (and a test) which worker of `serve --workers N` answered.
    return web.json_response({"status": "ok", "pid": os.getpid()})


async def readyz(request: web.Request) -> web.Response:
    try:
        await asyncio.wait_for(request.app[REDIS].ping(), timeout=1.0)
    except (RedisError, OSError, TimeoutError) as error:
        return web.json_response({"status": "unavailable", "redis": type(error).__name__}, status=503)
    return web.json_response({"status": "ready"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    app = request.app
    with contextlib.suppress(RedisError, OSError, TimeoutError):
        await asyncio.wait_for(update_metrics(app[METRICS], app[REDIS], app[KEYS], app[AUDIT].spool), 1.0)
    body = app[METRICS].exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# --- the factory -----------------------------------------------------------------------------


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[_observe, _errors], client_max_size=256 * 1024)
    catalog = Catalog.load()
    app[SETTINGS] = settings
    app[CSP] = content_security_policy(settings.origin_patterns, allow_self=settings.demo)
    # On Redis Cluster the audit keys share the tenant's hash tag (service.keys).
    app[KEYS] = keys_for(settings.redis_prefix, settings.redis_url, cluster=settings.redis_cluster)
    app[CATALOG] = catalog
    app[JINJA] = make_jinja(catalog)
    app[METRICS] = Metrics()
    app[SIGNER] = Signer(settings)
    app[TICKET_FIELDS] = load_ticket_fields(settings.ticket_fields)
    app[RENDERER] = Renderer(
        app[JINJA], catalog, app[TICKET_FIELDS], base_url=settings.base_url, card_format=settings.card_format
    )

    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_directory_ctx)
    app.cleanup_ctx.append(_wecom_ctx)
    audit.setup(app)
    live.setup(app)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    views.setup_routes(app)
    ops.setup_routes(app)
    if settings.demo:
        devhost.setup_routes(app)
    app.router.add_static("/static", WEB_DIR / "static", append_version=False)
    return app




__all__ = ["create_app"]

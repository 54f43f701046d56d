"""`create_app(settings)`: the whole service assembled in one place.

Every resource (the embedded redis-server, the Redis client, the directory's HTTP session, the panel
core, the audit producer and its spool, the live hub, the ops consumer) is opened and closed in one
`cleanup_ctx` generator here, in dependency order; nothing is opened at import time, and no domain
module wires itself into the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import signal
from collections.abc import AsyncIterator

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.web_runner import GracefulExit
from redis.exceptions import RedisError

from . import assets, devhost, health
from .appkeys import (
    AUDIT,
    CACHE,
    CATALOG,
    CORE,
    CSP,
    DIRECTORY,
    EMBEDDED_REDIS,
    HUB,
    KEYS,
    LIFECYCLE,
    METRICS,
    OPS_COUNTER,
    OPS_FEED,
    REDIS,
    SETTINGS,
    TICKET_FIELDS,
)
from .audit import http as audit_http
from .audit.producer import AuditLog
from .audit.retention import Retention, RetentionPolicy
from .audit.spool import Spool
from .directory.cache import CustomerCache
from .directory.plugins import load_directory
from .errors import PanelError
from .i18n import Catalog
from .lifecycle import Lifecycle
from .live.endpoint import websocket
from .live.hub import LiveHub
from .middleware import errors, observe
from .observability import Metrics
from .ops import dashboard as ops
from .ops.feed import OpsCounter, OpsFeed
from .panel import handlers
from .panel.core import PanelCore, Signer
from .panel.rendering import Renderer
from .panel.wecom import WecomSecretClient
from .protocol.security import content_security_policy
from .protocol.surfaces import MAX_QUERY_LENGTH
from .protocol.ticket_fields import load_ticket_fields
from .protocol.tokens import SessionTokens
from .redaction import keep_queries_out_of_logs
from .redis import REDIS_DOWN, DataDirBusy, EmbeddedRedis, connect_any, keys_for, parse_redis_url
from .settings import Settings

log = logging.getLogger("sobot_panel")

# --- resources, opened in this order and closed in reverse ------------------------------------


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    url = settings.redis_url
    watcher: asyncio.Task[None] | None = None
    if url is None:
        server = EmbeddedRedis(settings.data_dir / "redis")
        # Spawned on the loop's thread, which lives as long as the process: the child's parent-death
        # signal follows the thread that started it (sobot_panel.redis.embedded).
        await _spawn(server, lock_wait_s=10.0)
        await asyncio.to_thread(server.wait_until_answers)
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


async def _spawn(server: EmbeddedRedis, *, lock_wait_s: float) -> None:
    """Spawn on this (the loop's) thread, waiting without blocking the loop for a server that is still
    going away on the data directory (one a killed predecessor left, ending on its parent-death signal)."""
    deadline = asyncio.get_running_loop().time() + lock_wait_s
    while True:
        try:
            server.spawn(lock_wait_s=0.0)
            return
        except DataDirBusy:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            await asyncio.sleep(0.1)


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
            await _spawn(server, lock_wait_s=10.0)
            await asyncio.to_thread(server.wait_until_answers)
            log.warning("embedded redis-server is back")
        except (OSError, RuntimeError) as error:  # DataDirBusy and TimeoutError too
            log.error("embedded redis-server did not restart: %s", error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def _panel_ctx(app: web.Application) -> AsyncIterator[None]:
    """The customer directory, its cache, and the panel core built on them."""
    settings = app[SETTINGS]
    metrics = app[METRICS]
    directory = load_directory(settings, on_call=metrics.observe_upstream)
    cache = CustomerCache(
        app[REDIS],
        directory,
        app[KEYS],
        ttl=settings.directory_ttl,
        negative_ttl=settings.directory_negative_ttl,
        local_ttl=settings.local_cache_ttl,
        local_size=settings.local_cache_size,
    )
    app[DIRECTORY], app[CACHE] = directory, cache
    signer = Signer(settings.sign_policy())
    app[CORE] = PanelCore(
        signer=signer,
        cache=cache,
        renderer=Renderer(
            aiohttp_jinja2.get_env(app),
            app[CATALOG],
            app[TICKET_FIELDS],
            base_url=settings.base_url,
            card_format=settings.card_format,
            card_surfaces=settings.card_surface_set,
            ticket_surfaces=settings.ticket_surface_set,
            customer_lang=settings.customer_lang,
        ),
        tokens=SessionTokens(*settings.session_keys()),
        metrics=metrics,
        session_ttl_s=settings.session_ttl,
        session_max_age_s=settings.session_max_age,
        boot={
            "origins": settings.origin_patterns,
            "allowSelf": settings.demo,
            "cardFormat": settings.card_format,
            "signMaxAge": settings.sign_max_age,
        },
        trusted_unsigned=settings.trusted_unsigned,
    )
    try:
        yield
    finally:
        await directory.close()


async def _wecom_ctx(app: web.Application) -> AsyncIterator[None]:
    """SPEC §3.4: the WeCom secret from Sobot's gateway, when configured that way, refreshed in the background."""
    settings = app[SETTINGS]
    if settings.wecom_secret is not None or not (settings.wecom_gateway and settings.wecom_temp_id):
        yield
        return
    signer = app[CORE].signer
    client = WecomSecretClient(
        app[REDIS], app[KEYS], gateway=settings.wecom_gateway, temp_id=settings.wecom_temp_id.get_secret_value()
    )
    try:
        signer.use_wecom_secret(await client.current_secret())
    except PanelError as error:
        log.error("WeCom secret could not be fetched (%s); WeCom signs are checked without it", error.code)
    refresher = asyncio.create_task(_refresh_wecom(signer, client), name="wecom-secret-refresh")
    try:
        yield
    finally:
        refresher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await refresher
        await client.close()


async def _refresh_wecom(signer: Signer, client: WecomSecretClient) -> None:
    while True:
        await asyncio.sleep(client.ttl_s / 2)
        with contextlib.suppress(PanelError):
            signer.use_wecom_secret(await client.current_secret())


async def _audit_ctx(app: web.Application) -> AsyncIterator[None]:
    """The audit producer: the spool, a start-up replay of what was left on this host, the replayer."""
    settings = app[SETTINGS]
    spool = Spool(settings.spool_path, max_bytes=settings.spool_max_bytes) if settings.spool_max_bytes else None
    audit = AuditLog(app[REDIS], app[KEYS], spool=spool, idempotency_ttl_s=settings.audit_dedupe_ttl)
    app[AUDIT] = audit
    # What a previous run, or a worker that died, left on this host goes in before we serve.
    with contextlib.suppress(*REDIS_DOWN):
        await asyncio.wait_for(audit.replay_spool(), timeout=10.0)
    policy = RetentionPolicy(
        maxlen=None if settings.audit_max_age else settings.audit_maxlen,
        max_age_s=settings.audit_max_age,
        hard_maxlen=settings.audit_hard_limit,
    )
    retention = Retention(app[REDIS], app[KEYS], policy, on_forced=app[METRICS].audit_forced_drops.inc)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(audit.run_replayer(stop), name="audit-spool-replayer"),
        asyncio.create_task(retention.run(stop, interval_s=settings.audit_trim_interval), name="audit-retention"),
    ]
    try:
        yield
    finally:
        stop.set()
        for task in tasks:
            await task
        if spool is not None:
            await _last_replay(audit, spool)
            spool.close()


async def _last_replay(audit: AuditLog, spool: Spool, timeout_s: float = 5.0) -> None:
    """On the way out: push what the spool holds while Redis answers, and say what stays on disk.

    A pod deleted during a Redis outage takes an emptyDir spool with it; this line is what tells.
    """
    error = ""
    try:
        await asyncio.wait_for(audit.replay_spool(), timeout=timeout_s)
    except (RedisError, OSError) as failure:  # REDIS_DOWN; TimeoutError is an OSError
        error = f" (Redis: {type(failure).__name__})"
    depth = await asyncio.to_thread(spool.depth)
    if depth.records:
        log.warning("audit spool: %d record(s) remain on disk at %s at exit%s; they are replayed by the next "
                    "process that uses this directory", depth.records, spool.directory, error)  # fmt: skip
    else:
        log.info("audit spool: empty at exit")


async def _live_ctx(app: web.Application) -> AsyncIterator[None]:
    """The live hub; its pub/sub listener starts after Redis and stops before it."""
    hub = LiveHub(redis=app[REDIS], keys=app[KEYS], core=app[CORE], catalog=app[CATALOG], metrics=app[METRICS])
    app[HUB] = hub
    listener = asyncio.create_task(hub.listen(), name="live-pubsub")
    try:
        yield
    finally:
        hub.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(listener, 3.0)  # cancelled if the stop flag is not seen in time


async def _ops_ctx(app: web.Application) -> AsyncIterator[None]:
    """This replica's consumer of the `ops` group and its feed listener, only when the dashboard is on."""
    settings = app[SETTINGS]
    if settings.ops_token is None:
        yield  # no dashboard, no consumer: the group is not created and builds no backlog
        return
    redis, keys = app[REDIS], app[KEYS]
    consumer = f"ops-{os.uname().nodename}-{os.getpid()}-{secrets.token_hex(2)}"
    counter = OpsCounter(redis, keys, consumer, claim_idle_ms=settings.audit_claim_idle_ms,
                         dead_after=settings.audit_dead_after)  # fmt: skip
    feed = OpsFeed(redis, keys)
    app[OPS_COUNTER], app[OPS_FEED] = counter, feed
    tasks = [
        asyncio.create_task(counter.run(), name="ops-counter"),
        asyncio.create_task(feed.listen(), name="ops-feed"),
    ]
    try:
        yield
    finally:
        counter.stop()
        feed.stop()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, 3.0)  # cancelled if the stop flag is not seen in time


async def unready_on_sigterm(app: web.Application, *, delay: float) -> None:
    """SIGTERM turns the replica unready at once (/readyz 503) and starts the drain `delay` seconds later,
    so a balancer that probes readiness stops sending before the listener closes. (On Kubernetes the
    preStop sleep plays that part; see deploy/README.md.) Replaces aiohttp's own SIGTERM handler."""
    loop = asyncio.get_running_loop()

    def graceful_exit() -> None:
        raise GracefulExit()

    def on_sigterm() -> None:
        if app[LIFECYCLE].draining:
            return
        app[LIFECYCLE].draining = True
        log.info("SIGTERM: not ready from now on; draining in %.1fs", delay)
        loop.call_later(delay, graceful_exit)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)


async def _metrics_port_ctx(app: web.Application) -> AsyncIterator[None]:
    """With PANEL_METRICS_PORT, /metrics is served there only: the ingress routes PANEL_PORT, never this."""
    settings = app[SETTINGS]
    if settings.metrics_port is None:
        yield
        return
    side = web.Application()
    side.router.add_get("/metrics", functools.partial(health.metrics_of, app))
    runner = web.AppRunner(side, access_log=None)
    await runner.setup()
    # Workers of `serve --workers N` share the port like the main one; any answers for all (multiprocess).
    shared = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    site = web.TCPSite(runner, settings.host, settings.metrics_port, reuse_port=shared or None)
    await site.start()
    try:
        yield
    finally:
        await runner.cleanup()


async def _close_sockets(app: web.Application) -> None:
    """SIGTERM: live panels get 1001 and reconnect elsewhere; ops feeds end so their browsers do too."""
    if HUB in app:
        await app[HUB].close_all()
    if OPS_FEED in app:
        app[OPS_FEED].close_all()


# --- the factory -----------------------------------------------------------------------------

MAX_REQUEST_LINE = 2 * MAX_QUERY_LENGTH


def create_app(settings: Settings) -> web.Application:
    web_dir = assets.check()
    keep_queries_out_of_logs()
    app = web.Application(
        middlewares=[observe, errors],
        client_max_size=handlers.MAX_BODY_BYTES,
        # Room for the documented query limit (16 KiB) twice over: within it our own handler answers,
        # with a translated 414 past the limit; only beyond this does aiohttp's parser refuse by itself.
        handler_args={"max_line_size": MAX_REQUEST_LINE, "max_field_size": MAX_REQUEST_LINE},
    )
    catalog = Catalog.load()
    jinja = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(web_dir / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
        undefined=jinja2.StrictUndefined,
    )
    jinja.globals["catalog"] = catalog
    app[SETTINGS] = settings
    app[CSP] = content_security_policy(settings.origin_patterns, allow_self=settings.demo)
    # On Redis Cluster the audit keys share the tenant's hash tag (sobot_panel.redis.keys).
    app[KEYS] = keys_for(settings.redis_prefix, settings.redis_url, cluster=settings.redis_cluster)
    app[CATALOG] = catalog
    app[METRICS] = Metrics()
    app[LIFECYCLE] = Lifecycle()
    app[TICKET_FIELDS] = load_ticket_fields(settings.ticket_fields)

    app.cleanup_ctx.extend([_redis_ctx, _panel_ctx, _wecom_ctx, _audit_ctx, _live_ctx, _ops_ctx, _metrics_port_ctx])
    app.on_shutdown.append(_close_sockets)

    router = app.router
    router.add_get("/healthz", health.healthz)
    router.add_get("/readyz", health.readyz)
    if settings.metrics_port is None:
        router.add_get("/metrics", health.metrics)
    router.add_get("/", handlers.index)
    router.add_get("/embed/{surface}", handlers.embed_panel)
    router.add_get("/embed/{surface}/{view}", handlers.embed_view)
    router.add_post("/panel/send", handlers.send)
    router.add_post("/api/partners/{partnerId}/invalidate", handlers.invalidate)
    router.add_get("/api/audit", audit_http.audit_api)
    router.add_get("/ws", websocket)
    router.add_get("/ops", ops.guarded(ops.dashboard, page=True))
    router.add_get("/ops/entries/{entry_id}", ops.guarded(ops.entry_detail, page=True))
    router.add_get("/ops/feed", ops.guarded(ops.feed, page=False))
    router.add_get("/ops/api/summary", ops.guarded(ops.api_summary, page=False))
    if settings.demo:
        router.add_get("/dev/host", devhost.host_page)
        router.add_get("/dev/host/signed", devhost.signed)
    router.add_static("/static", web_dir / "static", append_version=False)
    return app


__all__ = ["create_app", "unready_on_sigterm"]

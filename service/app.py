"""`create_app(settings)`: the whole service assembled in one place.

Every resource (the embedded redis-server, the Redis client, the companies served with their directories,
panel cores, audit streams and ops consumers, the live hub and the one pub/sub reader) is opened and
closed in a `cleanup_ctx` generator here, in dependency order; nothing is opened at import time, and no
domain module wires itself into the application.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from collections.abc import AsyncIterator

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.web_runner import GracefulExit

from . import assets, devhost, health
from .appkeys import CATALOG, COMPANIES, CSP, EMBEDDED_REDIS, HUB, KEYS, LIFECYCLE, METRICS, PUBSUB, REDIS, SETTINGS
from .audit import http as audit_http
from .errors import PanelError
from .i18n import Catalog
from .lifecycle import Lifecycle
from .live.endpoint import websocket
from .live.hub import LiveHub
from .middleware import errors, observe
from .observability import Metrics
from .ops import dashboard as ops
from .panel import handlers
from .panel.core import Signer
from .panel.wecom import WecomSecretClient
from .protocol.security import content_security_policy
from .protocol.surfaces import MAX_QUERY_LENGTH
from .protocol.tokens import SessionTokens
from .redaction import keep_queries_out_of_logs
from .redis import DataDirBusy, EmbeddedRedis, connect_any, keys_for, parse_redis_url
from .redis.pubsub import PubSubReader, Router
from .settings import Settings
from .tenants.company import Shared
from .tenants.config import CompanyConfig, TenantsError, load_tenants, single_company
from .tenants.registry import Companies, reconcile

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


async def _companies_ctx(app: web.Application) -> AsyncIterator[None]:
    """Every company this deployment serves, the live hub, and the one pub/sub reader they all share."""
    settings = app[SETTINGS]
    router = Router()
    reader = PubSubReader(app[REDIS], name="pubsub", on_message=router.message, on_connect=router.connected)
    hub = LiveHub(reader=reader, router=router, catalog=app[CATALOG], metrics=app[METRICS],
                  resync_concurrency=settings.resync_concurrency)  # fmt: skip
    companies = Companies()
    app[PUBSUB], app[HUB], app[COMPANIES] = reader, hub, companies
    shared = Shared(
        settings=settings,
        redis=app[REDIS],
        base_keys=app[KEYS],
        tokens=SessionTokens(*settings.session_keys()),
        metrics=app[METRICS],
        jinja=aiohttp_jinja2.get_env(app),
        catalog=app[CATALOG],
        reader=reader,
        router=router,
    )
    wanted = _wanted_companies(settings)
    await reconcile(companies, wanted, shared, attach=hub.attach, detach=hub.detach)
    listener = asyncio.create_task(reader.run(), name="pubsub")
    if settings.tenants is not None:
        one_at_a_time = asyncio.Lock()  # two SIGHUPs in a row reconcile in turn, never interleaved
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: _spawn_reload(app, companies, shared, hub, one_at_a_time)
        )
    try:
        yield
    finally:
        if settings.tenants is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for company in companies:
            await company.close()
        reader.stop()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(listener, 3.0)  # cancelled if the stop flag is not seen in time


def _wanted_companies(settings: Settings) -> dict[str, CompanyConfig]:
    """The single company (when PANEL_SYSNUM is set) and the tenants of PANEL_TENANTS."""
    wanted: dict[str, CompanyConfig] = {}
    single = single_company(settings)
    if single is not None:
        wanted[""] = single
    if settings.tenants is not None:
        wanted.update(load_tenants(settings.tenants))
    return wanted


_RELOADS: set[asyncio.Task[None]] = set()


def _spawn_reload(app: web.Application, companies: Companies, shared: Shared, hub: LiveHub, lock: asyncio.Lock) -> None:
    task = asyncio.create_task(reload_tenants(app, companies, shared, hub, lock), name="tenants-reload")
    _RELOADS.add(task)
    task.add_done_callback(_RELOADS.discard)


async def reload_tenants(
    app: web.Application, companies: Companies, shared: Shared, hub: LiveHub, lock: asyncio.Lock
) -> None:
    """SIGHUP: read PANEL_TENANTS again and serve what it says now; a bad file keeps the running set."""
    try:
        async with lock:
            wanted = _wanted_companies(app[SETTINGS])
            changes = await reconcile(companies, wanted, shared, attach=hub.attach, detach=hub.detach)
    except TenantsError as error:
        for problem in error.problems:
            log.error("tenants reload refused, the running configuration stays: %s", problem)
        return
    except Exception:
        log.exception("tenants reload failed; the running configuration stays")
        return
    log.info("tenants reloaded: %s", changes)


async def _wecom_ctx(app: web.Application) -> AsyncIterator[None]:
    """SPEC §3.4: the single company's WeCom secret from Sobot's gateway, refreshed in the background."""
    settings = app[SETTINGS]
    company = app[COMPANIES].get("")
    if company is None or settings.wecom_secret is not None or not (settings.wecom_gateway and settings.wecom_temp_id):
        yield
        return
    signer = company.core.signer
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
    for company in app.get(COMPANIES) or ():
        if company.feed is not None:
            company.feed.close_all()


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

    app.cleanup_ctx.extend([_redis_ctx, _companies_ctx, _wecom_ctx, _metrics_port_ctx])
    app.on_shutdown.append(_close_sockets)

    router = app.router
    router.add_get("/healthz", health.healthz)
    router.add_get("/readyz", health.readyz)
    if settings.metrics_port is None:
        router.add_get("/metrics", health.metrics)
    router.add_get("/", handlers.index)
    # The single company at /embed/..., each tenant of PANEL_TENANTS at /t/NAME/embed/... (CONTRACT).
    for base in ("", "/t/{tenant}"):
        router.add_get(f"{base}/embed/{{surface}}", handlers.embed_panel)
        router.add_get(f"{base}/embed/{{surface}}/{{view}}", handlers.embed_view)
        router.add_post(f"{base}/panel/send", handlers.send)
        router.add_post(f"{base}/api/partners/{{partnerId}}/invalidate", handlers.invalidate)
        router.add_get(f"{base}/api/audit", audit_http.audit_api)
        router.add_get(f"{base}/ws", websocket)
        router.add_get(f"{base}/ops", ops.guarded(ops.dashboard, page=True))
        router.add_get(f"{base}/ops/entries/{{entry_id}}", ops.guarded(ops.entry_detail, page=True))
        router.add_get(f"{base}/ops/feed", ops.guarded(ops.feed, page=False))
        router.add_get(f"{base}/ops/api/summary", ops.guarded(ops.api_summary, page=False))
    if settings.demo:
        router.add_get("/dev/host", devhost.host_page)
        router.add_get("/dev/host/signed", devhost.signed)
    router.add_static("/static", web_dir / "static", append_version=False)
    return app


__all__ = ["create_app", "unready_on_sigterm"]

"""The live hub: this replica's open panels, indexed by the customer they show, and the Redis pub/sub
fan-out that refreshes them.

Each replica subscribes to a customer's channel while it has sockets showing that customer, so an
invalidation reaches only the replicas that need it. Pub/sub is at most once: refreshes published while
a replica's subscription is down are lost, so after every reconnect the hub resynchronises its panels.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiohttp import WSCloseCode, web

from ..errors import PanelError
from ..i18n import Catalog, Lang
from ..observability import Metrics
from ..panel.core import PanelCore
from ..protocol.security import TokenBucket
from ..protocol.surfaces import Surface, SurfaceContext, View
from ..protocol.tokens import SessionClaims
from ..redis import REDIS_DOWN, Keys, RedisClient, as_text, pubsub_for
from .frames import FrameId, compact

log = logging.getLogger(__name__)

RESUBSCRIBE_BACKOFF_MAX_S = 1.0  # Redis back -> panels resynchronised within about a second


@dataclass(eq=False, slots=True)
class Connection:
    ws: web.WebSocketResponse
    surface: Surface
    lang: Lang
    claims: SessionClaims
    view: View | None = None
    partner_id: str = ""
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(rate=5.0, burst=20.0))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(compact(frame))


class LiveHub:
    """Open panels of this replica, indexed by the customer they show, and the pub/sub listener."""

    def __init__(self, *, redis: RedisClient, keys: Keys, core: PanelCore, catalog: Catalog, metrics: Metrics) -> None:
        self._redis = redis
        self._keys = keys
        self._core = core
        self._catalog = catalog
        self._metrics = metrics
        self.by_partner: dict[str, set[Connection]] = {}
        self.connections: set[Connection] = set()
        self.closing = False
        self.stopping = False
        self._wanted: set[str] = set()
        self._subscribed: set[str] = set()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.resubscribed = asyncio.Event()  # set each time the listener (re)subscribes; tests wait on it

    # registry ------------------------------------------------------------------------------

    def add(self, conn: Connection) -> None:
        self.connections.add(conn)
        self._metrics.websockets.inc()
        self._show(conn, conn.partner_id)

    def remove(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self._metrics.websockets.dec()
        self._show(conn, "")

    def _show(self, conn: Connection, partner_id: str) -> None:
        old = conn.partner_id
        if old and old in self.by_partner:
            watchers = self.by_partner[old]
            watchers.discard(conn)
            if not watchers:
                del self.by_partner[old]
                self._want(self._keys.partner_channel(old), False)
        conn.partner_id = partner_id
        if partner_id and conn in self.connections:
            watchers = self.by_partner.setdefault(partner_id, set())
            if not watchers:
                self._want(self._keys.partner_channel(partner_id), True)
            watchers.add(conn)

    def _want(self, channel: str, wanted: bool) -> None:
        if wanted:
            self._wanted.add(channel)
        else:
            self._wanted.discard(channel)
        self._changed.set()

    # pushing -------------------------------------------------------------------------------

    async def push_panel(
        self, conn: Connection, context: SurfaceContext | None, frame_id: FrameId = None, *, signed_now: bool
    ) -> None:
        """Render this context for the connection and push it, with the session renewed for what it shows.

        `signed_now`: the context was verified just now (a relayed `selected`), not re-read from the token."""
        if context is None:
            return
        panel = await self._core.build(
            conn.surface, context, conn.lang, conn.view, session=conn.claims, signed_now=signed_now
        )
        conn.claims = panel.claims
        self._show(conn, panel.claims.partner_id)
        await conn.send({"type": "panel", "id": frame_id, "html": panel.html, "token": panel.token,
                         "partnerId": panel.claims.partner_id})  # fmt: skip

    async def send_error(self, conn: Connection, error: PanelError, frame_id: FrameId) -> None:
        message = self._catalog.error_text(error, conn.lang)
        await conn.send({"type": "error", "id": frame_id, "code": error.code, "field": error.field,
                         "message": message})  # fmt: skip

    async def refresh_partner(self, partner_id: str) -> None:
        """Re-render every panel of this replica that shows this customer."""
        self._core.cache.drop_local(partner_id)
        for conn in list(self.by_partner.get(partner_id, ())):
            await self.resync(conn, None)

    async def refresh_all(self) -> None:
        for conn in list(self.connections):
            await self.resync(conn, None)

    async def resync(self, conn: Connection, frame_id: FrameId) -> None:
        async with conn.lock:
            try:
                await self.push_panel(conn, self._core.context_of(conn.claims), frame_id, signed_now=False)
            except PanelError as error:
                await self.send_error(conn, error, frame_id)

    # pub/sub -------------------------------------------------------------------------------

    async def listen(self) -> None:
        """Subscribe to the invalidations channel and the wanted partner channels; survive Redis restarts.

        redis-py's PubSub neither reconnects nor raises reliably after its connection drops, so every
        failure throws the PubSub away, waits with backoff, subscribes afresh and resyncs the panels
        (events published while we were away are lost; a resync catches up).
        """
        delay = 0.1
        first = True
        while not self.stopping:
            pubsub = pubsub_for(self._redis)
            try:
                await pubsub.subscribe(self._keys.invalidations_channel)
                self._subscribed = set()
                await self._sync_subscriptions(pubsub)
                if not first:
                    log.warning("pub/sub reconnected; resynchronising %d panels", len(self.connections))
                    await self.refresh_all()
                first = False
                delay = 0.1
                self.resubscribed.set()
                await self._pump(pubsub)
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as error:
                self.resubscribed.clear()
                log.warning("pub/sub connection lost (%s); reconnecting in %.1fs", type(error).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESUBSCRIBE_BACKOFF_MAX_S)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _sync_subscriptions(self, pubsub: aioredis.client.PubSub) -> None:
        self._changed.clear()
        add = self._wanted - self._subscribed
        drop = self._subscribed - self._wanted
        if add:
            await pubsub.subscribe(*add)
        if drop:
            await pubsub.unsubscribe(*drop)
        self._subscribed = set(self._wanted)

    async def _pump(self, pubsub: aioredis.client.PubSub) -> None:
        keys = self._keys
        prefix = keys.partner_channel("")
        idle = 0.0
        # redis-py's get_message(timeout=) can swallow a cancellation, so the loop also checks a flag.
        while not self.stopping:
            if self._changed.is_set():
                await self._sync_subscriptions(pubsub)
            message = await pubsub.get_message(timeout=0.05)
            if message is None:
                idle += 0.05
                if idle >= 5.0:
                    await pubsub.ping()  # a dead connection shows itself here, not by silence
                    idle = 0.0
                continue
            idle = 0.0
            if message.get("type") != "message":
                continue
            channel = as_text(message["channel"])
            data = as_text(message["data"])
            if channel == keys.invalidations_channel:
                self._core.cache.drop_local(data)
            elif channel.startswith(prefix):
                self._spawn(self.refresh_partner(channel[len(prefix) :]))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("panel refresh failed", exc_info=task.exception())

    # shutdown ------------------------------------------------------------------------------

    async def close_all(self) -> None:
        """SIGTERM: refuse new sockets and close open ones with 1001 so panels reconnect elsewhere."""
        self.closing = True
        await asyncio.gather(
            *(conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
              for conn in list(self.connections)),
            return_exceptions=True,
        )  # fmt: skip

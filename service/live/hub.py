"""The live hub: this replica's open panels, indexed by the customer they show, and the Redis pub/sub
fan-out that refreshes them.

Each replica listens on a customer's channel while it has sockets showing that customer, so an
invalidation reaches only the replicas that need it: one listener per indexed socket, and the pub/sub
reader (`sobot_panel.redis.pubsub`) subscribes on the first and unsubscribes on the last. Pub/sub is at
most once: refreshes published while the reader is away are lost, so after every reconnect the hub
resynchronises its panels (a push identical to what a panel shows changes nothing there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, web

from ..errors import Code, PanelError
from ..i18n import Catalog, Lang
from ..observability import Metrics
from ..panel.core import PanelCore
from ..protocol.security import TokenBucket
from ..protocol.surfaces import Surface, SurfaceContext, View
from ..protocol.tokens import SessionClaims
from ..redaction import fault_line
from ..redis import Keys, RedisClient
from ..redis.pubsub import PubSubReader
from .frames import FrameId, compact

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Connection:
    ws: web.WebSocketResponse
    surface: Surface
    lang: Lang
    claims: SessionClaims
    view: View | None = None
    partner_id: str = ""  # the customer shown
    session: str = ""  # the session this socket belongs to (the per-session cap counts these)
    watching: str = ""  # the customer this connection is indexed (and listens) under; the hub's business
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(rate=5.0, burst=20.0))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(compact(frame))


class LiveHub:
    """Open panels of this replica, indexed by the customer they show; refreshed through one pub/sub reader."""

    def __init__(self, *, redis: RedisClient, keys: Keys, core: PanelCore, catalog: Catalog, metrics: Metrics) -> None:
        self._keys = keys
        self._core = core
        self._catalog = catalog
        self._metrics = metrics
        self.by_partner: dict[str, set[Connection]] = {}
        self.connections: set[Connection] = set()
        self.per_session: Counter[str] = Counter()
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._partner_prefix = keys.partner_channel("")
        # Subscribed to a customer's channel while at least one socket here shows that customer.
        self.subscriber = PubSubReader(
            redis,
            name="live hub",
            fixed=[keys.invalidations_channel],
            on_message=self._on_message,
            on_connect=self._on_connect,
        )

    # registry ------------------------------------------------------------------------------

    def add(self, conn: Connection, *, max_per_session: int = 0) -> bool:
        """Register an open panel; False (and nothing registered) when its session already has
        `max_per_session` sockets here (0: no cap)."""
        if max_per_session and self.per_session[conn.session] >= max_per_session:
            return False
        self.connections.add(conn)
        self.per_session[conn.session] += 1
        self._metrics.websockets.inc()
        self._watch(conn, conn.partner_id)
        return True

    def remove(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.per_session[conn.session] -= 1
            if self.per_session[conn.session] <= 0:
                del self.per_session[conn.session]
            self._metrics.websockets.dec()
        self._watch(conn, "")

    def _watch(self, conn: Connection, partner_id: str) -> None:
        """Index the connection under the customer it shows; one pub/sub listener per indexed connection."""
        conn.partner_id = partner_id
        if partner_id and conn not in self.connections:
            partner_id = ""  # a closed socket is never indexed again (a push may finish after it closed)
        if conn.watching == partner_id:
            return
        if conn.watching:
            watchers = self.by_partner.get(conn.watching)
            if watchers is not None:
                watchers.discard(conn)
                if not watchers:
                    del self.by_partner[conn.watching]
            self.subscriber.unlisten(self._keys.partner_channel(conn.watching))
        conn.watching = partner_id
        if partner_id:
            self.by_partner.setdefault(partner_id, set()).add(conn)
            self.subscriber.listen(self._keys.partner_channel(partner_id))

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
        self._watch(conn, panel.claims.partner_id)
        await conn.send({"type": "panel", "id": frame_id, "html": panel.html, "token": panel.token,
                         "partnerId": panel.claims.partner_id, "signedAt": context.signed_at_ms})  # fmt: skip

    async def send_error(self, conn: Connection, error: PanelError, frame_id: FrameId) -> None:
        message = self._catalog.error_text(error, conn.lang)
        await conn.send({"type": "error", "id": frame_id, "code": error.code, "field": error.field,
                         "message": message})  # fmt: skip

    async def refresh_partner(self, partner_id: str) -> None:
        """Re-render every panel of this replica that shows this customer."""
        self._core.cache.drop_local(partner_id)
        for conn in list(self.by_partner.get(partner_id, ())):
            await self._refresh(conn)

    async def refresh_all(self) -> None:
        for conn in list(self.connections):
            await self._refresh(conn)

    async def _refresh(self, conn: Connection) -> None:
        """A push no frame asked for: a failure nobody foresaw is logged once (never with its message) and
        told to this panel alone, and the next panel is still refreshed."""
        try:
            await self.resync(conn, None)
        except Exception as error:
            log.error("panel refresh failed, answered internal_error: %s", fault_line(error))
            await self.send_error(conn, PanelError(Code.INTERNAL_ERROR), None)

    async def resync(self, conn: Connection, frame_id: FrameId) -> None:
        async with conn.lock:
            try:
                await self.push_panel(conn, self._core.context_of(conn.claims), frame_id, signed_now=False)
            except PanelError as error:
                await self.send_error(conn, error, frame_id)

    # pub/sub -------------------------------------------------------------------------------

    async def listen(self) -> None:
        """Run the pub/sub reader until `stop()`: it survives Redis restarts (see `PubSubReader`)."""
        await self.subscriber.run()

    def stop(self) -> None:
        self.subscriber.stop()

    def _on_message(self, channel: str, data: str) -> None:
        if channel == self._keys.invalidations_channel:
            self._core.cache.drop_local(data)
        elif channel.startswith(self._partner_prefix):
            self._spawn(self.refresh_partner(channel[len(self._partner_prefix) :]))

    async def _on_connect(self, reconnected: bool) -> None:
        """After a reconnect every panel is re-rendered: a refresh published while we were away is lost."""
        if reconnected:
            log.info("resynchronising %d panels after the pub/sub reconnect", len(self.connections))
            self._spawn(self.refresh_all())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("panel refresh failed: %s", fault_line(task.exception() or Exception()))

    # shutdown ------------------------------------------------------------------------------

    async def close_all(self) -> None:
        """SIGTERM: refuse new sockets and close open ones with 1001 so panels reconnect elsewhere."""
        self.closing = True
        await asyncio.gather(
            *(conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
              for conn in list(self.connections)),
            return_exceptions=True,
        )  # fmt: skip

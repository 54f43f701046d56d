"""The live hub: this replica's open panels, indexed by the customer they show, and the Redis pub/sub
fan-out that refreshes them.

Each replica listens on a customer's channel while it has sockets showing that customer, so an
invalidation reaches only the replicas that need it: one listener per indexed socket, and the pub/sub
reader (`sobot_panel.redis.pubsub`) subscribes on the first and unsubscribes on the last. One reader serves
every company: a company's channels carry its key prefix, so the router hands each message to the hub with
the company it belongs to. Pub/sub is at most once: refreshes published while the reader is away are
lost, so after every reconnect the hub resynchronises its panels (a push identical to what a panel shows
changes nothing there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import WSCloseCode, web

from ..errors import Code, PanelError
from ..i18n import Catalog, Lang
from ..observability import Metrics
from ..panel.core import PanelCore
from ..protocol.security import TokenBucket
from ..protocol.surfaces import Surface, SurfaceContext, View
from ..protocol.tokens import SessionClaims
from ..redaction import fault_line
from ..redis import Keys
from ..redis.pubsub import PubSubReader, Router
from .frames import FrameId, compact

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Connection:
    ws: web.WebSocketResponse
    surface: Surface
    lang: Lang
    claims: SessionClaims
    company: str = ""  # the company whose panel this is ("" for the single-company settings)
    view: View | None = None
    partner_id: str = ""  # the customer shown
    session: str = ""  # the session this socket belongs to (the per-session cap counts these)
    watching: str = ""  # the customer this connection is indexed (and listens) under; the hub's business
    watching_channel: str = ""  # that customer's channel (of this connection's company)
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(rate=5.0, burst=20.0))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(compact(frame))


class Company(Protocol):
    """What the hub needs of a company (`sobot_panel.tenants.company.Company`)."""

    name: str
    keys: Keys
    core: PanelCore


class LiveHub:
    """Open panels of this replica, indexed by the company and customer they show."""

    def __init__(self, *, reader: PubSubReader, router: Router, catalog: Catalog, metrics: Metrics) -> None:
        self._catalog = catalog
        self._metrics = metrics
        self.subscriber = reader  # the deployment's one pub/sub reader (shared with the ops feeds)
        self._router = router
        self._companies: dict[str, Company] = {}
        self.by_partner: dict[tuple[str, str], set[Connection]] = {}
        self.connections: set[Connection] = set()
        self.per_session: Counter[str] = Counter()
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        router.on_connect(self, self._on_connect)

    # companies -----------------------------------------------------------------------------

    def attach(self, company: Company) -> None:
        """Serve a company's panels: hear its invalidations and the channels of the customers it shows.
        Attaching a company by a name already attached replaces it (a reload): its open panels stay."""
        name = company.name
        old = self._companies.get(name)
        self._companies[name] = company
        if old is not None and old.keys == company.keys:
            return  # the handlers look the company up by name: they reach the new one from now on
        if old is not None:
            self._forget_channels(old)
        keys = company.keys
        self._router.on_channel(keys.invalidations_channel, lambda _, data: self._drop_local(name, data))
        prefix = keys.partner_channel("")
        self._router.on_prefix(prefix, lambda channel, _: self._refresh_later(name, channel[len(prefix) :]))
        self.subscriber.listen(keys.invalidations_channel)

    async def detach(self, name: str) -> None:
        """A company that is no longer served: its panels are closed (they reconnect and learn it is gone)."""
        company = self._companies.pop(name, None)
        if company is None:
            return
        self._forget_channels(company)
        doomed = [conn for conn in self.connections if conn.company == name]
        await asyncio.gather(*(conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"company removed")
                               for conn in doomed), return_exceptions=True)  # fmt: skip

    def _forget_channels(self, company: Company) -> None:
        self._router.forget(company.keys.invalidations_channel, company.keys.partner_channel(""))
        self.subscriber.unlisten(company.keys.invalidations_channel)

    def company(self, name: str) -> Company | None:
        return self._companies.get(name)

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
        company = self._companies.get(conn.company)
        if partner_id and (conn not in self.connections or company is None):
            partner_id = ""  # a closed socket is never indexed again (a push may finish after it closed)
        if conn.watching == partner_id:
            return
        if conn.watching:
            key = (conn.company, conn.watching)
            watchers = self.by_partner.get(key)
            if watchers is not None:
                watchers.discard(conn)
                if not watchers:
                    del self.by_partner[key]
            self.subscriber.unlisten(conn.watching_channel)
        conn.watching, conn.watching_channel = partner_id, ""
        if partner_id and company is not None:
            conn.watching_channel = company.keys.partner_channel(partner_id)
            self.by_partner.setdefault((conn.company, partner_id), set()).add(conn)
            self.subscriber.listen(conn.watching_channel)

    # pushing -------------------------------------------------------------------------------

    async def push_panel(
        self, conn: Connection, context: SurfaceContext | None, frame_id: FrameId = None, *, signed_now: bool
    ) -> None:
        """Render this context for the connection and push it, with the session renewed for what it shows.

        `signed_now`: the context was verified just now (a relayed `selected`), not re-read from the token."""
        company = self._companies.get(conn.company)
        if context is None or company is None:
            return
        panel = await company.core.build(
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

    async def refresh_partner(self, company_name: str, partner_id: str) -> None:
        """Re-render every panel of this replica that shows this company's customer."""
        company = self._companies.get(company_name)
        if company is not None:
            company.core.cache.drop_local(partner_id)
        for conn in list(self.by_partner.get((company_name, partner_id), ())):
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
        company = self._companies.get(conn.company)
        if company is None:
            return
        async with conn.lock:
            try:
                await self.push_panel(conn, company.core.context_of(conn.claims), frame_id, signed_now=False)
            except PanelError as error:
                await self.send_error(conn, error, frame_id)

    # pub/sub -------------------------------------------------------------------------------

    def _drop_local(self, company_name: str, partner_id: str) -> None:
        company = self._companies.get(company_name)
        if company is not None:
            company.core.cache.drop_local(partner_id)

    def _refresh_later(self, company_name: str, partner_id: str) -> None:
        self._spawn(self.refresh_partner(company_name, partner_id))

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

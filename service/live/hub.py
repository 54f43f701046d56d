"""The live hub: this replica's open panels, indexed by the customer they show, and the Redis pub/sub
fan-out that refreshes them.

Each replica listens on a customer's channel while it has sockets showing that customer, so an
invalidation reaches only the replicas that need it: one listener per indexed socket, and the pub/sub
reader (`sobot_panel.redis.pubsub`) subscribes on the first and unsubscribes on the last. One reader serves
every company: a company's channels carry its key prefix, so the router hands each message to the hub with
the company it belongs to. Pub/sub is at most once: refreshes published while the reader is away are
lost, so after every reconnect the hub resynchronises its panels.

A resynchronisation is a storm (every panel of the replica at once), so it is spread over
`resync_concurrency` workers instead of one panel after another, a panel already waiting in it is not
queued twice, one customer's panels are taken together (its lost invalidation is made good by dropping
its local copies once: the first lookup fills the local tier and single-flight shares it with the rest),
and a push identical to what the panel shows is skipped (a digest of the last pushed HTML is kept per
socket, never the HTML itself) unless the panel's token is due for renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
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
    shown: bytes = b""  # digest of the HTML last pushed (what the panel shows); b"": not known here
    bucket: TokenBucket = field(default_factory=lambda: TokenBucket(rate=5.0, burst=20.0))
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, frame: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(compact(frame))


def digest(parts: list[bytes]) -> bytes:
    """What a panel shows, in 16 bytes: enough to tell an identical push from a new one."""
    hashed = hashlib.blake2b(digest_size=16)
    for part in parts:
        hashed.update(part)
    return hashed.digest()


class Company(Protocol):
    """What the hub needs of a company (`sobot_panel.tenants.company.Company`)."""

    name: str
    keys: Keys
    core: PanelCore


class LiveHub:
    """Open panels of this replica, indexed by the company and customer they show."""

    def __init__(
        self, *, reader: PubSubReader, router: Router, catalog: Catalog, metrics: Metrics, resync_concurrency: int = 16
    ) -> None:
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
        self.resync_concurrency = max(1, resync_concurrency)
        self._queued: set[Connection] = set()  # waiting in a resynchronisation: never queued twice
        self._resyncing = 0  # panels being resynchronised right now (bounded by resync_concurrency)
        self.resync_peak = 0  # the most at once since this hub started
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
        self,
        conn: Connection,
        context: SurfaceContext | None,
        frame_id: FrameId = None,
        *,
        signed_now: bool,
        unless_shown: bool = False,
    ) -> bool:
        """Render this context for the connection and push it, with the session renewed for what it shows;
        False when nothing was pushed.

        `signed_now`: the context was verified just now (a relayed `selected`), not re-read from the token.
        `unless_shown`: a push nobody asked for is skipped when the panel already shows this very HTML and
        its token is not due for renewal (the panel keeps its token, still valid, and the claims here stay
        the ones that token carries)."""
        company = self._companies.get(conn.company)
        if context is None or company is None:
            return False
        panel = await company.core.build(conn.surface, context, conn.lang, conn.view, session=conn.claims,
                                         signed_now=signed_now, with_token=not unless_shown)  # fmt: skip
        shown = digest(panel.parts)
        if (
            unless_shown
            and shown == conn.shown
            and panel.claims.partner_id == conn.claims.partner_id
            and not company.core.renewal_due(conn.claims)
        ):
            self._metrics.pushes_skipped.inc()
            return False
        conn.claims, conn.shown = panel.claims, shown
        self._watch(conn, panel.claims.partner_id)
        token = panel.token or company.core.tokens.issue(panel.claims)  # minted only for a panel that is sent
        await conn.send({"type": "panel", "id": frame_id, "html": panel.html, "token": token,
                         "partnerId": panel.claims.partner_id, "signedAt": context.signed_at_ms})  # fmt: skip
        return True

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
        """Resynchronise every panel of this replica (after a pub/sub reconnect), `resync_concurrency` at a
        time. Panels already waiting from an earlier call are not queued again; each panel is rendered once."""
        fresh = [conn for conn in self.connections if conn not in self._queued]
        if not fresh:
            return
        self._queued.update(fresh)
        # One customer's panels together: the first lookup refills the local tier and the rest hit it.
        fresh.sort(key=lambda conn: (conn.company, conn.watching))
        for company_name, partner_id in {(conn.company, conn.watching) for conn in fresh}:
            company = self._companies.get(company_name)
            if company is not None and partner_id:
                company.core.cache.drop_local(partner_id)  # its invalidation may be among what was lost
        started, pushed = time.monotonic(), 0
        queue = iter(fresh)  # the workers share one iterator: each panel is taken by exactly one

        async def worker() -> None:
            nonlocal pushed
            for conn in queue:
                self._queued.discard(conn)
                if conn not in self.connections:
                    continue  # closed while it waited
                self._resyncing += 1
                self.resync_peak = max(self.resync_peak, self._resyncing)
                self._metrics.resyncs.inc()
                try:
                    pushed += await self._refresh(conn, unless_shown=True)
                finally:
                    self._resyncing -= 1
                await asyncio.sleep(0)  # a render that never waited must not keep the loop from other sockets

        await asyncio.gather(*(worker() for _ in range(min(self.resync_concurrency, len(fresh)))))
        self._metrics.resync_peak.set(self.resync_peak)
        log.info("resynchronised %d panels in %.2f s: %d pushed, the rest unchanged (at most %d at once)",
                 len(fresh), time.monotonic() - started, pushed, self.resync_peak)  # fmt: skip

    async def _refresh(self, conn: Connection, *, unless_shown: bool = False) -> bool:
        """A push no frame asked for (`unless_shown`: skipped when the panel already shows it): a failure
        nobody foresaw is logged once (never with its message) and told to this panel alone, and the next
        panel is still refreshed. True when something was pushed."""
        try:
            return await self.resync(conn, None, unless_shown=unless_shown)
        except Exception as error:
            log.error("panel refresh failed, answered internal_error: %s", fault_line(error))
            await self.send_error(conn, PanelError(Code.INTERNAL_ERROR), None)
            return True

    async def resync(self, conn: Connection, frame_id: FrameId, *, unless_shown: bool = False) -> bool:
        """Push the panel its token's context again (`unless_shown`: not when it already shows that; a
        panel's own `resync` frame is always answered). True when something was pushed."""
        company = self._companies.get(conn.company)
        if company is None:
            return False
        async with conn.lock:
            try:
                context = company.core.context_of(conn.claims)
                return await self.push_panel(conn, context, frame_id, signed_now=False, unless_shown=unless_shown)
            except PanelError as error:
                await self.send_error(conn, error, frame_id)
                return True

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

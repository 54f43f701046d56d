"""Live panels: the `/ws` endpoint, the registry of open panels, and the Redis pub/sub fan-out.

A panel opens `/ws?token=…` with the HMAC token its page carried. Frames from the panel:
`{"type": "selected", "id", "view", "query", "params", "partnerId", "uid"}` (Sobot's SPEC §4 message,
relayed), `{"type": "resync", "view"}` (after a reconnect) and `{"type": "ping"}`. Frames to the panel:
`{"type": "panel", "id", "html", "token", "partnerId"}`, `{"type": "error", "id", "code", "message"}`
and `{"type": "pong", "token"?}`.

A relayed `query` is verified with exactly the rules of a page load; a failing one gets an error frame
and the panel keeps the customer it had. Each replica subscribes to a customer's channel while it has
sockets showing that customer, so an invalidation reaches only the replicas that need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis
from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError

from . import appkeys as appmod
from .clock import now_ms
from .errors import PanelError
from .i18n import Lang, pick_lang
from .redis import pubsub_for
from .security import SessionClaims, TokenBucket, TokenError, issue_token, origin_allowed, read_token
from .surfaces import Surface, SurfaceContext, View, parse_fields
from .views import issue_session_token, load_state, render_fragment, verified

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 16 * 1024
HEARTBEAT_S = 25.0
RESUBSCRIBE_BACKOFF_MAX_S = 1.0  # Redis back -> panels resynchronised within about a second


# --- frames ----------------------------------------------------------------------------------

QueryValue = str | int | float | bool | None


class SelectedFrame(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["selected"]
    id: int | str | None = None
    view: str | None = None
    query: dict[str, QueryValue] = Field(default_factory=dict, max_length=64)
    params: dict[str, Any] | str | None = None
    partnerId: str | None = None
    uid: str | None = None


class ResyncFrame(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["resync"]
    id: int | str | None = None
    view: str | None = None


class PingFrame(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["ping"]


def selected_fields(frame: SelectedFrame) -> dict[str, str]:
    """The query to verify. `params` and `uid` are outside every sign formula, so Sobot's top-level
    copies may fill them in when the query lacks them; everything signed comes from the query only."""
    fields = {name: "" if value is None else str(value) for name, value in frame.query.items()}
    lowered = {name.lower() for name in fields}
    if "params" not in lowered and frame.params:
        fields["params"] = frame.params if isinstance(frame.params, str) else json.dumps(frame.params)
    if "uid" not in lowered and frame.uid:
        fields["uid"] = frame.uid
    return fields


# --- connections -----------------------------------------------------------------------------


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
            await self.ws.send_str(json.dumps(frame, ensure_ascii=False, separators=(",", ":")))


class LiveHub:
    """Open panels of this replica, indexed by the customer they show, and the pub/sub listener."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
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
        self._app[appmod.METRICS].websockets.inc()
        self._show(conn, conn.partner_id)

    def remove(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self._app[appmod.METRICS].websockets.dec()
        self._show(conn, "")

    def _show(self, conn: Connection, partner_id: str) -> None:
        old = conn.partner_id
        if old and old in self.by_partner:
            watchers = self.by_partner[old]
            watchers.discard(conn)
            if not watchers:
                del self.by_partner[old]
                self._want(self._app[appmod.KEYS].partner_channel(old), False)
        conn.partner_id = partner_id
        if partner_id and conn in self.connections:
            watchers = self.by_partner.setdefault(partner_id, set())
            if not watchers:
                self._want(self._app[appmod.KEYS].partner_channel(partner_id), True)
            watchers.add(conn)

    def _want(self, channel: str, wanted: bool) -> None:
        if wanted:
            self._wanted.add(channel)
        else:
            self._wanted.discard(channel)
        self._changed.set()

    # rendering -----------------------------------------------------------------------------

    async def push_panel(self, conn: Connection, context: SurfaceContext | None, request_id: object = None) -> None:
        app = self._app
        if context is None:
            return
        state = await load_state(app, conn.surface, context)
        html = render_fragment(app, state, conn.lang, conn.view)
        token = issue_session_token(app, state)
        conn.claims = read_token(_session_key(app), token, now_ms())
        self._show(conn, conn.claims.partner_id)
        await conn.send({"type": "panel", "id": request_id, "html": html, "token": token,
                         "partnerId": conn.claims.partner_id})  # fmt: skip

    async def refresh_partner(self, partner_id: str) -> None:
        """Re-render every panel of this replica that shows this customer."""
        self._app[appmod.CACHE].drop_local(partner_id)
        for conn in list(self.by_partner.get(partner_id, ())):
            await self.resync(conn, None)

    async def refresh_all(self) -> None:
        for conn in list(self.connections):
            await self.resync(conn, None)

    async def resync(self, conn: Connection, request_id: object) -> None:
        async with conn.lock:
            try:
                await self.push_panel(conn, claims_context(conn), request_id)
            except PanelError as error:
                await send_error(self._app, conn, error, request_id)

    # pub/sub -------------------------------------------------------------------------------

    async def listen(self) -> None:
        """Subscribe to the invalidations channel and the wanted partner channels; survive Redis restarts.

        redis-py's PubSub neither reconnects nor raises reliably after its connection drops, so every
        failure throws the PubSub away, waits with backoff, subscribes afresh and resyncs the panels
        (events published while we were away are lost; a resync catches up).
        """
        keys = self._app[appmod.KEYS]
        delay = 0.1
        first = True
        while not self.stopping:
            pubsub = pubsub_for(self._app[appmod.REDIS])
            try:
                await pubsub.subscribe(keys.invalidations_channel)
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
            except (RedisError, OSError) as error:
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
        keys = self._app[appmod.KEYS]
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
            channel = _text(message["channel"])
            data = _text(message["data"])
            if channel == keys.invalidations_channel:
                self._app[appmod.CACHE].drop_local(data)
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


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)




def _session_key(app: web.Application) -> bytes:
    key = app[appmod.SETTINGS].session_key
    assert key is not None
    return key.get_secret_value().encode()


def claims_context(conn: Connection) -> SurfaceContext | None:
    """The context the token vouches for (verified when it was issued), or None for a waiting shell."""
    if not conn.claims.context:
        return None
    return parse_fields(conn.surface, dict(conn.claims.context))


async def send_error(app: web.Application, conn: Connection, error: PanelError, request_id: object) -> None:
    message = app[appmod.CATALOG].error_text(error, conn.lang)
    await conn.send({"type": "error", "id": request_id, "code": error.code, "field": error.field,
                     "message": message})  # fmt: skip


# --- the endpoint ----------------------------------------------------------------------------

HUB = web.AppKey("live_hub", LiveHub)


def _origin_ok(request: web.Request) -> bool:
    """The socket is opened by our own page, so its Origin is ours (or a configured public URL)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser: the token alone decides
    settings = request.app[appmod.SETTINGS]
    own = f"{request.scheme}://{request.host}"
    forwarded = request.headers.get("X-Forwarded-Proto")
    candidates = {own, settings.base_url}
    if forwarded:
        candidates.add(f"{forwarded}://{request.host}")
    return origin in candidates or origin_allowed(origin, settings.origin_patterns)


async def websocket(request: web.Request) -> web.StreamResponse:
    app = request.app
    hub = app[HUB]
    if hub.closing:
        raise web.HTTPServiceUnavailable(text="shutting down", headers={"Retry-After": "1"})
    if not _origin_ok(request):
        raise web.HTTPForbidden(text="origin not allowed")
    try:
        claims = read_token(_session_key(app), request.query.get("token", ""), now_ms())
        surface = Surface(claims.surface)
    except (TokenError, ValueError):
        raise web.HTTPUnauthorized(text="invalid or expired token") from None
    lang = pick_lang(request.query.get("lang"), request.headers.get("Accept-Language"))
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_FRAME_BYTES * 4)
    await ws.prepare(request)
    conn = Connection(ws=ws, surface=surface, lang=lang, claims=claims, partner_id=claims.partner_id)
    hub.add(conn)
    try:
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                if message.type is WSMsgType.BINARY:
                    await send_error(app, conn, PanelError("frame_not_json"), None)
                continue
            await handle_frame(app, hub, conn, message.data)
    finally:
        hub.remove(conn)
    return ws


async def handle_frame(app: web.Application, hub: LiveHub, conn: Connection, data: str) -> None:
    if len(data) > MAX_FRAME_BYTES:
        await send_error(app, conn, PanelError("frame_too_large"), None)
        return
    if not conn.bucket.take(time.monotonic()):
        await send_error(app, conn, PanelError("rate_limited"), _frame_id(data))  # which relay was refused
        return
    try:
        raw = json.loads(data)
        kind = raw.get("type") if isinstance(raw, dict) else None
        if kind == "ping":
            await conn.send(pong_frame(app, conn))
            return
        if kind == "resync":
            resync = ResyncFrame.model_validate(raw)
            conn.view = _view(resync.view)
            await hub.resync(conn, resync.id)
            return
        selected = SelectedFrame.model_validate(raw)
    except ValidationError as error:
        where = ".".join(str(part) for part in error.errors()[0]["loc"]) or "type"
        await send_error(app, conn, PanelError("frame_invalid", field=where[:60]), None)
        return
    except ValueError:
        await send_error(app, conn, PanelError("frame_not_json"), None)
        return
    conn.view = _view(selected.view)
    await relay_selected(app, hub, conn, selected)


def _frame_id(data: str) -> object:
    try:
        raw = json.loads(data)
    except ValueError:
        return None
    value = raw.get("id") if isinstance(raw, dict) else None
    return value if isinstance(value, (int, str)) else None


def _view(name: str | None) -> View | None:
    try:
        return View(name) if name else None
    except ValueError:
        return None


async def relay_selected(app: web.Application, hub: LiveHub, conn: Connection, frame: SelectedFrame) -> None:
    async with conn.lock:
        try:
            context = verified(app, conn.surface, parse_fields(conn.surface, selected_fields(frame)))
            if conn.claims.agent and context.agent and context.agent != conn.claims.agent:
                raise PanelError("agent_mismatch")
            await hub.push_panel(conn, context, frame.id)
        except PanelError as error:
            await send_error(app, conn, error, frame.id)


def pong_frame(app: web.Application, conn: Connection) -> dict[str, Any]:
    """A pong; past half its life the token is renewed, so a long-lived panel never holds a dead one."""
    frame: dict[str, Any] = {"type": "pong"}
    ttl_ms = app[appmod.SETTINGS].session_ttl * 1000
    if conn.claims.expires_ms - now_ms() < ttl_ms // 2:
        claims = dataclasses.replace(conn.claims, expires_ms=now_ms() + ttl_ms)
        conn.claims = claims
        frame["token"] = issue_token(_session_key(app), claims)
    return frame


# --- wiring ----------------------------------------------------------------------------------


def setup(app: web.Application) -> None:
    """The hub lives with the app; its listener starts after Redis and stops before it."""

    async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
        hub = LiveHub(app)
        app[HUB] = hub
        listener = asyncio.create_task(hub.listen(), name="live-pubsub")
        try:
            yield
        finally:
            hub.stopping = True
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def on_shutdown(app: web.Application) -> None:
        if HUB in app:
            await app[HUB].close_all()

    app.cleanup_ctx.append(hub_ctx)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/ws", websocket)

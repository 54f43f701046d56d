"""`GET /ws`: the panel's websocket. Each incoming frame is typed once (`frames.parse_frame`) and handled
by the one handler registered for its type.

A panel opens `/ws` and presents the session token its page carried in its first frame, a hello (never
in the URL; the close codes are listed in `frames`). A relayed `query` is verified with exactly the
rules of a page load; a failing one gets an error frame and the panel keeps the customer it had.

After the upgrade nothing may write HTTP into the socket: a frame whose handling fails in a way nobody
foresaw gets an `internal_error` frame (the socket goes on serving), any other failure closes the socket
with 1011; either is logged once, by where it failed, never with what the frame carried.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from ..appkeys import HUB, SETTINGS, STARTED
from ..errors import Code, PanelError, TokenError
from ..i18n import Lang
from ..panel.core import PanelCore
from ..panel.pages import request_lang
from ..protocol.security import origin_allowed
from ..protocol.surfaces import Surface, View
from ..protocol.tokens import SessionClaims
from ..redaction import fault_line
from ..tenants.company import Company
from ..tenants.routing import company_of
from .frames import (
    CLOSE_HELLO_EXPECTED,
    CLOSE_HELLO_TIMEOUT,
    CLOSE_SESSION_ENDED,
    CLOSE_TOO_MANY_SOCKETS,
    HELLO_TIMEOUT_S,
    MAX_FRAME_CHARS,
    MAX_HELLO_BYTES,
    IncomingFrame,
    PingFrame,
    ResyncFrame,
    SelectedFrame,
    frame_id,
    parse_frame,
    parse_hello,
    selected_fields,
)
from .hub import Connection, LiveHub

HEARTBEAT_S = 25.0

log = logging.getLogger(__name__)


def _origin_ok(request: web.Request, origins: list[str]) -> bool:
    """The socket is opened by our own page, so its Origin is ours (or a configured public URL)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a browser: the token alone decides
    settings = request.app[SETTINGS]
    own = f"{request.scheme}://{request.host}"
    forwarded = request.headers.get("X-Forwarded-Proto")
    candidates = {own, settings.base_url}
    if forwarded:
        candidates.add(f"{forwarded}://{request.host}")
    return origin in candidates or origin_allowed(origin, origins)


async def websocket(request: web.Request) -> web.StreamResponse:
    app = request.app
    hub = app[HUB]
    if hub.closing:
        raise web.HTTPServiceUnavailable(text="shutting down", headers={"Retry-After": "1"})
    company = company_of(request)
    if not _origin_ok(request, company.config.host_origins.split()):
        raise web.HTTPForbidden(text="origin not allowed")
    lang = request_lang(request, company.default_lang)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=MAX_HELLO_BYTES)
    await ws.prepare(request)
    request[STARTED] = ws  # from here on a failure is a frame or a close code (see the error middleware)
    try:
        await _serve(app, hub, ws, lang, company)
    except Exception as error:  # not CancelledError: a cancelled handler's socket is aiohttp's to close
        log.error("websocket failed, closed with 1011: %s", fault_line(error))
        with contextlib.suppress(Exception):
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
    return ws


async def _serve(app: web.Application, hub: LiveHub, ws: web.WebSocketResponse, lang: Lang, company: Company) -> None:
    conn = await _greet(app, hub, ws, lang, company)
    if conn is None:
        return
    try:
        await conn.send({"type": "ready"})
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await _answer(app, hub, conn, message.data)
            elif message.type is WSMsgType.BINARY:
                await hub.send_error(conn, PanelError(Code.FRAME_NOT_JSON), None)
    finally:
        hub.remove(conn)


async def _answer(app: web.Application, hub: LiveHub, conn: Connection, data: str) -> None:
    """One frame handled; if that fails unforeseen, an `internal_error` frame answers it (the panel shows
    the failure and keeps what it showed) and the socket goes on; if even that cannot be sent, 1011."""
    try:
        await handle_text(app, hub, conn, data)
    except Exception as error:
        log.error("websocket frame failed, answered internal_error: %s", fault_line(error))
        try:
            await hub.send_error(conn, PanelError(Code.INTERNAL_ERROR), frame_id(data))
        except Exception:  # not even the answer goes out: end the socket (already logged above)
            with contextlib.suppress(Exception):
                await conn.ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")


async def _greet(
    app: web.Application, hub: LiveHub, ws: web.WebSocketResponse, lang: Lang, company: Company
) -> Connection | None:
    """The connection the first frame (a hello with a live session token) opens, else the socket closed
    with a code that says why."""
    try:
        message = await ws.receive(timeout=HELLO_TIMEOUT_S)
    except TimeoutError:
        await ws.close(code=CLOSE_HELLO_TIMEOUT, message=b"hello expected within 5 s")
        return None
    if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return None
    hello = parse_hello(message.data) if message.type is WSMsgType.TEXT else None
    if hello is None:
        await ws.close(code=CLOSE_HELLO_EXPECTED, message=b"the first frame must be a hello")
        return None
    try:
        claims = company.core.session(hello.token)  # another company's token is refused here
        surface = Surface(claims.surface)
    except TokenError as error:
        await ws.close(code=CLOSE_SESSION_ENDED, message=error.code.encode())
        return None
    except ValueError:
        await ws.close(code=CLOSE_SESSION_ENDED, message=Code.TOKEN_INVALID.value.encode())
        return None
    conn = Connection(ws=ws, surface=surface, lang=lang, claims=claims, company=company.name, view=_view(hello.view),
                      partner_id=claims.partner_id, session=session_key(claims, hello.token))  # fmt: skip
    if not hub.add(conn, max_per_session=app[SETTINGS].ws_per_session):
        await ws.close(code=CLOSE_TOO_MANY_SOCKETS, message=b"too many sockets for this session")
        return None
    return conn


def session_key(claims: SessionClaims, token: str) -> str:
    """What the per-session cap counts: the session a token continues (a token without one counts alone)."""
    return claims.session_id or "token:" + hashlib.sha256(token.encode()).hexdigest()[:24]


async def handle_text(app: web.Application, hub: LiveHub, conn: Connection, data: str) -> None:
    if len(data) > MAX_FRAME_CHARS:  # before the rate limit and the parser: both cost more
        await hub.send_error(conn, PanelError(Code.FRAME_TOO_LARGE, limit=MAX_FRAME_CHARS), None)
        return
    if not conn.bucket.take(time.monotonic()):
        await hub.send_error(conn, PanelError(Code.RATE_LIMITED), frame_id(data))  # which relay was refused
        return
    try:
        frame = parse_frame(data)
    except PanelError as error:
        await hub.send_error(conn, error, None)
        return
    await HANDLERS[type(frame)](app, hub, conn, frame)


def _view(name: str | None) -> View | None:
    try:
        return View(name) if name else None
    except ValueError:
        return None


def _core(hub: LiveHub, conn: Connection) -> PanelCore:
    """The panel core of the connection's company; a company no longer served ends the session."""
    company = hub.company(conn.company)
    if company is None:
        raise TokenError(Code.TOKEN_INVALID)
    return company.core


async def on_selected(app: web.Application, hub: LiveHub, conn: Connection, frame: SelectedFrame) -> None:
    conn.view = _view(frame.view)
    async with conn.lock:
        try:
            context = _core(hub, conn).verify_fields(conn.surface, selected_fields(frame))
            if conn.claims.agent and context.agent and context.agent != conn.claims.agent:
                raise PanelError(Code.AGENT_MISMATCH)
            await hub.push_panel(conn, context, frame.id, signed_now=True)
        except PanelError as error:
            await hub.send_error(conn, error, frame.id)


async def on_resync(app: web.Application, hub: LiveHub, conn: Connection, frame: ResyncFrame) -> None:
    conn.view = _view(frame.view)
    await hub.resync(conn, frame.id)


async def on_ping(app: web.Application, hub: LiveHub, conn: Connection, frame: PingFrame) -> None:
    """A pong; past half its life the session is renewed, so a long-lived panel never holds a dead token."""
    pong: dict[str, Any] = {"type": "pong"}
    company = hub.company(conn.company)
    renewed = company.core.renewed(conn.claims) if company is not None else None
    if renewed is not None:
        conn.claims, pong["token"] = renewed
    await conn.send(pong)


# One handler per frame type; each takes the frame of its own type.
HANDLERS: dict[type[IncomingFrame], Callable[..., Awaitable[None]]] = {
    SelectedFrame: on_selected,
    ResyncFrame: on_resync,
    PingFrame: on_ping,
}

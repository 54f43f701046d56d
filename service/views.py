"""Page handlers: the signed `/embed/...` panels, the send endpoint, and the invalidation API."""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass

from aiohttp import web
from redis.exceptions import RedisError

from . import appkeys as appmod
from .audit import EVENT_ID_PATTERN, AuditRecord
from .cards import audit_kind, build_message
from .clock import now_ms
from .directory.cache import CacheResult
from .directory.models import Customer, LookupKeys, UpstreamError
from .errors import NotFound, PanelError, PayloadError, SignError, Unavailable
from .i18n import Lang, pick_lang
from .security import SessionClaims, TokenError, issue_token, read_token
from .signing import verify_sign
from .spool import SpoolError
from .surfaces import Surface, SurfaceContext, View, parse_query_string, parse_surface, parse_view

log = logging.getLogger(__name__)

# Our own query parameters, never part of Sobot's signed context.
OWN_PARAMS = {"lang"}




def request_lang(request: web.Request) -> Lang:
    return pick_lang(request.query.get("lang"), request.headers.get("Accept-Language"))


# --- rendering helpers -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PanelState:
    """Everything a panel shows for one verified context."""

    surface: Surface
    context: SurfaceContext | None
    result: CacheResult | None

    @property
    def customer(self) -> Customer | None:
        return self.result.customer if self.result else None


def lookup_keys(context: SurfaceContext) -> LookupKeys:
    return LookupKeys(
        partner_id=context.partner_id,
        phone=context.phone,
        email=context.customer_email,
        uid=context.user_id,
        union_id=context.union_id,
    )


async def load_state(app: web.Application, surface: Surface, context: SurfaceContext) -> PanelState:
    keys = lookup_keys(context)
    if keys.is_empty:
        return PanelState(surface, context, None)
    try:
        result = await app[appmod.CACHE].get(keys)
    except UpstreamError as error:
        raise Unavailable("upstream_unavailable") from error
    app[appmod.METRICS].cache_lookups.labels(result.source).inc()
    return PanelState(surface, context, result)


def session_claims(app: web.Application, state: PanelState) -> SessionClaims:
    context = state.context
    customer = state.customer
    ttl_ms = app[appmod.SETTINGS].session_ttl * 1000
    return SessionClaims(
        surface=state.surface.value,
        agent=context.agent if context else "",
        partner_id=(customer.partnerId if customer else "") or (context.partner_id if context else ""),
        uid=context.user_id if context else "",
        cid=context.chat_id if context else "",
        mini_program=bool(customer and customer.channel == "miniprogram"),
        expires_ms=now_ms() + ttl_ms,
        context=tuple((k, v) for k, v in context.fields.items() if k != "sign" and v) if context else (),
    )


def issue_session_token(app: web.Application, state: PanelState) -> str:
    key = app[appmod.SETTINGS].session_key
    assert key is not None  # filled in by Settings validation
    return issue_token(key.get_secret_value().encode(), session_claims(app, state))


def fragment_parts(app: web.Application, state: PanelState, lang: Lang, view: View | None) -> list[bytes]:
    """The panel's inner HTML as UTF-8 pieces: what a page shows and what a websocket push replaces."""
    result = state.result
    tried = result.tried if result else (lookup_keys(state.context).ordered() if state.context else [])
    return app[appmod.RENDERER].fragment_parts(
        state.customer, state.context, lang, view, stale=bool(result and result.stale), tried=tried
    )


def render_fragment(app: web.Application, state: PanelState, lang: Lang, view: View | None) -> str:
    return b"".join(fragment_parts(app, state, lang, view)).decode()


def render_page(
    request: web.Request, state: PanelState, lang: Lang, view: View | None, *, waiting: bool = False
) -> web.Response:
    app = request.app
    settings = app[appmod.SETTINGS]
    boot = {
        "token": issue_session_token(app, state),
        "surface": state.surface.value,
        "view": view.value if view else None,
        "lang": lang,
        "origins": settings.origin_patterns,
        "allowSelf": settings.demo,
        "cardFormat": settings.card_format,
        "partnerId": state.customer.partnerId if state.customer else "",
    }
    body = None if waiting else fragment_parts(app, state, lang, view)
    page = app[appmod.RENDERER].page(lang, state.surface, boot, body)
    return web.Response(body=page, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-store"})


# --- errors ----------------------------------------------------------------------------------


def not_found_error(request: web.Request) -> PanelError:
    return NotFound("page_not_found", path=request.path[:200])


def error_response(request: web.Request, error: PanelError, *, status: int | None = None) -> web.Response:
    app = request.app
    lang = request_lang(request)
    other: Lang = "en" if lang == "zh" else "zh"
    catalog = app[appmod.CATALOG]
    code = status or error.status
    if request.path.startswith(("/panel/", "/api/")) or "application/json" in request.headers.get("Accept", ""):
        return web.json_response(
            {"ok": False, "code": error.code, "field": error.field, "message": catalog.error_text(error, lang)},
            status=code,
        )
    html = app[appmod.JINJA].get_template("error.html").render(
        t=lambda c, **p: catalog.text(c, lang, **p),
        lang=lang,
        status=code,
        title=catalog.text(f"status_{code}", lang),
        message=catalog.error_text(error, lang),
        message_other=catalog.error_text(error, other),
        field=error.field,
    )
    return web.Response(text=html, status=code, content_type="text/html", headers={"Cache-Control": "no-store"})


# --- handlers --------------------------------------------------------------------------------


def _sobot_query(request: web.Request) -> str:
    """The raw query without our own parameters (`lang`), percent-encoding untouched."""
    raw = request.rel_url.raw_query_string
    if "lang=" not in raw:
        return raw
    return "&".join(piece for piece in raw.split("&") if piece.partition("=")[0] not in OWN_PARAMS)


def verified(app: web.Application, surface: Surface, context: SurfaceContext) -> SurfaceContext:
    """The one gate for every context the server acts on: page loads and relayed selections alike.

    A refused sign is counted here, by reason, whichever way it arrived."""
    try:
        verify_sign(surface, context.fields, app[appmod.SIGNER].policy, now_ms())
    except SignError as error:
        app[appmod.METRICS].sign_failures.labels(error.code).inc()
        raise
    return context


async def _embed(request: web.Request, view: View | None) -> web.Response:
    surface = parse_surface(request.match_info["surface"])
    lang = request_lang(request)
    raw = _sobot_query(request)
    if not raw.strip("&"):
        # SPEC §4 postMessage mode: the first context may arrive only by message; show a waiting shell.
        return render_page(request, PanelState(surface, None, None), lang, view, waiting=True)
    context = verified(request.app, surface, parse_query_string(surface, raw))
    state = await load_state(request.app, surface, context)
    return render_page(request, state, lang, view)


async def embed_panel(request: web.Request) -> web.Response:
    return await _embed(request, None)


async def embed_view(request: web.Request) -> web.Response:
    parse_surface(request.match_info["surface"])
    return await _embed(request, parse_view(request.match_info["view"]))


async def send(request: web.Request) -> web.Response:
    """Validate a card or ticket, append its audit record, and answer with the exact message to post."""
    app = request.app
    lang = request_lang(request)
    catalog = app[appmod.CATALOG]
    settings = app[appmod.SETTINGS]
    metrics = app[appmod.METRICS]
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise PanelError("body_not_json") from None
    if not isinstance(body, dict):
        raise PanelError("body_not_json")
    key = settings.session_key
    assert key is not None
    claims = read_token(key.get_secret_value().encode(), str(body.get("token", "")), now_ms())
    kind = body.get("kind")
    event_id = str(body.get("id", ""))
    data = body.get("data")
    if kind not in ("ticket", "order_card", "goods_card"):
        raise PanelError("unknown_kind", kind=str(kind)[:40])
    if not EVENT_ID_PATTERN.match(event_id):
        raise PanelError("bad_event_id")
    if not isinstance(data, dict):
        raise PayloadError([("data", "payload_not_object", {})])
    try:
        message = build_message(
            kind,
            data,
            card_format=settings.card_format,
            cid=claims.cid,
            uid=claims.uid,
            mini_program=claims.mini_program,
            ticket_fields=app[appmod.TICKET_FIELDS],
        )
    except PayloadError as error:
        metrics.sends.labels(kind, "invalid").inc()
        problems = [
            {"field": field, "code": code, "message": catalog.text(code, lang, field=field, **params)}
            for field, code, params in error.problems
        ]
        return web.json_response(
            {"ok": False, "code": "payload_invalid", "message": catalog.text("payload_invalid", lang),
             "problems": problems},
            status=422,
        )  # fmt: skip
    record = AuditRecord(
        kind=audit_kind(message),
        id=event_id,
        at=now_ms(),
        surface=claims.surface,
        agent=claims.agent,
        partner_id=claims.partner_id,
        uid=claims.uid,
        cid=claims.cid,
        payload=json.dumps(message, ensure_ascii=False, separators=(",", ":")),
    )
    try:
        appended = await app[appmod.AUDIT].append(record)
    except SpoolError:
        metrics.sends.labels(kind, "unavailable").inc()
        raise  # 503 naming the spool's state: the page is never told an unrecorded send is recorded
    except (RedisError, OSError) as error:
        metrics.sends.labels(kind, "unavailable").inc()
        raise Unavailable("audit_unavailable") from error
    result = "spooled" if appended.spooled else "duplicate" if appended.duplicate else "recorded"
    metrics.sends.labels(kind, result).inc()
    # Spooled: Redis is away, the record is fsync'd on local disk and will be replayed into the stream.
    return web.json_response(
        {"ok": True, "entryId": appended.entry_id, "duplicate": appended.duplicate, "spooled": appended.spooled,
         "message": message}
    )  # fmt: skip


def _bearer_ok(request: web.Request, expected: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())


async def invalidate(request: web.Request) -> web.Response:
    token = request.app[appmod.SETTINGS].api_token
    if token is None:
        raise Unavailable("api_token_not_configured")
    if not _bearer_ok(request, token.get_secret_value()):
        raise TokenError("api_token_invalid")
    partner_id = request.match_info["partnerId"]
    try:
        await request.app[appmod.CACHE].invalidate(partner_id)
    except (RedisError, OSError) as error:
        raise Unavailable("redis_unavailable") from error
    return web.json_response({"ok": True, "partnerId": partner_id}, status=202)


async def index(request: web.Request) -> web.Response:
    settings = request.app[appmod.SETTINGS]
    if settings.demo:
        raise web.HTTPFound("/dev/host")
    return web.json_response({"service": "sobot-panel", "surfaces": [s.value for s in Surface]})


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/", index)
    app.router.add_get("/embed/{surface}", embed_panel)
    app.router.add_get("/embed/{surface}/{view}", embed_view)
    app.router.add_post("/panel/send", send)
    app.router.add_post("/api/partners/{partnerId}/invalidate", invalidate)


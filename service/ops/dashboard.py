"""The operations dashboard over the audit stream: `GET /ops`, its live feed, entry details and a JSON summary.

Access: `Authorization: Bearer $PANEL_OPS_TOKEN`, or `?token=` once, after which the browser holds an
HttpOnly, SameSite=Strict cookie (an expiring HMAC bound to the token, keyed by `PANEL_SESSION_KEY`) and
the token leaves the address bar. Unset token: 503 and no background work; wrong token: 401.

Counting: every replica runs one consumer of the group `ops` (CONTRACT). Per entry, one Lua script acks it
and, only when that ack succeeds, increments its minute and hour buckets (`sobot_panel.ops.counters`) and
publishes it on `<prefix>ops:feed`. A group hands an entry to one consumer, and an entry taken over from a
dead consumer is counted only by whoever acks it, so two replicas never count one send twice. In Redis
Cluster the script's keys share one slot: `Keys` tags the stream and the counters alike.

Live feed: each replica subscribes to the feed channel and fans it out to its `GET /ops/feed` clients
(Server-Sent Events). Pub/sub is at most once, so the stream fills the gaps: a replica whose subscription
dropped reads what it missed after the newest entry it passed on, and a client that reconnects (with
`Last-Event-ID`, or `?since=` from the page) gets what it missed, up to `BACKFILL_MAX` entries either way.
Each entry goes to a client once. Page views read a bounded number of buckets and entries, never the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web

from ..appkeys import CATALOG, COMPANY, REDIS, SETTINGS, STARTED
from ..audit.reader import stream_stats
from ..clock import china_time, now_ms
from ..errors import Code, NotFound, PanelError, TokenError, Unavailable
from ..i18n import Catalog, Lang
from ..panel.pages import error_response, request_lang
from ..panel.rendering import script_json
from ..redis import REDIS_DOWN, RedisClient
from ..redis.keys import Keys
from ..tenants.company import Company
from ..tenants.routing import company_of
from .counters import (
    MINUTE_MS,
    STREAM_ID,
    Filters,
    Summary,
    bar_chart,
    decode_payload,
    feed_item,
    summarize,
    windows,
    yuan,
)
from .feed import BACKFILL_MAX, GROUP, frames_of

log = logging.getLogger(__name__)

KINDS = ("order_card", "goods_card", "ticket")
SURFACES = ("workbench", "call", "call-task", "ticket", "customer", "qa", "monitor", "wecom")
COOKIE = "panel_ops"
COOKIE_TTL_S = 12 * 3_600
RECENT_ROWS = 50
FILTER_SCAN_MAX = 2_000  # a filtered page view looks at no more entries than this
FILTER_PAGE = 500
HEARTBEAT_S = 15.0
CSP = (
    "default-src 'self'; img-src 'self' data: https: http:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; object-src 'none'; frame-ancestors 'none'"
)


def _mac(key: str, token: str, expires: int) -> str:
    bound = hashlib.sha256(token.encode()).hexdigest()
    return hmac.new(key.encode(), f"ops|{expires}|{bound}".encode(), hashlib.sha256).hexdigest()


def session_cookie(key: str, token: str, expires: int) -> str:
    """`<expiry>.<hmac>`: proves a login with this very token (rotating the token ends every session)."""
    return f"{expires}.{_mac(key, token, expires)}"


def _cookie_ok(key: str, token: str, value: str, now_s: int) -> bool:
    expires, _, mac = value.partition(".")
    if not expires.isdigit() or int(expires) < now_s:
        return False
    return hmac.compare_digest(mac.encode("ascii", "replace"), _mac(key, token, int(expires)).encode())


def authorize(request: web.Request, company: Company) -> str:
    """How the request proved the company's ops token: "header", "query" or "cookie"; else 503 / 401."""
    settings = request.app[SETTINGS]
    if company.config.ops_token is None:
        raise Unavailable(Code.OPS_TOKEN_NOT_CONFIGURED)
    token = company.config.ops_token.get_secret_value()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return "header"
    if "token" in request.query and hmac.compare_digest(request.query["token"].encode(), token.encode()):
        return "query"
    key = settings.session_key.get_secret_value() if settings.session_key else ""
    cookie = request.cookies.get(COOKIE, "")
    if cookie and _cookie_ok(key, token, cookie, int(time.time())):
        return "cookie"
    raise TokenError(Code.OPS_TOKEN_INVALID)


def _login(request: web.Request, company: Company) -> web.Response:
    """After `?token=`: keep the login in a cookie and send the browser to the same page without the token."""
    settings = request.app[SETTINGS]
    assert company.config.ops_token is not None and settings.session_key is not None
    expires = int(time.time()) + COOKIE_TTL_S
    token = company.config.ops_token.get_secret_value()
    cookie = session_cookie(settings.session_key.get_secret_value(), token, expires)
    query = {name: value for name, value in request.query.items() if name != "token"}
    response = web.Response(status=303, headers={"Location": str(request.rel_url.with_query(query))})
    secure = request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"
    response.set_cookie(COOKIE, cookie, max_age=COOKIE_TTL_S, path=f"{company.base}/ops", httponly=True,
                        samesite="Strict",
                        secure=secure)  # fmt: skip
    return response


def _error(request: web.Request, error: PanelError, *, page: bool) -> web.Response:
    if page:
        response = error_response(request, error)
    else:
        message = request.app[CATALOG].error_text(error, request_lang(request))
        response = web.json_response({"ok": False, "code": error.code, "message": message}, status=error.status)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="ops"'
    return response


OpsHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def guarded(handler: OpsHandler, *, page: bool) -> OpsHandler:
    """Check the ops token first; pages turn a `?token=` login into a cookie, JSON routes answer errors in JSON."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            try:
                company = company_of(request)
                if authorize(request, company) == "query" and page:
                    return _login(request, company)
                response = await handler(request)
            except REDIS_DOWN as error:
                raise Unavailable(Code.REDIS_UNAVAILABLE) from error
        except PanelError as error:
            response = _error(request, error, page=page)
        if not response.prepared:
            response.headers["Content-Security-Policy"] = CSP
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return wrapper


# --- reading ----------------------------------------------------------------------------------------


async def read_summary(redis: RedisClient, keys: Keys, at_ms: int) -> Summary:
    """Hour and day counts from at most 119 minute and 24 hour buckets, in one pipeline."""
    plan = windows(at_ms // MINUTE_MS)
    minutes, hours = plan.minutes, plan.hours
    async with redis.pipeline(transaction=False) as pipe:
        for minute in minutes:
            pipe.hgetall(keys.audit_counter("m", str(minute)))
        for hour in hours:
            pipe.hgetall(keys.audit_counter("h", str(hour)))
        replies = await pipe.execute()
    return summarize(at_ms, plan, dict(zip(minutes, replies, strict=False)),
                     dict(zip(hours, replies[len(minutes):], strict=True)))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Recent:
    rows: list[dict[str, Any]]
    scanned: int
    newest: str  # the newest stream ID when reading from the top ("0-0" for an empty stream), else ""
    older: str  # `before` for the next page; "" when the stream's start was reached


async def recent_sends(redis: RedisClient, keys: Keys, filters: Filters, before: str = "") -> Recent:
    """The newest sends (before `before`) that match: XREVRANGE pages, at most `FILTER_SCAN_MAX` entries."""
    limit = FILTER_SCAN_MAX if filters.active else RECENT_ROWS
    size = FILTER_PAGE if filters.active else RECENT_ROWS
    cursor = f"({before}" if before else "+"
    rows: list[dict[str, Any]] = []
    scanned, newest, last, ended = 0, "", "", False
    while scanned < limit and len(rows) < RECENT_ROWS and not ended:
        count = min(size, limit - scanned)
        page = await redis.xrevrange(keys.audit_stream, max=cursor, min="-", count=count) or []
        ended = len(page) < count
        for raw_id, raw_fields in page:
            entry_id, fields = str(raw_id), {str(k): str(v) for k, v in (raw_fields or {}).items()}
            newest, last, scanned = newest or entry_id, entry_id, scanned + 1
            if filters.matches(fields):
                rows.append(feed_item(entry_id, fields))
                if len(rows) == RECENT_ROWS:
                    ended = False
                    break
        cursor = f"({last}" if last else cursor
    return Recent(rows, scanned, "" if before else newest or "0-0", "" if ended or not last else last)


# --- handlers ---------------------------------------------------------------------------------------


def _is_http(value: object) -> bool:
    """Only http(s) links become links or images: an entry some other writer made cannot smuggle a script URL."""
    return isinstance(value, str) and value.startswith(("https://", "http://"))


def _render(request: web.Request, template: str, **context: Any) -> web.Response:
    lang = request_lang(request)
    catalog = request.app[CATALOG]
    translate = partial(_translate, catalog, lang)
    page = {"t": translate, "lang": lang, "yuan": yuan, "is_http": _is_http, **context}
    return aiohttp_jinja2.render_template(template, request, page)


def _translate(catalog: Catalog, lang: Lang, code: str, **params: object) -> str:
    return catalog.text(code, lang, **params)


def _href(path: str, **params: str) -> str:
    query = urlencode({name: value for name, value in params.items() if value})
    return f"{path}?{query}" if query else path


def _filters(request: web.Request) -> Filters:
    query = request.query
    kind = query.get("kind", "")
    return Filters(agent=query.get("agent", "").strip()[:200], customer=query.get("customer", "").strip()[:200],
                   kind=kind if kind in KINDS else "")  # fmt: skip


async def dashboard(request: web.Request) -> web.StreamResponse:
    app = request.app
    company = request[COMPANY]
    redis, keys = app[REDIS], company.keys
    home = f"{company.base}/ops"
    filters = _filters(request)
    before = request.query.get("before", "")
    before = before if STREAM_ID.match(before) else ""
    at = now_ms()
    summary = await read_summary(redis, keys, at)
    recent = await recent_sends(redis, keys, filters, before)
    stats = await stream_stats(redis, keys)
    group = next((g for g in stats["groups"] if g["name"] == GROUP), None)
    lang = request_lang(request)
    catalog = app[CATALOG]
    query_lang = request.query.get("lang", "")
    shown = query_lang and lang
    texts = ("live_open", "live_retry", "live_paused", "view", "chart_desc", "chart_desc_empty", "group_state")
    boot = {
        "lang": lang, "since": recent.newest, "live": not before, "langSuffix": _href("", lang=shown),
        "base": company.base,
        "filters": {"agent": filters.agent, "customer": filters.customer, "kind": filters.kind},
        "kinds": {kind: catalog.text(f"ops_kind_{kind}", lang) for kind in KINDS},
        "text": {code: catalog.text(f"ops_{code}", lang) for code in texts},
    }  # fmt: skip
    surfaces = list(SURFACES) + [s for s in summary.day.surface if s not in SURFACES]
    keep = {"agent": filters.agent, "customer": filters.customer, "kind": filters.kind}
    return _render(
        request, "ops.html", summary=summary, recent=recent, filters=filters, before=before, kinds=KINDS,
        surfaces=surfaces, agents=summary.day.top_agents(), stats=stats, group=group, boot=script_json(boot),
        scan_max=FILTER_SCAN_MAX, minute_chart=bar_chart(summary.minutes, MINUTE_MS),
        hour_chart=bar_chart(summary.hours, 60 * MINUTE_MS, width=470, tick_every=4, time_format="%H:00"),
        generated=china_time(at, "%Y-%m-%d %H:%M:%S"), query_lang=query_lang,
        lang_href=_href(home, **keep, before=before, lang="en" if lang == "zh" else "zh"),
        clear_href=_href(home, lang=shown), newest_href=_href(home, **keep, lang=shown),
        older_href=_href(home, **keep, before=recent.older, lang=shown),
        lang_suffix=boot["langSuffix"], home=home,
    )  # fmt: skip


async def entry_detail(request: web.Request) -> web.StreamResponse:
    app = request.app
    company = request[COMPANY]
    entry_id = request.match_info["entry_id"]
    page: list[Any] = []
    if STREAM_ID.match(entry_id):
        page = await app[REDIS].xrange(company.keys.audit_stream, min=entry_id, max=entry_id, count=1) or []
    if not page:
        raise NotFound(Code.OPS_ENTRY_NOT_FOUND, entry_id=entry_id[:40])
    fields = {str(k): str(v) for k, v in (page[0][1] or {}).items()}
    message, card = decode_payload(fields.get("payload", ""))
    labels = {f.id: (f.label_en or f.label if request_lang(request) == "en" else f.label)
              for f in company.ticket_fields}  # fmt: skip
    try:
        raw = json.dumps(json.loads(fields.get("payload", "")), ensure_ascii=False, indent=2)
    except ValueError:
        raw = fields.get("payload", "")
    return _render(
        request, "ops_entry.html", entry_id=entry_id, fields=fields, item=feed_item(entry_id, fields),
        message=message, card=card, labels=labels, raw=raw, china_time=china_time,
        card_json=json.dumps(card, ensure_ascii=False, indent=2) if card else "",
        back_href=_href(f"{company.base}/ops", lang=request.query.get("lang", "") and request_lang(request)),
    )  # fmt: skip


async def api_summary(request: web.Request) -> web.StreamResponse:
    app = request.app
    redis, keys = app[REDIS], request[COMPANY].keys
    summary = await read_summary(redis, keys, now_ms())
    stats = await stream_stats(redis, keys)
    group = next((g for g in stats["groups"] if g["name"] == GROUP), None)
    return web.json_response({**summary.as_json(), "stream": {"length": stats["length"], "group": group}})


async def feed(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: `event: send` per counted entry, a comment every 15 s, closed at shutdown."""
    app = request.app
    company = request[COMPANY]
    hub = company.feed
    if hub is None or hub.closing:
        raise web.HTTPServiceUnavailable(text="shutting down", headers={"Retry-After": "1"})
    since = request.headers.get("Last-Event-ID") or request.query.get("since", "")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip
    response.headers["Content-Security-Policy"] = CSP
    queue = hub.join()
    try:
        await response.prepare(request)
        request[STARTED] = response  # a failure from here on ends the stream, never writes a page into it
        await response.write(b"retry: 2000\n: connected\n\n")
        backfilled: set[str] = set()
        if STREAM_ID.match(since):
            with contextlib.suppress(*REDIS_DOWN):
                page = await app[REDIS].xrange(company.keys.audit_stream, min=f"({since}",
                                                      count=BACKFILL_MAX)  # fmt: skip
                for entry_id, data in frames_of(page):
                    await response.write(data)
                    backfilled.add(entry_id)
        while True:
            try:
                frame = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                await response.write(b": keep-alive\n\n")
                continue
            if frame is None:
                break
            if frame[0] not in backfilled:  # else it went out with the backfill already
                await response.write(frame[1])
    except (ConnectionError, RuntimeError):
        pass  # the client went away
    finally:
        hub.leave(queue)
    return response

"""Page handlers: the signed `/embed/...` panels, the send endpoint, and the invalidation API.

Each is a thin caller: the panel core verifies, looks up, renders and mints the token; the card rules
validate; the audit log records.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging

import pydantic_core
from aiohttp import web

from ..appkeys import CATALOG, METRICS, REQUEST_ID, SETTINGS
from ..audit.producer import AuditRecord, IdempotencyConflict
from ..audit.spool import SpoolError
from ..clock import now_ms
from ..errors import Code, Conflict, NotOffered, PanelError, PayloadError, TokenError, TooLarge, Unavailable
from ..protocol import jsonlimits
from ..protocol.cards import build_message
from ..protocol.send import parse_send
from ..protocol.surfaces import Surface, View, parse_surface, parse_view
from ..redis import REDIS_DOWN
from ..tenants.routing import company_of
from .pages import request_lang

log = logging.getLogger(__name__)

# A card or ticket is a few KiB; the whole body of a send may not pass this.
MAX_BODY_BYTES = 256 * 1024
# Our own query parameters, never part of Sobot's signed context.
OWN_PARAMS = {"lang"}


def _sobot_query(request: web.Request) -> str:
    """The raw query without our own parameters (`lang`), percent-encoding untouched."""
    raw = request.rel_url.raw_query_string
    if "lang=" not in raw:
        return raw
    return "&".join(piece for piece in raw.split("&") if piece.partition("=")[0] not in OWN_PARAMS)


async def _embed(request: web.Request, surface: Surface, view: View | None) -> web.Response:
    company = company_of(request)
    core = company.core
    lang = request_lang(request, company.default_lang)
    raw = _sobot_query(request)
    # SPEC §4 postMessage mode: the first context may arrive only by message; show a waiting shell.
    context = core.verify_query(surface, raw) if raw.strip("&") else None
    panel = await core.build(surface, context, lang, view)
    page = core.page(panel, lang, view)
    headers = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store",
               "Content-Security-Policy": company.csp}  # its own framing origins  # fmt: skip
    return web.Response(body=page, headers=headers)


async def embed_panel(request: web.Request) -> web.Response:
    return await _embed(request, parse_surface(request.match_info["surface"]), None)


async def embed_view(request: web.Request) -> web.Response:
    surface = parse_surface(request.match_info["surface"])
    return await _embed(request, surface, parse_view(request.match_info["view"]))


async def send(request: web.Request) -> web.Response:
    """Validate a card or ticket, append its audit record, and answer with the exact message to post."""
    app = request.app
    company = company_of(request)
    metrics = app[METRICS]
    body = await _json_body(request)
    # The session first: a request without a valid token learns nothing about what else is wrong. A
    # token of another company is refused like a forged one.
    claims = company.core.session(str(body.get("token", "")) if isinstance(body, dict) else "")
    sent = parse_send(body)
    kind = sent.kind
    sends = functools.partial(metrics.sends.labels, kind=kind, tenant=company.label)
    # Only what the surface offers (SPEC §5: Sobot acts on cards in a chat, on createOrder in the ticket
    # center): a page that shows no such button cannot record such a send either.
    offered = company.ticket_surfaces if kind == "ticket" else company.card_surfaces
    if claims.surface not in {surface.value for surface in offered}:
        sends(result="not_offered").inc()
        raise NotOffered(Code.ACTION_NOT_OFFERED, kind=kind)
    try:
        message = build_message(
            kind,
            sent.data,
            card_format=company.config.card_format,
            cid=claims.cid,
            uid=claims.uid,
            mini_program=claims.mini_program,
            ticket_fields=company.ticket_fields,
        )
    except PayloadError as error:
        sends(result="invalid").inc()
        lang, catalog = request_lang(request, company.default_lang), app[CATALOG]
        problems = [
            {"field": field, "code": code, "message": catalog.text(code, lang, field=field, **params)}
            for field, code, params in error.problems
        ]
        return web.json_response(
            {"ok": False, "code": Code.PAYLOAD_INVALID, "message": catalog.text(Code.PAYLOAD_INVALID, lang),
             "problems": problems},
            status=422,
        )  # fmt: skip
    record = AuditRecord(
        kind=kind,
        id=sent.id,
        at=now_ms(),
        surface=claims.surface,
        agent=claims.agent,
        partner_id=claims.partner_id,
        uid=claims.uid,
        cid=claims.cid,
        payload=json.dumps(message, ensure_ascii=False, separators=(",", ":")),
        sysnum=company.config.sysnum,
        request_id=request.get(REQUEST_ID, ""),
    )
    try:
        appended = await company.audit.append(record)
    except IdempotencyConflict as error:
        # The same id was recorded with other content: posting this message would leave Sobot holding
        # something the stream does not (and answering with the stored one would post the wrong card).
        sends(result="conflict").inc()
        log.warning("send refused: %s", error)
        raise Conflict(Code.IDEMPOTENCY_CONFLICT) from None
    except SpoolError:
        sends(result="unavailable").inc()
        raise  # 503 naming the spool's state: the page is never told an unrecorded send is recorded
    except REDIS_DOWN as error:
        sends(result="unavailable").inc()
        raise Unavailable(Code.AUDIT_UNAVAILABLE) from error
    sends(result="spooled" if appended.spooled else "duplicate" if appended.duplicate else "recorded").inc()
    if appended.stored_payload is not None:
        # A retry is answered with what the stream holds, so the ack always equals the record.
        message = json.loads(appended.stored_payload)
    # Spooled: Redis is away, the record is fsync'd on local disk and will be replayed into the stream.
    answer = {"ok": True, "entryId": appended.entry_id, "duplicate": appended.duplicate, "spooled": appended.spooled,
              "message": message}  # fmt: skip
    return web.Response(body=pydantic_core.to_json(answer), content_type="application/json")


async def _json_body(request: web.Request) -> object:
    """The request's JSON, within the size and depth limits; a clear 4xx for anything else."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge(Code.BODY_TOO_LARGE, limit=MAX_BODY_BYTES) from None
    try:
        return jsonlimits.load(raw, max_bytes=MAX_BODY_BYTES)
    except jsonlimits.JsonRefused as refused:
        if refused.reason == "size":
            raise TooLarge(Code.BODY_TOO_LARGE, limit=MAX_BODY_BYTES) from None
        if refused.reason == "depth":
            raise PanelError(Code.JSON_TOO_DEEP, field="body", limit=jsonlimits.MAX_DEPTH) from None
        raise PanelError(Code.BODY_NOT_JSON) from None


def bearer_ok(request: web.Request, expected: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())


async def invalidate(request: web.Request) -> web.Response:
    company = company_of(request)
    token = company.config.api_token
    if token is None:
        raise Unavailable(Code.API_TOKEN_NOT_CONFIGURED)
    if not bearer_ok(request, token.get_secret_value()):
        raise TokenError(Code.API_TOKEN_INVALID)
    partner_id = request.match_info["partnerId"]
    try:
        await company.cache.invalidate(partner_id)
    except REDIS_DOWN as error:
        raise Unavailable(Code.REDIS_UNAVAILABLE) from error
    return web.json_response({"ok": True, "partnerId": partner_id}, status=202)


async def index(request: web.Request) -> web.Response:
    if request.app[SETTINGS].demo:
        raise web.HTTPFound("/dev/host")
    return web.json_response({"service": "sobot-panel", "surfaces": [s.value for s in Surface]})

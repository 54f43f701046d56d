"""Error pages and answers: every failure an agent can meet, as a small page (or JSON) in their language.

Used by the error middleware, the ops dashboard and the host simulator; never a traceback, never a secret.
"""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from ..appkeys import CATALOG
from ..errors import Code, NotFound, PanelError
from ..i18n import Lang, pick_lang


def request_lang(request: web.Request, default: Lang | None = None) -> Lang:
    """`?lang=` wins; then the company's own language when it names one; then the browser's; else Chinese."""
    # A page's query is Sobot's signed context, parsed once by the panel core: aiohttp's own parse of it
    # (request.query) is only paid when there is a `lang` to read.
    query_lang = request.query.get("lang") if "lang" in request.rel_url.raw_query_string else None
    if default is not None:
        return pick_lang(query_lang, None, default=default)
    return pick_lang(query_lang, request.headers.get("Accept-Language"))


def not_found_error(request: web.Request) -> PanelError:
    return NotFound(Code.PAGE_NOT_FOUND, path=request.path[:200])


def wants_json(request: web.Request) -> bool:
    return request.path.startswith(("/panel/", "/api/")) or "application/json" in request.headers.get("Accept", "")


def error_response(request: web.Request, error: PanelError, *, status: int | None = None) -> web.Response:
    lang = request_lang(request)
    other: Lang = "en" if lang == "zh" else "zh"
    catalog = request.app[CATALOG]
    code = status or error.status
    if wants_json(request):
        return web.json_response(
            {"ok": False, "code": error.code, "field": error.field, "message": catalog.error_text(error, lang)},
            status=code,
        )
    context = {
        "t": lambda c, **p: catalog.text(c, lang, **p),
        "lang": lang,
        "status": code,
        "title": catalog.text(f"status_{code}", lang),
        "message": catalog.error_text(error, lang),
        "message_other": catalog.error_text(error, other),
        "field": error.field,
    }
    response = aiohttp_jinja2.render_template("error.html", request, context, status=code)
    response.headers["Cache-Control"] = "no-store"
    return response

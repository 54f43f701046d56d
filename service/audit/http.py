"""`GET /api/audit`: the audit stream over HTTP, for consumers without Redis credentials (CONTRACT "HTTP").

`?since=MS&until=MS&kind=..&agent=..&partner_id=..&limit=N&cursor=C` answers `{"entries": [...], "next": C}`.
Times are milliseconds of the stream ID (when an entry reached the stream; a record replayed from a spool
keeps its earlier `at`). `kind`, `agent` and `partner_id` may repeat (any of the values). Each entry is the
stream's fields with `payload` parsed into an object, and `entry_id`. Following `next` until it is null
returns every matching entry exactly once; a page may hold fewer than `limit` entries (even none) while
`next` is not null, when a filter skips many entries.

Authorization: `Bearer $PANEL_API_TOKEN` (or the ops token, which also opens the dashboard over it).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
from typing import Any

from aiohttp import web

from ..appkeys import REDIS
from ..errors import Code, QueryError, TokenError, Unavailable
from ..redis import REDIS_DOWN
from ..tenants.company import Company
from ..tenants.routing import company_of
from .reader import Entry, read_page

DEFAULT_LIMIT = 100
MAX_LIMIT = 1_000
SCAN_BUDGET = 10_000  # entries looked at per request, whatever the filters
KINDS = ("ticket", "order_card", "goods_card")
_CURSOR = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")


def _authorized(request: web.Request, company: Company) -> None:
    config = company.config
    tokens = [token.get_secret_value() for token in (config.api_token, config.ops_token) if token is not None]
    if not tokens:
        raise Unavailable(Code.API_TOKEN_NOT_CONFIGURED)
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    presented = given.strip().encode()
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(presented, t.encode()) for t in tokens):
        raise TokenError(Code.API_TOKEN_INVALID)


def _ms(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 16:
        raise QueryError(Code.AUDIT_BAD_TIME, field=name)
    return int(value)


def _limit(request: web.Request) -> int:
    value = request.query.get("limit", str(DEFAULT_LIMIT))
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise QueryError(Code.AUDIT_BAD_LIMIT, field="limit", max=MAX_LIMIT)
    return int(value)


def entry_json(entry: Entry) -> dict[str, Any]:
    item: dict[str, Any] = {**entry.fields, "entry_id": entry.entry_id}
    with contextlib.suppress(ValueError):  # a payload not written by this service stays the text it is
        item["payload"] = json.loads(entry.fields.get("payload", ""))
    return item


async def audit_api(request: web.Request) -> web.Response:
    company = company_of(request)  # a company's records, through that company's own tokens only
    _authorized(request, company)
    since, until = _ms(request, "since"), _ms(request, "until")
    kinds = request.query.getall("kind", [])
    if any(kind not in KINDS for kind in kinds):
        raise QueryError(Code.AUDIT_BAD_KIND, field="kind", kinds=", ".join(KINDS))
    agents = set(request.query.getall("agent", []))
    partners = set(request.query.getall("partner_id", []))
    limit = _limit(request)
    cursor = request.query.get("cursor")
    if cursor is not None and not _CURSOR.match(cursor):
        raise QueryError(Code.AUDIT_BAD_CURSOR, field="cursor")
    start = f"({cursor}" if cursor else (f"{since}-0" if since is not None else "-")
    end = f"{until}-18446744073709551615" if until is not None else "+"

    def accept(fields: dict[str, str]) -> bool:
        return (
            (not kinds or fields.get("kind") in kinds)
            and (not agents or fields.get("agent") in agents)
            and (not partners or fields.get("partner_id") in partners)
        )

    redis, keys = request.app[REDIS], company.keys
    try:
        page = await read_page(redis, keys, start, end, accept, limit=limit, scan_budget=SCAN_BUDGET)
    except REDIS_DOWN as error:
        raise Unavailable(Code.REDIS_UNAVAILABLE) from error
    return web.json_response({"entries": [entry_json(entry) for entry in page.entries], "next": page.next},
                             dumps=lambda value: json.dumps(value, ensure_ascii=False))  # fmt: skip

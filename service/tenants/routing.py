"""Which company a request is for: the `{tenant}` of a `/t/NAME/...` route, else the single company."""

from __future__ import annotations

from aiohttp import web

from ..appkeys import COMPANIES, COMPANY
from ..errors import Code, NotFound
from .company import Company


def company_of(request: web.Request) -> Company:
    """The company this request is routed to; a 404 naming the tenant when it is not served here."""
    name = request.match_info.get("tenant", "")
    company = request.app[COMPANIES].get(name)
    if company is None:
        raise NotFound(Code.UNKNOWN_TENANT if name else Code.NO_SINGLE_COMPANY, tenant=name[:40])
    request[COMPANY] = company
    return company

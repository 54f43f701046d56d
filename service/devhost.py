"""The Sobot host simulator at `/dev/host` (demo mode only).

A page that behaves like Sobot's workbench as far as a docked page can tell: a list of sample
customers, a surface picker, the panel in an iFrame of the vendor's recommended size, a freshly signed
`selected` message on every customer switch (URL mode or postMessage mode, SPEC §4), and every
message the panel posts back (SPEC §5) shown as Sobot would show it, next to its raw JSON.

`GET /dev/host/signed?surface=..&partnerId=..` answers the signed context Sobot would send for one
sample customer, so the page (and a developer with curl) always has a URL that verifies right now.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, Literal

import aiohttp_jinja2
from aiohttp import web

from .appkeys import CATALOG, COMPANIES
from .clock import now_ms
from .directory.models import Customer
from .directory.sample import SampleDirectory, load_customers
from .errors import Code, NotFound
from .panel.pages import request_lang
from .protocol.signing import sign_fields
from .protocol.surfaces import Surface, View, build_query_string, parse_surface, parse_view, zc_encode_blob
from .tenants.company import Company

log = logging.getLogger(__name__)

Mode = Literal["url", "postmessage"]
MODES: tuple[Mode, ...] = ("url", "postmessage")

# SPEC §1: the vendor's recommended sizes at a 1280 px wide screen. The workbench column has no
# height limit (it fills the chat window); WeCom is a phone.
FRAME_SIZES: dict[Surface, tuple[int, int]] = {
    Surface.WORKBENCH: (300, 640),
    Surface.CALL: (790, 500),
    Surface.CALL_TASK: (790, 500),
    Surface.TICKET: (730, 500),
    Surface.CUSTOMER: (730, 500),
    Surface.QA: (730, 500),
    Surface.MONITOR: (730, 500),
    Surface.WECOM: (375, 667),
}

# The agent logged in to the simulated workbench.
AGENT_EMAIL = "agent@demo.sobot.com"
WECOM_AGENT = {
    "corpId": "ww8d2f0a6c1e9b7d35",
    "userId": "ZhangSan",
    "serviceId": "7c1f3b0e2a",
    "serviceRoleId": "2",
    "serviceTel": "0571-88886666",
    "companyId": "demo-company",
}
SKILL_GROUP = ("a1b2c3d4e5", "售前一组")
# SPEC §2.2: the IVR trail a caller pressed through, as Sobot sends it (a JSON list, Chinese names).
IVR_PATH = [{"navKey": "1", "navName": "售前咨询"}, {"navKey": "2", "navName": "人工服务[VIP]"}]
# Where a caller's number is registered (SPEC §2.2 province, city): the customer's own city when known.
PROVINCES = {"北京": "北京", "上海": "上海", "天津": "天津", "重庆": "重庆", "杭州": "浙江", "宁波": "浙江",
             "深圳": "广东", "广州": "广东", "成都": "四川", "南京": "江苏", "苏州": "江苏", "武汉": "湖北",
             "西安": "陕西", "长沙": "湖南"}  # fmt: skip
CHANNEL_NAMES = {"miniprogram": "微信小程序", "web": "官网", "app": "App", "wechat": "微信公众号"}


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()


def sobot_uid(customer: Customer) -> str:
    """The customer's user ID inside Sobot: the sample's own `uid`, else a stable made-up one."""
    return customer.uid or _digest("uid", customer.partnerId)[:32]


def sample_context(surface: Surface, customer: Customer, now_ms: int) -> dict[str, str]:
    """The unsigned fields Sobot would send on `surface` while the agent looks at `customer` (SPEC §2)."""
    uid = sobot_uid(customer)
    cid = _digest("cid", customer.partnerId)[:32]
    city = customer.attributes.get("城市", "") or "杭州"
    province = PROVINCES.get(city, "")
    if surface is Surface.WORKBENCH:
        params = {"来源渠道": CHANNEL_NAMES.get(customer.channel, customer.channel or "官网"),
                  "会员等级": customer.level or "普通会员", "咨询入口": "商品详情页"}  # fmt: skip
        return {
            "partnerId": customer.partnerId,
            "email": AGENT_EMAIL,
            "createChatTime": str(now_ms - 3 * 60_000),
            "uid": uid,
            "cid": cid,
            "params": json.dumps(params, ensure_ascii=False, separators=(",", ":")),
            "groupId": SKILL_GROUP[0],
            "groupName": SKILL_GROUP[1],
        }
    if surface is Surface.CALL:
        return {
            "partnerId": customer.partnerId,
            "callId": "CL" + _digest("call", customer.partnerId)[:18].upper(),
            "email": AGENT_EMAIL,
            "uid": uid,
            "uphone": customer.phone,
            "uemail": customer.email,
            "ivrPath": json.dumps(IVR_PATH, ensure_ascii=False, separators=(",", ":")),
            "province": province,
            "city": city,
        }
    if surface is Surface.WECOM:
        return {
            "corpId": WECOM_AGENT["corpId"],
            "userId": WECOM_AGENT["userId"],
            # SPEC §2.8: partnerId is WeCom's external-contact ID, which the enterprise rarely knows; the
            # panel finds the customer by unionId or phone instead.
            "partnerId": "wm" + _digest("external", customer.partnerId)[:26],
            "serviceId": WECOM_AGENT["serviceId"],
            "serviceRoleId": WECOM_AGENT["serviceRoleId"],
            "wxUnionId": customer.unionId,
            "wxBuildUnionId": "",
            "tel": customer.phone,
            "serviceTel": WECOM_AGENT["serviceTel"],
            "companyId": WECOM_AGENT["companyId"],
        }
    fields = {"email": AGENT_EMAIL, "uid": uid, "uphone": customer.phone, "uemail": customer.email}
    if surface in (Surface.CUSTOMER, Surface.QA, Surface.MONITOR):
        fields = {"partnerId": customer.partnerId, **fields}
    if surface in (Surface.QA, Surface.MONITOR):
        fields["cid"] = cid
    if surface is Surface.TICKET:
        fields["ticketId"] = customer.tickets[0].ticketId if customer.tickets else "T" + _digest(
            "ticket", customer.partnerId)[:10].upper()  # fmt: skip
    return fields


def selected_message(query: dict[str, str], customer: Customer) -> dict[str, Any]:
    """SPEC §4: the message Sobot posts to the docked page when the agent picks this customer."""
    params: dict[str, Any] = json.loads(query["params"]) if query.get("params") else {}
    return {
        "name": "selected",
        "query": query,
        "params": params,
        "partnerId": query.get("partnerId", ""),
        "visitData": {"uid": query.get("uid", "") or sobot_uid(customer)},
    }


def _company(request: web.Request) -> Company:
    """The company the simulator plays Sobot for: `?tenant=NAME`, else the single company, else the first."""
    companies = request.app[COMPANIES]
    name = request.query.get("tenant", "")
    company = companies.get(name) if name or companies.get("") else next(iter(companies), None)
    if company is None:
        raise NotFound(Code.UNKNOWN_TENANT, tenant=name[:40])
    return company


def sample_customers(company: Company) -> list[Customer]:
    """The simulator's customers: the company's sample directory's, else the sample file's."""
    directory = getattr(company.directory, "inner", company.directory)
    if isinstance(directory, SampleDirectory):
        return list(directory.customers)
    try:
        return load_customers()
    except (OSError, ValueError, KeyError) as error:
        log.warning("host simulator: no sample customers (%s)", error)
        return []


def _find(company: Company, partner_id: str) -> Customer:
    for customer in sample_customers(company):
        if customer.partnerId == partner_id:
            return customer
    raise NotFound(Code.DEVHOST_UNKNOWN_CUSTOMER, partnerId=partner_id[:40])


async def signed(request: web.Request) -> web.Response:
    """A context for one sample customer, signed now with the deployment's policy."""
    company = _company(request)
    surface = parse_surface(request.query.get("surface", Surface.WORKBENCH.value))
    view_name = request.query.get("view", "")
    view: View | None = parse_view(view_name) if view_name else None
    customer = _find(company, request.query.get("partnerId", ""))
    now = now_ms()
    query = sign_fields(surface, sample_context(surface, customer, now), company.core.signer.policy, now)
    # SPEC §2.2: with zc_encode=1 on the docking URL, everything after `?` travels as one blob.
    zc = request.query.get("zcEncode") == "1"
    path = f"{company.base}/embed/{surface.value}" + (f"/{view.value}" if view else "")
    lang = request.query.get("lang", "")
    tail = f"&lang={lang}" if lang in ("zh", "en") else ""
    url = f"{path}?{zc_encode_blob(query) if zc else build_query_string(query)}{tail}"
    return web.json_response(
        {
            "url": url,
            "query": query,
            "selected": selected_message(query, customer),
            "surface": surface.value,
            "view": view.value if view else None,
        },
        headers={"Cache-Control": "no-store"},
    )


def _surface_choice(raw: str | None) -> Surface:
    try:
        return Surface(raw or Surface.WORKBENCH.value)
    except ValueError:
        return Surface.WORKBENCH


async def host_page(request: web.Request) -> web.Response:
    """The simulator itself; choices survive a reload through `?mode=&surface=&view=&lang=`."""
    app = request.app
    catalog = app[CATALOG]
    company = _company(request)
    lang = request_lang(request)
    mode: Mode = "postmessage" if request.query.get("mode") == "postmessage" else "url"
    surface = _surface_choice(request.query.get("surface"))
    view_name = request.query.get("view", "")
    view = view_name if view_name in {v.value for v in View} else ""
    customers = sample_customers(company)
    messages = catalog.table(lang, "devhost_")
    messages.update(catalog.table(lang, "order_status_"))
    boot = {
        "lang": lang,
        "mode": mode,
        "surface": surface.value,
        "view": view,
        "zcEncode": request.query.get("zcEncode") == "1",
        "customer": request.query.get("customer", ""),
        "sizes": {s.value: list(size) for s, size in FRAME_SIZES.items()},
        "messages": messages,
        "tenant": company.name,
    }
    context = dict(
        t=lambda code, **params: catalog.text(code, lang, **params),
        lang=lang,
        other_lang="en" if lang == "zh" else "zh",
        mode=mode,
        modes=MODES,
        surface=surface.value,
        surfaces=[(s.value, FRAME_SIZES[s]) for s in Surface],
        view=view,
        views=[v.value for v in View],
        customers=customers,
        tenant=company.name,
        tenants=app[COMPANIES].names,
        boot=json.dumps(boot, ensure_ascii=False, separators=(",", ":")),
    )
    response = aiohttp_jinja2.render_template("devhost.html", request, context)
    response.headers["Cache-Control"] = "no-store"
    return response

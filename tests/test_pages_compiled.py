"""The hot page's compiled pieces give the very bytes the templates and the JSON encoder gave.

The per-request header (`panel/header.py`) is held against a Jinja2 render of `_context.html`, and the
spliced boot data (`SplicedJson`) against an escaped `json.dumps` of the whole object, over languages,
surfaces, customers and hostile values.
"""

from __future__ import annotations

import html
import json
from typing import Any

import jinja2
import pytest
from markupsafe import escape
from sobot_panel.assets import check as web_dir
from sobot_panel.directory.models import Customer
from sobot_panel.directory.sample import load_customers
from sobot_panel.i18n import Catalog, Lang
from sobot_panel.panel.header import HeaderPieces
from sobot_panel.panel.rendering import LAYOUT, SURFACE_LABELS, Renderer, Splice, SplicedJson
from sobot_panel.protocol.surfaces import Surface, SurfaceContext, parse_fields

CATALOG = Catalog.load()
CUSTOMERS = load_customers()
HOSTILE = "<script>alert(\"x\")</script> & 'quoted'"
JINJA = jinja2.Environment(
    loader=jinja2.FileSystemLoader(web_dir() / "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)  # fmt: skip

CONTEXTS: list[tuple[Surface, dict[str, str]]] = [
    (Surface.WORKBENCH, {"partnerId": "C1001", "email": "agent@acme.cn", "uid": "u-1", "cid": "c-1",
                         "groupName": "售前一组", "createChatTime": "1764000000000", "timestamp": "1764000000000"}),
    (Surface.WORKBENCH, {"partnerId": "C1001", "email": ""}),  # no agent: the dash
    (Surface.WORKBENCH, {"partnerId": "C1001", "email": HOSTILE, "groupName": HOSTILE, "cid": HOSTILE}),
    (Surface.CALL, {"partnerId": "C1001", "callId": "CALL-77", "email": "agent@acme.cn", "uphone": "13800000001",
                    "province": "浙江", "city": "杭州",
                    "ivrPath": '[{"navKey":"1","navName":"售前咨询"},{"navKey":"<2>","navName":"人工[VIP] & co"}]'}),
    (Surface.CALL, {"callId": "C", "email": "a@b.cn", "province": "上海", "city": "上海", "ivrPath": "[]"}),
    (Surface.CALL_TASK, {"email": "agent@acme.cn", "uphone": "13800000001", "uemail": "x@y.cn"}),
    (Surface.TICKET, {"email": "agent@acme.cn", "uphone": "13800000001", "ticketId": "T-9001"}),
    (Surface.QA, {"partnerId": "C1001", "email": "agent@acme.cn", "cid": "c-1", "uphone": "1380"}),
    (Surface.WECOM, {"corpId": "ww1", "userId": "zhang.san", "partnerId": "C1001", "serviceId": "s1",
                     "tel": "13800000001", "serviceTel": "400"}),
]  # fmt: skip
LONG_IDS = frozenset({"callId", "cid", "corpId", "serviceId"})


def _t(lang: Lang) -> Any:
    return lambda code, **params: CATALOG.text(code, lang, **params)


def _arguments(surface: Surface, context: SurfaceContext) -> tuple[str, list[tuple[str, str]]]:
    """What the renderer passes for a context: the peek and the display fields with their labels."""
    fields = context.display_fields()
    peek = next((value for name, value in fields if name not in LONG_IDS), "")
    return peek, [(SURFACE_LABELS.get((surface, name), f"ctx_{name}"), value) for name, value in fields]


def _customers() -> list[Customer | None]:
    plain = CUSTOMERS[0]
    return [None, plain, plain.model_copy(update={"level": ""}),
            plain.model_copy(update={"name": HOSTILE, "level": HOSTILE})]  # fmt: skip


@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.parametrize(("surface", "fields"), CONTEXTS, ids=[f"{s.value}-{i}" for i, (s, _) in enumerate(CONTEXTS)])
def test_the_compiled_header_is_the_template_byte_for_byte(
    lang: Lang, surface: Surface, fields: dict[str, str]
) -> None:
    context = parse_fields(surface, fields)
    peek, display = _arguments(surface, context)
    pieces = HeaderPieces(_t(lang))
    template = JINJA.get_template("_context.html")
    checked = 0
    for customer in _customers():
        for stale in (False, True):
            for verified in (True, False):
                for shown_context, shown_peek in ((context, peek), (context, ""), (None, "")):
                    arguments: dict[str, Any] = {"stale": stale, "peek": shown_peek, "verified": verified,
                                                 "display_fields": display}  # fmt: skip
                    expected = template.render(t=_t(lang), customer=customer, context=shown_context, **arguments)
                    assert pieces.render(customer, shown_context, **arguments) == expected
                    checked += 1
    assert checked == 4 * 2 * 2 * 3


def test_the_compiled_header_escapes_what_the_request_sent() -> None:
    context = parse_fields(Surface.WORKBENCH, {"partnerId": "C1", "email": HOSTILE, "groupName": HOSTILE})
    peek, display = _arguments(Surface.WORKBENCH, context)
    out = HeaderPieces(_t("en")).render(None, context, stale=False, peek=peek, verified=True, display_fields=display)
    assert "<script>" not in out and str(escape(HOSTILE)) in out and out.count("&lt;script&gt;") == 3


def _boot(
    surface: Surface, lang: Lang, token: object, partner: object, signed_at: object, now: object
) -> dict[str, Any]:
    return {"token": token, "surface": surface.value, "view": None, "lang": lang,
            "origins": ["https://*.sobot.com", HOSTILE], "allowSelf": False, "cardFormat": "v6", "signMaxAge": 300,
            "base": "/t/acme", "partnerId": partner, "signedAt": signed_at, "now": now}  # fmt: skip


@pytest.mark.parametrize("surface", list(LAYOUT))
@pytest.mark.parametrize(
    ("token", "partner", "signed_at"),
    [("v2.abc-_DEF", "C1001", 1764000000000), ("v2.x", "", None), ("v2.y", HOSTILE, 0), ("v2.z", "客户\u2028", 12)],
)
def test_spliced_boot_data_is_the_escaped_json_of_the_whole_object(
    surface: Surface, token: str, partner: str, signed_at: int | None
) -> None:
    spliced = SplicedJson(_boot(surface, "zh", Splice("token"), Splice("partnerId"), Splice("signedAt"),
                                Splice("now")))  # fmt: skip
    whole = _boot(surface, "zh", token, partner, signed_at, 1764000000123)
    expected = str(escape(json.dumps(whole, ensure_ascii=False, separators=(",", ":")))).encode()
    assert spliced.fill((token, partner, signed_at, 1764000000123)) == expected
    assert json.loads(html.unescape(expected.decode())) == whole


def _renderer() -> Renderer:
    jinja = jinja2.Environment(
        loader=jinja2.FileSystemLoader(web_dir() / "templates"), autoescape=True, trim_blocks=True,
        lstrip_blocks=True, undefined=jinja2.StrictUndefined,
    )  # fmt: skip
    jinja.globals["catalog"] = CATALOG
    return Renderer(jinja, CATALOG, [], base_url="https://shop.example.cn", card_format="v6")


def test_a_customers_views_are_rendered_once_per_content_not_per_object() -> None:
    renderer = _renderer()
    first = CUSTOMERS[0]
    same = Customer.model_validate_json(first.model_dump_json())  # another object, the same content
    assert same is not first
    html = renderer.customer_views(first, "zh", None, Surface.WORKBENCH)
    assert renderer.customer_views(same, "zh", None, Surface.WORKBENCH) == html
    assert (renderer.misses, renderer.hits) == (1, 1)
    changed = first.model_copy(update={"phone": "13999999999"})
    assert "13999999999" in renderer.customer_views(changed, "zh", None, Surface.WORKBENCH)
    assert renderer.misses == 2  # a change is rendered afresh
    assert renderer.customer_views(first, "en", None, Surface.WORKBENCH) != html  # per language
    assert renderer.customer_views(CUSTOMERS[1], "zh", None, Surface.WORKBENCH) != html
    assert renderer.misses == 4


# --- the whole page, against the way it was assembled before (Jinja2 header, json.dumps boot) -------


def _core(renderer: Renderer) -> Any:
    from sobot_panel.directory.cache import CustomerCache
    from sobot_panel.observability import Metrics
    from sobot_panel.panel.core import PanelCore, Signer
    from sobot_panel.protocol.signing import SignPolicy
    from sobot_panel.protocol.tokens import SessionTokens

    # Only the in-process tier answers (no Redis, no directory): every customer is put there first.
    cache = CustomerCache(None, None, None, ttl=300, negative_ttl=60, local_ttl=3600, local_size=100)  # type: ignore[arg-type]
    for key, value in (("partnerId", "C1001"), ("phone", "13800000001")):
        cache._remember(f"{key}:{value}", CUSTOMERS[0], "redis")
    policy = SignPolicy(sys_num="s", secret="k", wecom_secret=None, max_age_s=300)
    boot = {"origins": ["https://*.sobot.com"], "allowSelf": False, "cardFormat": "v6", "signMaxAge": 300, "base": ""}
    return PanelCore(signer=Signer(policy), cache=cache, renderer=renderer, tokens=SessionTokens(b"k"),
                     metrics=Metrics(), session_ttl_s=600, session_max_age_s=3600, boot=boot)  # fmt: skip


def _former_page(core: Any, panel: Any, lang: Lang, view: Any, now: int) -> bytes:
    renderer: Renderer = core.renderer
    surface = panel.surface
    boot = core.boot(surface, view, lang, panel.token, panel.customer.partnerId if panel.customer else "",
                     panel.context.signed_at_ms if panel.context else None, now)  # fmt: skip
    start, middle, end = renderer._shell(lang, surface, waiting=panel.context is None)
    boot_attr = str(escape(json.dumps(boot, ensure_ascii=False, separators=(",", ":")))).encode()
    if panel.context is None:
        return b"".join([start, boot_attr, middle, end])
    peek, display = _arguments(surface, panel.context)
    header = JINJA.get_template("_context.html").render(
        t=_t(lang), customer=panel.customer, context=panel.context, stale=False, peek=peek,
        verified=panel.lookup.verified, display_fields=display,
    )  # fmt: skip
    html = renderer.customer_views(panel.customer, lang, view, surface)
    before, _, after = html.partition("<!--panel:params-->")
    params = panel.context.params
    params_html = JINJA.get_template("_params.html").render(t=_t(lang), params=params) if params else ""
    return b"".join([start, boot_attr, middle, (header + before + params_html + after).encode(), end])


PAGES = [
    (Surface.WORKBENCH, {"partnerId": "C1001", "email": "agent@acme.cn", "uid": "u-1", "cid": "c-1",
                         "groupName": "售前一组", "params": '{"vip":"是","n":3}', "createChatTime": "1764000000000"}),
    (Surface.WORKBENCH, {"partnerId": "C1001", "email": HOSTILE}),
    (Surface.CALL, {"partnerId": "C1001", "callId": "CALL-77", "email": "agent@acme.cn", "uphone": "13800000001",
                    "province": "浙江", "city": "杭州", "ivrPath": '[{"navKey":"1","navName":"售前咨询"}]'}),
    (Surface.TICKET, {"email": "agent@acme.cn", "uphone": "13800000001", "ticketId": "T-9001"}),
    (Surface.WECOM, {"corpId": "ww1", "userId": "zhang.san", "partnerId": "C1001", "tel": "13800000001"}),
]  # fmt: skip


@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.parametrize("view", [None, "orders", "new-ticket"])
@pytest.mark.parametrize(("surface", "fields"), PAGES, ids=[f"{s.value}-{i}" for i, (s, _) in enumerate(PAGES)])
async def test_a_whole_page_is_what_the_templates_and_json_dumps_gave(
    lang: Lang, view: str | None, surface: Surface, fields: dict[str, str]
) -> None:
    import re

    from sobot_panel.protocol.signing import sign_fields
    from sobot_panel.protocol.surfaces import View

    core = _core(_renderer())
    signed = sign_fields(surface, fields, core.signer.policy, 1764000000000)
    context = parse_fields(surface, signed)
    shown = View(view) if view else None
    for panel_context in (context, None):  # a panel, and the waiting shell of SPEC §4
        panel = await core.build(surface, panel_context, lang, shown)
        page = core.page(panel, lang, shown)
        now = int(re.findall(rb"&#34;now&#34;:(\d+)", page)[0])
        assert page == _former_page(core, panel, lang, shown, now)
        if panel_context is not None:
            assert panel.customer is not None and panel.token.encode() in page

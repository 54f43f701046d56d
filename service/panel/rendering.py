"""Rendering panels: the per-request header, the customer's views (cached), and the page around them.

A panel is three parts. The header (agent, the surface's own fields such as callId or the IVR trail)
changes with every conversation and is built per request from pre-escaped pieces (panel/header.py). The
customer's views (profile, orders with their ready cards, tickets, the new-ticket form) depend only on
the customer's content, the language and the view, so they are rendered once per change of that content
and kept in a bounded in-process LRU keyed by a digest of the customer's content: a customer read again
from Redis, refreshed from the directory or invalidated unchanged is not rendered again, and a changed
one has another digest, so nothing stale is ever shown. The digest is computed once per Customer object.
Sobot's `params` (per conversation) are rendered separately and put in at a marker.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2
from markupsafe import Markup, escape

from ..clock import china_time
from ..directory.models import Customer
from ..i18n import Catalog, Lang
from ..protocol.card_builders import (
    general_card_from_order,
    general_card_from_product,
    goods_card_from_product,
    order_card_from_order,
    ticket_prefill_from_order,
)
from ..protocol.surfaces import Surface, SurfaceContext, View
from ..protocol.ticket_fields import TicketField, is_http_url
from .header import HeaderPieces

LAYOUT = {
    Surface.WORKBENCH: "column",
    Surface.CUSTOMER: "wide",
    Surface.QA: "wide",
    Surface.MONITOR: "wide",
    Surface.TICKET: "wide",
    Surface.CALL: "call",
    Surface.CALL_TASK: "call",
    Surface.WECOM: "mobile",
}
PARAMS_MARK = "<!--panel:params-->"
# What panel.js itself says (everything else arrives already translated from the server). Sending
# only these keeps the page small: the whole catalog was half of a panel's bytes.
SCRIPT_MESSAGES = ("sending", "sent", "sent_again", "audit_spooled", "ticket_sent", "parent_not_allowed",
                   "network_error", "reconnecting", "internal_error", "payload_invalid", "switching",
                   "switching_to", "switch_failed", "retry", "offline", "session_ended", "reload",
                   "switched_not_sent", "ticket_filed_locked")  # fmt: skip
# A header label that reads differently on some surfaces: `uphone` is the caller in the call center,
# the number called in a call task, and simply the customer's phone elsewhere (SPEC §2).
SURFACE_LABELS = {
    (Surface.CALL, "uphone"): "ctx_uphone_call",
    (Surface.CALL_TASK, "uphone"): "ctx_uphone_task",
}
LONG_IDS = frozenset({"callId", "cid", "corpId", "serviceId"})
GOODS_SHOWN = 2  # goods listed per order before the rest fold away behind "+N"
_BOOT_MARK = "\x00boot\x00"
_BODY_MARK = "<!--\x00body\x00-->"
VIEWS = [v.value for v in View]


@dataclass(frozen=True, slots=True)
class Actions:
    """What a surface's panel offers (PANEL_CARD_SURFACES, PANEL_TICKET_SURFACES)."""

    cards: bool
    tickets: bool


ViewsKey = tuple[bytes, Lang, str | None, Actions]


def yuan(fen: int | str) -> str:
    value = int(fen)
    return f"¥{value // 100:,}.{value % 100:02d}" if value >= 0 else f"-{yuan(-value)}"


def ms_datetime(ms: int | None) -> str:
    return china_time(ms or 0)


# One encoder for every call: json.dumps with arguments builds a new JSONEncoder each time.
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_json_string = json.encoder.encode_basestring  # what _COMPACT writes for a str (ensure_ascii off)


def compact_json(value: Any) -> str:
    return _COMPACT.encode(value)


def attr_json(value: Any) -> str:
    """`value` as JSON escaped for an HTML attribute (what `data-boot` holds)."""
    if type(value) is str:  # the encoder's own C routine for a string, without its per-call setup
        return str(escape(_json_string(value)))
    return str(escape(_COMPACT.encode(value)))


class SplicedJson:
    """A JSON object for an HTML attribute whose members are fixed but for a few, encoded once.

    `template` is the object with a `Splice` marker in place of each varying value; `fill()` gives the
    same bytes as `attr_json()` of the object with the values put in, escaping only those values."""

    def __init__(self, template: dict[str, Any]) -> None:
        text = attr_json(template)
        marks = [
            (text.index(attr_json(mark)), attr_json(mark)) for mark in template.values() if isinstance(mark, Splice)
        ]
        self.fixed: list[bytes] = []
        at = 0
        for start, mark in sorted(marks):
            self.fixed.append(text[at:start].encode())
            at = start + len(mark)
        self.fixed.append(text[at:].encode())

    def fill(self, values: Sequence[object]) -> bytes:
        """The attribute with `values` in the markers' order of appearance."""
        fixed = self.fixed
        out = [fixed[0]]
        for piece, value in zip(fixed[1:], values, strict=True):
            # ints and None as JSON writes them (no escaping needed); the encoder's slow path is for others
            if value is None:
                out.append(b"null")
            elif type(value) is int:
                out.append(str(value).encode())
            else:
                out.append(attr_json(value).encode())
            out.append(piece)
        return b"".join(out)


class Splice(str):
    """A marker for a varying member of a `SplicedJson` (unlike any real value: control characters)."""

    def __new__(cls, name: str) -> Splice:
        return super().__new__(cls, f"\x01{name}\x01")


def script_json(value: Any) -> Markup:
    """JSON safe inside `<script type="application/json">`: no `<`, `>` or `&` can end the element."""
    text = compact_json(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


def customer_prefill(customer: Customer) -> dict[str, str]:
    """Values for ticket fields whose `prefill` names a customer attribute (`customer.name`, ...)."""
    values = {
        "customer.name": customer.name,
        "customer.phone": customer.phone,
        "customer.email": customer.email,
        "customer.partnerId": customer.partnerId,
        "customer.level": customer.level,
    }
    values.update({f"customer.attributes.{k}": v for k, v in customer.attributes.items()})
    return values


class Renderer:
    """Everything needed to render a panel, built once per app."""

    def __init__(
        self,
        jinja: jinja2.Environment,
        catalog: Catalog,
        ticket_fields: list[TicketField],
        *,
        base_url: str,
        card_format: str,
        card_surfaces: frozenset[Surface] = frozenset({Surface.WORKBENCH}),
        ticket_surfaces: frozenset[Surface] = frozenset({Surface.TICKET}),
        customer_lang: Lang = "zh",
        cache_size: int = 4096,
    ) -> None:
        self._jinja = jinja
        self._catalog = catalog
        self._ticket_fields = ticket_fields
        self._field_types = {field.id: field.type for field in ticket_fields}
        self._base_url = base_url
        self._v6 = card_format == "v6"
        self._card_surfaces = card_surfaces
        self._ticket_surfaces = ticket_surfaces
        self._customer_lang: Lang = customer_lang
        self._cache_size = cache_size
        self._views: OrderedDict[ViewsKey, tuple[str, tuple[bytes, bytes]]] = OrderedDict()
        # Customer object (by id, the object held so its id is not reused) -> the digest of its content
        self._versions: OrderedDict[int, tuple[Customer, bytes]] = OrderedDict()
        self._messages = {
            lang: script_json({code: catalog.text(code, lang) for code in SCRIPT_MESSAGES}) for lang in ("zh", "en")
        }
        self._shells: dict[tuple[Lang, str, str, bool], tuple[bytes, bytes, bytes]] = {}
        self._headers = {lang: HeaderPieces(self.t(lang)) for lang in ("zh", "en")}
        self._actions = {s: Actions(cards=s in card_surfaces, tickets=s in ticket_surfaces) for s in Surface}
        self.hits = 0
        self.misses = 0

    def actions(self, surface: Surface) -> Actions:
        """What the panel offers on this surface: card sends, the ticket form, both or neither."""
        return self._actions[surface]

    def t(self, lang: Lang) -> Any:
        catalog = self._catalog

        def translate(code: str, **params: object) -> str:
            return catalog.text(code, lang, **params)

        return translate

    def messages(self, lang: Lang) -> Markup:
        return self._messages[lang]

    # the customer's views, cached ----------------------------------------------------------

    def customer_views(self, customer: Customer, lang: Lang, view: View | None, surface: Surface) -> str:
        return self._customer_views(customer, lang, view, surface)[0]

    def _customer_views(
        self, customer: Customer, lang: Lang, view: View | None, surface: Surface
    ) -> tuple[str, tuple[bytes, bytes]]:
        """The views as text, and as UTF-8 bytes split at the params marker (pages are assembled as bytes)."""
        actions = self.actions(surface)
        key = (self.version(customer), lang, view.value if view else None, actions)
        cached = self._views.get(key)
        if cached is not None:
            self._views.move_to_end(key)
            self.hits += 1
            return cached
        self.misses += 1
        html = self._jinja.get_template("_views.html").render(self._views_context(customer, lang, view, actions))
        before, _, after = html.partition(PARAMS_MARK)
        entry = self._views[key] = (html, (before.encode(), after.encode()))
        if len(self._views) > self._cache_size:
            self._views.popitem(last=False)
        return entry

    def version(self, customer: Customer) -> bytes:
        """A digest of the customer's content: equal content, equal digest, whichever object holds it."""
        known = self._versions.get(id(customer))
        if known is not None and known[0] is customer:
            self._versions.move_to_end(id(customer))
            return known[1]
        digest = hashlib.blake2b(customer.model_dump_json().encode(), digest_size=16).digest()
        self._versions[id(customer)] = (customer, digest)
        if len(self._versions) > self._cache_size:
            self._versions.popitem(last=False)
        return digest

    def _where(self, surfaces: frozenset[Surface], lang: Lang) -> str:
        """Where an action lives, in words: "客服工作台", "工单中心、呼叫中心"."""
        names = [self._catalog.text(f"surface_name_{s.value}", lang) for s in Surface if s in surfaces]
        return ("、" if lang == "zh" else ", ").join(dict.fromkeys(names))

    def _views_context(self, customer: Customer, lang: Lang, view: View | None, actions: Actions) -> dict[str, Any]:
        t = self.t(lang)
        base_url = self._base_url
        # Card text reaches the customer, so it is in the customer's language; the ticket form's prefill
        # is read by agents, in theirs.
        agent_status = {status: t(f"order_status_{status}") for status in range(8)}
        customer_status = {status: self._catalog.text(f"order_status_{status}", self._customer_lang)
                           for status in range(8)}  # fmt: skip
        orders = []
        for order in sorted(customer.orders, key=lambda o: o.createTime or 0, reverse=True):  # newest first
            data = order.model_dump()
            if self._v6:
                card = general_card_from_order(data, base_url=base_url, status_texts=customer_status)
            else:
                card = order_card_from_order(data, base_url=base_url)
            from_order = ticket_prefill_from_order(data, base_url=base_url, status_texts=agent_status)
            ticket = {name: value for name, value in from_order.items() if self._prefillable(name, value)}
            orders.append({"order": order, "card": compact_json(card), "prefill": compact_json(ticket),
                           "goods": order.goods[:GOODS_SHOWN], "more_goods": order.goods[GOODS_SHOWN:]})  # fmt: skip
        products = []
        for product in customer.products:
            data = product.model_dump()
            if self._v6:
                card = general_card_from_product(data, base_url=base_url)
            else:
                card = goods_card_from_product(data, base_url=base_url)
            products.append({"product": product, "card": compact_json(card)})
        return {
            "t": t,
            "lang": lang,
            "customer": customer,
            "orders": orders,
            "products": products,
            "cards": actions.cards,
            "tickets": actions.tickets,
            "cards_where": self._where(self._card_surfaces, lang),
            "tickets_where": self._where(self._ticket_surfaces, lang),
            "ticket_fields": self._ticket_fields,
            "ticket_prefill": customer_prefill(customer),
            "view": view.value if view else None,
            # The tabbed panel shows the new-ticket tab only where Sobot files the ticket.
            "views": [v for v in VIEWS if actions.tickets or v != View.NEW_TICKET.value],
            "params_mark": Markup(PARAMS_MARK),
            "yuan": yuan,
            "ms_datetime": ms_datetime,
        }

    def _prefillable(self, field_id: str, value: str) -> bool:
        """A configured field, and a value it accepts: a mini-program order link is no `url` field value."""
        kind = self._field_types.get(field_id)
        return kind is not None and (kind != "url" or is_http_url(value))

    # the whole fragment --------------------------------------------------------------------

    def fragment_parts(
        self,
        customer: Customer | None,
        context: SurfaceContext | None,
        lang: Lang,
        view: View | None,
        *,
        surface: Surface,
        stale: bool,
        tried: list[tuple[str, str]],
        verified: bool = True,
        no_signed_key: bool = False,
        received: list[tuple[str, str]] | None = None,
    ) -> list[bytes]:
        """The fragment as UTF-8 pieces: only the per-conversation parts are rendered and encoded here.

        `verified`: Sobot's sign vouches for the customer shown (else the header says it is unverified);
        `no_signed_key`: the sign covers no customer key, so no customer is shown, only what was `received`."""
        fields = context.display_fields() if context else []
        # The closed disclosure shows one short fact (the caller, the skill group, the ticket), never a long id.
        peek = next((value for name, value in fields if name not in LONG_IDS), "")
        # `_context.html`, compiled (panel/header.py): the one part rendered on every request.
        header = self._headers[lang].render(
            customer, context, stale=stale, peek=peek, verified=verified,
            display_fields=[(SURFACE_LABELS.get((surface, name), f"ctx_{name}"), value) for name, value in fields],
        )  # fmt: skip
        if customer is None:
            t = self.t(lang)
            if no_signed_key:
                body = self._jinja.get_template("_no_verified_customer.html").render(t=t, received=received or [])
            else:
                body = self._jinja.get_template("_not_found.html").render(t=t, tried=tried)
            return [header.encode(), body.encode()]
        _, (before, after) = self._customer_views(customer, lang, view, surface)
        params = context.params if context else {}
        params_html = self._jinja.get_template("_params.html").render(t=self.t(lang), params=params) if params else ""
        return [header.encode(), before, params_html.encode(), after]

    # the page around it --------------------------------------------------------------------

    def page(self, lang: Lang, surface: Surface, boot: dict[str, Any] | bytes, body: list[bytes] | None) -> bytes:
        """The whole page as bytes; `body` None is the waiting shell of SPEC §4's postMessage mode.

        `boot`: the boot data, or its attribute text already encoded (`SplicedJson.fill`)."""
        start, middle, end = self._shell(lang, surface, waiting=body is None)
        boot_attr = boot if isinstance(boot, bytes) else attr_json(boot).encode()
        return b"".join([start, boot_attr, middle, *(body or ()), end])

    def _shell(self, lang: Lang, surface: Surface, *, waiting: bool) -> tuple[bytes, bytes, bytes]:
        key = (lang, surface.value, LAYOUT[surface], waiting)
        shell = self._shells.get(key)
        if shell is None:
            html = self._jinja.get_template("page.html").render(
                t=self.t(lang), lang=lang, layout=LAYOUT[surface], surface=surface.value, waiting=waiting,
                boot=Markup(_BOOT_MARK), body=Markup(_BODY_MARK), messages=self._messages[lang],
            )  # fmt: skip
            start, _, rest = html.partition(_BOOT_MARK)
            middle, _, end = rest.partition(_BODY_MARK)
            shell = self._shells[key] = (start.encode(), middle.encode(), end.encode())
        return shell

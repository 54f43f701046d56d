"""No personal data in any URL the panel requests after Sobot's own `/embed/...` URL, in a real browser.

Sobot's URL carries the agent's email, the customer's phone, email and ids, and the sign; the panel may
read them, but nothing it requests afterwards (its styles and scripts, its websocket, its sends, a relay of
Sobot's `selected`) may carry them or the session token, since proxies and access logs keep URLs.
"""

from __future__ import annotations

import json
from urllib.parse import unquote, urlsplit

import pytest
from playwright.async_api import FrameLocator, Page, Request, WebSocket, expect
from sobot_panel.devhost import FRAME_SIZES
from sobot_panel.directory.models import Customer
from sobot_panel.protocol.surfaces import Surface, View
from sobot_panel.protocol.ticket_fields import DEFAULT_TICKET_FIELDS

pytest.register_assert_rewrite("tests.helpers.browser")

from .helpers.browser import (  # noqa: E402
    BROWSER,
    FakeParent,
    LiveServer,
    PanelServerFactory,
    sample_customer,
    text,
    wait_received,
)

pytest_plugins = ["tests.helpers.browser"]
pytestmark = BROWSER

# Query fields that name a person or prove a session: the agent (email, WeCom userId), the customer
# (phone, email, ids Sobot and WeCom give them) and the sign.
PERSONAL_FIELDS = ("email", "uphone", "uemail", "partnerId", "uid", "cid", "sign", "tel", "wxUnionId",
                   "wxBuildUnionId", "userId")  # fmt: skip
# (surface, customer shown first): several surfaces, each with a customer of its own.
LOADS = [(Surface.WORKBENCH, "C1001"), (Surface.CALL, "C1003"), (Surface.CUSTOMER, "C1004"),
         (Surface.WECOM, "C1005"), (Surface.TICKET, "C1006")]  # fmt: skip


class Recorder:
    """Every URL the browser page requests (any frame), websockets included, and every token seen."""

    def __init__(self, page: Page) -> None:
        self.requests: list[Request] = []
        self.sockets: list[str] = []
        self.tokens: set[str] = set()
        page.on("request", lambda request: self.requests.append(request))
        page.on("websocket", self._socket)

    def _socket(self, socket: WebSocket) -> None:
        self.sockets.append(socket.url)
        socket.on("framesent", self._frame)
        socket.on("framereceived", self._frame)

    def _frame(self, payload: str | bytes) -> None:
        try:
            frame = json.loads(payload)
        except ValueError:
            return
        if isinstance(frame, dict) and isinstance(frame.get("token"), str):
            self.tokens.add(frame["token"])

    def panel_urls(self, server: LiveServer, parent: FakeParent) -> tuple[list[str], list[str]]:
        """(Sobot's own /embed navigations, every other URL the panel's page requested)."""
        embeds, others = [], []
        for request in self.requests:
            parts = urlsplit(request.url)
            if f"{parts.scheme}://{parts.netloc}" in (parent.allowed_origin, parent.disallowed_origin):
                continue  # the fake Sobot page and its script: Sobot's, not the panel's
            if request.is_navigation_request() and parts.path.startswith("/embed/"):
                embeds.append(request.url)
            else:
                others.append(request.url)
        return embeds, others + self.sockets


def personal_values(fields: dict[str, str], customer: Customer) -> set[str]:
    values = {fields.get(name, "") for name in PERSONAL_FIELDS}
    values |= {customer.phone, customer.email, customer.partnerId, customer.name, customer.unionId}
    return {value for value in values if value and len(value) >= 4}


async def open_in_parent(page: Page, server: LiveServer, parent: FakeParent, surface: Surface,
                         customer: Customer) -> tuple[FrameLocator, dict[str, str], str]:  # fmt: skip
    url, fields = server.embed_url(surface, customer)
    width, height = FRAME_SIZES[surface]
    await page.goto(parent.url(url, width=width, height=height))
    panel = page.frame_locator("#panel")
    await expect(panel.get_by_test_id("customer-name")).to_contain_text(customer.name)
    boot = await panel.locator("main#panel").get_attribute("data-boot")
    assert boot is not None
    return panel, fields, str(json.loads(boot)["token"])


async def switch_and_send_a_card(
    page: Page, server: LiveServer, panel: FrameLocator
) -> tuple[dict[str, str], Customer]:
    """Sobot's `selected` for another customer, then an order card for them."""
    customer = sample_customer("C1002")
    fields = server.context(Surface.WORKBENCH, customer)
    message = {"name": "selected", "query": fields, "params": {}, "partnerId": fields["partnerId"],
               "visitData": {"uid": fields["uid"]}}  # fmt: skip
    await page.evaluate("([m, o]) => window.postSelected(m, o)", [message, server.origin])
    await expect(panel.get_by_test_id("customer-name")).to_contain_text(customer.name)
    await panel.get_by_role("tab", name=text("tab_" + View.ORDERS.value)).click()
    holder = panel.locator(f'li[data-order="{customer.orders[0].orderCode}"]')
    await holder.get_by_role("button", name=text("send_order_card")).click()
    await wait_received(page, 1)
    await expect(holder.locator(".send-result")).to_have_text(text("sent"))
    return fields, customer


async def file_a_ticket(page: Page, panel: FrameLocator) -> None:
    await panel.get_by_role("tab", name=text("tab_new_ticket")).click()
    for field in DEFAULT_TICKET_FIELDS:
        value = "https://shop.example.cn/t/1" if field.id in ("card_url", "card_picture") else "耳机左耳无声音"
        await panel.get_by_role("textbox", name=field.label, exact=True).fill(value)
    await panel.get_by_role("button", name=text("submit_ticket")).click()
    await wait_received(page, 1)
    await expect(panel.locator("form .send-result")).to_contain_text(text("ticket_sent"))


async def test_no_url_the_panel_requests_carries_personal_data(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent
) -> None:
    server = await panel_server()
    recorder = Recorder(page)
    secrets: set[str] = set()
    for surface, partner_id in LOADS:
        customer = sample_customer(partner_id)
        panel, fields, token = await open_in_parent(page, server, fake_parent, surface, customer)
        secrets |= personal_values(fields, customer) | {token}
        if surface is Surface.WORKBENCH:
            switched, shown = await switch_and_send_a_card(page, server, panel)
            secrets |= personal_values(switched, shown)
        if surface is Surface.TICKET:
            await file_a_ticket(page, panel)
    secrets |= recorder.tokens
    assert len(recorder.tokens) >= len(LOADS)  # hellos and pushes were seen: the recorder reads the sockets

    embeds, urls = recorder.panel_urls(server, fake_parent)
    assert len(embeds) == len(LOADS)  # Sobot's own URLs, once per load: the panel never navigated itself
    sends = [r for r in recorder.requests if urlsplit(r.url).path == "/panel/send"]
    assert len(sends) == 2 and all(r.method == "POST" for r in sends)  # the card and the ticket
    assert len(recorder.sockets) >= len(LOADS) and any("/static/" in url for url in urls)
    leaks = [(url, secret) for url in urls for secret in secrets if secret in url or secret in unquote(url)]
    assert not leaks, leaks
    # Nor does any header: a Referer would carry the signed /embed URL to every request the panel makes.
    referers = [(r.url, r.headers.get("referer", "")) for r in recorder.requests
                if urlsplit(r.url).netloc == urlsplit(server.origin).netloc]  # fmt: skip
    assert len(referers) > len(LOADS)
    leaked = [(url, referer) for url, referer in referers for secret in secrets if secret in unquote(referer)]
    assert not leaked, leaked

"""The Sobot host simulator at `/dev/host`: demo only, signed contexts that verify, and a real browser run."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from playwright.async_api import Page, expect
from sobot_panel.app import create_app
from sobot_panel.devhost import AGENT_EMAIL
from sobot_panel.directory.sample import load_customers
from sobot_panel.protocol.signing import verify_sign
from sobot_panel.protocol.surfaces import Surface, parse_query_string
from sobot_panel.settings import Settings

pytest.register_assert_rewrite("tests.helpers.browser")

from .helpers.browser import BROWSER, PanelServerFactory, now_ms, sample_customer, save_screenshot_path, text  # noqa: E402

pytest_plugins = ["tests.helpers.browser"]

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]


@pytest.fixture
async def demo(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(make_settings(demo=True)))


async def test_host_is_not_served_without_demo(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(demo=False)))
    assert (await client.get("/dev/host")).status == 404
    assert (await client.get("/dev/host/signed?surface=workbench&partnerId=C1001")).status == 404
    assert (await client.get("/static/devhost.js")).status == 200  # static files are not the simulator


async def test_host_lists_the_sample_customers(demo: TestClient[Any, Any]) -> None:
    response = await demo.get("/dev/host")
    body = await response.text()
    assert response.status == 200, body
    customers = load_customers()
    assert len(customers) >= 2
    for customer in customers:
        assert f'data-partner-id="{customer.partnerId}"' in body
        assert customer.name in body
    for surface in Surface:
        assert f'<option value="{surface.value}"' in body
    assert '<html lang="zh-CN">' in body and text("devhost_title") in body
    # CSP is `script-src 'self'` / `style-src 'self'`: no inline script or style may be needed.
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", body) is None
    assert " style=" not in body and "<style" not in body


async def test_host_speaks_english_on_request(demo: TestClient[Any, Any]) -> None:
    body = await (await demo.get("/dev/host?lang=en&mode=postmessage&surface=call")).text()
    assert '<html lang="en">' in body and text("devhost_title", "en") in body
    found = re.search(r'data-boot="([^"]*)"', body)
    assert found is not None
    boot = json.loads(html.unescape(found.group(1)))
    assert boot["mode"] == "postmessage" and boot["surface"] == "call" and boot["lang"] == "en"


@pytest.mark.parametrize("surface", list(Surface), ids=lambda s: s.value)
async def test_signed_context_verifies_and_finds_the_customer(
    demo: TestClient[Any, Any], make_settings: Callable[..., Settings], surface: Surface
) -> None:
    customer = sample_customer("C1002")
    response = await demo.get(f"/dev/host/signed?surface={surface.value}&partnerId=C1002")
    assert response.status == 200, await response.text()
    body = await response.json()
    url = urlsplit(body["url"])
    assert url.path == f"/embed/{surface.value}"
    context = parse_query_string(surface, url.query)
    policy = make_settings(demo=True).sign_policy()
    verify_sign(surface, context.fields, policy, now_ms())
    assert all(isinstance(v, str) for v in body["query"].values())
    assert context.fields == body["query"]
    if surface is Surface.WECOM:
        assert context.agent and context.union_id == customer.unionId and context.phone == customer.phone
    else:
        assert context.agent == AGENT_EMAIL
    if surface is Surface.CALL:
        assert [step.navName for step in context.ivrPath] == ["售前咨询", "人工服务[VIP]"]  # type: ignore[attr-defined]
    if surface is Surface.WORKBENCH:
        assert context.fields["groupName"] == "售前一组" and context.params
    if surface is Surface.TICKET:
        assert context.fields["ticketId"]
    selected = body["selected"]
    assert selected["name"] == "selected" and selected["query"] == body["query"]
    assert selected["visitData"]["uid"] == (context.user_id or customer.uid)
    # The realistic context resolves to the customer on every surface (WeCom through unionId/phone).
    page = await demo.get(body["url"])
    panel = await page.text()
    assert page.status == 200, panel
    assert 'data-testid="customer-name"' in panel and customer.name in panel


async def test_signed_zc_encode_and_single_view(
    demo: TestClient[Any, Any], make_settings: Callable[..., Settings]
) -> None:
    body = await (await demo.get("/dev/host/signed?surface=call&partnerId=C1001&view=orders&zcEncode=1")).json()
    url = urlsplit(body["url"])
    assert url.path == "/embed/call/orders"
    assert "=" not in url.query.split("&")[0]  # one encodeURIComponent blob (SPEC §2.2)
    context = parse_query_string(Surface.CALL, url.query)
    verify_sign(Surface.CALL, context.fields, make_settings(demo=True).sign_policy(), now_ms())
    assert (await demo.get(body["url"])).status == 200


@pytest.mark.parametrize(
    ("query", "status"),
    [
        pytest.param("surface=workbench&partnerId=NOBODY", 404, id="unknown-customer"),
        pytest.param("surface=nowhere&partnerId=C1001", 404, id="unknown-surface"),
        pytest.param("surface=call&partnerId=C1001&view=settings", 404, id="unknown-view"),
    ],
)
async def test_signed_refuses_what_it_cannot_sign(demo: TestClient[Any, Any], query: str, status: int) -> None:
    response = await demo.get(f"/dev/host/signed?{query}", headers={"Accept": "application/json"})
    assert response.status == status
    assert (await response.json())["ok"] is False


# --- in Chromium -------------------------------------------------------------------------------


async def _open_host(page: Page, panel_server: PanelServerFactory, query: str) -> None:
    server = await panel_server(demo=True)
    await page.set_viewport_size({"width": 1440, "height": 900})
    await page.goto(f"{server.base_url}/dev/host?{query}")


async def _frame_window(page: Page) -> Any:
    handle = await page.wait_for_selector("#panel-frame:not([hidden])")
    assert handle is not None
    frame = await handle.content_frame()
    assert frame is not None
    return frame


@BROWSER
async def test_switching_customers_pushes_a_new_panel_without_reload(
    page: Page, panel_server: PanelServerFactory
) -> None:
    first, second = sample_customer("C1001"), sample_customer("C1002")
    await _open_host(page, panel_server, "mode=url&surface=workbench")
    panel = page.frame_locator("#panel-frame")

    await page.get_by_role("button", name=first.name).click()
    await expect(panel.get_by_test_id("customer-name")).to_contain_text(first.name)
    await expect(page.get_by_role("button", name=first.name)).to_have_attribute("aria-pressed", "true")
    signed_url = await page.get_by_label(text("devhost_signed_url")).input_value()
    assert "/embed/workbench?" in signed_url and "partnerId=C1001" in signed_url
    frame = await _frame_window(page)
    await frame.evaluate("window.__hostMarker = 'same page'")

    await page.get_by_role("button", name=second.name).click()
    await expect(panel.get_by_test_id("customer-name")).to_contain_text(second.name)
    # Sobot never reloads the docked page: the switch arrived as `selected` and over the websocket.
    assert await frame.evaluate("window.__hostMarker") == "same page"
    assert await page.locator("#devhost").get_attribute("data-frame-loads") == "1"
    last = json.loads(await page.locator("#last-selected").text_content() or "{}")
    assert last["name"] == "selected" and last["query"]["partnerId"] == "C1002" and last["visitData"]["uid"]

    await panel.get_by_role("tab", name=text("tab_orders")).click()
    order = second.orders[0]
    card = panel.locator(f'li[data-order="{order.orderCode}"]')
    await card.get_by_role("button", name=text("send_order_card")).click()
    message = page.get_by_test_id("message").first
    await expect(message).to_have_attribute("data-msg-type", "25")
    await expect(message.get_by_test_id("order-card")).to_contain_text(order.orderCode)
    raw = json.loads(await message.get_by_test_id("raw-json").text_content() or "{}")
    assert raw["msgType"] == 25 and raw["uid"] == last["query"]["uid"] and raw["cid"] == last["query"]["cid"]
    assert json.loads(raw["miniPage"])["orderCode"] == order.orderCode
    await page.screenshot(path=save_screenshot_path("devhost"), full_page=True)


@BROWSER
async def test_postmessage_mode_sends_selected_on_load_and_on_switch(
    page: Page, panel_server: PanelServerFactory
) -> None:
    first, second = sample_customer("C1003"), sample_customer("C1004")
    await _open_host(page, panel_server, "mode=postmessage&surface=customer&lang=en")
    panel = page.frame_locator("#panel-frame")
    await expect(panel.get_by_test_id("waiting")).to_be_visible()

    await page.get_by_role("button", name=first.name).click()
    await expect(panel.get_by_test_id("customer-name")).to_contain_text(first.name)
    await page.get_by_role("button", name=second.name).click()
    await expect(panel.get_by_test_id("customer-name")).to_contain_text(second.name)
    assert await page.locator("#devhost").get_attribute("data-frame-loads") == "1"
    frame = await _frame_window(page)
    assert urlsplit(frame.url).query == "lang=en"  # postMessage mode: no context in the URL

    # Changing the surface reloads the frame, and the current customer is posted again.
    await page.get_by_label(text("devhost_surface", "en")).select_option("call")
    await expect(page.locator("#panel-frame")).to_have_class(re.compile(r"\bframe-call\b"))
    await expect(panel.get_by_test_id("customer-name")).to_contain_text(second.name)
    await expect(panel.get_by_test_id("ivr")).to_contain_text("售前咨询")

"""Issue 3 in a real browser: cards and tickets reach the Sobot parent only after the audit record is durable.

The panel is framed by a fake Sobot page on another origin; what that page receives and what the audit
stream `panel:audit` holds are checked against each other and against the sample customer's data.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import redis.asyncio as aioredis
from playwright.async_api import FrameLocator, Locator, Page, Route, expect
from sobot_panel.devhost import AGENT_EMAIL, FRAME_SIZES
from sobot_panel.directory.models import Customer
from sobot_panel.protocol.send import EVENT_ID_PATTERN
from sobot_panel.protocol.surfaces import Surface, View
from sobot_panel.protocol.ticket_fields import DEFAULT_TICKET_FIELDS

pytest.register_assert_rewrite("tests.helpers.browser")

from .helpers.browser import (  # noqa: E402
    BROWSER,
    FakeParent,
    LiveServer,
    PanelServerFactory,
    now_ms,
    received_now,
    sample_customer,
    save_screenshot_path,
    text,
    wait_for_stream,
    wait_received,
)

pytest_plugins = ["tests.helpers.browser"]
pytestmark = BROWSER

STREAM = "panel:audit"
AUDIT_FIELDS = {
    "kind",
    "id",
    "at",
    "surface",
    "agent",
    "partner_id",
    "uid",
    "cid",
    "payload",
    "v",
    "sysnum",
    "request_id",
}
CARD_KEYS = {"cid", "uid", "msgType", "miniPage"}
# The panel's CSP forbids eval, which a polling wait_for_function needs; a promise does not.
# Only images on screen: a lazy one in a closed disclosure or a hidden tab never loads, by design.
IMAGES_LOADED = """() => Promise.all(Array.from(document.images)
  .filter((img) => img.getClientRects().length > 0 && !img.closest("details:not([open])") && !img.complete)
  .map((img) => new Promise((done) => { img.addEventListener("load", done); img.addEventListener("error", done); })))"""


async def open_in_parent(
    page: Page, server: LiveServer, parent: FakeParent, surface: Surface, customer: Customer, *, allowed: bool = True
) -> tuple[FrameLocator, dict[str, str]]:
    """The fake Sobot page framing the panel for `customer`; returns the frame and the signed fields."""
    url, fields = server.embed_url(surface, customer)
    width, height = FRAME_SIZES[surface]
    await page.goto(parent.url(url, width=width, height=height, allowed=allowed))
    return page.frame_locator("#panel"), fields


def textbox(panel: FrameLocator, label: str) -> Locator:
    """A form field by its accessible name (the required marker `*` is aria-hidden)."""
    return panel.get_by_role("textbox", name=label, exact=True)


async def open_tab(panel: FrameLocator, view: View) -> None:
    await panel.get_by_role("tab", name=text("tab_" + view.value.replace("-", "_"))).click()


def check_audit_entry(
    entry: dict[str, str], *, kind: str, message: dict[str, Any], surface: Surface, customer: Customer,
    fields: dict[str, str], since_ms: int,
) -> None:  # fmt: skip
    assert set(entry) == AUDIT_FIELDS
    assert entry["kind"] == kind
    assert EVENT_ID_PATTERN.match(entry["id"])
    assert since_ms <= int(entry["at"]) <= now_ms()
    assert entry["surface"] == surface.value
    assert entry["agent"] == AGENT_EMAIL
    assert entry["partner_id"] == customer.partnerId
    assert entry["uid"] == fields.get("uid", "")
    assert entry["cid"] == fields.get("cid", "")
    assert json.loads(entry["payload"]) == message  # the exact message the page posted


# --- cards -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("card_format", "kind"),
    [
        pytest.param("classic", "order_card", id="classic-order-25"),
        pytest.param("classic", "goods_card", id="classic-goods-24"),
        pytest.param("v6", "order_card", id="v6-order-28"),
        pytest.param("v6", "goods_card", id="v6-goods-28"),
    ],
)
async def test_card_reaches_the_parent_after_its_audit_record(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent, stream_redis: aioredis.Redis,
    card_format: str, kind: str,
) -> None:  # fmt: skip
    server = await panel_server(card_format=card_format)
    customer = sample_customer("C1001")
    order, product = customer.orders[0], customer.products[0]
    panel, fields = await open_in_parent(page, server, fake_parent, Surface.WORKBENCH, customer)
    await expect(panel.get_by_test_id("customer-name")).to_contain_text(customer.name)
    await open_tab(panel, View.ORDERS)
    since = now_ms()
    if kind == "order_card":
        holder = panel.locator(f'li[data-order="{order.orderCode}"]')
        await holder.get_by_role("button", name=text("send_order_card")).click()
    else:
        holder = panel.locator("li.product").filter(has_text=product.title)
        await holder.get_by_role("button", name=text("send_goods_card")).click()

    [got] = await wait_received(page, 1)
    await expect(holder.locator(".send-result")).to_have_text(text("sent"))
    assert got["origin"] == server.origin
    message = got["data"]
    assert set(message) == CARD_KEYS
    assert message["cid"] == fields["cid"] and message["uid"] == fields["uid"]
    mini = json.loads(message["miniPage"])
    if card_format == "classic" and kind == "order_card":
        assert message["msgType"] == 25
        assert mini["orderStatus"] == order.status
        assert mini["totalFee"] == str(order.totalFee)  # SPEC §5.2: whole fen as an integer string
        assert mini["goodsCount"] == len(order.goods)
        assert mini["orderCode"] == order.orderCode and mini["orderUrl"] == order.url
        assert mini["createTime"] == order.createTime
        assert [g["name"] for g in mini["goods"]] == [g.name for g in order.goods]
        assert all(g["pictureUrl"].startswith(server.base_url + "/") for g in mini["goods"])
        assert ("statusCustom" in mini) == (order.status == 0)
        if order.status == 0:
            assert mini["statusCustom"] == order.statusText
    elif card_format == "classic":
        assert message["msgType"] == 24
        assert set(mini) == {"title", "url", "description", "label", "thumbnail"}
        assert mini["title"] == product.title and mini["label"] == product.label
        assert mini["description"] == product.description
        assert mini["url"] == product.url and mini["thumbnail"] == server.base_url + product.thumbnail
    else:
        assert message["msgType"] == 28
        assert mini["cardType"] == (0 if kind == "order_card" else 1) and mini["cardId"]
        [custom] = mini["customCards"]
        if kind == "order_card":
            assert custom["customCardCode"] == order.orderCode
            assert custom["customCardCount"] == str(len(order.goods))
            assert custom["customCardAmount"] == f"{order.totalFee // 100}.{order.totalFee % 100:02d}"
        else:
            assert custom["customCardName"] == product.title and custom["customCardLink"] == product.url

    [(_, entry)] = await wait_for_stream(stream_redis, STREAM, 1)
    check_audit_entry(entry, kind=kind, message=message, surface=Surface.WORKBENCH, customer=customer,
                      fields=fields, since_ms=since)  # fmt: skip
    assert len(await received_now(page)) == 1


async def test_ticket_reaches_the_parent_keyed_by_the_configured_ids(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent, stream_redis: aioredis.Redis
) -> None:
    server = await panel_server()
    customer = sample_customer("C1002")
    # The ticket center sends no partnerId: the panel finds the customer by phone (SPEC §2.4).
    panel, fields = await open_in_parent(page, server, fake_parent, Surface.TICKET, customer)
    await expect(panel.get_by_test_id("customer-name")).to_contain_text(customer.name)
    await open_tab(panel, View.NEW_TICKET)
    values = {
        "card_title": "耳机左耳无声音，申请换货",
        "card_url": "https://shop.example.cn/orders/SO1",
        "card_desc": "客户反馈收到第二天左耳无声音。\n已远程排查，需换货。",
        "card_note": "1500元",
        "card_picture": "https://shop.example.cn/img/p1.png",
    }
    assert [f.id for f in DEFAULT_TICKET_FIELDS] == list(values)
    for field in DEFAULT_TICKET_FIELDS:
        await textbox(panel, field.label).fill(values[field.id])
    since = now_ms()
    await panel.get_by_role("button", name=text("submit_ticket")).click()

    [got] = await wait_received(page, 1)
    await expect(panel.locator("form .send-result")).to_contain_text(text("ticket_sent"))
    message = got["data"]
    assert message == {"type": "createOrder", "params": values}
    assert got["origin"] == server.origin
    [(_, entry)] = await wait_for_stream(stream_redis, STREAM, 1)
    check_audit_entry(entry, kind="ticket", message=message, surface=Surface.TICKET, customer=customer,
                      fields=fields, since_ms=since)  # fmt: skip


# --- refusals ----------------------------------------------------------------------------------


async def test_a_parent_that_is_not_allowed_cannot_even_frame_the_panel(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent, stream_redis: aioredis.Redis
) -> None:
    server = await panel_server()
    await open_in_parent(page, server, fake_parent, Surface.WORKBENCH, sample_customer("C1001"), allowed=False)
    await page.wait_for_function("window.frameLoads >= 1")
    frame = page.frames[1]
    # frame-ancestors refuses the framing: no panel document, hence nothing that could post.
    assert await frame.locator("#panel").count() == 0
    assert await received_now(page) == []
    assert await stream_redis.xlen(STREAM) == 0


async def _strip_csp(route: Route) -> None:
    response = await route.fetch()
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-security-policy"}
    await route.fulfill(response=response, headers=headers)


async def test_a_parent_that_is_not_allowed_gets_no_message_even_without_csp(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent, stream_redis: aioredis.Redis
) -> None:
    """Defence in depth: with the framing rule stripped on the way, the page itself still refuses."""
    server = await panel_server()
    await page.route(re.compile(r".*/embed/.*"), _strip_csp)
    customer = sample_customer("C1001")
    panel, _ = await open_in_parent(page, server, fake_parent, Surface.WORKBENCH, customer, allowed=False)
    await expect(panel.get_by_test_id("customer-name")).to_contain_text(customer.name)
    await open_tab(panel, View.ORDERS)
    holder = panel.locator(f'li[data-order="{customer.orders[0].orderCode}"]')
    await holder.get_by_role("button", name=text("send_order_card")).click()
    await expect(holder.locator(".send-result")).to_have_text(text("parent_not_allowed"))
    await expect(holder.locator(".send-result")).to_have_class(re.compile(r"\bbad\b"))
    assert await received_now(page) == []
    assert await stream_redis.xlen(STREAM) == 0


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"card_title": ""}, "card_title", id="required-title-empty"),
        pytest.param({"card_url": "ftp://x"}, "card_url", id="url-not-http"),
    ],
)
async def test_an_invalid_ticket_shows_the_error_at_the_field_and_posts_nothing(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent, stream_redis: aioredis.Redis,
    changes: dict[str, str], field: str,
) -> None:  # fmt: skip
    server = await panel_server()
    customer = sample_customer("C1001")
    panel, _ = await open_in_parent(page, server, fake_parent, Surface.TICKET, customer)
    await open_tab(panel, View.NEW_TICKET)
    labels = {f.id: f.label for f in DEFAULT_TICKET_FIELDS}
    values = {"card_title": "发票抬头修改", "card_url": "https://shop.example.cn/o/1", **changes}
    for name, value in values.items():
        await textbox(panel, labels[name]).fill(value)
    await panel.get_by_role("button", name=text("submit_ticket")).click()

    error = panel.locator(f"#err-{field}")
    await expect(error).not_to_be_empty()
    await expect(error).to_be_visible()
    await expect(textbox(panel, labels[field])).to_have_attribute("aria-invalid", "true")
    await expect(panel.locator("form .send-result")).to_have_class(re.compile(r"\bbad\b"))
    other = next(f.id for f in DEFAULT_TICKET_FIELDS if f.id != field)
    await expect(panel.locator(f"#err-{other}")).to_be_empty()
    # The answer was a refusal, so the page never posted (it posts only after an accepted audit record).
    assert await received_now(page) == []
    assert await stream_redis.xlen(STREAM) == 0


async def test_a_tampered_card_is_refused_next_to_its_button(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent, stream_redis: aioredis.Redis
) -> None:
    server = await panel_server()
    customer = sample_customer("C1001")  # a web customer: order links must be http(s) (SPEC §5.2)
    panel, _ = await open_in_parent(page, server, fake_parent, Surface.WORKBENCH, customer)
    await open_tab(panel, View.ORDERS)
    holder = panel.locator(f'li[data-order="{customer.orders[0].orderCode}"]')
    button = holder.get_by_role("button", name=text("send_order_card"))
    await button.evaluate(
        "b => { const c = JSON.parse(b.dataset.card); c.orderUrl = 'ftp://x'; b.dataset.card = JSON.stringify(c); }"
    )
    await button.click()
    result = holder.locator(".send-result")
    await expect(result).to_have_class(re.compile(r"\bbad\b"))
    await expect(result).not_to_be_empty()
    assert await received_now(page) == []
    assert await stream_redis.xlen(STREAM) == 0


async def test_a_retried_send_reuses_its_id_and_is_recorded_once(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent, stream_redis: aioredis.Redis
) -> None:
    server = await panel_server()
    customer = sample_customer("C1001")
    panel, _ = await open_in_parent(page, server, fake_parent, Surface.WORKBENCH, customer)
    await open_tab(panel, View.ORDERS)
    ids: list[str] = []

    async def lose_the_answer(route: Route) -> None:
        # The server records the card, but the answer never reaches the page (a dropped connection).
        ids.append(json.loads(route.request.post_data or "{}")["id"])
        await route.fetch()
        await route.abort("connectionreset")

    await page.route(re.compile(r".*/panel/send.*"), lose_the_answer)
    holder = panel.locator(f'li[data-order="{customer.orders[0].orderCode}"]')
    button = holder.get_by_role("button", name=text("send_order_card"))
    await button.click()
    await expect(holder.locator(".send-result")).to_have_text(text("network_error"))
    assert await received_now(page) == []
    await page.unroute(re.compile(r".*/panel/send.*"))

    async with page.expect_request(re.compile(r".*/panel/send.*")) as retry:
        await button.click()
    ids.append(json.loads((await retry.value).post_data or "{}")["id"])
    await wait_received(page, 1)
    await expect(holder.locator(".send-result")).to_have_text(text("sent_again"))
    assert ids[0] == ids[1]
    entries = await wait_for_stream(stream_redis, STREAM, 1)
    assert len(entries) == 1 and entries[0][1]["id"] == ids[0]
    assert len(await received_now(page)) == 1


# --- how each view looks at each surface's size ------------------------------------------------

# Everything an agent can press in the panel, with its height.
TARGETS = """() => Array.from(document.querySelectorAll("#panel button, #panel summary"))
  .filter((el) => el.getClientRects().length > 0).map((el) => el.getBoundingClientRect().height)"""


@pytest.mark.parametrize("lang", ["zh", "en"])
@pytest.mark.parametrize("surface", list(Surface), ids=lambda s: s.value)
async def test_every_view_fits_its_surface(
    page: Page, panel_server: PanelServerFactory, surface: Surface, lang: str
) -> None:
    server = await panel_server()
    customer = sample_customer("C1001")
    width, height = FRAME_SIZES[surface]
    await page.set_viewport_size({"width": width, "height": height})
    for view in View:
        url, _ = server.embed_url(surface, customer, view=view.value, lang=lang)
        await page.goto(url)
        await expect(page.get_by_test_id("customer-name")).to_contain_text(customer.name)
        await page.evaluate(IMAGES_LOADED)
        await page.screenshot(path=save_screenshot_path(f"{surface.value}-{view.value}-{lang}"))
        # Nothing may stick out sideways: Sobot's iFrame has no horizontal scrollbar to spare.
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{surface.value}/{view.value} is {overflow}px wider than {width}px"
        # Only the actions Sobot carries out: cards in the chat workbench, the ticket form in the ticket center.
        sends = page.locator("button[data-send]")
        if view is View.ORDERS:
            if surface is Surface.WORKBENCH:
                await expect(sends.first).to_be_visible()
            else:
                assert await sends.count() == 0
                await expect(page.locator(".read-only")).to_contain_text(text("surface_name_workbench", lang))
        if view is View.NEW_TICKET:
            form = page.locator("form[data-send-form]")
            if surface is Surface.TICKET:
                await expect(form).to_be_visible()
            else:
                assert await form.count() == 0
                await expect(page.get_by_test_id("tickets-elsewhere")).to_contain_text(
                    text("surface_name_ticket", lang)
                )
        if surface is Surface.WECOM:  # a thumb, not a mouse: 44 px targets
            heights = await page.evaluate(TARGETS)
            assert heights and min(heights) >= 44, heights


async def test_the_tabbed_panel_shows_only_what_the_surface_offers(
    page: Page, panel_server: PanelServerFactory
) -> None:
    server = await panel_server()
    customer = sample_customer("C1001")
    for surface in Surface:
        url, _ = server.embed_url(surface, customer)
        await page.goto(url)
        tabs = [await tab.text_content() for tab in await page.get_by_role("tab").all()]
        # The new-ticket tab only where Sobot takes the ticket (the ticket center by default).
        assert (text("tab_new_ticket") in tabs) == (surface is Surface.TICKET), (surface, tabs)
        await page.get_by_role("tab", name=text("tab_orders")).click()
        buttons = await page.locator("button[data-send]").count()
        assert (buttons > 0) == (surface is Surface.WORKBENCH), (surface, buttons)


@pytest.mark.parametrize(("surface", "size"), [(Surface.TICKET, (730, 500)), (Surface.CALL, (790, 500))],
                         ids=["ticket-730x500", "call-790x500"])  # fmt: skip
async def test_the_submit_button_is_in_sight_without_scrolling(
    page: Page, panel_server: PanelServerFactory, surface: Surface, size: tuple[int, int]
) -> None:
    server = await panel_server(ticket_surfaces="ticket call")
    customer = sample_customer("C1001")
    await page.set_viewport_size({"width": size[0], "height": size[1]})
    for view in (None, View.NEW_TICKET.value):
        url, _ = server.embed_url(surface, customer, view=view)
        await page.goto(url)
        if view is None:
            await page.get_by_role("tab", name=text("tab_new_ticket")).click()
        submit = page.get_by_role("button", name=text("submit_ticket"))
        await expect(submit).to_be_visible()
        box = await submit.bounding_box()
        assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= size[1], (view, box)
        assert await page.evaluate("window.scrollY") == 0
        await page.screenshot(path=save_screenshot_path(f"{surface.value}-submit-{size[0]}x{size[1]}"))


async def test_the_workbench_header_is_compact_and_long_orders_fold(
    page: Page, panel_server: PanelServerFactory
) -> None:
    server = await panel_server()
    customer = sample_customer("C1001")
    width, height = FRAME_SIZES[Surface.WORKBENCH]
    await page.set_viewport_size({"width": width, "height": height})
    url, _ = server.embed_url(Surface.WORKBENCH, customer)
    await page.goto(url)
    tabs = await page.get_by_role("tablist").bounding_box()
    assert tabs is not None
    _measured("workbench-tabs-top-px", tabs["y"])
    assert tabs["y"] <= 72, f"{tabs['y']} px of header above the tabs"
    # The agent and the conversation (a 32-character cid) are one click away, not always on screen.
    details = page.get_by_test_id("context")
    await expect(details.locator("dl")).to_be_hidden()
    await details.locator("summary").click()
    await expect(details.locator("dl")).to_be_visible()
    await expect(details).to_contain_text("agent@demo.sobot.com")

    await page.get_by_role("tab", name=text("tab_orders")).click()
    codes = [await li.get_attribute("data-order") for li in await page.locator("li.order").all()]
    newest_first = [o.orderCode for o in sorted(customer.orders, key=lambda o: o.createTime, reverse=True)]
    assert codes == newest_first
    big = next(o for o in customer.orders if len(o.goods) > 2)
    card = page.locator(f'li[data-order="{big.orderCode}"]')
    await expect(card.locator(":scope > ul.goods > li")).to_have_count(2)
    more = card.locator("details.more-goods")
    await expect(more.locator("summary")).to_have_text(text("more_goods", n=len(big.goods) - 2))
    await expect(more.locator("li").first).to_be_hidden()
    await more.locator("summary").click()
    await expect(more.locator("li")).to_have_count(len(big.goods) - 2)
    await page.screenshot(path=save_screenshot_path("workbench-orders-folded"))


def _measured(name: str, value: object) -> None:
    """A figure for the report (never a pass/fail criterion on its own)."""
    path = save_screenshot_path("x").with_name("ui-figures.json")
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[name] = value
    path.write_text(json.dumps(figures, indent=2) + "\n")

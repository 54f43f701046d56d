"""Live switching an agent can rely on, in a real Chromium inside a fake Sobot page: never the wrong
customer (a switch is visible at once and nothing of the old customer stays clickable), no lost push,
no lost typing, and sessions that end cleanly after a restart with another session key."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from playwright.async_api import Frame, Page, expect
from playwright.async_api import TimeoutError as PlaywrightTimeout
from sobot_panel.app import create_app
from sobot_panel.appkeys import HUB
from sobot_panel.devhost import FRAME_SIZES
from sobot_panel.protocol.surfaces import Surface
from sobot_panel.settings import Settings

from bench.enterprise import FakeEnterprise

pytest.register_assert_rewrite("tests.helpers.browser")

from .helpers.browser import (  # noqa: E402
    ARTIFACTS,
    BROWSER,
    ENTERPRISE_TOKEN,
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
from .helpers.net import free_port  # noqa: E402

pytest_plugins = ["tests.helpers.browser"]
pytestmark = BROWSER

API = {"Authorization": "Bearer test-api-token"}
STREAM = "panel:audit"
WATCH = """() => { window.__marker = "still-here"; window.__updates = [];
  document.addEventListener("panel:updated", (e) => window.__updates.push(e.detail.partnerId)); }"""
# Everything in the panel an agent could click, type into or tab to, outside inert content.
CLICKABLE = """() => Array.from(document.getElementById("panel").querySelectorAll(
    "button, a[href], input, textarea, select, summary, [tabindex]"))
  .filter((el) => !el.closest("[inert]") && !el.disabled && el.getClientRects().length > 0).length"""
# When the `selected` message arrived and when the panel became busy, in the frame's own clock.
TIMING = """() => { window.__timing = {}; const main = document.getElementById("panel");
  window.addEventListener("message", () => { window.__timing.message = performance.now(); });
  new MutationObserver(() => { if (main.getAttribute("aria-busy") === "true" && !window.__timing.busy)
    window.__timing.busy = performance.now(); }).observe(main, { attributes: true }); }"""


def selected(fields: dict[str, str]) -> dict[str, Any]:
    return {"name": "selected", "query": fields, "params": {}, "partnerId": fields.get("partnerId", ""),
            "visitData": {"uid": fields.get("uid", "")}}  # fmt: skip


async def post_selected(page: Page, server: LiveServer, fields: dict[str, str]) -> None:
    await page.evaluate("([m, o]) => window.postSelected(m, o)", [selected(fields), server.origin])


def panel_frame(page: Page, server: LiveServer) -> Frame:
    return next(f for f in page.frames if f.url.startswith(server.base_url))


async def framed(
    page: Page, server: LiveServer, parent: FakeParent, surface: Surface, partner_id: str, view: str | None = None
) -> Frame:
    url, _ = server.embed_url(surface, sample_customer(partner_id), view=view)
    width, height = FRAME_SIZES[surface]
    await page.goto(parent.url(url, width=width, height=height))
    frame = panel_frame(page, server)
    await expect(frame.get_by_test_id("customer-name")).to_contain_text(sample_customer(partner_id).name)
    await wait_sockets(server.app, 1)
    await frame.evaluate(WATCH)
    return frame


async def wait_sockets(app: web.Application, count: int, timeout: float = 10.0) -> None:
    """Until the service holds `count` panel sockets (the panel is live)."""
    deadline = time.monotonic() + timeout
    while len(app[HUB].connections) < count:
        assert time.monotonic() < deadline, f"fewer than {count} panel sockets after {timeout}s"
        await asyncio.sleep(0.02)


async def clickable(frame: Frame) -> int:
    count: int = await frame.evaluate(CLICKABLE)
    return count


async def metric(server: LiveServer, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{server.base_url}/metrics") as response:
        body = await response.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name))


# --- a switch is a state the agent can see -----------------------------------------------------


async def test_a_slow_switch_leaves_nothing_clickable_for_the_old_customer(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent, enterprise: FakeEnterprise,
    stream_redis: aioredis.Redis,
) -> None:  # fmt: skip
    server = await panel_server(directory_url=enterprise.url, directory_token=ENTERPRISE_TOKEN,
                                directory_timeout=30, local_cache_ttl=0)  # fmt: skip
    frame = await framed(page, server, fake_parent, Surface.WORKBENCH, "C1001")
    await frame.get_by_role("tab", name=text("tab_orders")).click()
    assert await clickable(frame) > 0
    await frame.evaluate(TIMING)
    # The customer API is slow for the new customer: it answers only when the test lets it.
    enterprise.hold = asyncio.Event()
    await post_selected(page, server, server.context(Surface.WORKBENCH, sample_customer("C1002")))

    main = frame.locator("#panel")
    await expect(main).to_have_attribute("aria-busy", "true")
    await expect(main).to_have_attribute("data-state", "switching")
    await expect(frame.locator("#panel-status")).to_contain_text(text("switching_to", who="C1002"))
    assert await clickable(frame) == 0
    # The old customer is still on screen, dimmed, and its buttons take no click.
    await expect(frame.get_by_test_id("customer-name")).to_contain_text("张伟")
    with pytest.raises(PlaywrightTimeout):
        await frame.locator("button[data-send]").first.click(timeout=1_000)
    assert await received_now(page) == [] and await stream_redis.xlen(STREAM) == 0
    await page.screenshot(path=save_screenshot_path("state-switching"))
    timing = await frame.evaluate("window.__timing")
    _record("switch-busy-ms", round(timing["busy"] - timing["message"], 2))

    enterprise.hold.set()
    await expect(frame.get_by_test_id("customer-name")).to_contain_text("李娜")
    await expect(main).to_have_attribute("aria-busy", "false")
    await expect(main).to_have_attribute("data-state", "live")
    await expect(frame.locator("#panel-status")).to_be_hidden()
    assert await clickable(frame) > 0
    assert await frame.evaluate("window.__updates") == ["C1002"]


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        pytest.param(lambda f: {**f, "sign": "0" * 32}, "sign_mismatch", id="bad-sign"),
        pytest.param(None, "sign_expired", id="expired-sign"),
    ],
)
async def test_a_refused_switch_says_so_and_leaves_nothing_clickable(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent, spoil: Any, reason: str
) -> None:
    server = await panel_server()
    frame = await framed(page, server, fake_parent, Surface.WORKBENCH, "C1001")
    if spoil is None:
        at = now_ms() - 3_600_000
        fields = server.context(Surface.WORKBENCH, sample_customer("C1002"))
        from sobot_panel.devhost import sample_context
        from sobot_panel.protocol.signing import sign_fields

        fields = sign_fields(Surface.WORKBENCH, sample_context(Surface.WORKBENCH, sample_customer("C1002"), at),
                             server.settings.sign_policy(), at)  # fmt: skip
    else:
        fields = spoil(server.context(Surface.WORKBENCH, sample_customer("C1002")))
    await post_selected(page, server, fields)

    main = frame.locator("#panel")
    status = frame.locator("#panel-status")
    await expect(main).to_have_attribute("data-state", "failed")
    await expect(status).to_contain_text(text("switch_failed", reason="").rstrip("：: "))
    await expect(status).to_have_class("state-banner bad")
    await page.screenshot(path=save_screenshot_path(f"state-refused-{reason}"))
    assert await clickable(frame) == 0
    await expect(main).to_have_attribute("aria-busy", "false")
    # Retry asks again (the server refuses it again: a second counted failure).
    failures = await metric(server, f'panel_sign_failures_total{{reason="{reason}",tenant=""}}')
    await status.get_by_role("button", name=text("retry")).click()
    deadline = time.monotonic() + 10
    while await metric(server, f'panel_sign_failures_total{{reason="{reason}",tenant=""}}') < failures + 1:
        assert time.monotonic() < deadline, "the retry never reached the server"
        await asyncio.sleep(0.05)
    await expect(main).to_have_attribute("data-state", "failed")
    assert await clickable(frame) == 0
    # A good switch afterwards is the only customer change the panel ever made.
    await post_selected(page, server, server.context(Surface.WORKBENCH, sample_customer("C1004")))
    await expect(frame.get_by_test_id("customer-name")).to_contain_text("刘洋")
    await expect(main).to_have_attribute("data-state", "live")
    assert await frame.evaluate("window.__updates") == ["C1004"]


async def test_a_lost_connection_dims_and_reconciles_to_the_latest_switch(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent, enterprise: FakeEnterprise
) -> None:
    server = await panel_server(directory_url=enterprise.url, directory_token=ENTERPRISE_TOKEN, local_cache_ttl=0)
    frame = await framed(page, server, fake_parent, Surface.WORKBENCH, "C1001")
    hub = server.app[HUB]
    hub.closing = True  # new sockets are refused until the test says otherwise
    for conn in list(hub.connections):
        await conn.ws.close(code=1011, message=b"network gone")
    main = frame.locator("#panel")
    await expect(main).to_have_attribute("data-state", "offline")
    await expect(frame.locator("#panel-status")).to_contain_text(text("offline"))
    await page.screenshot(path=save_screenshot_path("state-offline"))
    # Sobot switches twice while the panel is offline: only the latest may be asked for, and shown.
    await post_selected(page, server, server.context(Surface.WORKBENCH, sample_customer("C1002")))
    await post_selected(page, server, server.context(Surface.WORKBENCH, sample_customer("C1004")))
    await expect(main).to_have_attribute("data-state", "switching")
    await expect(frame.locator("#panel-status")).to_contain_text(text("switching_to", who="C1004"))
    assert await clickable(frame) == 0
    hub.closing = False
    await expect(frame.get_by_test_id("customer-name")).to_contain_text("刘洋", timeout=30_000)
    await expect(main).to_have_attribute("data-state", "live")
    await expect(frame.locator("#panel-status")).to_be_hidden()
    assert await frame.evaluate("window.__updates") == ["C1004"]
    assert enterprise.calls["partnerId:C1002"] == 0  # the stale switch was never even sent


# --- pushes patch, they do not wipe ------------------------------------------------------------

TICKET_FIELDS = """
[[fields]]
id = "card_title"
label = "标题"
type = "text"
required = true

[[fields]]
id = "customer_name"
label = "客户姓名"
type = "text"
prefill = "customer.name"

[[fields]]
id = "card_desc"
label = "描述"
type = "textarea"
"""


async def test_typing_survives_a_push_and_a_filed_ticket_cannot_be_filed_twice(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent, enterprise: FakeEnterprise,
    stream_redis: aioredis.Redis, tmp_path: Path,
) -> None:  # fmt: skip
    fields_file = tmp_path / "fields.toml"
    fields_file.write_text(TICKET_FIELDS, encoding="utf-8")
    server = await panel_server(directory_url=enterprise.url, directory_token=ENTERPRISE_TOKEN,
                                ticket_fields=fields_file, local_cache_ttl=0)  # fmt: skip
    # The ticket center's single new-ticket view (the customer is found by the caller's phone).
    frame = await framed(page, server, fake_parent, Surface.TICKET, "C1001", view="new-ticket")
    title, name, desc = (frame.get_by_role("textbox", name=label, exact=True) for label in ("标题", "客户姓名", "描述"))
    await expect(name).to_have_value("张伟")
    await title.fill("耳机左耳无声")
    await desc.click()
    await page.keyboard.type("客户反馈收到")

    # The enterprise changes the customer and says so: the panel is pushed a new version.
    enterprise.find("partnerId", "C1001")["name"] = "张伟（金卡）"  # type: ignore[index]
    async with aiohttp.ClientSession() as session:
        response = await session.post(f"{server.base_url}/api/partners/C1001/invalidate", headers=API)
        assert response.status == 202
    await expect(frame.get_by_test_id("customer-name")).to_contain_text("张伟（金卡）")
    # What the agent typed, the caret and the focus are where they were; the view is still single.
    await expect(title).to_have_value("耳机左耳无声")
    await expect(desc).to_have_value("客户反馈收到")
    assert await frame.evaluate("document.activeElement.id") == "f-card_desc"
    assert await frame.evaluate("document.activeElement.selectionStart") == len("客户反馈收到")
    assert await frame.locator('[role="tablist"]').count() == 0
    await page.keyboard.type("第二天左耳无声")
    await expect(desc).to_have_value("客户反馈收到第二天左耳无声")
    await expect(name).to_have_value("张伟")  # the form waits for the agent; the rest was updated

    submit = frame.get_by_role("button", name=text("submit_ticket"))
    await submit.click()
    [got] = await wait_received(page, 1)
    assert got["data"]["params"] == {"card_title": "耳机左耳无声", "customer_name": "张伟",
                                     "card_desc": "客户反馈收到第二天左耳无声"}  # fmt: skip
    result = frame.locator("form .send-result")
    await expect(result).to_contain_text(text("ticket_sent"))
    # Filed: the form is cleared (now with the newer customer's prefill) and locked.
    await expect(title).to_have_value("")
    await expect(name).to_have_value("张伟（金卡）")
    await expect(submit).to_be_disabled()
    await submit.click(force=True)
    await frame.locator("form").evaluate("f => f.requestSubmit()")
    await title.press("Enter")
    # The next ticket starts when the agent types; it is the second one recorded, not the third.
    await title.fill("第二张工单")
    await expect(submit).to_be_enabled()
    await submit.click()
    await wait_received(page, 2)
    entries = await wait_for_stream(stream_redis, STREAM, 2)
    assert len(entries) == 2 and len(await received_now(page)) == 2
    assert json.loads(entries[1][1]["payload"])["params"]["card_title"] == "第二张工单"


# --- sessions that end cleanly ----------------------------------------------------------------


@asynccontextmanager
async def serve_on(port: int, app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_restart_with_another_session_key_reloads_the_panel_while_its_sign_is_valid(
    page: Page, make_settings: Callable[..., Settings], fake_parent: FakeParent
) -> None:
    port = free_port()
    first = make_settings(host="127.0.0.1", port=port, session_key="first-key-" + "a" * 32)
    async with serve_on(port, app := create_app(first)) as base_url:
        server = LiveServer(base_url, first, app)
        url, _ = server.embed_url(Surface.WORKBENCH, sample_customer("C1001"))
        await page.goto(fake_parent.url(url, width=300, height=640))
        frame = panel_frame(page, server)
        await wait_sockets(app, 1)
    # Back with another key (PANEL_SESSION_KEY unset on a restart): the panel's token means nothing now.
    second = make_settings(host="127.0.0.1", port=port, session_key="second-key-" + "b" * 32)
    async with serve_on(port, app2 := create_app(second)):
        await page.wait_for_function("window.frameLoads >= 2", timeout=30_000)
        frame = panel_frame(page, server)
        await expect(frame.get_by_test_id("customer-name")).to_contain_text("张伟")
        await wait_sockets(app2, 1)
        assert await frame.locator("#panel").get_attribute("data-state") == "live"


async def test_a_restart_after_the_sign_expired_says_the_session_ended_and_recovers_on_the_next_switch(
    page: Page, make_settings: Callable[..., Settings], fake_parent: FakeParent
) -> None:
    port = free_port()
    # Signs live 17 s; the panel keeps a 15 s margin, so its own URL is reloadable for about 2 s.
    first = make_settings(host="127.0.0.1", port=port, session_key="first-key-" + "a" * 32, sign_max_age=17)
    async with serve_on(port, app := create_app(first)) as base_url:
        server = LiveServer(base_url, first, app)
        url, fields = server.embed_url(Surface.WORKBENCH, sample_customer("C1001"))
        await page.goto(fake_parent.url(url, width=300, height=640))
        frame = panel_frame(page, server)
        await wait_sockets(app, 1)
        signed_at = int(fields["timestamp"])
        while now_ms() < signed_at + 2_500:  # until reloading that URL would no longer verify
            await asyncio.sleep(0.05)
    second = make_settings(host="127.0.0.1", port=port, session_key="second-key-" + "b" * 32, sign_max_age=17)
    async with serve_on(port, app2 := create_app(second)) as base_url:
        main = frame.locator("#panel")
        await expect(main).to_have_attribute("data-state", "ended", timeout=30_000)
        status = frame.locator("#panel-status")
        await expect(status).to_contain_text(text("session_ended"))
        await expect(status.get_by_role("button", name=text("reload"))).to_be_visible()
        await page.screenshot(path=save_screenshot_path("state-ended"))
        assert await clickable(frame) == 0
        assert await page.evaluate("window.frameLoads") == 1  # no reload loop onto a 403 page
        # Sobot's next switch carries a fresh sign: the panel opens that conversation as a new page.
        fresh = LiveServer(base_url, second, app2)
        await post_selected(page, fresh, fresh.context(Surface.WORKBENCH, sample_customer("C1002")))
        await page.wait_for_function("window.frameLoads >= 2")
        frame = panel_frame(page, fresh)
        await expect(frame.get_by_test_id("customer-name")).to_contain_text("李娜")
        await wait_sockets(app2, 1)


def _record(name: str, value: object) -> None:
    """A measured figure for the report (never a pass/fail criterion)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "switching-figures.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[name] = value
    path.write_text(json.dumps(figures, indent=2) + "\n")

"""Issue 4 in a real browser: Sobot's `selected` switches the customer without a reload, and only when
it comes from an allowed parent with a valid sign; a dropped socket reconnects and resynchronises."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from playwright.async_api import Frame, Page, expect
from sobot_panel.appkeys import HUB
from sobot_panel.devhost import FRAME_SIZES
from sobot_panel.protocol.surfaces import Surface

pytest.register_assert_rewrite("tests.helpers.browser")

from .helpers.browser import BROWSER, FakeParent, LiveServer, PanelServerFactory, sample_customer  # noqa: E402

pytest_plugins = ["tests.helpers.browser"]
pytestmark = BROWSER

# Recorded inside the panel frame: every customer a push showed, and a marker that a reload would lose.
WATCH = """() => { window.__marker = "still-here"; window.__updates = [];
  document.addEventListener("panel:updated", (e) => window.__updates.push(e.detail.partnerId)); }"""


async def framed_panel(page: Page, server: LiveServer, parent: FakeParent, partner_id: str) -> Frame:
    surface = Surface.WORKBENCH
    url, _ = server.embed_url(surface, sample_customer(partner_id))
    width, height = FRAME_SIZES[surface]
    await page.goto(parent.url(url, width=width, height=height))
    frame = next(f for f in page.frames if f.url.startswith(server.base_url))
    await expect(frame.get_by_test_id("customer-name")).to_contain_text(sample_customer(partner_id).name)
    await frame.evaluate(WATCH)
    await _wait_sockets(server, 1)
    return frame


async def _wait_sockets(server: LiveServer, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while len(server.app[HUB].connections) < count:
        assert time.monotonic() < deadline, f"fewer than {count} panel sockets after {timeout}s"
        await asyncio.sleep(0.02)


async def _wait_updates(frame: Frame, expected: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (seen := await updates(frame)) != expected:
        assert len(seen) < len(expected) and time.monotonic() < deadline, f"updates {seen}, expected {expected}"
        await asyncio.sleep(0.05)


def selected(fields: dict[str, str]) -> dict[str, Any]:
    return {"name": "selected", "query": fields, "params": {}, "partnerId": fields.get("partnerId", ""),
            "visitData": {"uid": fields.get("uid", "")}}  # fmt: skip


async def updates(frame: Frame) -> list[str]:
    result: list[str] = await frame.evaluate("window.__updates")
    return result


async def test_a_signed_selected_shows_the_new_customer_within_2s_without_navigating(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent
) -> None:
    server = await panel_server()
    frame = await framed_panel(page, server, fake_parent, "C1001")
    fields = server.context(Surface.WORKBENCH, sample_customer("C1002"))
    await page.evaluate("([m, o]) => window.postSelected(m, o)", [selected(fields), server.origin])
    await expect(frame.get_by_test_id("customer-name")).to_contain_text("李娜", timeout=2_000)
    assert await frame.evaluate("window.__marker") == "still-here"  # the document was never replaced
    assert await page.evaluate("window.frameLoads") == 1  # the iframe never navigated
    assert await updates(frame) == ["C1002"]


async def test_selected_from_a_disallowed_origin_or_with_a_bad_sign_changes_nothing(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent
) -> None:
    server = await panel_server()
    frame = await framed_panel(page, server, fake_parent, "C1001")
    forged = server.context(Surface.WORKBENCH, sample_customer("C1002"))
    # 1. Signed correctly, but from an origin PANEL_HOST_ORIGINS does not allow.
    await frame.evaluate(
        """(m) => window.dispatchEvent(new MessageEvent("message",
             {data: m, origin: "https://evil.example", source: window.parent}))""",
        selected(forged),
    )
    # 2. From the allowed parent, with a sign that does not verify.
    tampered = {**forged, "sign": "0" * 32}
    await page.evaluate("([m, o]) => window.postSelected(m, o)", [selected(tampered), server.origin])
    await expect(frame.locator("#panel-status")).to_contain_text("签名不匹配")
    # 3. A valid one afterwards is the only change the panel ever made.
    valid = server.context(Surface.WORKBENCH, sample_customer("C1004"))
    await page.evaluate("([m, o]) => window.postSelected(m, o)", [selected(valid), server.origin])
    await expect(frame.get_by_test_id("customer-name")).to_contain_text("刘洋")
    assert await updates(frame) == ["C1004"]


async def test_a_killed_socket_reconnects_and_resynchronises(
    page: Page, panel_server: PanelServerFactory, fake_parent: FakeParent
) -> None:
    server = await panel_server()
    frame = await framed_panel(page, server, fake_parent, "C1001")
    hub = server.app[HUB]
    for conn in list(hub.connections):
        await conn.ws.close(code=1011, message=b"killed by the test")
    # The panel notices, reconnects with backoff, and asks for a resync: a fresh push of its customer,
    # identical to what it shows, so nothing on the page changes.
    await frame.wait_for_function("() => window.sobotPanel.pushes >= 1 && window.sobotPanel.connected",
                                  timeout=15_000)  # fmt: skip
    assert await updates(frame) == []
    await _wait_sockets(server, 1)
    await expect(frame.locator("#panel-status")).to_be_hidden()
    fields = server.context(Surface.WORKBENCH, sample_customer("C1005"))
    await page.evaluate("([m, o]) => window.postSelected(m, o)", [selected(fields), server.origin])
    await expect(frame.get_by_test_id("customer-name")).to_contain_text("陈静")
    assert await frame.evaluate("window.__marker") == "still-here"

"""Browser test helpers: the real service on a free port, a fake Sobot parent on another origin, Chromium.

Use from a test module with `pytest_plugins = ["tests.helpers.browser"]` and mark browser tests with
`BROWSER` (they share one Chromium, which lives on the session's event loop).

- `panel_server(**settings)` starts `create_app(make_settings(**settings))` on 127.0.0.1 with the
  port known before the app is built, so `PANEL_PUBLIC_URL`-style absolute links point at it.
- `fake_parent` is a tiny page on another origin that iframes a panel URL, records every message the
  panel posts into `window.received`, and can post a `selected` into the frame. Its allowed origin is
  `http://127.0.0.1:<port>` (matched by the tests' `http://127.0.0.1:*`); `http://localhost:<port>`
  serves the same page from an origin that no setting allows.
- Waiting is always on a condition with a deadline: Playwright's `wait_for_function`/`expect`, or
  polling Redis with `wait_for_stream`.
"""

from __future__ import annotations

import asyncio
import html
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from aiohttp import web
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from sobot_panel.app import create_app
from sobot_panel.devhost import sample_context
from sobot_panel.directory.models import Customer
from sobot_panel.directory.sample import load_customers
from sobot_panel.i18n import Catalog
from sobot_panel.protocol.signing import sign_fields
from sobot_panel.protocol.surfaces import Surface, build_query_string
from sobot_panel.redis import EmbeddedRedis, connect
from sobot_panel.settings import Settings

from bench.enterprise import FakeEnterprise

from .fake_enterprise import TOKEN as ENTERPRISE_TOKEN

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"  # tests/artifacts (git-ignored)
# Every browser test runs on the session's loop, where the shared Chromium lives.
BROWSER = pytest.mark.asyncio(loop_scope="session")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
DEFAULT_TIMEOUT_MS = 10_000
expect.set_options(timeout=DEFAULT_TIMEOUT_MS)
CATALOG = Catalog.load()


def text(code: str, lang: str = "zh", **params: object) -> str:
    """What the agent reads for a catalog code, so tests find buttons by their real names."""
    return CATALOG.text(code, "en" if lang == "en" else "zh", **params)


def find_chromium() -> str | None:
    """A system Chromium (Playwright never downloads a browser for these tests)."""
    for candidate in (os.environ.get("CHROMIUM_PATH"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def sample_customer(partner_id: str) -> Customer:
    return next(c for c in load_customers() if c.partnerId == partner_id)


# --- the service on a real port ----------------------------------------------------------------


@dataclass(frozen=True)
class LiveServer:
    base_url: str
    settings: Settings
    app: web.Application

    @property
    def origin(self) -> str:
        return self.base_url

    def context(self, surface: Surface, customer: Customer) -> dict[str, str]:
        """The fields Sobot would send for `customer` on `surface`, signed now with this server's policy."""
        at = now_ms()
        return sign_fields(surface, sample_context(surface, customer, at), self.settings.sign_policy(), at)

    def embed_url(
        self, surface: Surface, customer: Customer, *, view: str | None = None, lang: str = "zh"
    ) -> tuple[str, dict[str, str]]:
        fields = self.context(surface, customer)
        path = f"/embed/{surface.value}" + (f"/{view}" if view else "")
        return f"{self.base_url}{path}?{build_query_string(fields)}&lang={lang}", fields


def _bound_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@asynccontextmanager
async def serve(build: Callable[[int], web.Application], host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Run the app `build(port)` returns on a socket bound first, so the app knows its own port."""
    sock = _bound_socket(host)
    port = int(sock.getsockname()[1])
    runner = web.AppRunner(build(port), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
        sock.close()


PanelServerFactory = Callable[..., Awaitable[LiveServer]]


@pytest_asyncio.fixture(loop_scope="session")
async def panel_server(make_settings: Callable[..., Settings]) -> AsyncIterator[PanelServerFactory]:
    """`await panel_server(**settings_overrides)`: the real service, stopped after the test."""
    async with AsyncExitStack() as stack:

        async def start(**overrides: Any) -> LiveServer:
            built: list[tuple[Settings, web.Application]] = []

            def build(port: int) -> web.Application:
                settings = make_settings(host="127.0.0.1", port=port, **overrides)
                built.append((settings, create_app(settings)))
                return built[0][1]

            base_url = await stack.enter_async_context(serve(build))
            settings, app = built[0]
            return LiveServer(base_url, settings, app)

        yield start


@pytest_asyncio.fixture(loop_scope="session")
async def enterprise() -> AsyncIterator[FakeEnterprise]:
    """The fake customer API on the browser tests' loop (`fake_enterprise` lives on the test's own loop);
    pass `directory_url=enterprise.url, directory_token=ENTERPRISE_TOKEN` to `panel_server`."""
    fake = FakeEnterprise(token=ENTERPRISE_TOKEN)

    def build(port: int) -> web.Application:
        return fake.app()

    async with serve(build) as base_url:
        fake.url = base_url
        try:
            yield fake
        finally:
            if fake.hold is not None:
                fake.hold.set()  # let a held lookup finish so the service can stop


# --- a fake Sobot parent on another origin -----------------------------------------------------

_PARENT_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>Fake Sobot</title>
<script src="/parent.js" defer></script></head>
<body><iframe id="panel" title="panel" src="{src}" width="{width}" height="{height}"></iframe></body></html>
"""
_PARENT_SCRIPT = """"use strict";
window.received = [];
window.frameLoads = 0;
const frame = document.getElementById("panel");
frame.addEventListener("load", () => { window.frameLoads += 1; });
window.addEventListener("message", (event) => {
  if (event.source !== frame.contentWindow) return;
  window.received.push({ origin: event.origin, data: event.data });
});
window.postSelected = (message, targetOrigin) => frame.contentWindow.postMessage(message, targetOrigin);
"""


@dataclass(frozen=True)
class FakeParent:
    port: int

    @property
    def allowed_origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def disallowed_origin(self) -> str:
        """Same page, an origin that matches no PANEL_HOST_ORIGINS pattern of the tests."""
        return f"http://localhost:{self.port}"

    def url(self, panel_url: str, *, width: int = 300, height: int = 640, allowed: bool = True) -> str:
        origin = self.allowed_origin if allowed else self.disallowed_origin
        return f"{origin}/parent?w={width}&h={height}&src={quote(panel_url, safe='')}"


async def _parent_page(request: web.Request) -> web.Response:
    page = _PARENT_PAGE.format(
        src=html.escape(request.query.get("src", "about:blank")),
        width=int(request.query.get("w", "300")),
        height=int(request.query.get("h", "640")),
    )
    return web.Response(text=page, content_type="text/html")


async def _parent_script(request: web.Request) -> web.Response:
    return web.Response(text=_PARENT_SCRIPT, content_type="application/javascript")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fake_parent() -> AsyncIterator[FakeParent]:
    def build(port: int) -> web.Application:
        app = web.Application()
        app.router.add_get("/parent", _parent_page)
        app.router.add_get("/parent.js", _parent_script)
        return app

    async with serve(build) as base_url:
        yield FakeParent(int(base_url.rsplit(":", 1)[1]))


async def wait_received(page: Page, count: int, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> list[dict[str, Any]]:
    """The parent's recorded messages once there are at least `count`."""
    await page.wait_for_function("n => window.received.length >= n", arg=count, timeout=timeout_ms)
    received: list[dict[str, Any]] = await page.evaluate("window.received")
    return received


async def received_now(page: Page) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = await page.evaluate("window.received")
    return received


# --- Chromium ----------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium on PATH (make chromium installs Debian's)")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest_asyncio.fixture(loop_scope="session")
async def browser_context(browser: Browser) -> AsyncIterator[BrowserContext]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, locale="zh-CN")
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    try:
        yield context
    finally:
        await context.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser_context: BrowserContext) -> AsyncIterator[Page]:
    """A page whose uncaught script errors (in any frame) fail the test."""
    page = await browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    assert not errors, f"uncaught script errors: {errors}"


# --- the audit stream --------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def stream_redis(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    """A client of the session's redis-server on the browser tests' loop, emptied for this test."""
    client = connect(redis_server.url)
    await client.flushall()
    try:
        yield client
    finally:
        await client.aclose()


async def wait_for_stream(
    client: aioredis.Redis, key: str, count: int, timeout_s: float = 5.0
) -> list[tuple[str, dict[str, str]]]:
    """The stream's entries once it holds at least `count` (polling with a deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        raw = await client.xrange(key) or []  # the client decodes responses to str
        entries = [(str(entry_id), {str(k): str(v) for k, v in (fields or {}).items()}) for entry_id, fields in raw]
        if len(entries) >= count:
            return entries
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} holds {len(entries)} entries after {timeout_s}s, expected {count}")
        await asyncio.sleep(0.05)


def save_screenshot_path(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / f"{name}.png"

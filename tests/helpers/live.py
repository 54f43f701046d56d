"""Helpers for live-panel tests: signed contexts, boot tokens, and waiting for websocket frames."""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from typing import Any

from aiohttp import ClientSession, ClientWebSocketResponse, WSMsgType
from aiohttp.test_utils import TestClient
from sobot_panel.protocol.signing import SignPolicy, sign_fields
from sobot_panel.protocol.surfaces import Surface, build_query_string

from ..conftest import SECRET, SYSNUM

POLICY = SignPolicy(sys_num=SYSNUM, secret=SECRET, wecom_secret=None, max_age_s=300)
AGENT = "agent@acme.cn"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def workbench_fields(partner_id: str, *, at: int | None = None, policy: SignPolicy = POLICY) -> dict[str, str]:
    fields = {"partnerId": partner_id, "email": AGENT, "uid": f"u-{partner_id}", "cid": "c-1"}
    return sign_fields(Surface.WORKBENCH, fields, policy, now_ms() if at is None else at)


def boot_of(page: str) -> dict[str, Any]:
    match = re.search(r'data-boot="([^"]*)"', page)
    assert match, "page carries no boot data"
    boot: dict[str, Any] = json.loads(html.unescape(match.group(1)))
    return boot


async def open_panel(client: TestClient[Any, Any], partner_id: str) -> tuple[ClientWebSocketResponse, str]:
    """Load a signed workbench panel for this customer and open its websocket; returns (ws, page html)."""
    response = await client.get(f"/embed/workbench?{build_query_string(workbench_fields(partner_id))}")
    page = await response.text()
    assert response.status == 200, page
    ws = await connect_panel(client, boot_of(page)["token"])
    await wait_subscribed(client, partner_id)
    return ws, page


async def connect_panel(
    client: TestClient[Any, Any], token: str, *, view: str | None = None, session: ClientSession | None = None
) -> ClientWebSocketResponse:
    """The panel's websocket for a session token, as panel.js opens it (`session`: one without a
    connection limit, for tests that hold hundreds of sockets)."""
    return await open_socket(session or client.session, str(client.make_url("/ws")), token, view=view)


async def open_socket(
    session: ClientSession, url: str, token: str, *, view: str | None = None
) -> ClientWebSocketResponse:
    """`GET /ws`, then the hello frame with the token (never in the URL); returns once the server is ready."""
    ws = await session.ws_connect(url)
    await ws.send_json(hello(token, view))
    await next_frame(ws, "ready")
    return ws


def hello(token: str, view: str | None = None) -> dict[str, Any]:
    return {"type": "hello", "token": token, "view": view}


async def next_frame(ws: ClientWebSocketResponse, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame of this type (others are skipped), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {kind!r} frame within {timeout}s")
        message = await asyncio.wait_for(ws.receive(), remaining)
        if message.type is not WSMsgType.TEXT:
            raise AssertionError(f"socket ended while waiting for {kind!r}: {message.type} {message.data}")
        frame: dict[str, Any] = json.loads(message.data)
        if frame.get("type") == kind:
            return frame


def selected(fields: dict[str, str], request_id: int = 1) -> dict[str, Any]:
    """What panel.js relays for Sobot's `selected` message (SPEC §4)."""
    return {"type": "selected", "id": request_id, "view": None, "query": fields, "params": None,
            "partnerId": fields.get("partnerId"), "uid": fields.get("uid")}  # fmt: skip


async def wait_subscribed(client: TestClient[Any, Any], partner_id: str, timeout: float = 10.0) -> None:
    """Until Redis reports a subscriber on the customer's channel."""
    from sobot_panel.appkeys import KEYS, REDIS

    app = client.server.app
    assert app is not None
    channel = app[KEYS].partner_channel(partner_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            counts = await app[REDIS].pubsub_numsub(channel)
            if counts and counts[0][1] >= 1:
                return
        except Exception:
            pass
        await asyncio.sleep(0.02)
    raise AssertionError(f"nobody subscribed to {channel} within {timeout}s")

"""Live panels over /ws: relayed selections, verification, invalidation fan-out across replicas."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient
from sobot_panel.app import create_app
from sobot_panel.appkeys import HUB, METRICS
from sobot_panel.protocol.tokens import SessionClaims, SessionTokens
from sobot_panel.redis import EmbeddedRedis
from sobot_panel.settings import Settings

from .helpers.live import (
    boot_of,
    connect_panel,
    hello,
    next_frame,
    now_ms,
    open_panel,
    open_socket,
    selected,
    wait_subscribed,
    workbench_fields,
)

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
API = {"Authorization": "Bearer test-api-token"}


@pytest.fixture
async def client(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(make_settings()))


async def test_selected_pushes_the_new_customer(client: TestClient[Any, Any]) -> None:
    ws, page = await open_panel(client, "C1001")
    assert "张伟" in page
    await ws.send_json(selected(workbench_fields("C1002"), 7))
    frame = await next_frame(ws, "panel")
    assert frame["id"] == 7 and frame["partnerId"] == "C1002"
    assert "李娜" in frame["html"] and "张伟" not in frame["html"]
    assert frame["token"] != boot_of(page)["token"]


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        pytest.param(lambda f: {**f, "partnerId": "C1003"}, "sign_mismatch", id="tampered-partner"),
        pytest.param(lambda f: {**f, "sign": "0" * 32}, "sign_mismatch", id="bad-sign"),
        pytest.param(lambda f: workbench_fields("C1002", at=now_ms() - 3_600_000), "sign_expired", id="replayed"),
        pytest.param(lambda f: {k: v for k, v in f.items() if k != "sign"}, "sign_missing", id="no-sign"),
        pytest.param(lambda f: {**f, "timestamp": "soon"}, "bad_timestamp", id="bad-timestamp"),
    ],
)
async def test_a_failing_selection_gets_an_error_frame_and_keeps_the_customer(
    client: TestClient[Any, Any], tamper: Callable[[dict[str, str]], dict[str, str]], code: str
) -> None:
    ws, _ = await open_panel(client, "C1001")
    await ws.send_json(selected(tamper(workbench_fields("C1002")), 3))
    error = await next_frame(ws, "error")
    assert error["id"] == 3 and error["code"] == code and error["message"] and error["message"] != code
    # The panel still shows C1001: an invalidation of C1001 refreshes it, one of C1002 does not reach it.
    await client.post("/api/partners/C1001/invalidate", headers=API)
    frame = await next_frame(ws, "panel")
    assert frame["partnerId"] == "C1001" and "张伟" in frame["html"]


async def test_a_refused_relay_counts_as_a_sign_failure(client: TestClient[Any, Any]) -> None:
    ws, _ = await open_panel(client, "C1001")
    await ws.send_json(selected({**workbench_fields("C1002"), "sign": "0" * 32}))
    assert (await next_frame(ws, "error"))["code"] == "sign_mismatch"
    text = await (await client.get("/metrics")).text()
    assert 'panel_sign_failures_total{reason="sign_mismatch",tenant=""} 1.0' in text


async def test_selection_of_another_agent_is_refused(client: TestClient[Any, Any]) -> None:
    ws, _ = await open_panel(client, "C1001")
    fields = workbench_fields("C1002")
    fields.update(email="intruder@acme.cn")  # email is outside the secret-mode sign
    await ws.send_json(selected(fields))
    assert (await next_frame(ws, "error"))["code"] == "agent_mismatch"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param("not json", "frame_not_json", id="not-json"),
        pytest.param(json.dumps({"type": "selected", "query": "x"}), "frame_invalid", id="bad-shape"),
        pytest.param(json.dumps({"type": "ping", "pad": "x" * 50_000}), "frame_too_large", id="too-large"),
    ],
)
async def test_malformed_frames(client: TestClient[Any, Any], payload: str, code: str) -> None:
    ws, _ = await open_panel(client, "C1001")
    await ws.send_str(payload)
    error = await next_frame(ws, "error")
    assert error["code"] == code and error["message"] != code
    if code == "frame_invalid":
        assert error["field"] == "query" and "query" in error["message"]  # says which field was wrong
    await ws.send_json({"type": "ping"})
    await next_frame(ws, "pong")  # the socket survives a bad frame


async def test_frames_are_rate_limited(client: TestClient[Any, Any]) -> None:
    ws, _ = await open_panel(client, "C1001")
    for number in range(40):
        await ws.send_json({"type": "ping", "id": number})
    refused = await next_frame(ws, "error")
    assert refused["code"] == "rate_limited" and isinstance(refused["id"], int)  # says which frame was refused


async def test_a_foreign_origin_is_refused_at_the_handshake(client: TestClient[Any, Any]) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as foreign:
        await client.ws_connect("/ws", origin="https://evil.example")
    assert foreign.value.status == 403


async def _closed_with(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    message = await ws.receive(timeout=10)
    assert message.type is WSMsgType.CLOSE, message
    return ws.close_code, str(message.extra or "")


async def test_the_first_frame_must_be_a_hello_with_a_live_session(client: TestClient[Any, Any]) -> None:
    page = await (await client.get(f"/embed/workbench?{_q('C1001')}")).text()
    token = boot_of(page)["token"]
    # The token in the URL (where proxies and logs keep it) is not read: the first frame decides.
    ws = await client.ws_connect(f"/ws?token={token}")
    await ws.send_json({"type": "ping"})
    assert await _closed_with(ws) == (4400, "the first frame must be a hello")
    for bad, reason in [("forged.token", "token_invalid"), (token[:-4] + "AAAA", "token_invalid")]:
        ws = await client.ws_connect("/ws")
        await ws.send_json(hello(bad))
        assert await _closed_with(ws) == (4401, reason)
    expired = SessionTokens(b"test-session-key").issue(SessionClaims(surface="workbench", expires_ms=1))
    ws = await client.ws_connect("/ws")
    await ws.send_json(hello(expired))
    assert await _closed_with(ws) == (4401, "token_expired")
    ws = await connect_panel(client, token)  # the real token in a hello: accepted
    await ws.send_json({"type": "ping"})
    await next_frame(ws, "pong")


async def test_a_socket_that_never_says_hello_is_closed(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sobot_panel.live.endpoint.HELLO_TIMEOUT_S", 0.2)
    ws = await client.ws_connect("/ws")
    assert (await _closed_with(ws))[0] == 4408
    assert not client.server.app[HUB].connections  # type: ignore[index]


async def test_sockets_are_capped_per_session_not_per_address(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(ws_per_session=3)))
    page = await (await client.get(f"/embed/workbench?{_q('C1001')}")).text()
    token = boot_of(page)["token"]
    first = [await connect_panel(client, token) for _ in range(2)]
    # A push renews the token; a socket opened with the renewed token belongs to the same session.
    await first[0].send_json(selected(workbench_fields("C1002")))
    renewed = (await next_frame(first[0], "panel"))["token"]
    assert renewed != token
    third = await connect_panel(client, renewed)
    for extra in (token, renewed):
        ws = await client.ws_connect("/ws")
        await ws.send_json(hello(extra))
        assert await _closed_with(ws) == (4429, "too many sockets for this session")
    # One closes: there is room again.
    await third.close()
    deadline = time.monotonic() + 5
    while len(client.server.app[HUB].connections) > 2:  # type: ignore[index]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    again = await connect_panel(client, renewed)
    # Ten agents behind one address (one NAT, like a call center): ten sessions, none refused.
    others = []
    for number in range(10):
        other = boot_of(await (await client.get(f"/embed/workbench?{_q(f'C100{number % 5 + 1}')}")).text())["token"]
        others.append(await connect_panel(client, other))
    assert len(client.server.app[HUB].connections) == 13 and not again.closed and not any(o.closed for o in others)  # type: ignore[index]


async def test_postmessage_mode_first_context_by_message(client: TestClient[Any, Any]) -> None:
    page = await (await client.get("/embed/workbench")).text()
    ws = await connect_panel(client, boot_of(page)["token"])
    await ws.send_json(selected(workbench_fields("C1004")))
    frame = await next_frame(ws, "panel")
    assert frame["partnerId"] == "C1004" and "刘洋" in frame["html"]


async def test_resync_after_reconnect_renders_the_token_context(client: TestClient[Any, Any]) -> None:
    ws, _ = await open_panel(client, "C1001")
    await ws.send_json(selected(workbench_fields("C1005")))
    token = (await next_frame(ws, "panel"))["token"]
    await ws.close()
    again = await connect_panel(client, token)
    await again.send_json({"type": "resync", "id": 9, "view": "orders"})
    frame = await next_frame(again, "panel")
    assert frame["id"] == 9 and frame["partnerId"] == "C1005" and "view-orders" in frame["html"]


async def test_a_single_view_panel_stays_on_its_view_through_every_push(client: TestClient[Any, Any]) -> None:
    """The hello names the view, so an invalidation push (which no frame of the panel asked for) keeps it."""
    response = await client.get(f"/embed/workbench/orders?{_q('C1001')}")
    ws = await connect_panel(client, boot_of(await response.text())["token"], view="orders")
    await wait_subscribed(client, "C1001")
    await client.post("/api/partners/C1001/invalidate", headers=API)
    frame = await next_frame(ws, "panel")
    assert "view-orders" in frame["html"] and 'role="tablist"' not in frame["html"]


async def test_invalidation_reaches_only_panels_showing_that_customer(client: TestClient[Any, Any]) -> None:
    first, _ = await open_panel(client, "C1001")
    other, _ = await open_panel(client, "C1002")
    response = await client.post("/api/partners/C1001/invalidate", headers=API)
    assert response.status == 202
    assert (await next_frame(first, "panel"))["partnerId"] == "C1001"
    await other.send_json({"type": "ping"})
    message = json.loads((await other.receive(timeout=5)).data)
    assert message["type"] == "pong"  # nothing was pushed to the C1002 panel before the pong


async def test_invalidation_api_needs_the_token(client: TestClient[Any, Any]) -> None:
    assert (await client.post("/api/partners/C1001/invalidate")).status == 401
    assert (await client.post("/api/partners/C1001/invalidate", headers={"Authorization": "Bearer no"})).status == 401


def _q(partner_id: str) -> str:
    from sobot_panel.protocol.surfaces import build_query_string

    return build_query_string(workbench_fields(partner_id))


async def test_two_replicas_fan_out_and_survive_a_redis_restart(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], own_redis: EmbeddedRedis
) -> None:
    settings = make_settings(redis_url=own_redis.url)
    replica_a = await aiohttp_client(create_app(settings))
    replica_b = await aiohttp_client(create_app(settings))
    ws, _ = await open_panel(replica_b, "C1001")
    await wait_subscribed(replica_b, "C1001")
    started = time.monotonic()
    assert (await replica_a.post("/api/partners/C1001/invalidate", headers=API)).status == 202
    frame = await next_frame(ws, "panel", timeout=2.0)
    assert frame["partnerId"] == "C1001" and time.monotonic() - started < 2.0

    metrics = replica_b.server.app[METRICS]  # type: ignore[index]
    resynced = metrics.registry.get_sample_value("panel_resyncs_total") or 0.0
    own_redis.kill()
    own_redis.start()
    # The subscriber reconnects by itself and resynchronises the panel: it already shows that very panel
    # (the invalidation's push above), so nothing is pushed.
    deadline = time.monotonic() + 10
    while (metrics.registry.get_sample_value("panel_pushes_skipped_total") or 0.0) < 1:
        assert time.monotonic() < deadline, "the panel was not resynchronised after the restart"
        await asyncio.sleep(0.02)
    assert metrics.registry.get_sample_value("panel_resyncs_total") == resynced + 1
    await wait_subscribed(replica_b, "C1001")
    deadline = time.monotonic() + 10
    while True:
        try:
            response = await replica_a.post("/api/partners/C1001/invalidate", headers=API)
        except aiohttp.ClientError:
            response = None
        if response is not None and response.status == 202:
            break
        assert time.monotonic() < deadline, "replica A never reached the restarted Redis"
    frame = await next_frame(ws, "panel", timeout=2.0)
    assert frame["partnerId"] == "C1001"


def test_sigterm_closes_sockets_with_1001_and_exits_within_the_grace(
    tmp_path: Path, redis_server: EmbeddedRedis
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PANEL_SYSNUM": "acme123", "PANEL_SECRET": "s3cr3t-key", "PANEL_REDIS_URL": redis_server.url,
           "PANEL_PORT": str(port), "PANEL_DATA_DIR": str(tmp_path), "PANEL_SESSION_KEY": "k" * 32}  # fmt: skip
    grace = 8.0
    process = subprocess.Popen(
        [sys.executable, "-m", "sobot_panel", "serve", "--grace", str(grace)], env=env, cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        close_code, exited_after = asyncio.run(_drain(port, process))
        assert close_code == 1001
        assert exited_after < grace
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


async def _drain(port: int, process: subprocess.Popen[bytes]) -> tuple[int | None, float]:
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with session.get(f"{base}/readyz") as ready:
                    if ready.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "service did not become ready"
            await asyncio.sleep(0.05)
        async with session.get(f"{base}/embed/workbench?{_q('C1001')}") as page:
            token = boot_of(await page.text())["token"]
        ws = await open_socket(session, f"{base}/ws", token)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        message = await ws.receive(timeout=10)
        assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED), message
        code = ws.close_code if message.type is not WSMsgType.CLOSE else message.data
        while process.poll() is None:
            assert time.monotonic() - signalled < 30
            await asyncio.sleep(0.05)
        return code, time.monotonic() - signalled

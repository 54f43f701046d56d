"""Readiness with the right meaning (CONTRACT `/readyz`), without a browser: a shared Redis outage leaves
every replica ready while pages load and sends are spooled; draining and a spool that cannot keep a record
make it unready; SIGTERM says how many spooled records stay on disk, and the next start replays them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sobot_panel.app import create_app
from sobot_panel.protocol.surfaces import build_query_string
from sobot_panel.redis import EmbeddedRedis, connect
from sobot_panel.settings import Settings

from .conftest import SECRET, SYSNUM
from .helpers.live import boot_of, workbench_fields
from .helpers.net import free_port, wait_http
from .test_send import first_order_card, send, token_for

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
PAGES, SENDS = 50, 25


async def _ready(client: TestClient[Any, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.get("/readyz")
    return response.status, await response.json()


async def test_a_redis_outage_leaves_the_replica_ready_with_pages_and_sends_working(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], own_redis: EmbeddedRedis
) -> None:
    client = await aiohttp_client(create_app(make_settings(redis_url=own_redis.url)))
    token = await token_for(client)
    assert await _ready(client) == (200, {"status": "ready", "redis": "up", "audit": "redis"})

    own_redis.kill()
    status, body = await _ready(client)
    assert (status, body) == (200, {"status": "ready", "redis": "down", "audit": "spool"})
    loaded = 0
    for index in range(PAGES):
        partner = ("C1001", "C1002", "C1003")[index % 3]
        response = await client.get(f"/embed/workbench?{build_query_string(workbench_fields(partner))}")
        loaded += response.status == 200
    assert loaded == PAGES
    spooled = 0
    for _ in range(SENDS):
        status, answer = await send(client, token, "order_card", first_order_card(), uuid.uuid4().hex)
        spooled += status == 200 and answer["spooled"]
    assert spooled == SENDS
    metrics = await (await client.get("/metrics")).text()
    assert "panel_redis_up 0.0" in metrics

    own_redis.start()
    assert await _ready(client) == (200, {"status": "ready", "redis": "up", "audit": "redis"})


@pytest.mark.parametrize("spool_max_bytes", [0, 1024], ids=["no-spool", "spool-too-small"])
async def test_without_redis_or_room_in_the_spool_the_replica_is_unready(
    aiohttp_client: ClientFactory,
    make_settings: Callable[..., Settings],
    own_redis: EmbeddedRedis,
    spool_max_bytes: int,
) -> None:
    client = await aiohttp_client(create_app(make_settings(redis_url=own_redis.url, spool_max_bytes=spool_max_bytes)))
    assert (await _ready(client))[0] == 200
    own_redis.kill()
    status, body = await _ready(client)
    assert status == 503 and body["redis"] == "down"
    assert body["audit"] == ("none" if spool_max_bytes == 0 else "spool_full")


def _serve(tmp_path: Path, redis_url: str, port: int, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PANEL_SYSNUM": SYSNUM, "PANEL_SECRET": SECRET, "PANEL_REDIS_URL": redis_url,
           "PANEL_PORT": str(port), "PANEL_DATA_DIR": str(tmp_path / "data"), "PANEL_SESSION_KEY": "k" * 32,
           "PANEL_LOG_FORMAT": "json"}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "sobot_panel", "serve", "--grace", "3", *extra], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def _log_lines(process: subprocess.Popen[bytes]) -> list[dict[str, Any]]:
    assert process.stderr is not None
    text = process.stderr.read().decode()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def _get(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        return response.status


def test_sigterm_turns_unready_first_then_drains(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    port = free_port()
    process = _serve(tmp_path, redis_server.url, port, "--drain-delay", "3")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz", timeout=30, process=process)

        async def exercise() -> tuple[int, int]:
            async with aiohttp.ClientSession() as session:
                process.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 10
                while (ready := await _get(session, f"{base}/readyz")) == 200:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                return ready, await _get(session, f"{base}/healthz")

        ready, alive = asyncio.run(exercise())
        assert (ready, alive) == (503, 200), "unready, yet still serving, before the drain"
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_logs_what_stays_in_the_spool_and_the_next_start_replays_it(
    tmp_path: Path, own_redis: EmbeddedRedis
) -> None:
    """The issue's case: SIGTERM with 13 records in the spool exited with no word about them."""
    port = free_port()
    process = _serve(tmp_path, own_redis.url, port)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/readyz", timeout=30, process=process)

        async def spool_sends() -> None:
            async with aiohttp.ClientSession() as session:
                url = f"{base}/embed/workbench?{build_query_string(workbench_fields('C1001'))}"
                async with session.get(url) as page:
                    token = boot_of(await page.text())["token"]
                own_redis.kill()
                for index in range(13):
                    body = {"token": token, "kind": "order_card", "id": f"term-{index:06d}", "data": first_order_card()}
                    async with session.post(f"{base}/panel/send", json=body) as response:
                        assert response.status == 200 and (await response.json())["spooled"]

        asyncio.run(spool_sends())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        lines = _log_lines(process)
        remain = [line for line in lines if "remain on disk" in line.get("message", "")]
        assert remain and "13 record(s) remain" in remain[0]["message"], lines[-5:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    own_redis.start()
    again = _serve(tmp_path, own_redis.url, free_port())
    try:

        async def stream_ids() -> list[str]:
            client = connect(own_redis.url)
            try:
                deadline = time.monotonic() + 30
                while len(entries := await client.xrange("panel:audit")) < 13 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                return [fields["id"] for _, fields in entries]
            finally:
                await client.aclose()

        assert asyncio.run(stream_ids()) == [f"term-{index:06d}" for index in range(13)]
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(timeout=30)
    assert any(line.get("message") == "audit spool: empty at exit" for line in _log_lines(again))

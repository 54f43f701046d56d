"""Reconnect storms at a size CI affords: 200 panels on two replicas sharing one real redis-server.

A Redis restart makes every replica resynchronise every panel at once; a replica replaced makes its panels
reconnect to another. Either way every panel is back, the enterprise API is asked at most once per
distinct customer, each panel is rendered at most once, and a push identical to what a panel shows is skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sobot_panel.app import create_app
from sobot_panel.appkeys import HUB, KEYS, METRICS, REDIS
from sobot_panel.live.hub import LiveHub
from sobot_panel.protocol.surfaces import build_query_string
from sobot_panel.redis import EmbeddedRedis
from sobot_panel.settings import Settings

from bench.enterprise import FakeEnterprise, customers

from .helpers.fake_enterprise import TOKEN
from .helpers.live import boot_of, hello, next_frame, now_ms, selected, workbench_fields

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
PANELS = 200
CUSTOMERS = 40
CONCURRENCY = 4


def partner(index: int) -> str:
    return f"P{index % CUSTOMERS:06d}"


def counter(client: TestClient[Any, Any], name: str) -> float:
    value = client.server.app[METRICS].registry.get_sample_value(name)  # type: ignore[index]
    return value or 0.0


def hub_of(client: TestClient[Any, Any]) -> LiveHub:
    return client.server.app[HUB]  # type: ignore[index]


async def wait_until(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.02)


class Panels:
    """`PANELS` panels, each with its page's token, spread over the replicas given."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.tokens: list[str] = []
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []
        self.statuses: list[int] = []

    async def load(self, replicas: list[TestClient[Any, Any]]) -> None:
        for index in range(PANELS):
            replica = replicas[index % len(replicas)]
            url = replica.make_url(f"/embed/workbench?{build_query_string(workbench_fields(partner(index)))}")
            async with self.session.get(url) as page:
                self.statuses.append(page.status)
                self.tokens.append(boot_of(await page.text())["token"])
        self.sockets = list(await asyncio.gather(*(self.connect(replicas[i % len(replicas)], i)
                                                   for i in range(PANELS))))  # fmt: skip
        # Sobot's first `selected` of the shift: from now on the replica knows what each panel shows.
        await asyncio.gather(*(self.switch(i, partner(i)) for i in range(PANELS)))

    async def switch(self, index: int, partner_id: str) -> None:
        await self.sockets[index].send_json(selected(workbench_fields(partner_id), index))
        assert (await next_frame(self.sockets[index], "panel"))["partnerId"] == partner_id

    async def connect(self, replica: TestClient[Any, Any], index: int) -> aiohttp.ClientWebSocketResponse:
        """As panel.js does: the upgrade, the hello with the token, and (on a reconnect) a resync."""
        ws = await self.session.ws_connect(replica.make_url("/ws"))
        self.statuses.append(101)
        await ws.send_json(hello(self.tokens[index]))
        await next_frame(ws, "ready")
        return ws

    async def frames_until_pong(self, ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
        """Every frame pushed to this socket so far: a ping's pong comes after all of them."""
        await ws.send_json({"type": "ping"})
        frames = []
        while True:
            frame = json.loads((await ws.receive(timeout=10)).data)
            if frame["type"] == "pong":
                return frames
            frames.append(frame)


@pytest.fixture
async def replicas(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], own_redis: EmbeddedRedis,
    fake_enterprise: FakeEnterprise,
) -> list[TestClient[Any, Any]]:  # fmt: skip
    fake_enterprise.use_customers(customers(CUSTOMERS))
    settings = make_settings(redis_url=own_redis.url, directory_url=fake_enterprise.url, directory_token=TOKEN,
                             resync_concurrency=CONCURRENCY)  # fmt: skip
    return [await aiohttp_client(create_app(settings)) for _ in range(2)]


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client_session:
        yield client_session


async def test_a_redis_restart_resyncs_every_panel_once_skipping_identical_pushes(
    replicas: list[TestClient[Any, Any]], own_redis: EmbeddedRedis, fake_enterprise: FakeEnterprise,
    session: aiohttp.ClientSession,
) -> None:  # fmt: skip
    panels = Panels(session)
    await panels.load(replicas)
    assert all(hub_of(r).connections for r in replicas)
    # While Redis is away the enterprise changes one customer; its invalidation is lost with the outage
    # (here: its cached copy is gone, nobody was told). Only that customer's panels may change.
    changed = partner(1)
    for customer in fake_enterprise.customers:
        if customer["partnerId"] == changed:
            customer["name"] = "改过的名字"
    app = replicas[0].server.app
    assert app is not None
    await app[REDIS].delete(app[KEYS].customer(f"partnerId:{changed}"))
    fake_enterprise.calls.clear()
    before = [(counter(r, "panel_resyncs_total"), counter(r, "panel_pushes_skipped_total")) for r in replicas]

    own_redis.kill()
    own_redis.start()

    for replica, (resyncs, _) in zip(replicas, before, strict=True):
        count = len(hub_of(replica).connections)
        await wait_until("every panel resynchronised", lambda r=replica, c=count, b=resyncs:  # type: ignore[misc]
                         counter(r, "panel_resyncs_total") - b >= c)  # fmt: skip
    shown = [await panels.frames_until_pong(ws) for ws in panels.sockets]
    for index, frames in enumerate(shown):
        assert [f["type"] for f in frames] == (["panel"] if partner(index) == changed else []), index
        if frames:
            assert frames[0]["partnerId"] == changed and "改过的名字" in frames[0]["html"]
    pushed = sum(len(frames) for frames in shown)
    assert pushed == PANELS // CUSTOMERS
    for replica, (resyncs, _) in zip(replicas, before, strict=True):
        count = len(hub_of(replica).connections)
        assert counter(replica, "panel_resyncs_total") - resyncs == count  # each panel rendered once
        assert hub_of(replica).resync_peak <= CONCURRENCY  # spread, but bounded
        assert hub_of(replica).resync_peak > 1  # not one panel after another
    skipped = sum(counter(r, "panel_pushes_skipped_total") - b[1] for r, b in zip(replicas, before, strict=True))
    assert skipped == PANELS - pushed
    assert fake_enterprise.total_calls <= 1  # the changed customer, once across both replicas

    # A second reconnect while the first is still queued coalesces: nobody is queued twice.
    hub = hub_of(replicas[0])
    resyncs = counter(replicas[0], "panel_resyncs_total")
    await asyncio.gather(hub.refresh_all(), hub.refresh_all())
    assert counter(replicas[0], "panel_resyncs_total") - resyncs == len(hub.connections)
    assert all(s < 500 for s in panels.statuses)


async def test_a_replaced_replica_s_panels_come_back_on_another(
    replicas: list[TestClient[Any, Any]], aiohttp_client: ClientFactory, make_settings: Callable[..., Settings],
    own_redis: EmbeddedRedis, fake_enterprise: FakeEnterprise, session: aiohttp.ClientSession,
) -> None:  # fmt: skip
    panels = Panels(session)
    await panels.load(replicas)
    old, survivor = replicas
    fake_enterprise.calls.clear()
    # SIGTERM: the old replica closes every socket with 1001; its panels reconnect to a new replica.
    new = await aiohttp_client(create_app(make_settings(redis_url=own_redis.url, directory_url=fake_enterprise.url,
                                                        directory_token=TOKEN)))  # fmt: skip
    moved = [i for i in range(PANELS) if i % 2 == 0]
    await hub_of(old).close_all()
    for index in moved:
        message = await panels.sockets[index].receive(timeout=10)
        assert message.type is aiohttp.WSMsgType.CLOSE and message.data == 1001

    async def come_back(index: int) -> dict[str, Any]:
        ws = await panels.connect(new, index)
        await ws.send_json({"type": "resync", "view": None})
        panels.sockets[index] = ws
        return await next_frame(ws, "panel", timeout=10)

    frames = await asyncio.gather(*(come_back(i) for i in moved))
    assert [frame["partnerId"] for frame in frames] == [partner(i) for i in moved]
    assert len(hub_of(new).connections) == len(moved)
    assert fake_enterprise.total_calls <= CUSTOMERS  # the Redis tier answers; at worst once per customer
    assert all(s < 500 for s in panels.statuses)
    assert counter(new, "panel_pushes_skipped_total") == 0  # a panel's own resync is always answered
    # The panels that stayed on the surviving replica saw nothing of it.
    for index in range(1, PANELS, 2):
        assert await panels.frames_until_pong(panels.sockets[index]) == []
    assert survivor  # still serving


async def test_a_skipped_push_still_renews_a_token_due_for_renewal(
    replicas: list[TestClient[Any, Any]], session: aiohttp.ClientSession
) -> None:
    panels = Panels(session)
    await panels.load(replicas[:1])
    hub = hub_of(replicas[0])
    due = next(conn for conn in hub.connections if conn.partner_id == partner(0))
    # Past half its life: the token must be renewed, so this panel is pushed although it shows the same.
    due.claims = dataclasses.replace(due.claims, expires_ms=now_ms() + 60_000)
    skipped = counter(replicas[0], "panel_pushes_skipped_total")
    await hub.refresh_all()
    assert counter(replicas[0], "panel_pushes_skipped_total") - skipped == PANELS - 1
    renewed = [(i, f) for i, ws in enumerate(panels.sockets) for f in await panels.frames_until_pong(ws)]
    assert len(renewed) == 1
    index, frame = renewed[0]
    assert partner(index) == partner(0) and frame["partnerId"] == partner(0)
    assert due.claims.expires_ms > now_ms() + 60_000  # the claims the new token carries
    # The renewed token opens a socket.
    ws = await session.ws_connect(replicas[0].make_url("/ws"))
    await ws.send_json(hello(frame["token"]))
    await next_frame(ws, "ready")

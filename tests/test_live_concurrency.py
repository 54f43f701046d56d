"""Subscriptions that converge: hundreds of panels switching customers at once through the real service
and a real Redis, some closing mid-switch, one run with Redis restarted mid-switch. Afterwards every
panel gets its customer's invalidation push, and once every socket has closed no subscription is left.

The figures of each run (sockets, switches, pushes received, channels never subscribed, channels left)
are written to `tests/artifacts/live-concurrency-*.json` and printed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import pytest
from aiohttp import ClientSession, ClientWebSocketResponse, TCPConnector, web
from aiohttp.test_utils import TestClient
from sobot_panel.app import create_app
from sobot_panel.appkeys import HUB, KEYS, REDIS
from sobot_panel.protocol.surfaces import build_query_string
from sobot_panel.redis import EmbeddedRedis
from sobot_panel.settings import Settings

from bench.enterprise import customers

from .helpers.browser import ARTIFACTS
from .helpers.fake_enterprise import TOKEN, FakeEnterprise
from .helpers.live import boot_of, connect_panel, next_frame, selected, workbench_fields

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
API = {"Authorization": "Bearer test-api-token"}
SOCKETS = 300
ROUNDS = 3


@dataclass
class Figures:
    sockets: int = 0
    switches: int = 0
    closed_mid_switch: int = 0
    redis_restarts: int = 0
    open_at_the_end: int = 0
    channels_never_subscribed: int = 0
    channels_subscribed_without_a_panel: int = 0
    pushes_received: int = 0
    channels_left_after_close: int = 0
    seconds: float = 0.0


@dataclass
class Panel:
    index: int
    ws: ClientWebSocketResponse
    partner_id: str
    open: bool = True


async def _gather_limited(jobs: list[Awaitable[Any]], limit: int = 25) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(job: Awaitable[Any]) -> Any:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(job) for job in jobs)))


async def _open(client: TestClient[Any, Any], sockets: ClientSession, index: int, partner_id: str) -> Panel:
    response = await client.get(f"/embed/workbench?{build_query_string(workbench_fields(partner_id))}")
    page = await response.text()
    assert response.status == 200, page
    return Panel(index, await connect_panel(client, boot_of(page)["token"], session=sockets), partner_id)


async def _until_shown(panel: Panel, partner_id: str, timeout: float = 30.0) -> None:
    """Until the panel is pushed `partner_id` (earlier pushes of a superseded switch are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        frame = await next_frame(panel.ws, "panel", timeout=max(0.1, deadline - time.monotonic()))
        if frame["partnerId"] == partner_id:
            panel.partner_id = partner_id
            return


async def _partner_channels(client: TestClient[Any, Any]) -> set[str]:
    app = client.server.app
    assert app is not None
    prefix = app[KEYS].partner_channel("")
    raw = await app[REDIS].pubsub_channels(prefix + "*")
    return {(c.decode() if isinstance(c, bytes) else str(c))[len(prefix) :] for c in raw}


async def _converged(client: TestClient[Any, Any], expected: set[str], timeout: float = 15.0) -> set[str]:
    """Redis's subscribed partner channels once they equal `expected`, or whatever they are at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        channels = await _partner_channels(client)
        if channels == expected or time.monotonic() > deadline:
            return channels
        await asyncio.sleep(0.05)


async def _switch_round(
    panels: list[Panel], round_no: int, figures: Figures, *, close_every: int = 0,
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> None:  # fmt: skip
    """Every open panel switches at once; with `close_every`, every n-th closes right after asking;
    `meanwhile` runs after every switch was asked for and before the answers are awaited."""
    targets = {p.index: f"P{SOCKETS * round_no + p.index:06d}" for p in panels if p.open}
    twice = {i for i in targets if i % 7 == 3}  # these ask twice in a row: the second switch must win

    async def ask(panel: Panel) -> None:
        target = targets[panel.index]
        if panel.index in twice:
            await panel.ws.send_json(selected(workbench_fields(f"P{SOCKETS * round_no + panel.index - 1:06d}"), 1))
            figures.switches += 1
        await panel.ws.send_json(selected(workbench_fields(target), 2))
        figures.switches += 1
        if close_every and panel.index % close_every == 0:
            panel.open = False
            figures.closed_mid_switch += 1
            await panel.ws.close()

    await asyncio.gather(*(ask(p) for p in panels if p.open))
    answers = asyncio.gather(*(_until_shown(p, targets[p.index]) for p in panels if p.open))
    if meanwhile is not None:
        await meanwhile()
    await answers


async def _finish(client: TestClient[Any, Any], fake: FakeEnterprise, panels: list[Panel], figures: Figures) -> None:
    """Convergence, one invalidation push per open panel, then every socket closed and nothing left."""
    app = client.server.app
    assert app is not None
    live = [p for p in panels if p.open]
    figures.open_at_the_end = len(live)
    expected = {p.partner_id for p in live}
    channels = await _converged(client, expected)
    figures.channels_never_subscribed = len(expected - channels)
    figures.channels_subscribed_without_a_panel = len(channels - expected)

    # The enterprise changes each shown customer, then tells the service; each panel must show the change.
    for panel in live:
        fake.find("partnerId", panel.partner_id)["name"] += " (更新)"  # type: ignore[index]
    invalidations = [client.post(f"/api/partners/{p.partner_id}/invalidate", headers=API) for p in live]
    statuses = await _gather_limited(invalidations)
    assert all(r.status == 202 for r in statuses)

    async def pushed(panel: Panel) -> bool:
        deadline = time.monotonic() + 10
        try:
            while True:
                frame = await next_frame(panel.ws, "panel", timeout=max(0.1, deadline - time.monotonic()))
                if frame["partnerId"] == panel.partner_id and "(更新)" in frame["html"]:
                    return True
        except (AssertionError, TimeoutError):
            return False

    figures.pushes_received = sum(await asyncio.gather(*(pushed(p) for p in live)))

    await asyncio.gather(*(p.ws.close() for p in live))
    hub = app[HUB]
    deadline = time.monotonic() + 10
    while hub.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    figures.channels_left_after_close = len(await _converged(client, set(), timeout=10.0))


def _report(name: str, figures: Figures, started: float) -> None:
    figures.seconds = round(time.monotonic() - started, 2)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"live-concurrency-{name}.json").write_text(json.dumps(asdict(figures), indent=2) + "\n")
    print(f"\nlive concurrency ({name}): {json.dumps(asdict(figures))}")


def _check(figures: Figures) -> None:
    assert figures.channels_never_subscribed == 0, figures
    assert figures.channels_subscribed_without_a_panel == 0, figures
    assert figures.pushes_received == figures.open_at_the_end, figures
    assert figures.channels_left_after_close == 0, figures


@pytest.fixture
def crowd(fake_enterprise: FakeEnterprise) -> FakeEnterprise:
    fake_enterprise.use_customers(customers(SOCKETS * (ROUNDS + 1)))
    return fake_enterprise


@pytest.mark.timeout(300)
async def test_hundreds_of_simultaneous_switches_converge(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], crowd: FakeEnterprise
) -> None:
    started = time.monotonic()
    figures = Figures()
    settings = make_settings(directory_url=crowd.url, directory_token=TOKEN, local_cache_ttl=0)
    client = await aiohttp_client(create_app(settings))
    async with ClientSession(connector=TCPConnector(limit=0)) as sockets:
        panels = await _gather_limited([_open(client, sockets, i, f"P{i:06d}") for i in range(SOCKETS)])
        figures.sockets = len(panels)
        for round_no in range(1, ROUNDS + 1):
            await _switch_round(panels, round_no, figures, close_every=10 if round_no == ROUNDS else 0)
        await _finish(client, crowd, panels, figures)
    _report("switches", figures, started)
    _check(figures)


@pytest.mark.timeout(300)
async def test_switches_across_a_redis_restart_converge(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], crowd: FakeEnterprise,
    own_redis: EmbeddedRedis,
) -> None:  # fmt: skip
    started = time.monotonic()
    figures = Figures()
    settings = make_settings(redis_url=own_redis.url, directory_url=crowd.url, directory_token=TOKEN,
                             local_cache_ttl=0)  # fmt: skip
    client = await aiohttp_client(create_app(settings))
    async with ClientSession(connector=TCPConnector(limit=0)) as sockets:
        panels = await _gather_limited([_open(client, sockets, i, f"P{i:06d}") for i in range(SOCKETS // 2)])
        figures.sockets = len(panels)
        await _switch_round(panels, 1, figures)
        # Redis goes away; every panel switches again (some closing right after asking) and Redis comes
        # back while those switches are being answered.
        app = client.server.app
        assert app is not None
        hub = app[HUB]
        await asyncio.to_thread(own_redis.kill)
        await _until(lambda: hub.subscriber.failures > 0, "the hub never noticed Redis was gone")

        async def restart() -> None:
            await asyncio.to_thread(own_redis.start)
            figures.redis_restarts += 1

        await _switch_round(panels, 2, figures, close_every=9, meanwhile=restart)
        await _until(lambda: hub.subscriber.reconnects == 1, "the hub never reconnected")
        await _switch_round(panels, 3, figures)
        await _finish(client, crowd, panels, figures)
    _report("redis-restart", figures, started)
    _check(figures)


async def _until(condition: Callable[[], bool], failure: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        await asyncio.sleep(0.02)

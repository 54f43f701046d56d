"""Simulated agents for the call-center bench: panels that load, relay `selected`, send, reconnect.

Each `Agent` behaves like one browser tab running web/static/panel.js: a signed page load gives it a
token, it holds the panel websocket, relays correctly signed `selected` messages and waits for the
pushed panel, sends cards and tickets to `/panel/send` (a retried send reuses its event id), and when
its socket drops it reconnects with panel.js's backoff and asks for a resync. Everything it sees is
written to a `Recorder` as (time, kind, milliseconds, error).
"""

from __future__ import annotations

import asyncio
import html
import json
import random
import re
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from sobot_panel.protocol.card_builders import goods_card_from_product, order_card_from_order
from sobot_panel.protocol.signing import SignPolicy

from .common import signed_fields, signed_query

BOOT = re.compile(r'data-boot="([^"]*)"')
FRAME_HEAD = re.compile(r'"type":"(\w+)","id":("[^"]*"|\d+|null)')
RELAY_TIMEOUT_S = 5.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10.0)
SEND_ATTEMPTS = 3


class Recorder:
    """Every observation of a run, stamped with seconds since `t0` (monotonic)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.events: list[tuple[float, str, float, str]] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def ok(self, kind: str, ms: float) -> None:
        self.events.append((self.now(), kind, ms, ""))

    def error(self, kind: str, detail: str, ms: float = float("nan")) -> None:
        self.events.append((self.now(), kind, ms, detail))


@dataclass
class Told:
    """A send the page was told was recorded (HTTP 200, ok: true)."""

    event_id: str
    at: float
    spooled: bool
    duplicate: bool


@dataclass
class World:
    """What every agent shares: where the service is, the customers, and what was told to the pages."""

    base: str
    policy: SignPolicy
    customers: list[dict[str, Any]]
    recorder: Recorder
    http: aiohttp.ClientSession
    sockets: aiohttp.ClientSession
    told: dict[str, Told] = field(default_factory=dict)
    attempted: set[str] = field(default_factory=set)
    invalidated: dict[str, float] = field(default_factory=dict)  # partnerId -> when the API was asked
    stopping: bool = False
    frame_bytes: list[int] = field(default_factory=list)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def customer(self, partner_id: str) -> dict[str, Any]:
        return self.customers[int(partner_id[1:])]

    def random_partner(self) -> str:
        return str(self.customers[random.randrange(len(self.customers))]["partnerId"])


def _error_of(error: BaseException) -> str:
    return "timeout" if isinstance(error, TimeoutError) else type(error).__name__


class Agent:
    def __init__(self, world: World, index: int) -> None:
        self.world = world
        self.index = index
        self.email = f"agent{index:05d}@bench.cn"
        self.partner = ""
        self.token = ""
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.busy = False
        self.connected = False
        self._next_id = 0
        self._waiting: dict[str, tuple[asyncio.Future[tuple[str, str]], float]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._attempts = 0

    # --- page loads --------------------------------------------------------------------------

    async def open_panel(self, partner: str) -> bool:
        """A fresh panel: a signed page load, then its websocket (the old one is closed, as a new iframe)."""
        rec = self.world.recorder
        url = f"{self.world.base}/embed/workbench?{signed_query(partner, self.email, policy=self.world.policy)}"
        started = time.perf_counter()
        try:
            async with self.world.http.get(url, timeout=HTTP_TIMEOUT) as response:
                page = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            rec.error("page", _error_of(error), (time.perf_counter() - started) * 1000)
            return False
        ms = (time.perf_counter() - started) * 1000
        boot = BOOT.search(page)
        if status != 200 or boot is None:
            rec.error("page", f"http {status}", ms)
            return False
        rec.ok("page", ms)
        self.token = json.loads(html.unescape(boot.group(1)))["token"]
        self.partner = partner
        await self.close()
        return await self.connect(resync=False)

    # --- the websocket -----------------------------------------------------------------------

    async def connect(self, *, resync: bool) -> bool:
        world = self.world
        url = world.base.replace("http://", "ws://") + "/ws"  # the token goes in the first frame, never the URL
        try:
            ws = await world.sockets.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                                                max_msg_size=0, autoping=True)  # fmt: skip
            await ws.send_str(json.dumps({"type": "hello", "token": self.token, "view": None}))
            answer = await ws.receive(timeout=RELAY_TIMEOUT_S)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            world.recorder.error("connect", _error_of(error))
            return False
        if answer.type is not aiohttp.WSMsgType.TEXT or json.loads(answer.data).get("type") != "ready":
            world.recorder.error("connect", f"closed {ws.close_code}")
            await ws.close()
            return False
        self.ws = ws
        self.connected = True
        self._attempts = 0
        self._reader = asyncio.create_task(self._read(self.ws))
        if resync:
            world.spawn(self._resync())
        return True

    async def _resync(self) -> None:
        answer = await self._request({"type": "resync", "view": None})
        if answer[0] != "panel":
            self.world.recorder.error("relay", f"resync {answer[1]}")

    async def close(self) -> None:
        ws, self.ws = self.ws, None
        self.connected = False
        if ws is not None:
            await ws.close()
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        world = self.world
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            text: str = message.data
            head = FRAME_HEAD.search(text[:160])
            if head is None:
                continue
            kind, raw_id = head.group(1), head.group(2).strip('"')
            if kind == "panel":
                world.frame_bytes.append(len(text))
            if raw_id in self._waiting:
                future, _ = self._waiting.pop(raw_id)
                if not future.done():
                    future.set_result((kind, text))
            elif kind == "panel" and raw_id == "null":
                self._pushed(text)
        for future, _ in self._waiting.values():  # what was asked on this socket will not be answered
            if not future.done():
                future.set_result(("lost", "closed"))
        if ws is self.ws and not world.stopping:
            # Dropped under us (worker killed or drained, network): panel.js reconnects with backoff.
            self.connected = False
            world.recorder.error("socket", f"closed {ws.close_code}")
            world.spawn(self._reconnect(ws.close_code))

    def _pushed(self, text: str) -> None:
        """An unsolicited panel: an invalidation reached us (or a resync after pub/sub came back)."""
        frame = json.loads(text)
        partner = frame.get("partnerId") or self.partner
        asked = self.world.invalidated.get(partner)
        waited = self.world.recorder.now() - asked if asked is not None else None
        # Only a recent invalidation explains the push (a resync after pub/sub came back re-renders all).
        if waited is not None and waited < RELAY_TIMEOUT_S:
            self.world.recorder.ok("push", waited * 1000)
        if frame.get("token"):
            self.token = frame["token"]

    async def _reconnect(self, code: int | None) -> None:
        started = time.monotonic()
        while not self.world.stopping:
            self._attempts += 1
            # panel.js: exponential backoff with full jitter, capped at 15 s
            await asyncio.sleep(random.random() * min(15.0, 0.5 * 2 ** min(self._attempts, 5)))
            if self.world.stopping or self.connected:
                return
            if await self.connect(resync=True):
                self.world.recorder.ok("reconnect", (time.monotonic() - started) * 1000)
                return

    async def _request(self, frame: dict[str, Any]) -> tuple[str, str]:
        """Send a frame with a fresh id; ("panel"|"error", text) or ("lost", reason)."""
        ws = self.ws
        if ws is None or ws.closed:
            return "lost", "not connected"
        self._next_id += 1
        request_id = str(self._next_id)
        frame["id"] = self._next_id
        future: asyncio.Future[tuple[str, str]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (future, time.perf_counter())
        try:
            await ws.send_str(json.dumps(frame, separators=(",", ":")))
            return await asyncio.wait_for(future, RELAY_TIMEOUT_S)
        except (ConnectionError, RuntimeError) as error:
            return "lost", type(error).__name__
        except TimeoutError:
            return "lost", "timeout"
        finally:
            self._waiting.pop(request_id, None)

    # --- actions -----------------------------------------------------------------------------

    async def relay(self, partner: str, *, fields: dict[str, str] | None = None, kind: str = "relay") -> str:
        """Relay Sobot's `selected` for this customer; the outcome ("panel", an error code, or "lost")."""
        fields = fields or signed_fields(partner, self.email, policy=self.world.policy)
        frame = {"type": "selected", "view": None, "query": fields, "params": None, "partnerId": partner,
                 "uid": fields.get("uid")}  # fmt: skip
        started = time.perf_counter()
        outcome, text = await self._request(frame)
        ms = (time.perf_counter() - started) * 1000
        if outcome == "panel":
            body = json.loads(text)
            self.token = body.get("token") or self.token
            self.partner = body.get("partnerId") or partner
            if kind == "relay":
                self.world.recorder.ok("relay", ms)
            return "panel"
        code = json.loads(text).get("code", "?") if outcome == "error" else text
        if kind == "relay":
            self.world.recorder.error("relay", f"{outcome} {code}", ms)
        return str(code)

    async def send(self, kind: str) -> None:
        """Send an order card or a ticket for the current customer; retry a failure with the same event id."""
        world = self.world
        customer = world.customer(self.partner)
        if not customer["orders"]:
            kind = "goods_card" if kind == "order_card" else kind
        order = (customer["orders"] or [{"orderCode": "-", "url": customer["products"][0]["url"]}])[0]
        if kind == "goods_card":
            data: dict[str, Any] = goods_card_from_product(customer["products"][0], base_url=world.base)
        elif kind == "ticket":
            # A mini-program order's link is a page path; the ticket's url field takes http(s) only.
            link = order["url"] if order["url"].startswith("http") else customer["products"][0]["url"]
            data = {
                "card_title": f"{customer['name']} {order['orderCode']}",
                "card_url": link,
                "card_desc": "bench",
                "card_note": f"agent {self.index}",
            }
        else:
            data = order_card_from_order(order, base_url=world.base)
        event_id = f"bench-{secrets.token_hex(8)}"
        world.attempted.add(event_id)
        for attempt in range(SEND_ATTEMPTS):
            body = {"token": self.token, "kind": kind, "id": event_id, "data": data}
            started = time.perf_counter()
            try:
                async with world.http.post(f"{world.base}/panel/send?lang=en", json=body,
                                           timeout=HTTP_TIMEOUT) as response:  # fmt: skip
                    status = response.status
                    answer = await response.json(content_type=None) if status != 204 else {}
            except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                world.recorder.error("send", _error_of(error), (time.perf_counter() - started) * 1000)
            else:
                ms = (time.perf_counter() - started) * 1000
                if status == 200 and answer.get("ok") is True:
                    world.recorder.ok("send", ms)
                    if answer.get("spooled"):
                        world.recorder.ok("spooled", ms)
                    world.told.setdefault(event_id, Told(event_id, world.recorder.now(), bool(answer.get("spooled")),
                                                         bool(answer.get("duplicate"))))  # fmt: skip
                    return
                world.recorder.error("send", f"http {status} {answer.get('code', '')}".strip(), ms)
                if status in (400, 401, 403, 422):
                    return  # the page shows the problem; clicking again would not help
            await asyncio.sleep(0.5 * (attempt + 1))


Op = Callable[[Agent], Coroutine[Any, Any, Any]]


async def poisson(world: World, agents: list[Agent], rate: float, op: Op, until: Callable[[], bool],
                  kind: str) -> None:  # fmt: skip
    """Open-loop arrivals at `rate` a second, each given to a random idle connected agent."""
    if rate <= 0:
        return
    next_at = time.monotonic()
    while not until():
        next_at += random.expovariate(rate)
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        for _ in range(8):
            agent = agents[random.randrange(len(agents))]
            if agent.connected and not agent.busy:
                agent.busy = True  # now, not when the task starts: another generator may pick it meanwhile
                world.spawn(_run(agent, op))
                break
        else:
            world.recorder.error("skipped", kind)


async def _run(agent: Agent, op: Op) -> None:
    try:
        await op(agent)
    finally:
        agent.busy = False

"""`POST /panel/send`: validate, record, answer; and nothing lost or doubled when Redis goes away."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sobot_panel.app import create_app
from sobot_panel.directory.sample import SampleDirectory
from sobot_panel.protocol.card_builders import order_card_from_order
from sobot_panel.protocol.surfaces import build_query_string
from sobot_panel.redis import EmbeddedRedis, connect
from sobot_panel.settings import Settings

from .helpers.live import boot_of, workbench_fields

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]


def first_order_card() -> dict[str, Any]:
    customer = next(c for c in SampleDirectory().customers if c.partnerId == "C1001")
    return order_card_from_order(customer.orders[0].model_dump(), base_url="http://127.0.0.1:8080")


async def token_for(client: TestClient[Any, Any], partner_id: str = "C1001") -> str:
    page = await (await client.get(f"/embed/workbench?{build_query_string(workbench_fields(partner_id))}")).text()
    return str(boot_of(page)["token"])


async def send(client: TestClient[Any, Any], token: str, kind: str, data: Any, event_id: str | None = None) -> Any:
    body = {"token": token, "kind": kind, "id": event_id or uuid.uuid4().hex, "data": data}
    response = await client.post("/panel/send?lang=en", json=body)
    return response.status, await response.json()


@pytest.fixture
async def client(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]) -> TestClient[Any, Any]:
    # Cards and tickets both from the workbench's token (by default tickets are the ticket center's).
    return await aiohttp_client(create_app(make_settings(ticket_surfaces="workbench ticket")))


@pytest.mark.parametrize(
    ("settings", "kind"),
    [
        pytest.param({}, "ticket", id="ticket-from-the-workbench"),
        pytest.param({"card_surfaces": "call"}, "order_card", id="card-where-cards-are-off"),
    ],
)
async def test_a_send_the_surface_does_not_offer_is_refused_and_not_recorded(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], settings: dict[str, str], kind: str
) -> None:
    client = await aiohttp_client(create_app(make_settings(**settings)))
    data = {"card_title": "t"} if kind == "ticket" else first_order_card()
    status, body = await send(client, await token_for(client), kind, data)
    assert status == 403 and body["code"] == "action_not_offered" and kind in body["message"]
    from sobot_panel.appkeys import KEYS, REDIS

    app = client.server.app
    assert app is not None
    assert await app[REDIS].xlen(app[KEYS].audit_stream) == 0


async def test_a_valid_order_card_is_recorded_and_answered_with_the_exact_message(
    client: TestClient[Any, Any],
) -> None:
    token = await token_for(client)
    status, body = await send(client, token, "order_card", first_order_card(), "evt-000000001")
    assert status == 200 and body["ok"] and not body["duplicate"]
    message = body["message"]
    assert message["msgType"] == 25 and message["uid"] == "u-C1001" and message["cid"] == "c-1"
    assert json.loads(message["miniPage"])["orderCode"]
    from sobot_panel.appkeys import KEYS, REDIS

    app = client.server.app
    assert app is not None
    entries = await app[REDIS].xrange(app[KEYS].audit_stream)
    assert len(entries) == 1
    fields = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
              for k, v in entries[0][1].items()}  # fmt: skip
    assert fields["kind"] == "order_card" and fields["id"] == "evt-000000001" and fields["agent"] == "agent@acme.cn"
    assert fields["partner_id"] == "C1001" and fields["surface"] == "workbench"
    assert json.loads(fields["payload"]) == message
    # A retried click with the same id is answered again but never recorded twice.
    status, again = await send(client, token, "order_card", first_order_card(), "evt-000000001")
    assert status == 200 and again["duplicate"] and again["entryId"] == body["entryId"]
    assert await app[REDIS].xlen(app[KEYS].audit_stream) == 1


@pytest.mark.parametrize(
    ("kind", "data", "field"),
    [
        pytest.param("ticket", {"card_title": "", "card_url": "ftp://x"}, "card_title", id="ticket-required"),
        pytest.param("ticket", {"card_title": "t", "card_url": "ftp://x"}, "card_url", id="ticket-url"),
        pytest.param("ticket", {"card_title": "t", "nope": "x"}, "nope", id="ticket-unknown-field"),
        pytest.param("order_card", {**first_order_card(), "totalFee": "12.50"}, "totalFee", id="order-fee"),
        pytest.param("order_card", {**first_order_card(), "orderUrl": "javascript:alert(1)"}, "orderUrl",
                     id="order-url"),
        pytest.param("goods_card", {"title": "", "url": "https://x.cn"}, "title", id="goods-title"),
    ],
)  # fmt: skip
async def test_invalid_payloads_are_422_naming_the_field_and_record_nothing(
    client: TestClient[Any, Any], kind: str, data: dict[str, Any], field: str
) -> None:
    token = await token_for(client)
    status, body = await send(client, token, kind, data)
    assert status == 422 and body["ok"] is False
    assert field in {problem["field"] for problem in body["problems"]}
    assert all(problem["message"] and problem["message"] != problem["code"] for problem in body["problems"])
    from sobot_panel.appkeys import KEYS, REDIS

    app = client.server.app
    assert app is not None
    assert await app[REDIS].xlen(app[KEYS].audit_stream) == 0


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param("not json", 400, "body_not_json", id="not-json"),
        pytest.param({"token": "forged.x", "kind": "ticket", "id": "abcdefgh1", "data": {}}, 401, "token_invalid",
                     id="forged-token"),
        pytest.param({"kind": "fax", "id": "abcdefgh1", "data": {}}, 400, "unknown_kind", id="unknown-kind"),
        pytest.param({"kind": "ticket", "id": "x", "data": {}}, 400, "bad_event_id", id="bad-id"),
    ],
)  # fmt: skip
async def test_malformed_requests(client: TestClient[Any, Any], body: Any, status: int, code: str) -> None:
    if isinstance(body, dict) and "token" not in body:
        body = {**body, "token": await token_for(client)}
    response = await client.post("/panel/send", data=body if isinstance(body, str) else json.dumps(body),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    answer = await response.json()
    assert response.status == status and answer["code"] == code and answer["message"]


async def _stream_ids(url: str, stream: str) -> list[str]:
    client = connect(url)
    try:
        entries = await client.xrange(stream)
    finally:
        await client.aclose()
    ids = []
    for _, fields in entries:
        value = fields.get(b"id", fields.get("id"))
        ids.append(value.decode() if isinstance(value, bytes) else str(value))
    return ids


async def _wait_for_ids(url: str, stream: str, expected: list[str], timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    ids: list[str] = []
    while time.monotonic() < deadline:
        try:
            ids = await _stream_ids(url, stream)
        except Exception:
            ids = []
        if len(ids) >= len(expected):
            break
        await asyncio.sleep(0.05)
    return ids


@pytest.mark.parametrize("restart_service", [False, True], ids=["replayed-live", "replayed-after-restart"])
async def test_sends_during_a_redis_outage_are_spooled_and_replayed_exactly_once_in_order(
    aiohttp_client: ClientFactory,
    make_settings: Callable[..., Settings],
    own_redis: EmbeddedRedis,
    restart_service: bool,
) -> None:
    settings = make_settings(redis_url=own_redis.url)
    client = await aiohttp_client(create_app(settings))
    token = await token_for(client)
    own_redis.kill()
    sent: list[str] = []
    for index in range(50):
        event_id = f"outage-{index:04d}-{uuid.uuid4().hex[:8]}"
        status, body = await send(client, token, "order_card", first_order_card(), event_id)
        assert status == 200 and body["ok"] and body["spooled"], body
        sent.append(event_id)
    if restart_service:
        await client.close()  # the process ends with a non-empty spool...
        own_redis.start()
        client = await aiohttp_client(create_app(settings))  # ...and the next one replays it
    else:
        own_redis.start()
    stream = "panel:audit"
    ids = await _wait_for_ids(own_redis.url, stream, sent)
    assert ids == sent  # exactly those 50, in order, no duplicates
    # Replaying again (another start) never doubles them.
    again = await aiohttp_client(create_app(settings))
    assert await _stream_ids(own_redis.url, stream) == sent
    await again.close()

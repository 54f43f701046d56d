"""Sessions for every query the limits allow: a panel whose `params` is long keeps its websocket (the
hello, a relayed `selected`, a resync, a reconnect with the pushed token) and its sends, through the real
service. The session token holds the verified context, so it grows with the query."""

from __future__ import annotations

import json
import random
import string
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sobot_panel.app import create_app
from sobot_panel.directory.sample import SampleDirectory
from sobot_panel.protocol.card_builders import order_card_from_order
from sobot_panel.protocol.surfaces import MAX_QUERY_LENGTH, MAX_VALUE_LENGTH, build_query_string
from sobot_panel.settings import Settings

from .helpers.live import boot_of, connect_panel, next_frame, selected, workbench_fields

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
MARK = "尾标-LONG-PARAMS-END"  # the last thing in `params`: seen on the panel, the context survived whole


def ascii_text(count: int) -> str:
    rng = random.Random(3_500)  # random letters: a token that compression cannot shrink much
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(count))


def chinese_text(count: int) -> str:
    rng = random.Random(4_096)  # random CJK ideographs: 3 bytes each in UTF-8, 9 characters in a URL
    return "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(count))


def signed_with(partner_id: str, note: str) -> dict[str, str]:
    """A signed workbench context whose `params` (outside every sign formula) holds the note, then MARK."""
    params = json.dumps({"备注": note, "尾": MARK}, ensure_ascii=False, separators=(",", ":"))
    assert len(params) <= MAX_VALUE_LENGTH
    return workbench_fields(partner_id) | {"params": params}


@pytest.fixture
async def client(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(make_settings()))


async def send_card(client: TestClient[Any, Any], token: str, partner_id: str) -> tuple[int, dict[str, Any]]:
    customer = next(c for c in SampleDirectory().customers if c.partnerId == partner_id)
    data = order_card_from_order(customer.orders[0].model_dump(), base_url="http://127.0.0.1:8080")
    body = {"token": token, "kind": "order_card", "id": uuid.uuid4().hex, "data": data}
    response = await client.post("/panel/send", json=body)
    return response.status, await response.json()


async def keeps_its_socket_and_sends(client: TestClient[Any, Any], token: str, relay: dict[str, str]) -> str:
    """Hello accepted, the relay pushed, a resync answered, a reconnect with the pushed token accepted and
    resynced, and sends with both tokens recorded; returns the pushed token."""
    ws = await connect_panel(client, token)
    await ws.send_json(selected(relay, 7))
    pushed = await next_frame(ws, "panel")
    assert pushed["id"] == 7 and pushed["partnerId"] == "C1002" and MARK in pushed["html"]
    await ws.send_json({"type": "resync", "id": 8})
    again = await next_frame(ws, "panel")
    assert again["id"] == 8 and again["partnerId"] == "C1002" and MARK in again["html"]
    await ws.close()
    reconnected = await connect_panel(client, pushed["token"])  # a reconnect presents the long token
    await reconnected.send_json({"type": "resync", "id": 9})
    resynced = await next_frame(reconnected, "panel")
    assert resynced["id"] == 9 and resynced["partnerId"] == "C1002" and MARK in resynced["html"]
    await reconnected.close()
    status, answer = await send_card(client, pushed["token"], "C1002")
    assert status == 200 and answer["ok"], answer
    return str(pushed["token"])


@pytest.mark.parametrize(
    ("note", "at_least"),
    [
        pytest.param(ascii_text(3_500), 3_500, id="ascii-3500"),
        # 1,740 ideographs are 15.7 KB in a URL: as much Chinese as the 16 KiB query limit lets through.
        pytest.param(chinese_text(1_740), 15_000, id="chinese-at-the-query-limit"),
    ],
)
async def test_a_signed_page_with_long_params_keeps_its_websocket_and_its_sends(
    client: TestClient[Any, Any], note: str, at_least: int
) -> None:
    fields = signed_with("C1001", note)
    query = build_query_string(fields)
    assert at_least <= len(query) <= MAX_QUERY_LENGTH and len(fields["params"]) >= len(note)
    response = await client.get(f"/embed/workbench?{query}")
    page = await response.text()
    assert response.status == 200 and MARK in page, page[:300]
    token = str(boot_of(page)["token"])
    status, answer = await send_card(client, token, "C1001")
    assert status == 200 and answer["ok"], answer
    await keeps_its_socket_and_sends(client, token, signed_with("C1002", note))


async def test_a_relay_with_params_at_the_value_limit_keeps_its_session(client: TestClient[Any, Any]) -> None:
    """4,000 ideographs fit the 4 KiB value limit but no URL (36 KB encoded); a relay carries them unencoded.
    The token that holds them is past 8 KiB, which the hello once refused (a reconnect loop with 4400)."""
    response = await client.get(f"/embed/workbench?{build_query_string(workbench_fields('C1001'))}")
    relay = signed_with("C1002", chinese_text(4_000))
    assert MAX_VALUE_LENGTH - 100 < len(relay["params"]) <= MAX_VALUE_LENGTH
    pushed = await keeps_its_socket_and_sends(client, str(boot_of(await response.text())["token"]), relay)
    assert len(pushed) > 8 * 1024

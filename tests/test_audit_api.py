"""`GET /api/audit` (CONTRACT "HTTP"): the stream for consumers without Redis credentials. Following `next`
until null returns every matching entry exactly once, whatever the filters, the page size or appends
arriving meanwhile."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sobot_panel.app import create_app
from sobot_panel.appkeys import KEYS, REDIS
from sobot_panel.audit.producer import AuditLog, AuditRecord
from sobot_panel.protocol.send import SendKind
from sobot_panel.settings import Settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
AUTH = {"Authorization": "Bearer test-api-token"}
KINDS: list[SendKind] = ["ticket", "order_card", "goods_card"]


def _record(n: int) -> AuditRecord:
    return AuditRecord(kind=KINDS[n % 3], id=f"api-evt-{n:06d}", at=1_764_000_000_000 + n, surface="workbench",
                       agent=f"agent{n % 4}@acme.cn", partner_id=f"C{n % 5}", payload=json.dumps({"n": n}),
                       sysnum="acme123")  # fmt: skip


@pytest.fixture
async def client(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(make_settings()))


async def _append(client: TestClient[Any, Any], numbers: range) -> None:
    app = client.server.app
    assert app is not None
    await AuditLog(app[REDIS], app[KEYS]).append_many([_record(n) for n in numbers])


async def _follow(client: TestClient[Any, Any], query: str, *, during: Callable[[int], Awaitable[None]] | None = None
                  ) -> tuple[list[dict[str, Any]], int]:  # fmt: skip
    entries: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        url = f"/api/audit?{query}" + (f"&cursor={cursor}" if cursor else "")
        response = await client.get(url, headers=AUTH)
        assert response.status == 200, await response.text()
        body = await response.json()
        entries.extend(body["entries"])
        pages += 1
        if during is not None:
            await during(pages)
        cursor = body["next"]
        if cursor is None:
            return entries, pages
        assert pages < 1000


@pytest.mark.parametrize(
    ("query", "wanted"),
    [
        pytest.param("limit=7", lambda n: True, id="everything"),
        pytest.param("limit=3&kind=ticket", lambda n: n % 3 == 0, id="kind"),
        pytest.param("limit=5&kind=ticket&kind=goods_card", lambda n: n % 3 != 1, id="two-kinds"),
        pytest.param("limit=4&agent=agent1@acme.cn&partner_id=C2", lambda n: n % 4 == 1 and n % 5 == 2,
                     id="agent+partner"),
        pytest.param("limit=1000&partner_id=C9", lambda n: False, id="nothing-matches"),
    ],
)  # fmt: skip
async def test_following_next_returns_every_matching_entry_exactly_once(
    client: TestClient[Any, Any], query: str, wanted: Callable[[int], bool]
) -> None:
    await _append(client, range(250))
    entries, _ = await _follow(client, query)
    assert [e["id"] for e in entries] == [_record(n).id for n in range(250) if wanted(n)]
    if entries:
        first = entries[0]
        assert set(first) == {*_record(0).fields(), "entry_id"}
        assert isinstance(first["payload"], dict) and first["v"] == "2" and first["sysnum"] == "acme123"


async def test_a_sparse_filter_pages_through_the_scan_budget(
    client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sobot_panel.audit import http

    monkeypatch.setattr(http, "SCAN_BUDGET", 40)
    await _append(client, range(200))
    entries, pages = await _follow(client, "limit=10&partner_id=C3&agent=agent3@acme.cn")
    assert [e["id"] for e in entries] == [_record(n).id for n in range(200) if n % 5 == 3 and n % 4 == 3]
    assert pages >= 5, "a page stops at the scan budget and says where to go on"


async def test_entries_appended_while_paging_are_found_once(client: TestClient[Any, Any]) -> None:
    await _append(client, range(50))

    async def more(page: int) -> None:
        if page <= 3:
            await _append(client, range(50 + (page - 1) * 10, 50 + page * 10))

    entries, _ = await _follow(client, "limit=20", during=more)
    assert [e["id"] for e in entries] == [_record(n).id for n in range(80)]


async def test_since_and_until_select_by_stream_time(client: TestClient[Any, Any]) -> None:
    app = client.server.app
    assert app is not None
    for n in range(10):
        await app[REDIS].xadd(app[KEYS].audit_stream, _record(n).fields(), id=f"{1_000_000 + n * 1000}-0")
    entries, _ = await _follow(client, "since=1003000&until=1006000&limit=2")
    assert [e["id"] for e in entries] == [_record(n).id for n in range(3, 7)]


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("cursor=abc", 400, "audit_bad_cursor"),
        ("since=yesterday", 400, "audit_bad_time"),
        ("limit=0", 400, "audit_bad_limit"),
        ("limit=5000", 400, "audit_bad_limit"),
        ("kind=fax", 400, "audit_bad_kind"),
    ],
)
async def test_bad_queries_are_named(client: TestClient[Any, Any], query: str, status: int, code: str) -> None:
    response = await client.get(f"/api/audit?{query}&lang=en", headers=AUTH)
    body = await response.json()
    assert response.status == status and body["code"] == code and body["message"] and code not in body["message"]


async def test_a_token_is_needed(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/api/audit")).status == 401
    assert (await client.get("/api/audit", headers={"Authorization": "Bearer nope"})).status == 401
    assert (await client.get("/api/audit", headers={"Authorization": "Bearer test-ops-token"})).status == 200

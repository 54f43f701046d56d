"""Issue 5: the ops dashboard at `/ops` — access, rolling counters fed by the group `ops`, filters, the card
as the customer saw it, the live feed across replicas, bounded work per page view, and Chromium end to end."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import BrowserContext, Page, expect
from sobot_panel.app import create_app
from sobot_panel.appkeys import COMPANIES, REDIS
from sobot_panel.audit.producer import AuditRecord
from sobot_panel.audit.reader import AuditReader, Entry
from sobot_panel.clock import CHINA_TZ
from sobot_panel.devhost import AGENT_EMAIL, FRAME_SIZES
from sobot_panel.ops import dashboard as ops
from sobot_panel.ops.counters import (
    DAY_MINUTES,
    Filters,
    bar_chart,
    breakdown,
    bucket_fields,
    entry_minute,
    feed_item,
    id_order,
    nice_top,
    summarize,
    summary_text,
    windows,
)
from sobot_panel.ops.dashboard import FILTER_SCAN_MAX, recent_sends
from sobot_panel.ops.feed import COUNT_CHUNK, OpsCounter, feed_channel
from sobot_panel.protocol.cards import build_message
from sobot_panel.protocol.surfaces import Surface
from sobot_panel.protocol.ticket_fields import DEFAULT_TICKET_FIELDS
from sobot_panel.redis import EmbeddedRedis
from sobot_panel.redis.keys import Keys
from sobot_panel.settings import Settings

pytest.register_assert_rewrite("tests.helpers.browser")

from .helpers.browser import (  # noqa: E402
    BROWSER,
    FakeParent,
    PanelServerFactory,
    sample_customer,
    save_screenshot_path,
    text,
    wait_received,
)

pytest_plugins = ["tests.helpers.browser"]

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
TOKEN = "test-ops-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEYS_ = Keys()

ORDER = {"orderStatus": 3, "createTime": 1744029900000, "orderCode": "SO20250407015",
         "orderUrl": "https://shop.example.cn/orders/SO20250407015", "totalFee": 45900, "goodsCount": 2,
         "goods": [{"name": "轻跑 3 代缓震跑鞋", "pictureUrl": "https://shop.example.cn/img/shoes.png"},
                   {"name": "运动袜 3 双装", "pictureUrl": "https://shop.example.cn/img/socks.png"}]}  # fmt: skip
GOODS = {"title": "静享 Pro 降噪蓝牙耳机", "url": "https://shop.example.cn/p/1", "description": "40 小时续航",
         "label": "1299元", "thumbnail": "https://shop.example.cn/img/headphones.png"}  # fmt: skip
GENERAL = {"cardType": 0, "cardStyle": 1, "customCards": [{
    "customCardName": "轻跑 3 代缓震跑鞋", "customCardThumbnail": "https://shop.example.cn/img/shoes.png",
    "customCardAmount": "459.00", "customCardAmountSymbol": "¥", "customCardStatus": "运输中",
    "customCardCode": "SO20250407015", "customCardCount": "1", "customCardTime": "2025-04-07 20:45:00",
    "customCardLink": "https://shop.example.cn/orders/SO20250407015"}]}  # fmt: skip
TICKET = {"card_title": "耳机左耳无声音", "card_desc": "申请换货", "card_note": "1500元"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def message(kind: str, card_format: str = "classic") -> dict[str, Any]:
    data = {"order_card": GENERAL if card_format == "v6" else ORDER, "goods_card": GOODS, "ticket": TICKET}[kind]
    return build_message(kind, data, card_format=card_format, cid="c-1", uid="u-1", mini_program=False,  # type: ignore[arg-type]
                         ticket_fields=list(DEFAULT_TICKET_FIELDS))  # fmt: skip


_serial = iter(range(10**9))


def record(kind: str = "order_card", *, agent: str = "li@acme.cn", partner: str = "C1001", surface: str = "workbench",
           at: int | None = None, card_format: str = "classic") -> AuditRecord:  # fmt: skip
    payload = json.dumps(message(kind, card_format), ensure_ascii=False, separators=(",", ":"))
    return AuditRecord(
        kind=kind, id=f"evt-{next(_serial):010d}", at=now_ms() if at is None else at,
        surface=surface, agent=agent, partner_id=partner, uid="u-1", cid="c-1", payload=payload,
    )  # fmt: skip


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0) -> None:
    """Poll `check` until it holds, or fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def ops_group(redis: aioredis.Redis) -> dict[str, Any] | None:
    try:
        groups = await redis.xinfo_groups(KEYS_.audit_stream)
    except aioredis.ResponseError:
        return None
    return next((g for g in groups if g["name"] == "ops"), None)


async def consumers_ready(redis: aioredis.Redis, count: int = 1) -> None:
    """Every replica's consumer has joined the group (entries appended from now on are counted)."""

    async def check() -> bool:
        group = await ops_group(redis)
        return group is not None and int(group["consumers"]) >= count

    await until(check, f"{count} consumers in group ops")


async def drained(redis: aioredis.Redis) -> None:
    """Every entry delivered to the group and acked, i.e. counted."""

    async def check() -> bool:
        group = await ops_group(redis)
        return group is not None and (group["lag"] or 0) == 0 and int(group["pending"]) == 0

    await until(check, "group ops drained")


async def summary(client: TestClient[Any, Any]) -> dict[str, Any]:
    response = await client.get("/ops/api/summary", headers=AUTH)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


@pytest.fixture
async def client(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]) -> TestClient[Any, Any]:
    client = await aiohttp_client(create_app(make_settings()))
    await consumers_ready(client.app[REDIS])
    return client


# --- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0, 1, 30, 58, 59], ids=lambda o: f"minute-{o}-of-the-hour")
def test_day_window_is_exactly_1440_minutes_from_few_buckets(offset: int) -> None:
    now = 480_000 * 60 + offset  # any hour, `offset` minutes in
    plan = windows(now)
    covered = list(plan.day_lead_minutes) + [m for h in plan.day_full_hours for m in range(h * 60, h * 60 + 60)]
    covered += list(plan.day_tail_minutes)
    assert sorted(covered) == list(range(now - DAY_MINUTES + 1, now + 1)), "no gap, no overlap"
    assert list(plan.hour_minutes) == list(range(now - 59, now + 1))
    assert len(plan.minutes) <= 119 and len(plan.hours) == 24
    assert plan.chart_hours[-1] == now // 60


@pytest.mark.parametrize(
    ("entry_id", "at", "minute"),
    [
        pytest.param("120000-0", "60000", 1, id="replayed-record-counts-when-sent"),
        pytest.param("120000-0", "999999", 2, id="clock-ahead-is-capped-by-the-stream-id"),
        pytest.param("120000-0", "", 2, id="no-at-uses-the-stream-id"),
    ],
)
def test_entry_minute(entry_id: str, at: str, minute: int) -> None:
    assert entry_minute(entry_id, {"at": at}) == minute


def test_bucket_fields_skip_empty_dimensions() -> None:
    assert bucket_fields({"kind": "ticket", "surface": "call", "agent": "a@b"}) == [
        "total", "kind:ticket", "surface:call", "agent:a@b"]  # fmt: skip
    assert bucket_fields({"kind": "ticket", "surface": "", "agent": ""}) == ["total", "kind:ticket"]


def test_summarize_sums_hour_and_day_and_ranks_agents() -> None:
    now = 100 * 60 + 30  # minute 30 of hour 100
    plan = windows(now)
    minutes = {now: {"total": "2", "kind:ticket": "2", "agent:b": "2"}, now - 61: {"total": "1", "agent:a": "1"},
               now - DAY_MINUTES + 1: {"total": "4", "agent:a": "4"}, now - DAY_MINUTES: {"total": "100"}}  # fmt: skip
    hours = {99: {"total": "1", "agent:a": "1"}, 90: {"total": "3", "agent:c": "3"}, 76: {"total": "1000"}}
    got = summarize(now * 60_000, plan, minutes, hours)
    assert got.hour.total == 2 and got.hour.kind == {"ticket": 2}
    # the minute 61 ago lies in hour 99, whose hour bucket already holds it: read from buckets, not minutes
    assert got.day.total == 4 + 1 + 3 + 2, "lead minutes + full hours + this hour; nothing older than a day"
    assert got.day.top_agents() == [("a", 5), ("c", 3), ("b", 2)]
    assert [count for _, count in got.minutes][-1] == 2 and len(got.minutes) == 60
    assert dict(got.hours)[90] == 3 and len(got.hours) == 24


def test_breakdown_orders_busiest_first_then_by_name() -> None:
    counts = breakdown({"total": 6, "agent:z": 2, "agent:a": 2, "agent:m": 1, "kind:ticket": 6, "odd": 9})
    assert list(counts.agent) == ["a", "z", "m"] and counts.total == 6 and counts.kind == {"ticket": 6}


@pytest.mark.parametrize(
    ("peak", "top"), [(0, 4), (3, 4), (5, 5), (7, 10), (21, 25), (51, 60), (130, 200), (999, 1000)]
)
def test_nice_top(peak: int, top: int) -> None:
    assert nice_top(peak) == top


def test_bar_chart_geometry() -> None:
    series = [(minute, value) for minute, value in zip(range(1000, 1060), [0] * 59 + [8], strict=True)]
    chart = bar_chart(series, 60_000, width=600, height=120)
    assert chart.top == 10 and chart.total == 8 and chart.peak is not None and chart.peak.value == 8
    last = chart.bars[-1]
    assert last.height == pytest.approx(chart.plot_height * 0.8) and last.y + last.height == pytest.approx(
        chart.pad_top + chart.plot_height)  # fmt: skip
    assert len(chart.ticks) == 6 and chart.ticks[0][1] == datetime.fromtimestamp(1000 * 60, CHINA_TZ).strftime("%H:%M")
    assert bar_chart([], 60_000).peak is None


@pytest.mark.parametrize(
    ("filters", "fields", "matches"),
    [
        (Filters(), {"kind": "ticket"}, True),
        (Filters(kind="ticket"), {"kind": "order_card"}, False),
        (Filters(agent="LI@"), {"agent": "li@acme.cn"}, True),
        (Filters(agent="wang"), {"agent": "li@acme.cn"}, False),
        (Filters(customer="1001"), {"partner_id": "C1001"}, True),
        (Filters(customer="C2"), {"partner_id": ""}, False),
        (Filters("li", "C1", "ticket"), {"agent": "li", "kind": "ticket", "partner_id": "C1"}, True),
    ],
)
def test_filters(filters: Filters, fields: dict[str, str], matches: bool) -> None:
    assert filters.matches(fields) is matches


@pytest.mark.parametrize(
    ("kind", "card_format", "summary"),
    [
        ("order_card", "classic", "SO20250407015 · ¥459.00"),
        ("goods_card", "classic", "静享 Pro 降噪蓝牙耳机 · 1299元"),
        ("order_card", "v6", "SO20250407015 · ¥459.00"),
        ("ticket", "classic", "耳机左耳无声音 · 申请换货 · 1500元"),
    ],
)
def test_summary_text(kind: str, card_format: str, summary: str) -> None:
    assert summary_text(kind, json.dumps(message(kind, card_format))) == summary
    assert summary_text(kind, "not json") == ""


def test_feed_item_and_id_order() -> None:
    item = feed_item("1764000000000-3", {"kind": "ticket", "at": "1764000000000", "agent": "a", "partner_id": "C1"})
    assert item["time"] == "11-25 00:00:00" and item["partnerId"] == "C1" and item["entryId"] == "1764000000000-3"
    assert id_order("10-2") < id_order("10-10") < id_order("11-0") and id_order("x") == (-1, -1)


# --- access ------------------------------------------------------------------------------------


async def test_no_ops_token_is_503_naming_the_setting_and_runs_no_consumer(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(ops_token=None)))
    response = await client.get("/ops")
    assert response.status == 503 and "PANEL_OPS_TOKEN" in await response.text()
    assert (await client.get("/ops/api/summary")).status == 503
    assert client.app[COMPANIES].default.counter is None and await ops_group(client.app[REDIS]) is None


@pytest.mark.parametrize(
    ("path", "json_body"),
    [("/ops", False), ("/ops/entries/1-0", False), ("/ops/api/summary", True), ("/ops/feed", True)],
)
async def test_wrong_or_missing_token_is_401(client: TestClient[Any, Any], path: str, json_body: bool) -> None:
    for headers, query in [({}, ""), ({"Authorization": "Bearer nope"}, ""), ({}, "?token=nope"),
                           ({"Cookie": "panel_ops=9999999999.deadbeef"}, "")]:  # fmt: skip
        response = await client.get(path + query, headers=headers, allow_redirects=False)
        body = await response.text()
        assert response.status == 401, (path, headers, query)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "nope" not in body
        if json_body:
            assert json.loads(body)["code"] == "ops_token_invalid"


async def test_token_login_sets_a_strict_httponly_cookie_and_leaves_the_url(client: TestClient[Any, Any]) -> None:
    response = await client.get("/ops?token=" + TOKEN + "&lang=en", allow_redirects=False)
    assert response.status == 303 and response.headers["Location"] == "/ops?lang=en"
    morsel = SimpleCookie(response.headers["Set-Cookie"])["panel_ops"]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/ops"
    assert TOKEN not in morsel.value and int(morsel["max-age"]) > 0
    page = await client.get("/ops?lang=en")  # the cookie jar carries the login
    body = await page.text()
    assert page.status == 200 and TOKEN not in body
    assert page.headers["Cache-Control"] == "no-store" and "frame-ancestors 'none'" in page.headers[
        "Content-Security-Policy"]  # fmt: skip
    assert (await client.get("/ops/api/summary")).status == 200, "the page's own fetches ride on the cookie"


async def test_a_cookie_stops_working_when_the_token_rotates(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    old = await aiohttp_client(create_app(make_settings()))
    response = await old.get(f"/ops?token={TOKEN}", allow_redirects=False)
    cookie = SimpleCookie(response.headers["Set-Cookie"])["panel_ops"].value
    rotated = await aiohttp_client(create_app(make_settings(ops_token="rotated-token")))
    assert (await rotated.get("/ops", headers={"Cookie": f"panel_ops={cookie}"})).status == 401
    assert (await old.get("/ops", headers={"Cookie": f"panel_ops={cookie}"})).status == 200


# --- counters ----------------------------------------------------------------------------------


async def test_counters_follow_appended_entries_by_kind_surface_and_agent(client: TestClient[Any, Any]) -> None:
    audit = client.app[COMPANIES].default.audit
    await audit.append(record("order_card", agent="li@acme.cn", surface="workbench"))
    await audit.append(record("order_card", agent="wang@acme.cn", surface="call"))
    await audit.append(record("ticket", agent="li@acme.cn", surface="workbench"))
    await audit.append(record("goods_card", agent="li@acme.cn", at=now_ms() - 3 * 3_600_000))  # replayed, sent 3 h ago
    await drained(client.app[REDIS])
    got = await summary(client)
    assert got["hour"]["total"] == 3 and got["day"]["total"] == 4
    assert got["hour"]["kind"] == {"order_card": 2, "ticket": 1}
    assert got["day"]["kind"] == {"order_card": 2, "ticket": 1, "goods_card": 1}
    assert got["day"]["surface"] == {"workbench": 3, "call": 1}
    assert got["agents"] == [["li@acme.cn", 2, 3], ["wang@acme.cn", 1, 1]]
    assert sum(count for _, count in got["series"]["minute"]) == 3
    assert sum(count for _, count in got["series"]["hour"]) == 4
    assert got["stream"]["length"] == 4 and got["stream"]["group"]["pending"] == 0


async def test_an_entry_is_counted_once_even_when_delivered_twice(client: TestClient[Any, Any]) -> None:
    counter = client.app[COMPANIES].default.counter
    await client.app[COMPANIES].default.audit.append(record())
    await drained(client.app[REDIS])
    [(entry_id, fields)] = await client.app[REDIS].xrange(KEYS_.audit_stream)
    assert await counter.count([Entry(entry_id, fields)]) == 0, "already acked: not counted again"
    assert (await summary(client))["hour"]["total"] == 1


async def test_two_replicas_sharing_redis_do_not_double_count(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    first = await aiohttp_client(create_app(settings))
    second = await aiohttp_client(create_app(settings))
    await consumers_ready(first.app[REDIS], 2)
    await first.app[COMPANIES].default.audit.append_many([record(agent=f"agent{i % 3}@acme.cn") for i in range(60)])
    await second.app[COMPANIES].default.audit.append_many([record("ticket") for _ in range(40)])
    await drained(first.app[REDIS])
    for replica in (first, second):
        got = await summary(replica)
        assert got["hour"]["total"] == got["day"]["total"] == 100
        assert got["hour"]["kind"] == {"order_card": 60, "ticket": 40}
    assert first.app[COMPANIES].default.counter.counted + second.app[COMPANIES].default.counter.counted == 100


async def test_a_burst_is_counted_once_each_in_batches_within_the_budget(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    """The consumer reads at most its batch per tick; a burst bigger than many batches is still counted once."""
    client = await aiohttp_client(create_app(make_settings(ops_consumer="off")))
    counter = OpsCounter(client.app[REDIS], KEYS_, "budgeted", batch=40, tick_s=0.01)
    batches: list[int] = []
    count = counter.count

    async def recording(entries: list[Entry]) -> int:
        batches.append(len(entries))
        return await count(entries)

    counter.count = recording  # type: ignore[method-assign]
    runner = asyncio.create_task(counter.run())
    try:
        await consumers_ready(client.app[REDIS])
        await client.app[COMPANIES].default.audit.append_many([record(agent=f"a{i % 7}@acme.cn") for i in range(250)])
        await drained(client.app[REDIS])
    finally:
        counter.stop()
        await runner
    assert counter.counted == 250 and sum(batches) == 250
    assert max(batches) <= 40 and len(batches) >= 7, batches
    got = await summary(client)
    assert got["hour"]["total"] == 250 and got["hour"]["kind"] == {"order_card": 250}


async def test_count_splits_a_big_batch_and_skips_what_was_acked(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    """A batch bigger than one script call's chunk: every entry counted once, an acked one not again."""
    client = await aiohttp_client(create_app(make_settings(ops_consumer="off")))
    reader = AuditReader(client.app[REDIS], KEYS_, "ops", "by-hand")
    await client.app[COMPANIES].default.audit.append_many([record() for _ in range(COUNT_CHUNK + 30)])
    await reader.ensure_group("0")
    entries: list[Entry] = []
    while page := await reader.read(1000):
        entries += page
    assert len(entries) == COUNT_CHUNK + 30
    counter = OpsCounter(client.app[REDIS], KEYS_, "by-hand")
    assert await counter.count(entries[:10]) == 10
    assert await counter.count(entries) == COUNT_CHUNK + 20, "the first ten were acked already"
    assert (await summary(client))["hour"]["total"] == COUNT_CHUNK + 30


async def test_a_replica_with_the_consumer_off_leaves_counting_to_another(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    """PANEL_OPS_CONSUMER=off: the replica that takes sends runs no consumer; one that has it on counts them,
    and the dashboard of either shows the counts."""
    sends = await aiohttp_client(create_app(make_settings(ops_consumer="off")))
    counts = await aiohttp_client(create_app(make_settings()))
    await consumers_ready(sends.app[REDIS], 1)
    assert sends.app[COMPANIES].default.counter is None
    await sends.app[COMPANIES].default.audit.append_many([record("ticket") for _ in range(30)])
    await drained(sends.app[REDIS])
    group = await ops_group(sends.app[REDIS])
    assert group is not None and int(group["consumers"]) == 1
    assert counts.app[COMPANIES].default.counter.counted == 30
    for replica in (sends, counts):
        got = await summary(replica)
        assert got["hour"]["total"] == 30 and got["hour"]["kind"] == {"ticket": 30}


# --- the page, filters and details ----------------------------------------------------------------


def rows(page: str) -> list[str]:
    return re.findall(r'<tr data-entry-id="([0-9]+-[0-9]+)">', page)


async def test_dashboard_lists_recent_sends_and_filters_them(client: TestClient[Any, Any]) -> None:
    audit = client.app[COMPANIES].default.audit
    await audit.append(record("order_card", agent="li@acme.cn", partner="C1001"))
    await audit.append(record("ticket", agent="wang@acme.cn", partner="C1002"))
    await audit.append(record("goods_card", agent="li@acme.cn", partner="C1002"))
    await drained(client.app[REDIS])
    page = await (await client.get("/ops", headers=AUTH)).text()
    assert len(rows(page)) == 3 and 'data-testid="hour-total">3<' in page
    assert "SO20250407015 · ¥459.00" in page and 'aria-labelledby="chart-minutes-title chart-minutes-desc"' in page
    for query, expected in [("agent=LI", 2), ("customer=C1002", 2), ("kind=ticket", 1),
                            ("agent=li&customer=C1002&kind=goods_card", 1), ("agent=nobody", 0)]:  # fmt: skip
        page = await (await client.get(f"/ops?{query}", headers=AUTH)).text()
        assert len(rows(page)) == expected, query
    assert text("ops_recent_none") in page


async def test_filters_scan_a_bounded_window_and_page_further(client: TestClient[Any, Any]) -> None:
    audit = client.app[COMPANIES].default.audit
    await audit.append(record("ticket", agent="needle@acme.cn"))
    await audit.append_many([record() for _ in range(FILTER_SCAN_MAX + 50)])
    redis = client.app[REDIS]
    found = await recent_sends(redis, KEYS_, Filters(agent="needle"))
    assert found.rows == [] and found.scanned == FILTER_SCAN_MAX and found.older, "stops at the bound, offers more"
    further = await recent_sends(redis, KEYS_, Filters(agent="needle"), before=found.older)
    assert [row["agent"] for row in further.rows] == ["needle@acme.cn"] and further.older == ""
    page = await (await client.get("/ops?agent=needle", headers=AUTH)).text()
    assert f"before={found.older}" in page and "2,000" in page


@pytest.mark.parametrize(
    ("kind", "card_format", "expected"),
    [
        pytest.param("order_card", "classic", ["SO20250407015", "运输中", "¥459.00", "共 2 件商品",
                                               'src="https://shop.example.cn/img/socks.png"'], id="order-card-25"),
        pytest.param("goods_card", "classic", ["静享 Pro 降噪蓝牙耳机", "1299元", "40 小时续航",
                                               'src="https://shop.example.cn/img/headphones.png"'], id="goods-card-24"),
        pytest.param("order_card", "v6", ["SO20250407015", "运输中", "¥459.00", "2025-04-07 20:45:00"],
                     id="general-card-28"),
        pytest.param("ticket", "classic", ["标题", "耳机左耳无声音", "备注", "1500元"], id="ticket"),
    ],
)  # fmt: skip
async def test_detail_shows_the_card_as_the_customer_saw_it(
    client: TestClient[Any, Any], kind: str, card_format: str, expected: list[str]
) -> None:
    appended = await client.app[COMPANIES].default.audit.append(record(kind, card_format=card_format))
    response = await client.get(f"/ops/entries/{appended.entry_id}", headers=AUTH)
    page = await response.text()
    assert response.status == 200
    for snippet in expected:
        assert snippet in page, snippet
    assert "&#34;msgType&#34;" in page or "&#34;createOrder&#34;" in page, "the raw payload is shown, escaped"


async def test_detail_of_an_entry_from_another_writer_links_only_http(client: TestClient[Any, Any]) -> None:
    hostile = {"cid": "c", "uid": "u", "msgType": 24, "miniPage": json.dumps(
        {"title": "<b>x</b>", "url": "javascript:alert(1)", "thumbnail": "javascript:alert(2)"})}  # fmt: skip
    entry_id = await client.app[REDIS].xadd(KEYS_.audit_stream, {"kind": "goods_card", "payload": json.dumps(hostile)})
    page = await (await client.get(f"/ops/entries/{entry_id}", headers=AUTH)).text()
    assert 'href="javascript' not in page and 'src="javascript' not in page and "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page


async def test_detail_of_a_missing_or_malformed_entry_is_404(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/ops/entries/1-0", headers=AUTH)).status == 404
    assert (await client.get("/ops/entries/..%2Fetc", headers=AUTH)).status == 404


async def test_a_page_view_does_bounded_work_whatever_the_stream_length(client: TestClient[Any, Any]) -> None:
    """No command walks the stream: one XREVRANGE of 50, XLENs, and at most 143 bucket reads.

    The bench measures the same page against a stream of a million entries; here 3,000 stand in for it.
    """
    redis = client.app[REDIS]
    await client.app[COMPANIES].default.audit.append_many([record() for _ in range(3_000)])
    await drained(redis)

    async def calls() -> dict[str, int]:
        stats = await redis.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}

    for path, max_xrevrange in [("/ops", 1), ("/ops?agent=nobody", FILTER_SCAN_MAX // 500)]:
        before = await calls()
        assert (await client.get(path, headers=AUTH)).status == 200
        used = {name: count - before.get(name, 0) for name, count in (await calls()).items()}
        assert used.get("xrange", 0) == 0 and used.get("scan", 0) == 0 and used.get("keys", 0) == 0, used
        assert used.get("xrevrange", 0) <= max_xrevrange, used
        assert used.get("hgetall", 0) <= 119 + 24, used


# --- the live feed -----------------------------------------------------------------------------


async def next_send(response: aiohttp.ClientResponse, timeout: float = 2.0) -> dict[str, Any]:
    """The next `send` event of a Server-Sent Events stream (comments skipped), within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    event: dict[str, str] = {}
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no send event within {timeout}s")
        line = (await asyncio.wait_for(response.content.readline(), remaining)).decode()
        if not line:
            raise AssertionError("the event stream ended")
        line = line.rstrip("\n")
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(": ")
            event[name] = value
            continue
        if event.get("event") == "send":
            data: dict[str, Any] = json.loads(event["data"])
            assert event["id"] == data["entryId"]
            return data
        event = {}


async def open_feed(client: TestClient[Any, Any], **headers: str) -> aiohttp.ClientResponse:
    response = await client.get("/ops/feed", headers={**AUTH, **headers})
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    assert (await response.content.readline()).startswith(b"retry:")
    return response


async def subscribers(redis: aioredis.Redis, count: int, timeout: float = 5.0) -> None:
    async def check() -> bool:
        try:
            [(_, subscribed)] = await redis.pubsub_numsub(feed_channel(KEYS_))
        except (aioredis.RedisError, OSError):
            return False  # Redis is still coming back
        return int(subscribed) >= count

    await until(check, f"{count} feed subscribers", timeout)


async def test_feed_delivers_an_appended_entry_within_2s(client: TestClient[Any, Any]) -> None:
    await subscribers(client.app[REDIS], 1)
    feed = await open_feed(client)
    appended = await client.app[COMPANIES].default.audit.append(record("goods_card", agent="li@acme.cn"))
    got = await next_send(feed, 2.0)
    assert got["entryId"] == appended.entry_id and got["kind"] == "goods_card" and got["agent"] == "li@acme.cn"
    assert got["summary"] == "静享 Pro 降噪蓝牙耳机 · 1299元"


async def test_feed_reaches_clients_of_every_replica(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    first = await aiohttp_client(create_app(settings))
    second = await aiohttp_client(create_app(settings))
    await consumers_ready(first.app[REDIS], 2)
    await subscribers(first.app[REDIS], 2)
    feeds = [await open_feed(first), await open_feed(second)]
    appended = await first.app[COMPANIES].default.audit.append(record("ticket"))
    for feed in feeds:
        assert (await next_send(feed, 2.0))["entryId"] == appended.entry_id


async def test_feed_passes_on_out_of_order_entries_once_each(client: TestClient[Any, Any]) -> None:
    """Two replicas' consumers publish their batches in any order; a repeated publication is not sent twice."""
    redis = client.app[REDIS]
    await subscribers(redis, 1)
    feed = await open_feed(client)
    for entry_id in ["20-0", "10-0", "20-0", "30-0"]:
        item = feed_item(entry_id, {"kind": "ticket", "at": entry_id.split("-")[0]})
        await redis.publish(feed_channel(KEYS_), json.dumps(item))
    assert [(await next_send(feed))["entryId"] for _ in range(3)] == ["20-0", "10-0", "30-0"]


async def test_a_reconnecting_client_gets_what_it_missed_from_the_stream(client: TestClient[Any, Any]) -> None:
    audit = client.app[COMPANIES].default.audit
    seen = await audit.append(record())
    missed = [await audit.append(record("ticket")) for _ in range(2)]
    feed = await open_feed(client, **{"Last-Event-ID": seen.entry_id})
    assert [(await next_send(feed))["entryId"] for _ in missed] == [m.entry_id for m in missed]
    await drained(client.app[REDIS])  # their live copies arrive too, and are not sent twice
    later = await audit.append(record("goods_card"))
    assert (await next_send(feed))["entryId"] == later.entry_id


async def test_a_counted_batch_is_one_feed_message_and_each_entry_one_event(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    """Every replica hears one message per counted batch (not one per send), and passes on each entry once."""
    client = await aiohttp_client(create_app(make_settings(ops_consumer="off")))
    redis = client.app[REDIS]
    await subscribers(redis, 1)
    listener = redis.pubsub()
    await listener.subscribe(feed_channel(KEYS_))
    await subscribers(redis, 2)
    feed = await open_feed(client)
    reader = AuditReader(redis, KEYS_, "ops", "by-hand")
    await reader.ensure_group("$")
    appended = await client.app[COMPANIES].default.audit.append_many([record("ticket") for _ in range(5)])
    entries = await reader.read(100)
    assert await OpsCounter(redis, KEYS_, "by-hand").count(entries) == 5
    assert [(await next_send(feed))["entryId"] for _ in appended] == [a.entry_id for a in appended]
    messages: list[Any] = []
    quiet_until = time.monotonic() + 0.5  # everything published has arrived once the channel is quiet this long
    while time.monotonic() < quiet_until:
        message = await listener.get_message(timeout=0.1)
        if message is not None and message["type"] == "message":
            messages.append(message)
    assert len(messages) == 1, messages
    await listener.aclose()


async def test_feed_sends_heartbeat_comments(client: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ops, "HEARTBEAT_S", 0.05)
    feed = await open_feed(client)
    lines = [await asyncio.wait_for(feed.content.readline(), 2.0) for _ in range(4)]
    assert b": keep-alive\n" in lines


async def test_counting_and_the_feed_survive_a_redis_restart(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], own_redis: EmbeddedRedis
) -> None:
    client = await aiohttp_client(create_app(make_settings(redis_url=own_redis.url)))
    redis = client.app[REDIS]
    await consumers_ready(redis)
    await subscribers(redis, 1)
    feed = await open_feed(client)
    await client.app[COMPANIES].default.audit.append(record())
    assert (await next_send(feed))["kind"] == "order_card"

    own_redis.kill()
    own_redis.start()
    await subscribers(redis, 1, timeout=10.0)  # the listener subscribed again by itself
    # straight to the stream, or spooled and replayed
    await client.app[COMPANIES].default.audit.append(record("ticket"))
    assert (await next_send(feed, 10.0))["kind"] == "ticket", "the consumer reads again and the feed flows"
    await drained(redis)
    assert (await summary(client))["hour"]["total"] == 2


async def test_shutdown_closes_feeds_and_stops_the_consumer_promptly(make_settings: Callable[..., Settings]) -> None:
    server = TestServer(create_app(make_settings()))
    await server.start_server()
    app = server.app
    assert app is not None
    await consumers_ready(app[REDIS])
    async with aiohttp.ClientSession() as session:
        response = await session.get(server.make_url("/ops/feed"), headers=AUTH)
        await response.content.readline()

        async def joined() -> bool:
            return len(app[COMPANIES].default.feed.clients) == 1

        await until(joined, "the client joined")
        started = time.monotonic()
        closing = asyncio.create_task(server.close())
        await asyncio.wait_for(response.content.read(), 3.0)  # EOF: the server ended the stream
        await asyncio.wait_for(closing, 5.0)
        assert time.monotonic() - started < 5.0


# --- Chromium ----------------------------------------------------------------------------------


@BROWSER
async def test_a_card_sent_from_a_panel_appears_live_and_the_counts_move(
    page: Page, browser_context: BrowserContext, panel_server: PanelServerFactory, fake_parent: FakeParent
) -> None:
    server = await panel_server()
    redis = server.app[REDIS]
    await consumers_ready(redis)
    audit = server.app[COMPANIES].default.audit
    await audit.append(record("ticket", agent="wang@acme.cn", partner="C1002", at=now_ms() - 20 * 60_000))
    audit = server.app[COMPANIES].default.audit
    await audit.append(record("goods_card", agent="li@acme.cn", partner="C1003", at=now_ms() - 5 * 60_000))
    await drained(redis)

    await page.goto(f"{server.base_url}/ops?token={TOKEN}")
    assert "token" not in page.url, "the login leaves the address bar"
    await expect(page.locator("#ops-live")).to_have_attribute("data-state", "open")
    hour_total = page.get_by_test_id("hour-total")
    await expect(hour_total).to_have_text("2")
    before = 2

    # An agent sends an order card from a panel framed by (fake) Sobot, in another tab.
    customer = sample_customer("C1001")
    order = customer.orders[0]
    panel_page = await browser_context.new_page()
    url, _ = server.embed_url(Surface.WORKBENCH, customer)
    width, height = FRAME_SIZES[Surface.WORKBENCH]
    await panel_page.goto(fake_parent.url(url, width=width, height=height))
    panel = panel_page.frame_locator("#panel")
    await panel.get_by_role("tab", name=text("tab_orders")).click()
    holder = panel.locator(f'li[data-order="{order.orderCode}"]')
    await holder.get_by_role("button", name=text("send_order_card")).click()
    await wait_received(panel_page, 1)
    sent = time.monotonic()

    newest = page.locator("#sends tr").first
    await expect(newest).to_contain_text(order.orderCode, timeout=2_000)
    await expect(newest).to_contain_text(text("ops_kind_order_card"))
    await expect(hour_total).to_have_text(str(before + 1), timeout=2_000)
    await expect(page.get_by_test_id("day-total")).to_have_text(str(before + 1))
    await expect(page.locator('[data-count="hour:kind:order_card"]')).to_have_text("1")
    assert time.monotonic() - sent < 2.0
    await expect(page.locator("#chart-minutes rect.bar").last).to_have_attribute("data-value", re.compile("[1-9]"))
    await expect(page.locator("#agents")).to_contain_text(AGENT_EMAIL)  # a new agent: the table is re-ranked
    await expect(page.locator('[data-stat="length"]')).to_have_text("3")
    await page.screenshot(path=str(save_screenshot_path("ops")), full_page=True)

    await newest.get_by_role("link", name=text("ops_view")).click()
    await expect(page.get_by_test_id("order-card")).to_contain_text(order.orderCode)
    await page.screenshot(path=str(save_screenshot_path("ops-entry")), full_page=True)
    await panel_page.close()

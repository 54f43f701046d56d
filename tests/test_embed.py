"""`GET /embed/...` end to end: a real app, a real redis-server, signed queries as Sobot builds them."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sobot_panel.app import create_app
from sobot_panel.i18n import Catalog
from sobot_panel.observability import AccessLogger
from sobot_panel.protocol.signing import SignPolicy, sign_fields
from sobot_panel.protocol.surfaces import Surface, build_query_string
from sobot_panel.redis import EmbeddedRedis
from sobot_panel.settings import Settings

from .conftest import SECRET, SYSNUM
from .helpers.fake_enterprise import TOKEN as ENTERPRISE_TOKEN
from .helpers.fake_enterprise import FakeEnterprise

ROOT = Path(__file__).resolve().parent.parent
ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
POLICY = SignPolicy(sys_num=SYSNUM, secret=SECRET, wecom_secret=None, max_age_s=300)
CATALOG = Catalog.load()

# One realistic context per surface, for the sample customer C1001 where the surface carries a key.
CONTEXTS: dict[Surface, dict[str, str]] = {
    Surface.WORKBENCH: {"partnerId": "C1001", "email": "agent@acme.cn", "uid": "u-1", "cid": "c-1",
                        "groupId": "g1", "groupName": "售前一组", "params": '{"vip":"是"}',
                        "createChatTime": "1764000000000"},
    Surface.CALL: {"partnerId": "C1001", "callId": "CALL-77", "email": "agent@acme.cn", "uid": "u-1",
                   "uphone": "13800000001", "uemail": "", "province": "浙江", "city": "杭州",
                   "ivrPath": '[{"navKey":"1","navName":"售前咨询"},{"navKey":"2","navName":"人工[VIP]"}]'},
    Surface.CALL_TASK: {"email": "agent@acme.cn", "uid": "u-1", "uphone": "13800000001", "uemail": ""},
    Surface.TICKET: {"email": "agent@acme.cn", "uid": "u-1", "uphone": "13800000001", "uemail": "",
                     "ticketId": "T-9001"},
    Surface.CUSTOMER: {"partnerId": "C1001", "email": "agent@acme.cn", "uid": "u-1", "uphone": "13800000001"},
    Surface.QA: {"partnerId": "C1001", "email": "agent@acme.cn", "uid": "u-1", "cid": "c-1", "uphone": "13800000001"},
    Surface.MONITOR: {"partnerId": "C1001", "email": "agent@acme.cn", "uid": "u-1", "cid": "c-1",
                      "uphone": "13800000001"},
    Surface.WECOM: {"corpId": "ww1", "userId": "zhang.san", "partnerId": "C1001", "serviceId": "s1",
                    "serviceRoleId": "r1", "tel": "13800000001", "companyId": "co1"},
}  # fmt: skip


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def signed(surface: Surface, *, at: int | None = None, policy: SignPolicy = POLICY, **changes: str) -> str:
    fields = sign_fields(surface, CONTEXTS[surface], policy, now_ms() if at is None else at)
    fields.update(changes)
    return build_query_string(fields)


@pytest.fixture
async def client(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]) -> TestClient[Any, Any]:
    server = TestServer(create_app(make_settings()))
    await server.start_server(access_log_class=AccessLogger)  # the access logger `serve` uses
    return await aiohttp_client(server)


@pytest.mark.parametrize("surface", list(Surface), ids=lambda s: s.value)
async def test_every_surface_renders_a_verified_panel(client: TestClient[Any, Any], surface: Surface) -> None:
    response = await client.get(f"/embed/{surface.value}?{signed(surface)}")
    body = await response.text()
    assert response.status == 200, body
    assert "agent@acme.cn" in body or "zhang.san" in body
    assert 'id="panel"' in body
    if surface is Surface.CALL:
        assert "CALL-77" in body and "售前咨询" in body and "人工[VIP]" in body and "杭州" in body
    if surface is Surface.TICKET:
        assert "T-9001" in body
    if surface is Surface.WORKBENCH:
        assert "售前一组" in body


@pytest.mark.parametrize("view", ["profile", "orders", "tickets", "new-ticket"])
async def test_single_views(client: TestClient[Any, Any], view: str) -> None:
    response = await client.get(f"/embed/workbench/{view}?{signed(Surface.WORKBENCH)}")
    assert response.status == 200
    assert f"view-{view}" in await response.text()


async def test_security_headers(client: TestClient[Any, Any]) -> None:
    response = await client.get(f"/embed/workbench?{signed(Surface.WORKBENCH)}")
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors https://*.sobot.com https://*.soboten.com" in csp
    assert "X-Frame-Options" not in response.headers
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("path", "status", "needle"),
    [
        pytest.param("/embed/workbench?{q}", 200, "", id="ok"),
        pytest.param("/embed/nowhere?{q}", 404, "nowhere", id="unknown-surface"),
        pytest.param("/embed/workbench/settings?{q}", 404, "settings", id="unknown-view"),
    ],
)
async def test_status_codes(client: TestClient[Any, Any], path: str, status: int, needle: str) -> None:
    response = await client.get(path.format(q=signed(Surface.WORKBENCH)))
    assert response.status == status
    assert needle in await response.text()


async def test_tampered_sign_is_403_naming_the_signature(client: TestClient[Any, Any]) -> None:
    query = signed(Surface.WORKBENCH, partnerId="C1002")
    response = await client.get(f"/embed/workbench?{query}")
    body = await response.text()
    assert response.status == 403
    assert "签名" in body and "signature" in body.lower()
    assert SECRET not in body and "Traceback" not in body


async def test_expired_timestamp_says_how_long_ago(client: TestClient[Any, Any]) -> None:
    query = signed(Surface.WORKBENCH, at=now_ms() - 17 * 60_000 - 5_000)
    response = await client.get(f"/embed/workbench?{query}&lang=en")
    body = await response.text()
    assert response.status == 403
    assert "17 min" in body


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"params": "{not json"}, "params", id="params-json"),
        pytest.param({"ivrPath": "[{"}, "ivrPath", id="ivr-json"),
        pytest.param({"timestamp": "yesterday"}, "timestamp", id="timestamp-not-int"),
    ],
)
async def test_malformed_query_is_400_naming_the_field(
    client: TestClient[Any, Any], changes: dict[str, str], field: str
) -> None:
    surface = Surface.CALL if field == "ivrPath" else Surface.WORKBENCH
    response = await client.get(f"/embed/{surface.value}?{signed(surface, **changes)}")
    body = await response.text()
    assert response.status == 400
    assert field in body


async def test_error_page_in_english_on_request(client: TestClient[Any, Any]) -> None:
    query = signed(Surface.WORKBENCH, sign="0" * 32)
    response = await client.get(f"/embed/workbench?{query}", headers={"Accept-Language": "en-US,en;q=0.9"})
    body = await response.text()
    assert response.status == 403
    assert '<html lang="en">' in body


async def test_postmessage_mode_shows_a_waiting_shell(client: TestClient[Any, Any]) -> None:
    response = await client.get("/embed/workbench")
    assert response.status == 200
    assert 'data-testid="waiting"' in await response.text()


async def test_access_log_never_holds_the_query(client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture) -> None:
    query = signed(Surface.WORKBENCH)
    sign = query.split("sign=")[1].split("&")[0]
    with caplog.at_level(logging.INFO):
        await client.get(f"/embed/workbench?{query}")
        # aiohttp writes the access line after the response has gone out: the client may see it first
        deadline = time.monotonic() + 5
        while not any(r.name == "aiohttp.access" for r in caplog.records) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any("/embed/workbench" in line for line in access)
    assert all(sign not in line and "C1001" not in line for line in access)


async def test_legacy_sign_only_without_secret(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    legacy = hashlib.md5((SYSNUM + "agent@acme.cn").encode()).hexdigest()
    query = build_query_string({"partnerId": "C1001", "email": "agent@acme.cn", "sign": legacy})
    without_secret = await aiohttp_client(create_app(make_settings(secret=None)))
    assert (await without_secret.get(f"/embed/workbench?{query}")).status == 200
    with_secret = await aiohttp_client(create_app(make_settings()))
    assert (await with_secret.get(f"/embed/workbench?{query}")).status == 403


async def test_health_and_readiness_follow_redis(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], own_redis: EmbeddedRedis
) -> None:
    # Without a spool, readiness needs Redis (with one, see tests/test_readiness.py).
    client = await aiohttp_client(create_app(make_settings(redis_url=own_redis.url, spool_max_bytes=0)))
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
    own_redis.kill()
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/healthz")).status == 200
    own_redis.start()
    deadline = time.monotonic() + 10
    status = 0
    while time.monotonic() < deadline:
        status = (await client.get("/readyz")).status
        if status == 200:
            break
    assert status == 200


async def test_metrics_count_sign_failures(client: TestClient[Any, Any]) -> None:
    await client.get(f"/embed/workbench?{signed(Surface.WORKBENCH, sign='f' * 32)}")
    text = await (await client.get("/metrics")).text()
    assert 'panel_sign_failures_total{reason="sign_mismatch",tenant=""} 1.0' in text


def test_sign_command_prints_a_url_the_service_accepts(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    env = {**os.environ, "PANEL_SYSNUM": SYSNUM, "PANEL_SECRET": SECRET, "PANEL_PUBLIC_URL": "https://panel.acme.cn"}
    done = subprocess.run(
        [sys.executable, "-m", "sobot_panel", "sign", "call", "--view", "orders", "--field", "uphone=13800000001",
         "--field", "email=agent@acme.cn", "--zc-encode"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    url = done.stdout.strip()
    assert url.startswith("https://panel.acme.cn/embed/call/orders?")
    from sobot_panel.protocol.signing import verify_sign
    from sobot_panel.protocol.surfaces import parse_query_string

    context = parse_query_string(Surface.CALL, url.split("?", 1)[1])
    verify_sign(Surface.CALL, context.fields, POLICY, now_ms())
    assert context.phone == "13800000001"


# --- the http directory against a faithful fake of the enterprise API ------------------------


@pytest.fixture
async def http_client(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], fake_enterprise: FakeEnterprise
) -> TestClient[Any, Any]:
    settings = make_settings(directory_url=fake_enterprise.url, directory_token=ENTERPRISE_TOKEN)
    return await aiohttp_client(create_app(settings))


@pytest.mark.parametrize("surface", list(Surface), ids=lambda s: s.value)
@pytest.mark.parametrize("view", [None, "profile", "orders", "tickets", "new-ticket"], ids=str)
async def test_every_view_renders_with_the_http_directory(
    http_client: TestClient[Any, Any], fake_enterprise: FakeEnterprise, surface: Surface, view: str | None
) -> None:
    path = f"/embed/{surface.value}" + (f"/{view}" if view else "")
    response = await http_client.get(f"{path}?{signed(surface)}")
    body = await response.text()
    assert response.status == 200, body
    assert "张伟" in body  # C1001 found through the API by partnerId or phone
    assert fake_enterprise.authorizations and fake_enterprise.authorizations[-1] == f"Bearer {ENTERPRISE_TOKEN}"


async def test_unknown_customer_gets_a_friendly_panel_naming_the_keys_tried(client: TestClient[Any, Any]) -> None:
    query = build_query_string(sign_fields(Surface.CUSTOMER, {"partnerId": "NOBODY", "email": "agent@acme.cn",
                                                              "uphone": "13999999999"}, POLICY, now_ms()))  # fmt: skip
    response = await client.get(f"/embed/customer?{query}")
    body = await response.text()
    assert response.status == 200
    tried = body[body.index('data-testid="not-found"') :]
    assert "13999999999" in tried
    assert "NOBODY" not in tried  # partnerId is unsigned on the customer center: it is never looked up
    assert CATALOG.text("not_found_next", "zh") in body and 'data-action="retry"' in body  # what to do next


@pytest.mark.parametrize("surface", list(Surface), ids=lambda s: s.value)
async def test_only_the_actions_sobot_carries_out(client: TestClient[Any, Any], surface: Surface) -> None:
    """SPEC §5: cards go to the chat workbench, createOrder to the ticket center (the defaults)."""
    body = await (await client.get(f"/embed/{surface.value}?{signed(surface)}")).text()
    assert ("data-send=" in body) == (surface is Surface.WORKBENCH)
    assert ("data-send-form" in body) == (surface is Surface.TICKET)
    assert ("data-prefill=" in body) == (surface is Surface.TICKET)
    if surface is not Surface.WORKBENCH:
        assert CATALOG.text("cards_elsewhere", "zh", where="客服工作台") in body


@pytest.mark.parametrize(
    ("surface", "label", "absent"),
    [
        pytest.param(Surface.CALL, "来电号码", "客户电话", id="call-caller"),
        pytest.param(Surface.CALL_TASK, "通话号码", "来电号码", id="task-number-called"),
        pytest.param(Surface.CUSTOMER, "客户电话", "来电号码", id="customer-phone"),
        pytest.param(Surface.TICKET, "客户电话", "来电号码", id="ticket-phone"),
    ],
)
async def test_header_labels_follow_the_surface(
    client: TestClient[Any, Any], surface: Surface, label: str, absent: str
) -> None:
    body = await (await client.get(f"/embed/{surface.value}?{signed(surface)}")).text()
    assert f"<dt>{label}</dt>" in body and f"<dt>{absent}</dt>" not in body


async def test_card_text_for_the_customer_is_in_the_customer_language(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    """The V6 card's customCardStatus reaches the customer: Chinese by default, whatever the agent reads."""
    import html as html_module
    import json

    for customer_lang, status in [("zh", "运输中"), ("en", "In transit")]:
        client = await aiohttp_client(create_app(make_settings(card_format="v6", customer_lang=customer_lang)))
        body = await (await client.get(f"/embed/workbench/orders?{signed(Surface.WORKBENCH)}&lang=en")).text()
        cards = [json.loads(html_module.unescape(raw)) for raw in re.findall(r'data-card="([^"]*)"', body)]
        statuses = {c["customCards"][0].get("customCardStatus") for c in cards if c.get("cardType") == 0}
        assert status in statuses, statuses
        assert "Awaiting payment" in body  # the agent's own view stays in the agent's language


async def test_upstream_down_with_nothing_cached_is_503(
    http_client: TestClient[Any, Any], fake_enterprise: FakeEnterprise
) -> None:
    fake_enterprise.fail_with = 500
    response = await http_client.get(f"/embed/workbench?{signed(Surface.WORKBENCH)}")
    assert response.status == 503
    assert "Traceback" not in await response.text()


async def test_upstream_down_serves_the_stale_copy_and_says_so(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], fake_enterprise: FakeEnterprise
) -> None:
    settings = make_settings(directory_url=fake_enterprise.url, directory_token=ENTERPRISE_TOKEN, local_cache_ttl=0)
    client = await aiohttp_client(create_app(settings))
    assert (await client.get(f"/embed/workbench?{signed(Surface.WORKBENCH)}")).status == 200
    # The fresh copy goes (as after its TTL); the stale copy stays; the upstream fails.
    from sobot_panel.appkeys import KEYS, REDIS

    app = client.server.app
    assert app is not None
    await app[REDIS].delete(app[KEYS].customer("partnerId:C1001"))
    fake_enterprise.fail_with = 503
    response = await client.get(f"/embed/workbench?{signed(Surface.WORKBENCH)}")
    body = await response.text()
    assert response.status == 200 and "张伟" in body and "notice-stale" in body


async def test_redis_killed_mid_test_still_serves_pages(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], own_redis: EmbeddedRedis
) -> None:
    client = await aiohttp_client(create_app(make_settings(redis_url=own_redis.url, local_cache_ttl=0)))
    assert (await client.get(f"/embed/workbench?{signed(Surface.WORKBENCH)}")).status == 200
    own_redis.kill()
    for surface in (Surface.WORKBENCH, Surface.CALL):
        response = await client.get(f"/embed/{surface.value}?{signed(surface)}")
        assert response.status == 200
        assert "张伟" in await response.text()


async def test_invalidate_drops_the_cached_customer(
    http_client: TestClient[Any, Any], fake_enterprise: FakeEnterprise
) -> None:
    await http_client.get(f"/embed/workbench?{signed(Surface.WORKBENCH)}")
    calls = fake_enterprise.total_calls
    await http_client.get(f"/embed/workbench?{signed(Surface.WORKBENCH)}")
    assert fake_enterprise.total_calls == calls  # cached
    api = {"Authorization": "Bearer test-api-token"}
    response = await http_client.post("/api/partners/C1001/invalidate", headers=api)
    assert response.status == 202
    await http_client.get(f"/embed/workbench?{signed(Surface.WORKBENCH)}")
    assert fake_enterprise.total_calls == calls + 1


async def test_an_unchanged_customer_is_rendered_once_even_when_read_again_from_redis(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], fake_enterprise: FakeEnterprise
) -> None:
    from sobot_panel.appkeys import COMPANIES

    settings = make_settings(directory_url=fake_enterprise.url, directory_token=ENTERPRISE_TOKEN, local_cache_ttl=0)
    client = await aiohttp_client(create_app(settings))
    for _ in range(3):
        assert (await client.get(f"/embed/workbench?{signed(Surface.WORKBENCH)}")).status == 200
    app = client.server.app
    assert app is not None
    assert (app[COMPANIES].default.core.renderer.misses, app[COMPANIES].default.core.renderer.hits) == (1, 2)
    await client.post("/api/partners/C1001/invalidate", headers={"Authorization": "Bearer test-api-token"})
    assert (await client.get(f"/embed/workbench?{signed(Surface.WORKBENCH)}")).status == 200
    assert app[COMPANIES].default.core.renderer.misses == 1  # fetched afresh, unchanged: the same views
    customer = next(c for c in fake_enterprise.customers if c["partnerId"] == "C1001")
    customer["phone"] = "13999999999"
    await client.post("/api/partners/C1001/invalidate", headers={"Authorization": "Bearer test-api-token"})
    page = await client.get(f"/embed/workbench?{signed(Surface.WORKBENCH)}")
    assert "13999999999" in await page.text()
    assert app[COMPANIES].default.core.renderer.misses == 2  # a changed customer is rendered afresh


async def test_a_mini_program_order_link_is_not_prefilled_into_a_url_field(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    """C1003 came in through a mini program: its order links are page paths, which a url field refuses."""
    import html as html_module
    import json
    import re

    # "Ticket from order" is offered where tickets are filed; here that includes the workbench.
    client = await aiohttp_client(create_app(make_settings(ticket_surfaces="workbench ticket")))
    fields = {"partnerId": "C1003", "email": "agent@acme.cn"}
    query = build_query_string(sign_fields(Surface.WORKBENCH, fields, POLICY, now_ms()))
    body = await (await client.get(f"/embed/workbench/orders?{query}")).text()
    prefills = [json.loads(html_module.unescape(raw)) for raw in re.findall(r'data-prefill="([^"]*)"', body)]
    assert prefills and all("card_title" in prefill for prefill in prefills)
    assert all(prefill.get("card_url", "https://").startswith(("http://", "https://")) for prefill in prefills)
    assert any("card_url" not in prefill for prefill in prefills)

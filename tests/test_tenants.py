"""Several Sobot companies from one deployment (CONTRACT, "Several Sobot companies from one deployment").

Two tenants, each with its own customer API (the same partnerId names two different people), served by
one app beside the single-company settings: nothing of one may be seen, signed, sent or audited through
the other.
"""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from sobot_panel.app import create_app
from sobot_panel.appkeys import COMPANIES, REDIS
from sobot_panel.protocol.signing import SignPolicy, sign_fields
from sobot_panel.protocol.surfaces import Surface, build_query_string
from sobot_panel.settings import Settings

from bench.enterprise import FakeEnterprise

from .conftest import SECRET, SYSNUM
from .helpers.live import boot_of, next_frame, open_socket
from .helpers.net import free_port, wait_http

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
AGENT = "agent@acme.cn"
ACME = SignPolicy(sys_num="1001", secret="acme-key", wecom_secret=None)
GLOBEX = SignPolicy(sys_num="2002", secret="globex-key", wecom_secret=None)
SINGLE = SignPolicy(sys_num=SYSNUM, secret=SECRET, wecom_secret=None)
TICKET = {"card_title": "退款", "card_url": "https://shop.example.cn/o/1"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def tenants_toml(acme_url: str, globex_url: str, *, extra: str = "") -> str:
    return f"""
[tenants.acme]
sysnum = "1001"
secret = "acme-key"
directory_url = "{acme_url}"
directory_token = "acme-api"
api_token = "acme-token"
ops_token = "acme-ops"
ticket_surfaces = "ticket workbench"

[tenants.globex]
sysnum = "2002"
secret_file = "globex.secret"
directory_url = "{globex_url}"
directory_token = "globex-api"
api_token = "globex-token"
card_format = "v6"
lang = "en"
{extra}"""


@pytest.fixture
async def apis(aiohttp_server: Callable[[web.Application], Awaitable[TestServer]]) -> tuple[FakeEnterprise, ...]:
    """Two companies' customer APIs: the same ids, different people (C1001 is 张伟 at acme, 赵敏 at globex)."""
    acme, globex = FakeEnterprise(token="acme-api"), FakeEnterprise(token="globex-api")
    people = copy.deepcopy(globex.customers)
    people[0]["name"] = "赵敏"
    globex.customers = people
    for fake in (acme, globex):
        server = await aiohttp_server(fake.app())
        fake.url = str(server.make_url("")).rstrip("/")
    return acme, globex


@pytest.fixture
def tenants_file(tmp_path: Path, apis: tuple[FakeEnterprise, ...]) -> Path:
    (tmp_path / "globex.secret").write_text("globex-key\n")
    path = tmp_path / "tenants.toml"
    path.write_text(tenants_toml(apis[0].url, apis[1].url))
    return path


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], tenants_file: Path
) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(make_settings(tenants=tenants_file)))


def url(base: str, policy: SignPolicy, surface: Surface = Surface.WORKBENCH, **fields: str) -> str:
    signed = sign_fields(surface, {"partnerId": "C1001", "email": AGENT, **fields}, policy, now_ms())
    return f"{base}/embed/{surface.value}?{build_query_string(signed)}"


async def page(client: TestClient[Any, Any], path: str, status: int = 200) -> str:
    response = await client.get(path)
    body = await response.text()
    assert response.status == status, body[:500]
    return body


# --- the panels ---------------------------------------------------------------------------------------


async def test_each_tenant_shows_its_own_customer(client: TestClient[Any, Any]) -> None:
    """The same partnerId in two companies is two people."""
    acme = await page(client, url("/t/acme", ACME))
    globex = await page(client, url("/t/globex", GLOBEX))
    single = await page(client, url("", SINGLE))
    assert "张伟" in acme and "赵敏" not in acme
    assert "赵敏" in globex and "张伟" not in globex
    assert "张伟" in single  # the single-company settings keep serving /embed/... (the sample directory)
    assert boot_of(acme)["base"] == "/t/acme" and boot_of(single)["base"] == ""
    assert 'lang="en"' in globex  # globex's panels start in English; a ?lang= still wins
    assert 'lang="zh-CN"' in await page(client, url("/t/globex", GLOBEX) + "&lang=zh")


@pytest.mark.parametrize(
    ("base", "policy"),
    [("/t/globex", ACME), ("/t/acme", GLOBEX), ("", ACME), ("/t/acme", SINGLE)],
    ids=["acme-at-globex", "globex-at-acme", "acme-at-single", "single-at-acme"],
)
async def test_a_sign_of_one_company_is_refused_by_another(
    client: TestClient[Any, Any], base: str, policy: SignPolicy
) -> None:
    body = await page(client, url(base, policy), status=403)
    assert "签名" in body


async def test_an_unknown_tenant_is_a_404_naming_it(client: TestClient[Any, Any]) -> None:
    body = await page(client, url("/t/initech", ACME), status=404)
    assert "initech" in body
    assert (await client.post("/t/initech/panel/send", json={})).status == 404


async def test_tokens_name_their_tenant_and_every_other_refuses_them(client: TestClient[Any, Any]) -> None:
    token = boot_of(await page(client, url("/t/acme", ACME, Surface.TICKET, uphone="13800000001")))["token"]
    send = {"token": token, "kind": "ticket", "id": "evt-tenant-0001", "data": TICKET}
    for base in ("/t/globex", ""):
        response = await client.post(f"{base}/panel/send", json=send)
        assert response.status == 401, await response.text()
    ws = await client.ws_connect("/t/globex/ws")
    await ws.send_json({"type": "hello", "token": token})
    closed = await ws.receive(timeout=5)
    assert closed.type is WSMsgType.CLOSE and closed.data == 4401
    assert (await client.post("/t/acme/panel/send", json=send)).status == 200


# --- what is recorded, and who may read it -------------------------------------------------------------


async def test_a_send_is_recorded_in_its_tenants_stream_with_its_sysnum(client: TestClient[Any, Any]) -> None:
    token = boot_of(await page(client, url("/t/acme", ACME, Surface.TICKET, uphone="13800000001")))["token"]
    send = {"token": token, "kind": "ticket", "id": "evt-tenant-0002", "data": TICKET}
    assert (await client.post("/t/acme/panel/send", json=send)).status == 200
    acme = await client.get("/t/acme/api/audit", headers={"Authorization": "Bearer acme-token"})
    entries = (await acme.json())["entries"]
    assert [(e["id"], e["sysnum"], e["partner_id"]) for e in entries] == [("evt-tenant-0002", "1001", "C1001")]
    for base, token_ in (("/t/acme", "globex-token"), ("/t/globex", "acme-token"), ("", "acme-token")):
        refused = await client.get(f"{base}/api/audit", headers={"Authorization": f"Bearer {token_}"})
        assert refused.status == 401, (base, token_)
    globex = await client.get("/t/globex/api/audit", headers={"Authorization": "Bearer globex-token"})
    single = await client.get("/api/audit", headers={"Authorization": "Bearer test-api-token"})
    assert (await globex.json())["entries"] == [] and (await single.json())["entries"] == []
    redis = client.app[REDIS]
    assert await redis.xlen("panel:acme:audit") == 1
    assert await redis.xlen("panel:globex:audit") == 0 and await redis.xlen("panel:audit") == 0


async def test_each_tenants_ops_dashboard_answers_only_its_own_token(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/t/acme/ops", headers={"Authorization": "Bearer acme-ops"})).status == 200
    assert (await client.get("/t/acme/ops", headers={"Authorization": "Bearer test-ops-token"})).status == 401
    assert (await client.get("/t/globex/ops", headers={"Authorization": "Bearer acme-ops"})).status == 503  # none


async def test_keys_and_channels_stay_under_each_tenants_prefix(
    client: TestClient[Any, Any], apis: tuple[FakeEnterprise, ...]
) -> None:
    """Invalidating acme's C1001 refreshes acme's panels only; every key lives under its tenant's prefix."""
    acme_page = await page(client, url("/t/acme", ACME))
    globex_page = await page(client, url("/t/globex", GLOBEX))
    acme_ws = await open_socket(client.session, str(client.make_url("/t/acme/ws")), boot_of(acme_page)["token"])
    globex_ws = await open_socket(client.session, str(client.make_url("/t/globex/ws")),
                                  boot_of(globex_page)["token"])  # fmt: skip
    redis = client.app[REDIS]
    for channel in ("panel:acme:partner:C1001", "panel:globex:partner:C1001"):
        await _until(lambda c=channel: _numsub(redis, c), f"{channel} subscribed")
    apis[0].customers[0]["name"] = "张伟（新）"
    response = await client.post(
        "/t/acme/api/partners/C1001/invalidate", headers={"Authorization": "Bearer acme-token"}
    )
    assert response.status == 202
    assert "张伟（新）" in (await next_frame(acme_ws, "panel"))["html"]
    with pytest.raises((AssertionError, TimeoutError)):
        await next_frame(globex_ws, "panel", timeout=1.0)  # globex's C1001 is someone else: untouched
    refused = await client.post(
        "/t/globex/api/partners/C1001/invalidate", headers={"Authorization": "Bearer acme-token"}
    )
    assert refused.status == 401
    customer_keys = [key async for key in redis.scan_iter("*C1001*")]
    assert any(key.startswith("panel:acme:cache:") for key in customer_keys)
    assert any(key.startswith("panel:globex:cache:") for key in customer_keys)
    assert all(key.startswith(("panel:acme:", "panel:globex:")) for key in customer_keys), customer_keys
    await acme_ws.close()
    await globex_ws.close()


async def _numsub(redis: Any, channel: str) -> bool:
    return int(dict(await redis.pubsub_numsub(channel)).get(channel, 0)) >= 1


async def _until(check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if await outcome if not isinstance(outcome, bool) else outcome:
            return
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.02)


# --- shared machinery, kept apart ---------------------------------------------------------------------


async def test_a_slow_customer_api_never_slows_another_tenant(
    client: TestClient[Any, Any], apis: tuple[FakeEnterprise, ...]
) -> None:
    acme_api, _ = apis
    acme_api.hold = asyncio.Event()  # acme's API hangs
    stuck = asyncio.create_task(client.get(url("/t/acme", ACME, partnerId="C1002")))
    await _until(lambda: acme_api.total_calls > 0, "acme's API was asked")
    globex = await client.get(url("/t/globex", GLOBEX, partnerId="C1002"))
    assert globex.status == 200 and not stuck.done()  # globex was served while acme's page still waits
    acme_api.hold.set()
    assert (await stuck).status == 200


async def test_a_failing_customer_api_opens_its_tenants_circuit_only(
    client: TestClient[Any, Any], apis: tuple[FakeEnterprise, ...]
) -> None:
    acme_api, globex_api = apis
    acme_api.fail_with = 500
    for index in range(8):  # distinct customers: nothing cached to fall back on
        response = await client.get(url("/t/acme", ACME, partnerId=f"X{index}"))
        assert response.status == 503
    assert acme_api.total_calls == 5  # after five failures in a row the circuit answers by itself
    assert (await client.get(url("/t/globex", GLOBEX, partnerId="C1003"))).status == 200
    assert globex_api.total_calls == 1


async def test_metrics_carry_the_tenant(client: TestClient[Any, Any]) -> None:
    await page(client, url("/t/acme", ACME))
    await page(client, url("/t/globex", GLOBEX))
    await page(client, url("/t/initech", ACME), status=404)
    await page(client, url("/t/globex", ACME), status=403)
    text = await (await client.get("/metrics")).text()
    assert 'panel_http_requests_total{route="/t/{tenant}/embed/{surface}",status="200",tenant="acme"} 1.0' in text
    assert 'panel_sign_failures_total{reason="sign_mismatch",tenant="globex"} 1.0' in text
    assert 'panel_cache_lookups_total{source="upstream",tenant="acme"} 1.0' in text
    assert 'panel_upstream_calls_total{outcome="ok",tenant="globex"} 1.0' in text
    tenants = {part.split('"')[1] for part in text.split("tenant=")[1:]}
    assert tenants <= {"", "acme", "globex"}  # an unknown /t/NAME/ never becomes a label value


# --- reloading ----------------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path, tenants_file: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PANEL_TENANTS": str(tenants_file),
           "PANEL_PORT": str(port), "PANEL_DATA_DIR": str(tmp_path / "data"), "PANEL_SESSION_KEY": "k" * 32,
           "PANEL_HOST_ORIGINS": "http://127.0.0.1:*"}  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "sobot_panel", "serve"], cwd=tmp_path, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", timeout=30, process=process)
        yield base, process, log_path
    finally:
        process.terminate()
        process.wait(30)


async def test_sighup_adds_a_tenant_without_closing_open_panels(
    served: tuple[str, subprocess.Popen[bytes], Path], tenants_file: Path, apis: tuple[FakeEnterprise, ...]
) -> None:
    base, process, log_path = served
    initech = SignPolicy(sys_num="3003", secret="initech-key", wecom_secret=None)
    async with ClientSession() as http:
        acme_page = await (await http.get(base + url("/t/acme", ACME))).text()
        ws = await open_socket(http, base.replace("http", "ws") + "/t/acme/ws", boot_of(acme_page)["token"])
        assert (await http.get(base + url("/t/initech", initech))).status == 404
        # a bad file first: refused, and everything keeps running as it was
        tenants_file.write_text(tenants_toml(apis[0].url, apis[1].url, extra='[tenants.initech]\nsecret = "x"\n'))
        process.send_signal(signal.SIGHUP)
        await _until(lambda: "tenants reload refused" in log_path.read_text(), "the bad reload was refused")
        assert (await http.get(base + url("/t/acme", ACME))).status == 200
        tenants_file.write_text(
            tenants_toml(apis[0].url, apis[1].url, extra='[tenants.initech]\nsysnum = "3003"\nsecret = "initech-key"\n')
        )
        process.send_signal(signal.SIGHUP)
        await _until(lambda: "tenants reloaded" in log_path.read_text(), "the good reload was applied")
        assert (await http.get(base + url("/t/initech", initech))).status == 200
        # the acme panel opened before the reload is still live: a relayed switch is answered on its socket
        relay = sign_fields(Surface.WORKBENCH, {"partnerId": "C1002", "email": AGENT}, ACME, now_ms())
        await ws.send_json({"type": "selected", "id": 9, "query": relay})
        frame = await next_frame(ws, "panel", timeout=10)
        assert frame["id"] == 9 and frame["partnerId"] == "C1002"
        await ws.close()
    output = log_path.read_text()
    assert "tenant initech: sysnum" in output and "tenants reloaded: added initech" in output


def test_a_bad_tenants_file_stops_start_up_with_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text('[tenants.acme]\nsecret = ""\n[tenants.Bad]\nsysnum = "1"\n')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PANEL_TENANTS": str(path)}
    done = subprocess.run([sys.executable, "-m", "sobot_panel", "serve"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("sobot-panel: bad tenants file:") for line in lines)
    assert any("tenant acme: secret" in line for line in lines) and any("tenant acme: sysnum" in line for line in lines)
    assert any("'Bad'" in line for line in lines)


async def test_the_audit_cli_reads_one_tenants_stream(
    client: TestClient[Any, Any], make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    token = boot_of(await page(client, url("/t/acme", ACME, Surface.TICKET, uphone="13800000001")))["token"]
    send = {"token": token, "kind": "ticket", "id": "evt-tenant-cli1", "data": TICKET}
    assert (await client.post("/t/acme/panel/send", json=send)).status == 200
    settings = make_settings()
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PANEL_SYSNUM": "x",
        "PANEL_REDIS_URL": str(settings.redis_url),
    }
    for tenant, expected in (("acme", ["evt-tenant-cli1"]), ("globex", [])):
        done = subprocess.run([sys.executable, "-m", "sobot_panel", "audit", "export", "--tenant", tenant],
                              env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert [json.loads(line)["id"] for line in done.stdout.splitlines()] == expected


async def test_the_host_simulator_plays_sobot_for_a_chosen_tenant(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path = tmp_path / "demo-tenants.toml"
    path.write_text('[tenants.acme]\nsysnum = "1001"\nsecret = "acme-key"\n')
    client = await aiohttp_client(create_app(make_settings(demo=True, tenants=path)))
    host = await page(client, "/dev/host?tenant=acme")
    assert 'id="pick-tenant"' in host and '<option value="acme" selected>' in host
    signed = await (await client.get("/dev/host/signed?tenant=acme&partnerId=C1001")).json()
    assert signed["url"].startswith("/t/acme/embed/workbench?")
    assert "张伟" in await page(client, signed["url"])  # signed with acme's key, served at acme's routes
    assert (await client.get("/dev/host/signed?tenant=initech&partnerId=C1001")).status == 404


async def test_a_changed_tenant_reopens_and_its_live_feed_goes_on(
    client: TestClient[Any, Any], tenants_file: Path, apis: tuple[FakeEnterprise, ...]
) -> None:
    """SIGHUP with acme's settings changed: a new acme is opened and swapped in; its dashboard's live feed
    (one pub/sub reader shared by every company) keeps flowing, and the old acme's is closed."""
    import os

    from .test_ops import next_send

    before = client.app[COMPANIES].get("acme")
    assert before is not None
    tenants_file.write_text(tenants_toml(apis[0].url, apis[1].url).replace('ops_token = "acme-ops"',
                                                                            'ops_token = "acme-ops-2"'))  # fmt: skip
    os.kill(os.getpid(), signal.SIGHUP)  # the app's own handler, on this very loop
    await _until(lambda: client.app[COMPANIES].get("acme") is not before, "acme was reopened")
    assert (await client.get("/t/acme/ops", headers={"Authorization": "Bearer acme-ops"})).status == 401
    feed = await client.get("/t/acme/ops/feed", headers={"Authorization": "Bearer acme-ops-2"})
    assert feed.status == 200 and (await feed.content.readline()).startswith(b"retry:")
    token = boot_of(await page(client, url("/t/acme", ACME, Surface.TICKET, uphone="13800000001")))["token"]
    send = {"token": token, "kind": "ticket", "id": "evt-tenant-feed", "data": TICKET}
    sent = await client.post("/t/acme/panel/send", json=send)
    assert sent.status == 200
    assert (await next_send(feed, timeout=10.0))["entryId"] == (await sent.json())["entryId"]
    feed.close()

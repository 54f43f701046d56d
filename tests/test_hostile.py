"""Hostile input, as an attacker sends it: every answer is a clean 4xx naming the problem, never a 500 or a
traceback, and nothing of the query reaches a log line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sobot_panel.app import create_app
from sobot_panel.directory.models import Customer
from sobot_panel.protocol import jsonlimits
from sobot_panel.protocol.signing import SignPolicy, sign_fields
from sobot_panel.protocol.surfaces import Surface, build_query_string, zc_encode_blob
from sobot_panel.settings import Settings

from .conftest import SECRET, SYSNUM
from .helpers.live import boot_of
from .helpers.net import free_port, wait_http

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
POLICY = SignPolicy(sys_num=SYSNUM, secret=SECRET, wecom_secret=None, max_age_s=300)
NESTED = ["[" * 100_000, "[" * 15_000 + "]" * 15_000, '{"a":' * 5_000 + "1" + "}" * 5_000, "[" * 40 + "]" * 40]
# Within the query limits (4 KiB a value), yet past Python's own recursion limit: the case that crashed json.
NESTED_IN_A_QUERY = ["[" * 2_000, "[" * 1_500 + "]" * 1_500, '{"a":' * 600 + "1" + "}" * 600, "[" * 40 + "]" * 40]


def now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


def signed(surface: Surface = Surface.WORKBENCH, **fields: str) -> dict[str, str]:
    base = {"partnerId": "C1001", "email": "agent@acme.cn", **fields}
    return sign_fields(surface, base, POLICY, now_ms())


@pytest.fixture
async def client(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(make_settings()))


def clean(status: int, body: str) -> None:
    assert 400 <= status < 500, (status, body[:300])
    assert "Traceback" not in body and 'File "' not in body


# --- the limits, one by one -------------------------------------------------------------------------


def test_json_limits_are_checked_in_order() -> None:
    assert jsonlimits.load('{"a":[1,{"b":2}]}', max_bytes=100) == {"a": [1, {"b": 2}]}
    assert jsonlimits.depth({"a": [1, {"b": 2}]}) == 3
    for text, reason in [("[" * 100_000, "size"), ("[" * 100, "depth"), ("[" * 100_000, "depth"), ("{", "syntax")]:
        limit = 1_000 if reason == "size" else 1_000_000
        with pytest.raises(jsonlimits.JsonRefused) as refused:
            jsonlimits.load(text + "]" * (len(text) if reason == "depth" and len(text) < 1000 else 0), max_bytes=limit)
        assert refused.value.reason == reason


@pytest.mark.parametrize("field", ["params", "ivrPath"])
@pytest.mark.parametrize("payload", NESTED_IN_A_QUERY, ids=["open-2k", "balanced-1500", "objects-600", "balanced-40"])
async def test_nested_json_in_the_query_is_a_400(client: TestClient[Any, Any], field: str, payload: str) -> None:
    surface = Surface.CALL if field == "ivrPath" else Surface.WORKBENCH
    fields = signed(surface, uphone="13800000001")
    fields[field] = payload
    for query in (build_query_string(fields), zc_encode_blob(fields)):
        response = await client.get(f"/embed/{surface.value}?{query}")
        body = await response.text()
        clean(response.status, body)
        assert response.status == 400 and "json_too_deep" not in body  # a message, not a code
        assert "嵌套过深" in body  # json_too_deep, in the agent's language


@pytest.mark.parametrize(
    "payload", [*NESTED, "[" * 30 + "]" * 30], ids=["open", "balanced", "objects", "deep-40", "30"]
)
async def test_nested_json_in_a_send_body_is_a_4xx(client: TestClient[Any, Any], payload: str) -> None:
    response = await client.post("/panel/send", data=payload, headers={"Content-Type": "application/json"})
    body = await response.text()
    clean(response.status, body)
    assert json.loads(body)["code"] in ("json_too_deep", "body_too_large", "body_not_json", "token_invalid")


async def test_deep_card_data_is_a_named_400(client: TestClient[Any, Any]) -> None:
    page = await (await client.get(f"/embed/workbench?{build_query_string(signed())}")).text()
    deep: Any = "x"
    for _ in range(40):
        deep = {"d": deep}
    send = {"token": boot_of(page)["token"], "kind": "goods_card", "id": "evt-deep-0001", "data": deep}
    response = await client.post("/panel/send", json=send)
    body = await response.json()
    assert response.status == 400 and body["code"] == "json_too_deep" and "32" in body["message"]


async def test_an_oversize_send_body_is_a_413_in_the_agents_language(client: TestClient[Any, Any]) -> None:
    response = await client.post("/panel/send", data=b"x" * (300 * 1024), headers={"Accept-Language": "zh"})
    body = await response.json()
    assert response.status == 413 and body["code"] == "body_too_large" and "请求内容过大" in body["message"]


# --- fuzzing ------------------------------------------------------------------------------------------

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)
hostile_text = st.one_of(
    st.text(max_size=300),
    st.builds(json.dumps, json_like),
    st.builds(lambda n, c: c * n, st.integers(1, 3000), st.sampled_from(["[", "{", '{"a":', "%", "%E4", "\\u"])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["params", "ivrPath", "timestamp", "partnerId", "sign", "uphone"]), value=hostile_text,
       zc=st.booleans(), surface=st.sampled_from([Surface.WORKBENCH, Surface.CALL]))  # fmt: skip
async def test_fuzzed_queries_never_5xx(
    client: TestClient[Any, Any], field: str, value: str, zc: bool, surface: Surface
) -> None:
    fields = signed(surface, uphone="13800000001")
    fields[field] = value
    query = zc_encode_blob(fields) if zc else build_query_string(fields)
    response = await client.get(f"/embed/{surface.value}?{query}")
    body = await response.text()
    assert response.status < 500, body[:300]
    assert "Traceback" not in body


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(hostile_text, st.builds(json.dumps, json_like), st.binary(max_size=200)))
async def test_fuzzed_send_bodies_never_5xx(client: TestClient[Any, Any], body: str | bytes) -> None:
    response = await client.post("/panel/send", data=body, headers={"Content-Type": "application/json"})
    text = await response.text()
    clean(response.status, text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.text(max_size=200))
async def test_fuzzed_raw_query_strings_never_5xx(client: TestClient[Any, Any], raw: str) -> None:
    response = await client.get(f"/embed/workbench?{quote(raw, safe='=&%')}")
    body = await response.text()
    assert response.status < 500 and "Traceback" not in body


# --- links from the upstream --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "kept"),
    [("ticket", "javascript:alert(1)", ""), ("ticket", "https://crm.example.cn/t/1", "https://crm.example.cn/t/1"),
     ("ticket", "//evil.example/x", ""), ("ticket", "data:text/html,x", ""),
     ("picture", "/static/img/tea.svg", "/static/img/tea.svg"), ("picture", "javascript:x", ""),
     ("order", "pages/order/detail?id=1", "pages/order/detail?id=1"), ("order", "vbscript:x", ""),
     ("order", "JavaScript:alert(1)", "")],
)  # fmt: skip
def test_upstream_links_are_scheme_checked_before_any_page(field: str, value: str, kept: str) -> None:
    customer = Customer.model_validate({
        "partnerId": "C1", "name": "x",
        "tickets": [{"ticketId": "T", "title": "t", "status": "s", "createTime": 1,
                     "url": value if field == "ticket" else ""}],
        "orders": [{"orderCode": "O", "status": 1, "createTime": 1, "totalFee": 1,
                    "url": value if field == "order" else "",
                    "goods": [{"name": "g", "pictureUrl": value if field == "picture" else ""}]}],
    })  # fmt: skip
    got = {"ticket": customer.tickets[0].url, "order": customer.orders[0].url,
           "picture": customer.orders[0].goods[0].pictureUrl}[field]  # fmt: skip
    assert got == kept


# --- the request line: served within the limit, refused beyond it, never logged ------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PANEL_SYSNUM": SYSNUM, "PANEL_SECRET": SECRET,
           "PANEL_PORT": str(port), "PANEL_DATA_DIR": str(tmp_path / "data"), "PANEL_LOG_FORMAT": "json"}  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "sobot_panel", "serve"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/healthz", timeout=30, process=process)
        yield base, process
    finally:
        process.terminate()


def _raw_get(base: str, target: str) -> tuple[int, str]:
    import socket

    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nAccept-Language: zh\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def test_long_signed_urls_are_served_and_longer_ones_refused_with_nothing_logged(
    served: tuple[str, subprocess.Popen[bytes]],
) -> None:
    base, process = served
    marker = "ZHANGWEI-PRIVATE"
    params = json.dumps({"备注": "长" * 1000, "who": marker}, ensure_ascii=False)
    nine_kb = build_query_string(signed(params=params))
    assert 9_000 < len(nine_kb) < 16_384  # past aiohttp's default 8,190-byte line, within our limit
    status, body = _raw_get(base, f"/embed/workbench?{nine_kb}")
    assert status == 200 and "张伟" in body
    twenty_kb = build_query_string(signed(params=json.dumps({"x": "长" * 2200, "who": marker}, ensure_ascii=False)))
    status, body = _raw_get(base, f"/embed/workbench?{twenty_kb}")
    assert status == 414 and "地址过长" in body  # our own page, in the agent's language
    status, _ = _raw_get(base, f"/embed/workbench?email=agent%40acme.cn&who={marker}&pad={'a' * 100_000}")
    assert status == 400  # aiohttp's own parser, past twice the limit
    for _ in range(20):  # anyone can send these: they may not fill the log
        _raw_get(base, f"/embed/workbench?who={marker}&pad={'a' * 100_000}")
    process.terminate()
    output = process.communicate(timeout=30)[0].decode(errors="replace")
    assert marker not in output and "agent%40acme.cn" not in output and "agent@acme.cn" not in output
    assert output.count("refused a malformed or oversize HTTP request") == 1  # folded, at most one per 10 s
    assert "Traceback" not in output


def test_the_parser_filter_lets_other_records_through() -> None:
    from sobot_panel.redaction import ParserErrorFilter

    record = logging.LogRecord("aiohttp.server", logging.ERROR, "x", 1, "Unhandled exception", None, None)
    assert ParserErrorFilter().filter(record) and record.getMessage() == "Unhandled exception"

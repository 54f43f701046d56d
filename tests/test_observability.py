"""The conventions operators expect: JSON log lines with an RFC 3339 time and the request id, a log level,
rate-limited warnings, X-Request-Id and traceparent passed on to the customer API, process and build
metrics, websocket lifetimes apart from request latency, and gauges that forget a dead worker."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDictProxy
from sobot_panel import observability
from sobot_panel.app import create_app
from sobot_panel.observability import JsonFormatter, RateLimit, RequestContext, configure_logging
from sobot_panel.protocol.signing import sign_fields
from sobot_panel.protocol.surfaces import Surface, build_query_string
from sobot_panel.settings import Settings

from bench.enterprise import customers

from .helpers.live import POLICY, boot_of, connect_panel, now_ms
from .helpers.net import free_port
from .test_send import first_order_card, send, token_for

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The service's JSON formatter and filters on the root logger, writing to a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContext())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    yield buffer
    root.removeHandler(handler)
    root.setLevel(old_level)


def _lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


async def test_log_lines_written_while_handling_a_request_carry_its_id(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings], json_log: io.StringIO
) -> None:
    client = await aiohttp_client(create_app(make_settings()))
    token_a, token_b = await token_for(client, "C1001"), await token_for(client, "C1002")
    await send(client, token_a, "order_card", first_order_card(), "evt-log-000001")
    body = {"token": token_b, "kind": "goods_card", "id": "evt-log-000001",
            "data": {"title": "t", "url": "https://x.cn/p"}}  # fmt: skip
    response = await client.post("/panel/send", json=body, headers={"X-Request-Id": "req-from-proxy-1"})
    assert response.status == 409 and response.headers["X-Request-Id"] == "req-from-proxy-1"
    (line,) = [line for line in _lines(json_log) if "send refused" in line["message"]]
    assert line["request_id"] == "req-from-proxy-1"
    assert {"time", "level", "logger", "message"} <= set(line) and line["level"] == "warning"
    moment = datetime.fromisoformat(line["time"])
    assert moment.tzinfo is not None and "T" in line["time"]  # RFC 3339, with its offset
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    logging.getLogger("sobot_panel.test").info("outside any request")
    assert "request_id" not in _lines(json_log)[-1]


def test_repeated_warnings_are_rate_limited() -> None:
    clock = [0.0]
    limit = RateLimit(window_s=60, clock=lambda: clock[0])
    logger = logging.getLogger("sobot_panel.test.ratelimit")

    def record(level: int = logging.WARNING, msg: str = "pub/sub lost (%s); reconnecting") -> logging.LogRecord:
        return logger.makeRecord(logger.name, level, __file__, 1, msg, ("ConnectionError",), None)

    assert limit.filter(record())
    passed = sum(limit.filter(record()) for _ in range(59))  # a line a second for a minute
    assert passed == 0
    assert limit.filter(record(msg="another warning")), "other messages are not held back"
    assert limit.filter(record(logging.ERROR)), "errors are never held back"
    clock[0] = 61.0
    later = record()
    assert limit.filter(later) and later.suppressed == 59  # type: ignore[attr-defined]
    assert "59 more like this" in later.getMessage()


@pytest.fixture
def restored_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`configure_logging` sets process-wide state (the root handlers and level, the access-line sink):
    put it back, or every later test's access lines go to stderr instead of the `aiohttp.access` logger."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    monkeypatch.setattr(observability, "_ACCESS_SINK", observability._ACCESS_SINK)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("level", ["debug", "WARNING", "error"])
def test_the_log_level_setting(level: str, make_settings: Callable[..., Settings], restored_logging: None) -> None:
    settings = make_settings(log_level=level)
    configure_logging("json", settings.log_level)
    assert logging.getLogger().level == logging.getLevelName(level.upper())
    handler = logging.getLogger().handlers[0]
    assert any(isinstance(f, RateLimit) for f in handler.filters)
    assert any(isinstance(f, RequestContext) for f in handler.filters)


async def test_request_id_and_traceparent_reach_the_customer_api(
    aiohttp_client: ClientFactory,
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
    make_settings: Callable[..., Settings],
) -> None:
    seen: list[CIMultiDictProxy[str]] = []
    customer = customers(1)[0]

    async def lookup(request: web.Request) -> web.Response:
        seen.append(CIMultiDictProxy(request.headers.copy()))
        return web.json_response(customer)

    upstream = web.Application()
    upstream.router.add_get("/customers/lookup", lookup)
    server = await aiohttp_server(upstream)
    client = await aiohttp_client(create_app(make_settings(directory_url=str(server.make_url("")).rstrip("/"))))
    fields = sign_fields(Surface.WORKBENCH, {"partnerId": customer["partnerId"], "email": "a@acme.cn"}, POLICY,
                         now_ms())  # fmt: skip
    response = await client.get(f"/embed/workbench?{build_query_string(fields)}",
                                headers={"X-Request-Id": "req-42", "traceparent": TRACEPARENT})  # fmt: skip
    assert response.status == 200 and boot_of(await response.text())
    assert seen and seen[0]["X-Request-Id"] == "req-42" and seen[0]["traceparent"] == TRACEPARENT


async def test_metrics_have_process_and_build_information_and_websockets_apart(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings()))
    token = await token_for(client)
    ws = await connect_panel(client, token)
    await ws.close()
    text = ""
    for _ in range(100):  # the handler finishes just after the close handshake
        text = await (await client.get("/metrics")).text()
        if 'panel_connection_seconds_count{route="/ws"}' in text:
            break
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text
    (build,) = [line for line in text.splitlines() if line.startswith("sobot_panel_build_info{")]
    assert 'version="' in build and build.endswith(" 1.0")
    assert 'panel_connection_seconds_count{route="/ws"} 1.0' in text
    assert 'panel_http_request_seconds_count{route="/ws"}' not in text
    assert 'panel_http_requests_total{route="/ws",status="101",tenant=""} 1.0' in text


WORKER = """
import os, sys
from sobot_panel.observability import Metrics
metrics = Metrics()
metrics.audit_group_lag.labels("warehouse", "").set(float(sys.argv[1]))
metrics.audit_spool_records.labels("").set(float(sys.argv[1]))
print(os.getpid())
"""


def test_a_dead_workers_gauges_drop_out(tmp_path: Path) -> None:
    """Under `serve --workers N` a killed worker's group lag stayed at 217 while Redis said 0."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def worker(value: int) -> int:
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(WORKER), str(value)], env=env, check=True,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        return int(done.stdout.strip())

    dead = worker(217)
    mark_process_dead(dead, str(tmp_path))  # what the supervisor does when a worker exits
    worker(0)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    text = generate_latest(registry).decode()
    lag = [line for line in text.splitlines() if line.startswith("panel_audit_group_lag{")]
    assert lag == ['panel_audit_group_lag{group="warehouse",tenant=""} 0.0'], lag
    assert 'panel_audit_spool_records{tenant=""} 0.0' in text


async def test_metrics_on_their_own_port_only(
    aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    port = free_port()
    client = await aiohttp_client(create_app(make_settings(metrics_port=port, host="127.0.0.1")))
    assert (await client.get("/metrics")).status == 404, "not on the port the ingress routes"
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200 and "sobot_panel_build_info" in await response.text()

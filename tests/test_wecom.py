"""The WeCom secret client (SPEC §3.4) against a local fake of Sobot's gateway."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from sobot_panel.panel.wecom import QUERY_SECRET_PATH, WecomSecretClient, WecomSecretError
from sobot_panel.redis.keys import Keys

ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def gateway(answer: dict[str, Any] | str, calls: list[str], status: int = 200) -> web.Application:
    async def query_secret(request: web.Request) -> web.Response:
        calls.append(request.headers.get("temp-id", ""))
        if isinstance(answer, str):
            return web.Response(text=answer, status=status)
        return web.json_response(answer, status=status)

    app = web.Application()
    app.router.add_get(QUERY_SECRET_PATH, query_secret)
    return app


def vendor_answer(open_flag: int, ret_code: str = "000000") -> dict[str, Any]:
    # The vendor's documented example, with openFlag varied.
    return {
        "item": {"id": "388ace6967f340a99c551f727fb21d9c", "corpId": "wwf890d4f585acb42a",
                 "companyId": "0830d08fd74c429a8639e27405415778", "secret": "39c3dd7e702140f692ef105d7eacb240",
                 "openFlag": open_flag, "iframeFlag": 0, "msgSearchDockingFlag": 0,
                 "createTime": 1635322465, "updateTime": 1635322465},
        "retCode": ret_code,
        "retMsg": "操作成功",
    }  # fmt: skip


async def make_client(server: TestServer, redis: aioredis.Redis) -> WecomSecretClient:
    return WecomSecretClient(redis, Keys("t:"), gateway=str(server.make_url("")), temp_id="temp-123")


async def test_secret_used_when_open_flag_set_and_cached(
    aiohttp_server: ServerFactory, redis_client: aioredis.Redis
) -> None:
    calls: list[str] = []
    server = await aiohttp_server(gateway(vendor_answer(1), calls))
    client = await make_client(server, redis_client)
    try:
        assert await client.current_secret() == "39c3dd7e702140f692ef105d7eacb240"
        assert await client.current_secret() == "39c3dd7e702140f692ef105d7eacb240"
    finally:
        await client.close()
    assert calls == ["temp-123"], "the second read must come from Redis, and the temp-id header is sent"
    assert await redis_client.ttl(next(iter(await redis_client.keys("t:wecom:secret:*")))) > 0


async def test_secret_ignored_when_open_flag_off(aiohttp_server: ServerFactory, redis_client: aioredis.Redis) -> None:
    server = await aiohttp_server(gateway(vendor_answer(0), []))
    client = await make_client(server, redis_client)
    try:
        assert await client.current_secret() is None
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("answer", "status", "code"),
    [
        pytest.param(vendor_answer(1, ret_code="100001"), 200, "wecom_gateway_refused", id="ret-code"),
        pytest.param("not json", 200, "wecom_gateway_bad_answer", id="bad-json"),
        pytest.param({"retCode": "000000"}, 200, "wecom_gateway_refused", id="no-item"),
        pytest.param(vendor_answer(1), 500, "wecom_gateway_status", id="http-500"),
    ],
)
async def test_gateway_failures_are_named(
    aiohttp_server: ServerFactory, redis_client: aioredis.Redis, answer: Any, status: int, code: str
) -> None:
    server = await aiohttp_server(gateway(answer, [], status=status))
    client = await make_client(server, redis_client)
    try:
        with pytest.raises(WecomSecretError) as caught:
            await client.current_secret()
    finally:
        await client.close()
    assert caught.value.code == code
    assert "39c3dd7e" not in repr(caught.value.params)

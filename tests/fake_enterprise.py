"""A faithful fake of the enterprise's customer API (CONTRACT.md, "The enterprise's customer API").

`GET /customers/lookup?partnerId=|phone=|email=|uid=|unionId=` answers the customers of
`web/sample/customers.json` exactly as stored, 404 when nobody matches, 401 without the bearer token.
Knobs a test can turn: `latency` (seconds, a slow upstream), `fail_with` (an HTTP status to answer
instead), `raw_body` (bytes to answer with 200, e.g. broken JSON), `token` (None: no auth required);
`calls` counts requests per `key:value`; `reset()` puts every knob back.

Use it with `from .fake_enterprise import fake_enterprise  # noqa: F401`, or load this module as a
pytest plugin from conftest.py.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from service.directory.models import LOOKUP_NAMES
from service.directory.sample import SAMPLE_FILE

TOKEN = "enterprise-test-token"


class FakeEnterprise:
    def __init__(self, token: str | None = TOKEN) -> None:
        self.customers: list[dict[str, Any]] = json.loads(SAMPLE_FILE.read_text(encoding="utf-8"))["customers"]
        self.default_token = token
        self.url = ""
        self.calls: Counter[str] = Counter()
        self.authorizations: list[str | None] = []
        self.reset()

    def reset(self) -> None:
        self.token = self.default_token
        self.latency = 0.0
        self.fail_with: int | None = None
        self.raw_body: bytes | None = None
        self.calls.clear()
        self.authorizations.clear()

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def find(self, key: str, value: str) -> dict[str, Any] | None:
        for customer in self.customers:
            stored = str(customer.get(key, ""))
            if stored and (stored.casefold() == value.casefold() if key == "email" else stored == value):
                return customer
        return None

    async def lookup(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        present = [(name, request.query[name]) for name in LOOKUP_NAMES if request.query.get(name)]
        if not present:
            return web.json_response({"error": "give one of " + ", ".join(LOOKUP_NAMES)}, status=400)
        key, value = present[0]
        self.calls[f"{key}:{value}"] += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.fail_with is not None:
            return web.json_response({"error": "simulated failure"}, status=self.fail_with)
        if self.raw_body is not None:
            return web.Response(body=self.raw_body, content_type="application/json")
        customer = self.find(key, value)
        if customer is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.json_response(customer)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/customers/lookup", self.lookup)
        return app


@pytest.fixture
async def fake_enterprise(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> FakeEnterprise:
    """The fake customer API on a real local port; `fake_enterprise.url` is its base URL."""
    fake = FakeEnterprise()
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("")).rstrip("/")
    return fake

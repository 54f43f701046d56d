"""The fake enterprise customer API (`bench.enterprise.FakeEnterprise`) as a pytest fixture on a real port.

conftest.py makes `fake_enterprise` a fixture of every test module.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bench.enterprise import FakeEnterprise

TOKEN = "enterprise-test-token"


@pytest.fixture
async def fake_enterprise(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> FakeEnterprise:
    """The fake customer API on a real local port; `fake_enterprise.url` is its base URL."""
    fake = FakeEnterprise(token=TOKEN)
    server = await aiohttp_server(fake.app())
    fake.url = str(server.make_url("")).rstrip("/")
    return fake


__all__ = ["TOKEN", "FakeEnterprise", "fake_enterprise"]

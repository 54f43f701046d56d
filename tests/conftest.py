"""Shared fixtures: a real redis-server for the session, settings and an app client per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from sobot_panel.redis import EmbeddedRedis, connect
from sobot_panel.settings import Settings

from .helpers.fake_enterprise import fake_enterprise  # noqa: F401  (a fixture for every test module)

# Tests must never pick up a developer's environment or .env.
for _name in list(os.environ):
    if _name.startswith("PANEL_"):
        del os.environ[_name]

SYSNUM = "acme123"
SECRET = "s3cr3t-key"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real redis-server for the whole session (tests that kill Redis start their own)."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, on a TCP port, that the test may kill and restart."""
    server = EmbeddedRedis(tmp_path / "own-redis", port=0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_client(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = connect(redis_server.url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
def make_settings(tmp_path: Path, redis_server: EmbeddedRedis) -> Callable[..., Settings]:
    """Settings for a test: secret mode, the session Redis, a private data dir. Override anything."""

    # Each test starts from an empty Redis: cached customers or stream entries of one test never leak into another.
    with redis.Redis.from_url(redis_server.url) as sync_client:
        sync_client.flushall()

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "sysnum": SYSNUM,
            "secret": SECRET,
            "redis_url": redis_server.url,
            "data_dir": tmp_path / "data",
            "session_key": "test-session-key",
            "api_token": "test-api-token",
            "ops_token": "test-ops-token",
            "host_origins": "https://*.sobot.com https://*.soboten.com http://127.0.0.1:*",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return factory

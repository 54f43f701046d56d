"""Connecting to Redis: one client type for every topology the service supports.

Every client waits for a free connection instead of failing when its pool runs dry (redis-py #2517),
with the same socket timeouts and health checks. URL forms are in `sobot_panel.redis.urls`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import RedisError

from .cluster import ClusterSubscriber, connect_cluster
from .urls import POOL_TIMEOUT_S, RedisTarget, client_defaults, is_cluster_url, parse_redis_url, tls_ca_option

log = logging.getLogger(__name__)


# What the service's code is handed: a client of one server (plain, TLS, unix or through Sentinel) or a
# Redis Cluster client. Both serve every command the service uses; pub/sub goes through `pubsub_for`.
RedisClient: TypeAlias = aioredis.Redis | RedisCluster

# Any of these from a Redis call means "Redis is away, or not known to have done it": callers degrade
# (spool the audit record, bypass the cache, resubscribe). OSError covers ConnectionError and the
# builtin TimeoutError that asyncio.timeout raises; ClusterUnavailableError is a RedisError.
REDIS_DOWN: tuple[type[Exception], ...] = (RedisError, OSError)


def as_text(value: object) -> str:
    """A Redis reply (bytes from a pub/sub message or a raw client, str from a decoding one) as text."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def connect(url: str, *, max_connections: int = 64, tls_ca: str | Path | None = None) -> aioredis.Redis:
    """A client of one server: `redis://`, `rediss://`, `unix://`, or the master Sentinel names.

    Its pool blocks when it runs dry instead of failing (redis-py #2517). For any URL, Redis Cluster
    included, use `connect_any`.
    """
    target = parse_redis_url(url)
    if target.kind == "cluster":
        raise ValueError("a Redis Cluster URL: use connect_any()")
    if target.kind == "sentinel":
        return _connect_sentinel(target, max_connections, tls_ca)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_TIMEOUT_S,
        **client_defaults(),
        **tls_ca_option(target, dict(parse_url(url)), tls_ca),
    )
    return aioredis.Redis.from_pool(pool)  # the client owns its pool: aclose() closes its connections


def connect_any(
    url: str, *, cluster: bool = False, max_connections: int = 64, tls_ca: str | Path | None = None
) -> RedisClient:
    """A client for any URL form: `connect` for one server or Sentinel, `connect_cluster` for Cluster."""
    if is_cluster_url(url, cluster=cluster):
        return connect_cluster(url, max_connections=max_connections, tls_ca=tls_ca)
    return connect(url, max_connections=max_connections, tls_ca=tls_ca)


# --- Sentinel ------------------------------------------------------------------------------------


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool (asks the sentinels for the master, follows a failover) that waits when it runs dry."""


class SentinelMaster(aioredis.Redis):
    """The client of the master a Sentinel names; closing it closes the connections to the sentinels too."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinel_manager is not None:
                await self.sentinel_manager.aclose()


def _connect_sentinel(target: RedisTarget, max_connections: int, tls_ca: str | Path | None) -> SentinelMaster:
    options = dict(target.options)
    pool_size = int(options.pop("max_connections", max_connections))
    pool_timeout = float(options.pop("timeout", POOL_TIMEOUT_S))
    options = {**client_defaults(), **options, **tls_ca_option(target, options, tls_ca)}
    sentinel_kwargs: dict[str, Any] = {
        name: value for name, value in options.items() if name.startswith(("socket_", "ssl_"))
    }
    sentinel_kwargs.update(target.sentinel_options)
    if target.tls:
        options["ssl"] = sentinel_kwargs["ssl"] = True
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    master: SentinelMaster = sentinel.master_for(
        target.service_name,
        redis_class=SentinelMaster,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=pool_size,
        timeout=pool_timeout,
        **options,
    )
    master.sentinel_manager = sentinel
    return master


# --- pub/sub -------------------------------------------------------------------------------------


def pubsub_for(client: RedisClient) -> PubSub:
    """A PubSub (subscribe, unsubscribe, get_message, ping, aclose) that ignores subscribe confirmations.

    One server or Sentinel: the client's own. Cluster: classic SUBSCRIBE on one node. Sharded pub/sub
    (SSUBSCRIBE, Redis 7) is not used: invalidations are few and small, so the cluster-wide broadcast
    costs little, while redis-py's sharded subscriber spreads over a connection per node, polls them in
    turn and reconciles in background tasks, which the live hub's drop-and-resubscribe recovery does not
    fit; classic pub/sub also works on Redis 6 clusters.
    """
    if isinstance(client, RedisCluster):
        return ClusterSubscriber(client, ignore_subscribe_messages=True)
    return client.pubsub(ignore_subscribe_messages=True)

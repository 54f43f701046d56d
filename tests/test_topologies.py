"""Redis topologies end to end, each a real server started by the tests (tests/redis_topologies.py):
a 3-master Redis Cluster, a Sentinel watching a master with a replica, and a TLS-only server.

On every topology: a signed page renders with the customer cached in that Redis, an invalidation posted
to one replica reaches a panel socket open on another replica, and audit appends are idempotent and
read back through a consumer group. Then what is particular to each: hash slots and waiting pools on
Cluster, reaching the master through Sentinel, certificate checks over TLS; and the URL forms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientWebSocketResponse, web
from aiohttp.test_utils import TestClient
from pydantic import ValidationError
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError
from sobot_panel.app import create_app
from sobot_panel.appkeys import COMPANIES, KEYS, REDIS
from sobot_panel.audit.producer import AuditLog, AuditRecord
from sobot_panel.audit.reader import AuditReader
from sobot_panel.protocol.surfaces import build_query_string
from sobot_panel.redis import RedisClient, connect, connect_any, keys_for, parse_redis_url, pubsub_for
from sobot_panel.redis.clients import SentinelMaster
from sobot_panel.redis.cluster import ClusterClient, connect_cluster
from sobot_panel.redis.keys import Keys, hash_tag
from sobot_panel.settings import Settings, describe_error

from .conftest import SECRET, SYSNUM
from .helpers import redis_topologies
from .helpers.live import AGENT, boot_of, connect_panel, next_frame, workbench_fields
from .helpers.redis_topologies import RedisClusterSet, SentinelSet, TlsRedis

# The session-wide servers (each starts on first use).
tls_certificates = redis_topologies.tls_certificates
redis_cluster = redis_topologies.redis_cluster
redis_cluster_tls = redis_topologies.redis_cluster_tls
own_cluster = redis_topologies.own_cluster
redis_sentinel = redis_topologies.redis_sentinel
redis_sentinel_tls = redis_topologies.redis_sentinel_tls
redis_tls = redis_topologies.redis_tls

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
API = {"Authorization": "Bearer test-api-token"}


@dataclass(frozen=True)
class Topology:
    name: str
    url: str
    cluster: bool
    flush: Callable[[], None]
    settings: dict[str, Any] = field(default_factory=dict)

    def connect(self) -> RedisClient:
        return connect_any(self.url, tls_ca=self.settings.get("redis_tls_ca"))

    def keys(self) -> Keys:
        return keys_for("panel:", self.url)


FIXTURES = {"cluster": "redis_cluster", "cluster-tls": "redis_cluster_tls", "sentinel": "redis_sentinel",
            "sentinel-tls": "redis_sentinel_tls", "tls": "redis_tls"}  # fmt: skip


@pytest.fixture(params=list(FIXTURES))
def topology(request: pytest.FixtureRequest) -> Topology:
    """One topology per run of a test, emptied first; each set of servers starts once per session.

    The TLS cluster names its CA in the URL (`?ssl_ca_certs=`); the TLS server and the TLS Sentinel set
    get it from PANEL_REDIS_TLS_CA.
    """
    name: str = request.param
    servers = request.getfixturevalue(FIXTURES[name])
    if isinstance(servers, RedisClusterSet):
        chosen = Topology(name, servers.url, True, servers.flush)
    elif isinstance(servers, SentinelSet):
        extra = {"redis_tls_ca": servers.tls.ca} if servers.tls is not None else {}
        chosen = Topology(name, servers.url, False, servers.flush, extra)
    else:
        assert isinstance(servers, TlsRedis)
        chosen = Topology(name, servers.url, False, servers.flush, {"redis_tls_ca": servers.certificates.ca})
    chosen.flush()
    return chosen


async def until(what: str, check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f}s"
        await asyncio.sleep(0.02)


async def subscribers(client: RedisClient, channel: str) -> int:
    """Subscribers of a classic channel: on a cluster each node counts its own, so ask them all."""
    if isinstance(client, RedisCluster):
        counts = await client.pubsub_numsub(channel, target_nodes=RedisCluster.ALL_NODES)
    else:
        counts = await client.pubsub_numsub(channel)
    return sum(int(count) for _channel, count in counts)


async def open_panel(client: TestClient[Any, Any], partner_id: str) -> ClientWebSocketResponse:
    """A signed workbench page for this customer and its websocket, once its replica has subscribed."""
    response = await client.get(f"/embed/workbench?{build_query_string(workbench_fields(partner_id))}")
    page = await response.text()
    assert response.status == 200, page
    ws = await connect_panel(client, boot_of(page)["token"])
    app = client.server.app
    assert app is not None
    channel = app[KEYS].partner_channel(partner_id)

    async def subscribed() -> bool:
        return await subscribers(app[REDIS], channel) >= 1

    await until(f"nobody subscribed to {channel}", subscribed)
    return ws


def record(n: int) -> AuditRecord:
    return AuditRecord(kind="order_card", id=f"topology-{n:05d}", at=1_764_000_000_000 + n, surface="workbench",
                       agent=AGENT, partner_id=f"P{n}", uid="u1", cid="c1",
                       payload=f'{{"msgType":25,"miniPage":"{{\\"orderCode\\":\\"订单{n}\\"}}"}}')  # fmt: skip


# --- every topology ------------------------------------------------------------------------------


async def test_a_signed_page_renders_with_the_customer_cached_in_redis(
    topology: Topology, aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    client = await aiohttp_client(create_app(make_settings(redis_url=topology.url, **topology.settings)))
    assert (await client.get("/readyz")).status == 200
    response = await client.get(f"/embed/workbench?{build_query_string(workbench_fields('C1001'))}")
    body = await response.text()
    assert response.status == 200, body
    assert 'id="panel"' in body and AGENT in body
    app = client.server.app
    assert app is not None
    assert app[KEYS] == topology.keys()
    assert await app[REDIS].exists(app[KEYS].customer("partnerId:C1001")) == 1


async def test_an_invalidation_posted_to_one_replica_reaches_a_panel_on_another(
    topology: Topology, aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(redis_url=topology.url, **topology.settings)
    replica_a = await aiohttp_client(create_app(settings))
    replica_b = await aiohttp_client(create_app(settings))
    ws = await open_panel(replica_b, "C1001")
    started = time.monotonic()
    assert (await replica_a.post("/api/partners/C1001/invalidate", headers=API)).status == 202
    frame = await next_frame(ws, "panel", timeout=5.0)
    assert frame["partnerId"] == "C1001" and frame["html"]
    assert time.monotonic() - started < 5.0
    await ws.close()


async def test_audit_appends_are_idempotent_and_read_back_through_a_group(topology: Topology) -> None:
    client, keys = topology.connect(), topology.keys()
    assert keys.audit_stream == ("{panel}:audit" if topology.cluster else "panel:audit")
    try:
        audit = AuditLog(client, keys)
        first = await audit.append(record(1))
        again = await audit.append(record(1))
        assert not first.duplicate and again.duplicate and again.entry_id == first.entry_id
        # The pipelined path (spool replays use it): EVALSHA in a pipeline, a duplicate inside the batch too.
        batch = await audit.append_many([record(1), record(2), record(2)])
        assert [result.duplicate for result in batch] == [True, False, True]

        entries = await client.xrange(keys.audit_stream)
        assert [fields for _id, fields in entries] == [record(1).fields(), record(2).fields()]
        assert (await client.get(keys.audit_idempotency(record(2).id))).split()[0] == batch[1].entry_id

        reader = AuditReader(client, keys, "ops", "topology-test")
        assert await reader.ensure_group("0")
        delivered = await reader.read(10)
        assert [entry.record for entry in delivered] == [record(1), record(2)]
        assert await reader.ack(entry.entry_id for entry in delivered) == 2
        assert await reader.pending() == 0
    finally:
        await client.aclose()


# --- Redis Cluster -------------------------------------------------------------------------------


def test_cluster_keys_put_the_audit_keys_in_one_slot_and_spread_the_cache() -> None:
    keys = Keys.for_cluster()
    tenant = [keys.audit_stream, keys.audit_dead_letter, keys.audit_idempotency("e-1"),
              keys.audit_counter("m", "29400000"), keys.audit_counter("h", "490000")]  # fmt: skip
    assert tenant == ["{panel}:audit", "{panel}:audit:dead", "{panel}:audit:seen:e-1",
                      "{panel}:audit:count:m:29400000", "{panel}:audit:count:h:490000"]  # fmt: skip
    assert len({key_slot(key.encode()) for key in tenant}) == 1
    cache = [keys.customer(f"phone:1380000{n:04d}") for n in range(50)]
    assert all(hash_tag(key) is None and key.startswith("panel:cache:customer:") for key in cache)
    assert len({key_slot(key.encode()) for key in cache}) > 40
    assert keys.invalidations_channel == "panel:invalidations" and keys.partner_channel("C1") == "panel:partner:C1"

    tagged = Keys.for_cluster("{acme}:panel:")
    assert tagged.audit_stream == "{acme}:panel:audit" and tagged.customer("x") == "acme:panel:cache:customer:x"
    assert Keys.for_cluster("tenant-a:").audit_stream == "{tenant-a}:audit"
    # One server: the contract's names, untouched.
    assert Keys().audit_stream == "panel:audit" and Keys().customer("x") == "panel:cache:customer:x"
    assert Keys("{panel}:").customer("x") == "{panel}:cache:customer:x"


@pytest.mark.parametrize("form", ["redis+cluster", "redis-and-flag", "rediss-and-flag"])
async def test_the_app_runs_on_a_cluster_from_each_url_form(
    form: str, request: pytest.FixtureRequest, aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    cluster: RedisClusterSet = request.getfixturevalue(
        "redis_cluster_tls" if form == "rediss-and-flag" else "redis_cluster"
    )
    cluster.flush()
    host, port = cluster.addresses[1]
    overrides: dict[str, Any] = {"redis_url": cluster.url}
    if form == "redis-and-flag":  # one seed: the rest is discovered
        overrides = {"redis_url": f"redis://{host}:{port}", "redis_cluster": True}
    elif form == "rediss-and-flag":
        assert cluster.tls is not None
        overrides = {"redis_url": f"rediss://{host}:{port}", "redis_cluster": True, "redis_tls_ca": cluster.tls.ca}
    client = await aiohttp_client(create_app(make_settings(**overrides)))
    app = client.server.app
    assert app is not None
    assert isinstance(app[REDIS], ClusterClient)
    response = await client.get(f"/embed/workbench?{build_query_string(workbench_fields('C1002'))}")
    assert response.status == 200, await response.text()
    assert app[KEYS].audit_stream == "{panel}:audit"
    assert len(app[REDIS].get_primaries()) == 3


async def test_cluster_pipelines_load_scripts_a_node_lost_and_publish(redis_cluster: RedisClusterSet) -> None:
    redis_cluster.flush()
    client = connect_cluster(redis_cluster.url)
    keys = Keys.for_cluster()
    try:
        audit = AuditLog(client, keys)
        assert not (await audit.append(record(1))).duplicate
        await client.script_flush()  # e.g. a node restarted without its script cache
        results = await audit.append_many([record(2), record(1)])
        assert [result.duplicate for result in results] == [False, True]

        listener = pubsub_for(client)
        await listener.subscribe("panel:probe")
        async with client.pipeline(transaction=False) as pipe:
            pipe.publish("panel:probe", "one")
            pipe.publish("panel:probe", "two")
            assert await pipe.execute() == [1, 1]
        heard = []
        deadline = time.monotonic() + 5
        while len(heard) < 2 and time.monotonic() < deadline:
            message = await listener.get_message(timeout=0.1)
            if message is not None:
                heard.append(message["data"])
        assert heard == ["one", "two"]
        await listener.aclose()  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()


async def test_cluster_parks_a_poison_entry_in_one_transaction(redis_cluster: RedisClusterSet) -> None:
    """The dead-letter move is a MULTI over both streams: it needs them in one slot."""
    redis_cluster.flush()
    client = connect_cluster(redis_cluster.url)
    keys = Keys.for_cluster()
    try:
        await AuditLog(client, keys).append(record(7))
        reader = AuditReader(client, keys, "g", "c1", claim_idle_ms=1, dead_after=1)
        await reader.ensure_group("0")
        assert len(await reader.read(10)) == 1  # delivered and never acked

        async def parked() -> bool:
            await reader.read(10)
            return int(await client.xlen(keys.audit_dead_letter)) == 1

        await until("the entry was not parked", parked)
        (_id, fields), *_ = await client.xrange(keys.audit_dead_letter)
        assert fields["id"] == record(7).id and fields["dead_reason"] == "max_deliveries"
        assert await reader.pending() == 0
    finally:
        await client.aclose()


async def test_cluster_callers_wait_for_a_connection_instead_of_failing(redis_cluster: RedisClusterSet) -> None:
    redis_cluster.flush()
    client = connect_cluster(redis_cluster.url, max_connections=2)
    try:
        await client.set("panel:probe", "v")
        assert await asyncio.gather(*(client.get("panel:probe") for _ in range(200))) == ["v"] * 200

        async def batch() -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                pipe.get("panel:probe")
                pipe.exists("panel:other")
                return await pipe.execute()

        assert await asyncio.gather(*(batch() for _ in range(50))) == [["v", 0]] * 50
    finally:
        await client.aclose()
    # Why ClusterClient takes permits: redis-py's own cluster client fails instead of waiting.
    host, port = redis_cluster.addresses[0]
    raw = RedisCluster(host=host, port=port, max_connections=2, decode_responses=True)
    try:
        with pytest.raises(MaxConnectionsError):
            await asyncio.gather(*(raw.get("panel:probe") for _ in range(200)))
    finally:
        await raw.aclose()


async def test_a_cluster_outage_is_a_redis_outage_and_the_panels_recover(
    own_cluster: RedisClusterSet, aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(redis_url=own_cluster.url)
    replica_a = await aiohttp_client(create_app(settings))
    replica_b = await aiohttp_client(create_app(settings))
    ws = await open_panel(replica_b, "C1001")
    app_a = replica_a.server.app
    assert app_a is not None

    own_cluster.kill()
    # redis-py reports a dead cluster as RedisClusterException, which is no RedisError; the client
    # turns it into one, so readiness, the audit spool and the cache all see "Redis is away" (and the
    # replica stays ready: its spool keeps the sends).
    ready = await replica_a.get("/readyz")
    assert ready.status == 200 and (await ready.json())["redis"] == "down"
    spooled = await app_a[COMPANIES].default.audit.append(record(3))
    assert spooled.spooled

    own_cluster.restart()
    await next_frame(ws, "panel", timeout=15.0)  # B's listener subscribed afresh and resynchronised the panel
    second = await open_panel(replica_b, "C1001")  # its subscription is back (and a second panel joins it)

    async def invalidated() -> bool:
        return (await replica_a.post("/api/partners/C1001/invalidate", headers=API)).status == 202

    await until("replica A never reached the restarted cluster", invalidated)
    frame = await next_frame(ws, "panel", timeout=5.0)
    assert frame["partnerId"] == "C1001"
    assert await app_a[COMPANIES].default.audit.replay_spool() in (0, 1)  # the replayer may have been first
    entries = await app_a[REDIS].xrange(app_a[KEYS].audit_stream)
    assert [fields["id"] for _id, fields in entries] == [record(3).id]
    await ws.close()
    await second.close()


# --- Sentinel ------------------------------------------------------------------------------------


async def test_sentinel_url_reaches_the_master_and_not_its_replica(redis_sentinel: SentinelSet) -> None:
    redis_sentinel.flush()
    client = connect(redis_sentinel.url, max_connections=2)
    replica = aioredis.Redis(host="127.0.0.1", port=redis_sentinel.replica.port, decode_responses=True)
    try:
        assert isinstance(client, SentinelMaster)
        assert isinstance(client.connection_pool, aioredis.BlockingConnectionPool)
        assert (await client.info("replication"))["role"] == "master"
        assert (await client.info("server"))["tcp_port"] == redis_sentinel.master.port
        assert client.connection_pool.master_address == ("127.0.0.1", redis_sentinel.master.port)  # type: ignore[attr-defined]
        assert await client.set("panel:through-sentinel", "yes")  # a replica would refuse the write

        async def replicated() -> bool:
            return await replica.get("panel:through-sentinel") == "yes"

        await until("the write did not reach the replica", replicated)
        # Two connections, many callers: they wait their turn.
        assert await asyncio.gather(*(client.get("panel:through-sentinel") for _ in range(100))) == ["yes"] * 100
    finally:
        await replica.aclose()
        await client.aclose()


# --- TLS -----------------------------------------------------------------------------------------


async def test_tls_verifies_the_server_against_the_configured_ca(redis_tls: TlsRedis) -> None:
    ca = redis_tls.certificates.ca
    trusted = [
        connect(redis_tls.url, tls_ca=ca),  # PANEL_REDIS_TLS_CA
        connect(f"{redis_tls.url}?ssl_ca_certs={ca}"),  # the URL names the CA
        connect(f"{redis_tls.url}?ssl_cert_reqs=none"),  # the URL turns verification off
    ]
    for client in trusted:
        try:
            assert await client.ping()
        finally:
            await client.aclose()
    untrusted = connect(redis_tls.url)  # a self-signed CA the system does not trust
    try:
        with pytest.raises(RedisConnectionError, match=r"(?i)certificate verify failed"):
            await untrusted.ping()
    finally:
        await untrusted.aclose()


# --- URL forms and settings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "cluster", "expected"),
    [
        ("redis://cache:6380/1", False, {"kind": "single", "tls": False}),
        ("unix:///run/redis.sock?db=2", False, {"kind": "single", "tls": False}),
        ("rediss://cache:6380/0?ssl_cert_reqs=none", False, {"kind": "single", "tls": True}),
        ("redis+sentinel://:pw@10.0.0.1,10.0.0.2:26380/mymaster/2?sentinel_password=spw", False,
         {"kind": "sentinel", "hosts": (("10.0.0.1", 26379), ("10.0.0.2", 26380)), "service_name": "mymaster",
          "options": {"password": "pw", "db": 2}, "sentinel_options": {"password": "spw"}}),
        ("rediss+sentinel://s1/mymaster?ssl_ca_certs=/ca.pem", False,
         {"kind": "sentinel", "tls": True, "options": {"db": 0, "ssl_ca_certs": "/ca.pem"}}),
        ("redis+cluster://a:7000,b", False, {"kind": "cluster", "hosts": (("a", 7000), ("b", 6379)), "options": {}}),
        ("rediss+cluster://user:p%40ss@[::1]:7000/0?ssl_cert_reqs=none", False,
         {"kind": "cluster", "tls": True, "hosts": (("::1", 7000),),
          "options": {"username": "user", "password": "p@ss", "ssl_cert_reqs": "none"}}),
        ("redis://node-1:7000", True, {"kind": "cluster", "hosts": (("node-1", 7000),)}),
    ],
)  # fmt: skip
def test_url_forms(url: str, cluster: bool, expected: dict[str, Any]) -> None:
    target = parse_redis_url(url, cluster=cluster)
    assert {name: getattr(target, name) for name in expected} == expected


@pytest.mark.parametrize(
    ("url", "cluster", "message"),
    [
        ("http://cache", False, "must start with redis://"),
        ("redis+sentinel://s1:26379", False, "names the master's service"),
        ("redis+sentinel://s1/mymaster/x", False, "not a number"),
        ("redis+sentinel://s1/mymaster", True, "do not mix"),
        ("redis+cluster://a:7000/3", False, "database 0 only"),
        ("redis+cluster://a:99999", False, "not a port"),
        ("redis+cluster://,b", False, "names no host"),
        ("unix:///run/redis.sock", True, "unix socket"),
        ("redis://cache?socket_timeout=soon", False, "socket_timeout"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, cluster: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_redis_url(url, cluster=cluster)


def _settings(**values: Any) -> Settings:
    return Settings(_env_file=None, sysnum=SYSNUM, secret=SECRET, **values)  # type: ignore[call-arg]


def test_settings_accept_the_new_forms_and_name_the_variable_when_wrong(tmp_path: Path) -> None:
    assert _settings(redis_url="redis+sentinel://s1,s2/mymaster").redis_url == "redis+sentinel://s1,s2/mymaster"
    assert _settings(redis_url="redis://node:7000", redis_cluster=True).redis_cluster
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert _settings(redis_url="rediss://cache:6380", redis_tls_ca=ca).redis_tls_ca == ca
    cases = [
        ({"redis_url": "redis+sentinel://s1"}, "PANEL_REDIS_URL: a Sentinel URL names the master's service"),
        ({"redis_cluster": True}, "PANEL_REDIS_CLUSTER: needs PANEL_REDIS_URL"),
        ({"redis_url": "unix:///run/redis.sock", "redis_cluster": True}, "PANEL_REDIS_CLUSTER: Redis Cluster cannot"),
        ({"redis_url": "redis://cache", "redis_tls_ca": ca}, "PANEL_REDIS_TLS_CA: is set but PANEL_REDIS_URL"),
        ({"redis_url": "rediss://cache", "redis_tls_ca": tmp_path / "missing.pem"}, "PANEL_REDIS_TLS_CA: no such"),
    ]
    for values, message in cases:
        with pytest.raises(ValidationError) as failure:
            _settings(**values)
        assert message in describe_error(failure.value)

"""Retention that respects consumers, against every real redis-server this machine has (6.2, 7.0, 8.2):
a group that is behind loses nothing to the soft limit, trimming resumes once it acknowledges, and the hard
ceiling drops (and counts) only what it must."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from sobot_panel.audit.producer import AuditLog, AuditRecord
from sobot_panel.audit.reader import AuditReader
from sobot_panel.audit.retention import Retention, RetentionPolicy
from sobot_panel.redis import EmbeddedRedis, connect
from sobot_panel.redis.keys import Keys

from .helpers.redis_versions import VERSIONS, binary_for

KEYS = Keys("r:")
# (server version, how the bound is kept): 8.2 trims by acknowledgement itself, and is checked computing it too.
CASES = [pytest.param(v, "computed", id=f"redis-{v}-computed") for v in VERSIONS] + [
    pytest.param("8.2", "acked", id="redis-8.2-acked")
]


@pytest.fixture
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[aioredis.Redis]:
    version = request.param
    redis_server = EmbeddedRedis(tmp_path / f"redis-{version}", binary=binary_for(version))
    redis_server.start()
    client = connect(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()
        redis_server.stop()


def _record(n: int) -> AuditRecord:
    payload = json.dumps({"msgType": 25, "miniPage": json.dumps({"orderCode": f"SO{n:06d}"})})
    return AuditRecord(kind="order_card", id=f"evt-{n:08d}", at=1_764_000_000_000 + n, surface="workbench",
                       agent="a@acme.cn", payload=payload, sysnum="acme")  # fmt: skip


async def _append(client: aioredis.Redis, start: int, count: int) -> None:
    await AuditLog(client, KEYS).append_many([_record(n) for n in range(start, start + count)])


async def _ids(client: aioredis.Redis) -> list[str]:
    return [fields["id"] for _, fields in await client.xrange(KEYS.audit_stream)]


async def _read_all(reader: AuditReader, *, ack: bool = True) -> int:
    seen = 0
    while entries := await reader.read(count=100):
        seen += len(entries)
        if ack:
            await reader.ack(entry.entry_id for entry in entries)
    return seen


@pytest.mark.parametrize(("server", "mode"), CASES, indirect=["server"])
async def test_a_stopped_group_loses_nothing_and_trimming_resumes_once_it_acks(
    server: aioredis.Redis, mode: str
) -> None:
    """The issue's case: PANEL_AUDIT_MAXLEN=50, a stopped group, 440 records (368 were lost before)."""
    warehouse = AuditReader(server, KEYS, "warehouse", "w1")
    await warehouse.ensure_group("$")
    retention = Retention(server, KEYS, RetentionPolicy(maxlen=50), mode=mode)  # type: ignore[arg-type]
    for batch in range(4):
        await _append(server, batch * 110, 110)
        await retention.trim_once()
    assert await _ids(server) == [_record(n).id for n in range(440)], "every unread record is kept"

    assert await _read_all(warehouse) == 440
    result = await retention.trim_once()
    length = await server.xlen(KEYS.audit_stream)
    assert 50 <= length <= 50 + 100, f"trimmed to the length, give or take a stream node: {length}"
    assert (await _ids(server))[-50:] == [_record(n).id for n in range(390, 440)], "the newest are kept"
    assert result.trimmed == 440 - length and result.forced == 0


@pytest.mark.parametrize(("server", "mode"), CASES, indirect=["server"])
async def test_a_pending_entry_holds_everything_after_it(server: aioredis.Redis, mode: str) -> None:
    """Delivered is not acknowledged: a consumer that died holding an entry keeps it (and, where the server
    cannot trim around it, everything after it) in the stream."""
    billing = AuditReader(server, KEYS, "billing", "b1")
    await billing.ensure_group("$")
    await _append(server, 0, 300)
    entries = await billing.read(count=300)
    held = entries[120]
    await billing.ack(entry.entry_id for entry in entries if entry is not held)
    retention = Retention(server, KEYS, RetentionPolicy(maxlen=10), mode=mode)  # type: ignore[arg-type]
    await retention.trim_once()
    assert held.fields["id"] in await _ids(server)
    if mode == "computed":
        assert (await _ids(server))[-180:] == [_record(n).id for n in range(120, 300)]
    await billing.ack([held.entry_id])
    await retention.trim_once()
    assert await server.xlen(KEYS.audit_stream) <= 10 + 100


@pytest.mark.parametrize(("server", "mode"), CASES, indirect=["server"])
async def test_the_hard_ceiling_drops_only_the_excess_and_counts_it(
    server: aioredis.Redis, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    abandoned = AuditReader(server, KEYS, "abandoned", "a1")
    await abandoned.ensure_group("$")
    live = AuditReader(server, KEYS, "live", "l1")
    await live.ensure_group("$")
    forced: list[int] = []
    policy = RetentionPolicy(maxlen=50, hard_maxlen=200)
    retention = Retention(server, KEYS, policy, on_forced=forced.append, mode=mode)  # type: ignore[arg-type]
    await _append(server, 0, 440)
    await _read_all(live)
    with caplog.at_level(logging.ERROR, logger="sobot_panel.audit.retention"):
        result = await retention.trim_once()
    assert await _ids(server) == [_record(n).id for n in range(240, 440)], "exactly the oldest excess went"
    assert result.forced == sum(forced) == 240
    assert "dropped 240 entries" in caplog.text and "abandoned" in caplog.text and "live" not in caplog.text
    # Below the ceiling nothing more is forced; the abandoned group still has all that is left.
    again = await retention.trim_once()
    assert again.forced == 0 and await server.xlen(KEYS.audit_stream) == 200


@pytest.mark.parametrize(("server", "mode"), CASES, indirect=["server"])
async def test_age_retention_waits_for_the_group(server: aioredis.Redis, mode: str) -> None:
    reporting = AuditReader(server, KEYS, "reporting", "r1")
    await reporting.ensure_group("0")
    for n in range(250):  # a day old, by stream ID
        await server.xadd(KEYS.audit_stream, _record(n).fields(), id=f"{1_000_000 + n}-0")
    await _append(server, 250, 10)  # new
    retention = Retention(server, KEYS, RetentionPolicy(max_age_s=3600), mode=mode)  # type: ignore[arg-type]
    await retention.trim_once()
    assert len(await _ids(server)) == 260
    await _read_all(reporting)
    await retention.trim_once()
    remaining = await _ids(server)
    assert remaining[-10:] == [_record(n).id for n in range(250, 260)]
    assert len(remaining) <= 10 + 100, "old, acknowledged entries went (whole nodes)"


@pytest.mark.parametrize(("server", "mode"), CASES, indirect=["server"])
async def test_without_groups_the_length_is_kept(server: aioredis.Redis, mode: str) -> None:
    await _append(server, 0, 500)
    await Retention(server, KEYS, RetentionPolicy(maxlen=50), mode=mode).trim_once()  # type: ignore[arg-type]
    assert 50 <= await server.xlen(KEYS.audit_stream) <= 150


@pytest.mark.parametrize("server", ["7.0", "8.2"], indirect=True)
async def test_the_server_decides_the_mode(server: aioredis.Redis) -> None:
    retention = Retention(server, KEYS, RetentionPolicy(maxlen=50))
    await retention.trim_once()
    info = await server.info("server")
    expected = "acked" if tuple(int(x) for x in str(info["redis_version"]).split(".")[:2]) >= (8, 2) else "computed"
    assert retention.mode == expected

"""The audit stream: idempotent appends, the spool across a Redis outage, consumer groups, ranges, stats."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from sobot_panel.audit.batch import ScriptBatcher
from sobot_panel.audit.producer import Appended, AuditLog, AuditRecord, IdempotencyConflict
from sobot_panel.audit.reader import AuditReader, Entry, iter_range, parse_time_bound, stream_stats, update_metrics
from sobot_panel.audit.spool import Spool
from sobot_panel.observability import Metrics
from sobot_panel.protocol.send import SendKind
from sobot_panel.redis import EmbeddedRedis, connect
from sobot_panel.redis.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
KEYS = Keys("t:")


def record(n: int, *, kind: SendKind = "order_card", at: int | None = None) -> AuditRecord:
    return AuditRecord(
        kind=kind,
        id=f"event-{n:05d}",
        at=1_764_000_000_000 + n if at is None else at,
        surface="workbench",
        agent="agent@acme.example",
        partner_id=f"P{n}",
        uid="u1",
        cid="c1",
        payload=f'{{"msgType":25,"miniPage":"{{\\"orderCode\\":\\"订单{n}\\"}}"}}',
    )


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll until `condition()` holds: waiting on the state, never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def stream(redis: aioredis.Redis) -> list[Entry]:
    return [entry async for entry in iter_range(redis, KEYS)]


@pytest.fixture
async def own_client(own_redis: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    client = connect(own_redis.url)
    yield client
    await client.aclose()


# --- producer ------------------------------------------------------------------------------------


async def test_same_event_twice_makes_one_entry(redis_client: aioredis.Redis) -> None:
    log = AuditLog(redis_client, KEYS)
    first = await log.append(record(1))
    again = await log.append(record(1))
    assert (first.duplicate, first.spooled) == (False, False)
    assert again.duplicate and again.entry_id == first.entry_id
    assert await redis_client.xlen(KEYS.audit_stream) == 1
    assert 3_600 < await redis_client.ttl(KEYS.audit_idempotency("event-00001")) <= 86_400  # PANEL_AUDIT_DEDUPE_TTL


async def test_append_many_pipelines_in_order(redis_client: aioredis.Redis) -> None:
    log = AuditLog(redis_client, KEYS)
    records = [record(n) for n in range(250)] + [record(3)]
    results = await log.append_many(records)
    assert [r.duplicate for r in results] == [False] * 250 + [True]
    assert [e.record for e in await stream(redis_client)] == records[:250]


async def test_concurrent_appends_share_round_trips_and_each_gets_its_own_answer(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sends that arrive together go out as one pipeline; each is still its own entry, a retry in the same
    batch is the first one's duplicate, and other content under a recorded id is refused."""
    log = AuditLog(redis_client, KEYS)
    sizes: list[int] = []
    send = ScriptBatcher._send

    async def recording(self: ScriptBatcher, batch: list[Any]) -> None:
        sizes.append(len(batch))
        await send(self, batch)

    monkeypatch.setattr(ScriptBatcher, "_send", recording)
    records = [record(n) for n in range(60)]
    other = record(3).model_copy(update={"payload": '{"msgType":25,"miniPage":"{}"}'})
    results = await asyncio.gather(*(log.append(r) for r in [*records, records[5], other]), return_exceptions=True)
    assert max(sizes) > 1 and sum(sizes) == 62, sizes
    added = results[:60]
    assert all(isinstance(r, Appended) and not r.duplicate for r in added)
    assert len({r.entry_id for r in added if isinstance(r, Appended)}) == 60
    retry = results[60]
    assert isinstance(retry, Appended) and retry.duplicate and retry.entry_id == added[5].entry_id  # type: ignore[union-attr]
    assert isinstance(results[61], IdempotencyConflict)
    assert [e.record for e in await stream(redis_client)] == records


async def test_a_batch_meeting_a_redis_without_the_script_loads_it_and_records_each(
    redis_client: aioredis.Redis,
) -> None:
    """Redis restarted empty (or SCRIPT FLUSH): each call of the batch gets NOSCRIPT, loads it, and is recorded."""
    log = AuditLog(redis_client, KEYS)
    await log.append(record(0))
    await redis_client.script_flush()
    records = [record(n) for n in range(1, 21)]
    results = await asyncio.gather(*(log.append(r) for r in records))
    assert all(not r.duplicate and r.entry_id for r in results)
    assert [e.record for e in await stream(redis_client)] == [record(0), *records]


async def test_a_cancelled_round_trip_cancels_every_caller_waiting_on_it() -> None:
    """At shutdown the batch in flight is cancelled: its callers, and those queued behind it, never hang."""
    never = asyncio.Event()

    class Retry:
        async def call_with_retry(self, do: Callable[[], Awaitable[object]], fail: object) -> object:
            return await do()

    class Connection:
        retry = Retry()

        async def send_packed_command(self, packed: bytes) -> None:
            await never.wait()

        async def disconnect(self) -> None:
            return None

    class Pool:
        async def get_connection(self) -> Connection:
            return Connection()

        async def release(self, connection: Connection) -> None:
            return None

    class Stub:
        connection_pool = Pool()

    script = type("Script", (), {"sha": "0" * 40})()
    batcher = ScriptBatcher(Stub(), script)  # type: ignore[arg-type]
    batcher.enabled = True
    first = [asyncio.ensure_future(batcher.call(["k"], [n])) for n in range(3)]
    await asyncio.sleep(0)  # the first trip leaves with these three
    await asyncio.sleep(0)
    queued = asyncio.ensure_future(batcher.call(["k"], [9]))
    await asyncio.sleep(0)
    assert batcher._flushing is not None
    batcher._flushing.cancel()
    results = await asyncio.wait_for(asyncio.gather(*first, queued, return_exceptions=True), 10)
    assert all(isinstance(result, asyncio.CancelledError) for result in results), results


async def test_a_batch_that_cannot_reach_redis_is_spooled_whole_and_replayed_once(
    own_redis: EmbeddedRedis, own_client: aioredis.Redis, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    log = AuditLog(own_client, KEYS, spool=spool)
    await log.append(record(0))
    own_redis.stop()
    records = [record(n) for n in range(1, 41)]
    results = await asyncio.gather(*(log.append(r) for r in records))
    assert all(r.spooled and not r.duplicate for r in results)
    assert spool.depth().records == 40
    own_redis.start()
    assert await log.replay_spool() == 40
    replayed = [e.record for e in await stream(own_client)]
    assert sorted(replayed, key=lambda r: r.id) == [record(0), *records], "each once, with its id and at"


async def test_redis_outage_spools_then_replays_exactly_once(
    own_redis: EmbeddedRedis, own_client: aioredis.Redis, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    log = AuditLog(own_client, KEYS, spool=spool)
    await log.append(record(0))
    own_redis.stop()

    records = [record(n) for n in range(1, 51)]
    results = [await log.append(r) for r in records]
    assert all(r.spooled and r.entry_id == "" and not r.duplicate for r in results)
    assert spool.depth().records == 50

    stop = asyncio.Event()
    replayer = asyncio.create_task(log.run_replayer(stop, interval_s=0.05))
    try:
        own_redis.start()

        async def replayed() -> bool:
            return not spool.has_files() and await own_client.xlen(KEYS.audit_stream) == 51

        await wait_for(replayed, what="the spool to be replayed")
    finally:
        stop.set()
        await replayer
    entries = await stream(own_client)
    assert [e.record for e in entries] == [record(0), *records], "original id and at, in order, once each"
    assert (await log.append(records[7])).duplicate, "a replayed record keeps its idempotency key"


SPOOLING_PROCESS = """
import asyncio, sys
from pathlib import Path
from sobot_panel.audit.producer import AuditLog, AuditRecord
from sobot_panel.redis.keys import Keys
from sobot_panel.redis import connect
from sobot_panel.audit.spool import Spool

async def main() -> None:
    client = connect(sys.argv[1])
    log = AuditLog(client, Keys("t:"), spool=Spool(Path(sys.argv[2])))
    for n in range(int(sys.argv[3])):
        result = await log.append(AuditRecord(kind="ticket", id=f"restart-{n:03d}", at=1_764_000_000_000 + n,
                                              surface="ticket", agent="a@b.c", payload='{"type":"createOrder"}'))
        assert result.spooled, result
    print("spooled", flush=True)

asyncio.run(main())
"""


async def test_a_restarted_process_replays_what_the_old_one_spooled(
    own_redis: EmbeddedRedis, own_client: aioredis.Redis, tmp_path: Path
) -> None:
    own_redis.stop()
    old = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SPOOLING_PROCESS), own_redis.url, str(tmp_path / "spool"), "30"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert old.returncode == 0 and "spooled" in old.stdout, old.stderr
    own_redis.start()

    spool = Spool(tmp_path / "spool")
    log = AuditLog(own_client, KEYS, spool=spool)
    assert await log.replay_spool() == 30
    assert await log.replay_spool() == 0
    entries = await stream(own_client)
    assert [e.record.id for e in entries] == [f"restart-{n:03d}" for n in range(30)]
    assert [e.record.at for e in entries] == [1_764_000_000_000 + n for n in range(30)]
    assert not spool.has_files()


async def test_record_already_in_the_stream_is_not_doubled_by_replay(
    redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    # A write that landed but whose answer was lost (a timeout) is spooled too: replay must not double it.
    spool = Spool(tmp_path / "spool")
    log = AuditLog(redis_client, KEYS, spool=spool)
    landed = await log.append(record(1))
    spool.append(record(1).fields())
    spool.append(record(2).fields())
    assert await log.replay_spool() == 2
    entries = await stream(redis_client)
    assert [e.record.id for e in entries] == ["event-00001", "event-00002"]
    assert entries[0].entry_id == landed.entry_id


async def test_replay_merges_files_by_acceptance_time(redis_client: aioredis.Redis, tmp_path: Path) -> None:
    worker_a, worker_b = Spool(tmp_path / "spool"), Spool(tmp_path / "spool")
    for n in (1, 3, 5):
        worker_a.append(record(n).fields())
    for n in (2, 4, 6):
        worker_b.append(record(n).fields())
    worker_a.close()
    worker_b.close()
    log = AuditLog(redis_client, KEYS, spool=Spool(tmp_path / "spool"))
    assert await log.replay_spool() == 6
    assert [e.record.id for e in await stream(redis_client)] == [record(n).id for n in range(1, 7)]


async def test_without_a_spool_the_redis_error_surfaces(own_redis: EmbeddedRedis, own_client: aioredis.Redis) -> None:
    log = AuditLog(own_client, KEYS)
    own_redis.stop()
    with pytest.raises(RedisConnectionError):
        await log.append(record(1))


# --- consumers -----------------------------------------------------------------------------------


async def test_entries_of_a_dead_consumer_are_claimed(redis_client: aioredis.Redis) -> None:
    log = AuditLog(redis_client, KEYS)
    dead = AuditReader(redis_client, KEYS, "ops", "dead-one", claim_idle_ms=60_000)
    assert await dead.ensure_group("0") is True
    assert await dead.ensure_group("0") is False  # BUSYGROUP is not an error
    for n in range(3):
        await log.append(record(n))
    taken = await dead.read(count=10)
    assert len(taken) == 3  # ... and it dies without acking

    survivor = AuditReader(redis_client, KEYS, "ops", "survivor", claim_idle_ms=50)
    got: list[Entry] = []

    async def claimed_all() -> bool:
        got.extend(await survivor.read(count=10))
        return len(got) >= 3

    await wait_for(claimed_all, what="XAUTOCLAIM to hand over the dead consumer's entries")
    assert [e.entry_id for e in got] == [e.entry_id for e in taken]
    assert [e.record for e in got] == [record(n) for n in range(3)]
    owners = await redis_client.xpending_range(KEYS.audit_stream, "ops", "-", "+", 10)
    assert {o["consumer"] for o in owners} == {"survivor"}
    assert await survivor.ack(e.entry_id for e in got) == 3
    assert await survivor.pending() == 0


async def test_claim_scans_past_pages_with_nothing_idle(redis_client: aioredis.Redis) -> None:
    # XAUTOCLAIM looks at COUNT*10 pending entries per call: with count=2 the first 20 are all fresh,
    # so the first call returns an empty page with a cursor that is not 0-0. idle_ms leaves the read a
    # wide margin to run before the 25 re-claimed entries go idle again, even on a loaded machine.
    idle_ms = 1000
    log = AuditLog(redis_client, KEYS)
    first = AuditReader(redis_client, KEYS, "ops", "first", claim_idle_ms=idle_ms)
    await first.ensure_group("0")
    await log.append_many([record(n) for n in range(30)])
    taken = await first.read(count=30)
    assert len(taken) == 30

    async def all_idle() -> bool:
        rows = await redis_client.xpending_range(KEYS.audit_stream, "ops", "-", "+", 30)
        return min(int(row["time_since_delivered"]) for row in rows) > idle_ms

    await wait_for(all_idle, what="the entries to go idle")
    fresh: list[str | int | bytes | memoryview[int]] = [e.entry_id for e in taken[:25]]
    await redis_client.xclaim(KEYS.audit_stream, "ops", "first", 0, fresh)  # resets their idle time
    second = AuditReader(redis_client, KEYS, "ops", "second", claim_idle_ms=idle_ms)
    got = await second.read(count=2)
    assert [e.entry_id for e in got] == [e.entry_id for e in taken[25:27]]


async def test_an_entry_that_keeps_failing_goes_to_the_dead_letter_stream(redis_client: aioredis.Redis) -> None:
    log = AuditLog(redis_client, KEYS)
    reader = AuditReader(redis_client, KEYS, "ops", "flaky", claim_idle_ms=20, dead_after=3)
    await reader.ensure_group("0")
    appended = await log.append(record(7))
    deliveries = 0

    async def parked() -> bool:
        nonlocal deliveries
        deliveries += len(await reader.read(count=5))  # read and never ack: the handler keeps failing
        return await redis_client.xlen(KEYS.audit_dead_letter) == 1

    await wait_for(parked, what="the entry to be dead-lettered")
    assert deliveries == 3
    ((_dead_id, raw),) = await redis_client.xrange(KEYS.audit_dead_letter) or []
    fields = {str(k): str(v) for k, v in (raw or {}).items()}
    assert {k: fields[k] for k in record(7).fields()} == record(7).fields()
    assert fields["dead_reason"] == "max_deliveries"
    assert fields["original_id"] == appended.entry_id
    assert fields["deliveries"] == "3"
    assert fields["group"] == "ops"
    assert await reader.pending() == 0
    assert await redis_client.xlen(KEYS.audit_stream) == 1, "the audit record itself stays"


async def test_reader_blocks_for_new_entries_and_recreates_a_lost_group(redis_client: aioredis.Redis) -> None:
    log = AuditLog(redis_client, KEYS)
    reader = AuditReader(redis_client, KEYS, "ops", "c1")
    await reader.ensure_group("$")
    assert await reader.read(count=5, block_ms=50) == []

    async def later() -> None:
        await asyncio.sleep(0.05)
        await log.append(record(1))

    task = asyncio.create_task(later())
    got = await reader.read(count=5, block_ms=1500)
    await task
    assert [e.record.id for e in got] == ["event-00001"]

    await redis_client.delete(KEYS.audit_stream)  # the group goes with it
    assert await reader.read(count=5) == []
    await log.append(record(2))
    assert [e.record.id for e in await reader.read(count=5)] == ["event-00002"]
    await reader.ack([got[0].entry_id])


async def test_leave_removes_an_idle_consumer_only(redis_client: aioredis.Redis) -> None:
    log = AuditLog(redis_client, KEYS)
    reader = AuditReader(redis_client, KEYS, "cli", "temp")
    await reader.ensure_group("0")
    await log.append(record(1))
    got = await reader.read(count=5)
    assert await reader.leave() is False  # holds a pending entry
    await reader.ack(e.entry_id for e in got)
    assert await reader.leave() is True
    assert await redis_client.xinfo_consumers(KEYS.audit_stream, "cli") == []


# --- ranges, time bounds, stats ------------------------------------------------------------------


async def test_iter_range_pages_and_bounds(redis_client: aioredis.Redis) -> None:
    for ms in range(1, 1206):
        await redis_client.xadd(KEYS.audit_stream, {"kind": "ticket", "n": str(ms)}, id=f"{ms}-0")
    await redis_client.xadd(KEYS.audit_stream, {"kind": "ticket", "n": "1205b"}, id="1205-1")
    everything = [e async for e in iter_range(redis_client, KEYS, count=500)]
    assert [e.fields["n"] for e in everything] == [*map(str, range(1, 1206)), "1205b"]
    window = [
        e.fields["n"]
        async for e in iter_range(
            redis_client, KEYS, parse_time_bound(1000), parse_time_bound("1205", end=True), count=7
        )
    ]
    assert window == [*map(str, range(1000, 1206)), "1205b"], "an end bound includes its whole millisecond"


CHINA = timezone(timedelta(hours=8))
NOW = 1_764_000_000_000


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@pytest.mark.parametrize(
    ("value", "end", "expected"),
    [
        ("2026-11-24", False, f"{ms(datetime(2026, 11, 24, tzinfo=CHINA))}-0"),
        ("2026-11-24", True, f"{ms(datetime(2026, 11, 25, tzinfo=CHINA)) - 1}-18446744073709551615"),
        ("2026-11-24T10:00", False, f"{ms(datetime(2026, 11, 24, 10, tzinfo=CHINA))}-0"),
        ("2026-11-24T10:00:00+00:00", False, f"{ms(datetime(2026, 11, 24, 10, tzinfo=UTC))}-0"),
        ("2026-11-24 10:00:00Z", False, f"{ms(datetime(2026, 11, 24, 10, tzinfo=UTC))}-0"),
        ("-1h", False, f"{NOW - 3_600_000}-0"),
        ("-30m", False, f"{NOW - 1_800_000}-0"),
        ("-2d", True, f"{NOW - 172_800_000}-18446744073709551615"),
        ("now", True, f"{NOW}-18446744073709551615"),
        ("1764000000123", False, "1764000000123-0"),
        (1764000000123, True, "1764000000123-18446744073709551615"),
        ("1764000000123-4", False, "1764000000123-4"),
        ("-", False, "-"),
        ("+", True, "+"),
    ],
    ids=lambda v: str(v),
)
def test_parse_time_bound(value: str | int, end: bool, expected: str) -> None:
    assert parse_time_bound(value, end=end, now=NOW) == expected


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", "-1y", "10:00", ""])
def test_parse_time_bound_rejects_nonsense(value: str) -> None:
    with pytest.raises(ValueError, match="is not a time"):
        parse_time_bound(value, now=NOW)


async def test_stream_stats_and_metrics(redis_client: aioredis.Redis, tmp_path: Path) -> None:
    assert (await stream_stats(redis_client, KEYS))["groups"] == []
    log = AuditLog(redis_client, KEYS)
    await log.append_many([record(n) for n in range(5)])
    reader = AuditReader(redis_client, KEYS, "ops", "c1")
    await reader.ensure_group("0")
    await reader.read(count=2)
    stats = await stream_stats(redis_client, KEYS)
    assert stats["length"] == 5
    assert stats["dead_letter_length"] == 0
    (group,) = stats["groups"]
    assert (group["name"], group["pending"], group["lag"], group["consumers"]) == ("ops", 2, 3, 1)

    spool = Spool(tmp_path / "spool")
    spool.append(record(9).fields())
    metrics = Metrics()
    await update_metrics(metrics, redis_client, KEYS, spool)
    value = metrics.registry.get_sample_value
    assert value("panel_audit_stream_length", {"tenant": ""}) == 5
    assert value("panel_audit_group_pending", {"group": "ops", "tenant": ""}) == 2
    assert value("panel_audit_group_lag", {"group": "ops", "tenant": ""}) == 3
    assert value("panel_audit_spool_records", {"tenant": ""}) == 1
    assert value("panel_audit_spool_bytes", {"tenant": ""}) == spool.depth().bytes > 0

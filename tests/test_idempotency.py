"""A send's idempotency key is bound to what it recorded: a retry is answered with the stored entry, the
same id with other content is refused (409) and nothing is posted; the ack always equals the stream."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sobot_panel.app import create_app
from sobot_panel.appkeys import COMPANIES, KEYS, REDIS
from sobot_panel.audit.producer import AuditLog, AuditRecord, IdempotencyConflict
from sobot_panel.audit.reader import iter_range
from sobot_panel.audit.spool import Spool
from sobot_panel.redis import EmbeddedRedis, connect
from sobot_panel.redis.keys import Keys
from sobot_panel.settings import Settings

from .test_send import first_order_card, send, token_for

ClientFactory = Callable[..., Awaitable[TestClient[Any, web.Application]]]
EVENT = "evt-shared-000001"


def phishing_card() -> dict[str, Any]:
    card = first_order_card()
    return {**card, "orderUrl": "https://phish.example.net/login", "orderCode": "SO-PHISH"}


async def stream_of(client: TestClient[Any, Any]) -> list[dict[str, str]]:
    app = client.server.app
    assert app is not None
    return [entry.fields async for entry in iter_range(app[REDIS], app[KEYS])]


@pytest.fixture
async def client(aiohttp_client: ClientFactory, make_settings: Callable[..., Settings]) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(make_settings()))


async def test_the_same_id_with_other_content_is_refused_and_nothing_is_recorded(client: TestClient[Any, Any]) -> None:
    token_a = await token_for(client, "C1001")
    token_b = await token_for(client, "C1002")  # another agent session, another customer
    status, first = await send(client, token_a, "order_card", first_order_card(), EVENT)
    assert status == 200 and not first["duplicate"]

    status, refused = await send(client, token_b, "order_card", phishing_card(), EVENT)
    assert status == 409, refused
    assert refused["ok"] is False and refused["code"] == "idempotency_conflict"
    assert "send id was already used" in refused["message"]  # ?lang=en: the English text, not the code
    assert "message" in refused and "msgType" not in json.dumps(refused)  # nothing to post
    entries = await stream_of(client)
    assert [e["id"] for e in entries] == [EVENT]
    assert "phish" not in entries[0]["payload"]

    # The same session's card with other content under that id is refused as well.
    status, _ = await send(client, token_a, "order_card", phishing_card(), EVENT)
    assert status == 409


async def test_a_retry_is_answered_with_what_the_stream_holds(client: TestClient[Any, Any]) -> None:
    token = await token_for(client, "C1001")
    status, first = await send(client, token, "order_card", first_order_card(), EVENT)
    status_again, again = await send(client, token, "order_card", first_order_card(), EVENT)
    assert (status, status_again) == (200, 200)
    assert again["duplicate"] is True and again["entryId"] == first["entryId"]
    (entry,) = await stream_of(client)
    assert json.loads(entry["payload"]) == first["message"] == again["message"]


async def test_records_are_version_2_with_sysnum_and_request_id(client: TestClient[Any, Any]) -> None:
    token = await token_for(client, "C1001")
    body = {"token": token, "kind": "order_card", "id": EVENT, "data": first_order_card()}
    response = await client.post("/panel/send", json=body, headers={"X-Request-Id": "req-abc-123"})
    assert response.status == 200
    (entry,) = await stream_of(client)
    assert entry["v"] == "2" and entry["sysnum"] == "acme123" and entry["request_id"] == "req-abc-123"


async def test_a_key_written_before_digests_is_compared_with_its_entry(redis_client: Any) -> None:
    """Keys of version 1 hold the entry id alone: the entry itself decides what is a retry."""
    keys = Keys("t:")
    log = AuditLog(redis_client, keys)
    record = _record(EVENT, "A")
    entry_id = await redis_client.xadd(keys.audit_stream, record.fields())
    await redis_client.set(keys.audit_idempotency(EVENT), entry_id, ex=600)
    again = await log.append(record)
    assert again.duplicate and again.entry_id == entry_id and again.stored_payload == record.payload
    with pytest.raises(IdempotencyConflict):
        await log.append(_record(EVENT, "B"))
    assert await redis_client.xlen(keys.audit_stream) == 1


def _record(event_id: str, body: str, agent: str = "a@acme.cn") -> AuditRecord:
    payload = json.dumps({"msgType": 25, "miniPage": body})
    return AuditRecord(kind="order_card", id=event_id, at=1_764_000_000_000, surface="workbench", agent=agent,
                       partner_id="C1001", payload=payload, sysnum="acme123")  # fmt: skip


async def test_during_an_outage_the_spool_keeps_the_guarantee(own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    keys = Keys("t:")
    client = connect(own_redis.url)
    try:
        log = AuditLog(client, keys, spool=Spool(tmp_path / "spool"))
        own_redis.kill()
        first = await log.append(_record(EVENT, "A"))
        retry = await log.append(_record(EVENT, "A"))
        assert first.spooled and retry.spooled and retry.duplicate
        with pytest.raises(IdempotencyConflict):
            await log.append(_record(EVENT, "B"))
        own_redis.start()
        assert await log.replay_spool() == 1
        entries = [entry.fields async for entry in iter_range(client, keys)]
        assert [json.loads(e["payload"])["miniPage"] for e in entries] == ["A"]
        # After the replay the stream answers: a retry is a duplicate, other content a conflict.
        assert (await log.append(_record(EVENT, "A"))).duplicate
        with pytest.raises(IdempotencyConflict):
            await log.append(_record(EVENT, "B"))
    finally:
        await client.aclose()


async def test_a_replayed_record_that_meets_other_content_is_recorded_beside_it(
    own_redis: EmbeddedRedis, tmp_path: Path
) -> None:
    """Two replicas each accepted a send with one id while Redis was away (neither could ask the other).
    Both were posted to Sobot, so both are recorded; replaying again adds neither twice."""
    keys = Keys("t:")
    client = connect(own_redis.url)
    try:
        online = AuditLog(client, keys)
        await online.append(_record(EVENT, "A"))
        other_replica = AuditLog(client, keys, spool=Spool(tmp_path / "spool"))
        await other_replica._spool_one(_record(EVENT, "B", agent="b@acme.cn"), OSError("Redis away"))
        assert await other_replica.replay_spool() == 1
        await other_replica._spool_one(_record(EVENT, "B", agent="b@acme.cn"), OSError("Redis away"))
        await other_replica.replay_spool()
        entries = [entry.fields async for entry in iter_range(client, keys)]
        assert [(e["id"], json.loads(e["payload"])["miniPage"]) for e in entries] == [(EVENT, "A"), (EVENT, "B")]
    finally:
        await client.aclose()


async def test_the_ack_always_equals_the_stream(client: TestClient[Any, Any]) -> None:
    """Whatever mix of first sends, retries and conflicting reuses arrives, every 200 answer carries
    exactly the payload the stream holds for that id."""
    tokens = [await token_for(client, partner) for partner in ("C1001", "C1002")]
    cards = [first_order_card(), phishing_card()]
    answers: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(3):
        for index, token in enumerate(tokens):
            event = f"evt-mixed-{(round_ + index) % 2:06d}"
            status, body = await send(client, token, "order_card", cards[(round_ * 2 + index) % 2], event)
            assert status in (200, 409)
            if status == 200:
                answers.setdefault(event, []).append(body["message"])
    stored = {e["id"]: json.loads(e["payload"]) for e in await stream_of(client)}
    assert len(stored) == len(await stream_of(client)), "one entry per id"
    for event, messages in answers.items():
        assert all(message == stored[event] for message in messages), event
    app = client.server.app
    assert app is not None and app[COMPANIES].default.audit.spool is not None

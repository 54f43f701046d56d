"""The README's consumer example, run as written against every Redis the service supports and with the
Cluster key: it reads through a group, claims what a dead consumer left (including an entry trimmed while
pending, whose XAUTOCLAIM reply differs on 6.2), and acks everything."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis as redis_sync
from sobot_panel.redis import EmbeddedRedis

from .helpers.redis_versions import VERSIONS, binary_for

README = Path(__file__).resolve().parent.parent / "README.md"


def example() -> ModuleType:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- consumer-example:start -->\n```python\n(.*?)```\n<!-- consumer-example:end -->", text,
                      re.DOTALL)  # fmt: skip
    assert match, "the README's consumer example is marked"
    module = ModuleType("readme_consumer")
    exec(compile(match.group(1), str(README), "exec"), module.__dict__)
    return module


@pytest.fixture(params=VERSIONS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EmbeddedRedis]:
    redis_server = EmbeddedRedis(tmp_path / "redis", binary=binary_for(request.param))
    redis_server.start()
    yield redis_server
    redis_server.stop()


@pytest.mark.parametrize("stream", ["panel:audit", "{panel}:audit"])
def test_the_readme_consumer_reads_claims_and_acks(server: EmbeddedRedis, stream: str) -> None:
    consumer = example()
    consumer.STREAM, consumer.GROUP, consumer.CLAIM_IDLE_MS, consumer.BLOCK_MS = stream, "billing", 0, 100
    seen: list[str] = []
    consumer.handle = lambda entry_id, fields: seen.append(fields["id"])
    client: Any = consumer.connect(server.url)
    try:
        for n in range(12):
            payload = json.dumps({"msgType": 25, "n": n})
            client.xadd(stream, {"kind": "order_card", "id": f"evt-{n:04d}", "payload": payload, "v": "2"})
        client.xgroup_create(stream, "billing", id="0")
        # A consumer that died holding four entries, one of which was then trimmed away.
        taken = client.xreadgroup("billing", "dead-one", {stream: ">"}, count=4)[0][1]
        client.xdel(stream, taken[1][0])
        assert consumer.consume(client, stop_after=11) == 11
        assert sorted(seen) == sorted(f"evt-{n:04d}" for n in range(12) if n != 1)
        assert client.xpending(stream, "billing")["pending"] == 0, "everything is acked, the trimmed one too"
    finally:
        client.close()


def test_the_example_keeps_its_read_shorter_than_its_socket_timeout() -> None:
    consumer = example()
    client = consumer.connect("redis://127.0.0.1:1/0")
    timeout = client.connection_pool.connection_kwargs["socket_timeout"]
    assert timeout > consumer.BLOCK_MS / 1000, "redis-py 8 ends a block as long as its socket timeout"
    assert isinstance(client, redis_sync.Redis)

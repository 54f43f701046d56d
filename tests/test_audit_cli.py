"""`sobot-panel audit tail | export`, run as the operator runs them: subprocesses against a real Redis."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from sobot_panel.audit.cli import human_line, summarize
from sobot_panel.audit.producer import AuditLog, AuditRecord
from sobot_panel.audit.reader import Entry
from sobot_panel.protocol.send import SendKind
from sobot_panel.redis import EmbeddedRedis
from sobot_panel.redis.keys import Keys

ROOT = Path(__file__).resolve().parent.parent
CHINA = timezone(timedelta(hours=8))
KEYS = Keys()  # the contract's key, panel:audit
BOM = b"\xef\xbb\xbf"
HEADER = ["entry_id", "kind", "id", "at", "surface", "agent", "partner_id", "uid", "cid", "payload", "v", "sysnum",
          "request_id"]  # fmt: skip


def cli_command() -> list[str]:
    return [sys.executable, "-m", "sobot_panel"]


def cli_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PANEL_")}
    env["PANEL_SYSNUM"] = "x"
    env.update(values)
    return env


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*cli_command(), "audit", *args], cwd=cwd, env=cli_env(**env), capture_output=True, timeout=60
    )


def start_cli(*args: str, cwd: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*cli_command(), "audit", *args], cwd=cwd, env=cli_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def record(n: int, kind: SendKind = "order_card", payload: str | None = None) -> AuditRecord:
    return AuditRecord(
        kind=kind,
        id=f"cli-event-{n:04d}",
        at=1_764_000_000_000 + n * 1000,
        surface="workbench",
        agent=f"客服{n}@acme.example",
        partner_id=f"P{n}",
        uid="u1",
        cid="c1",
        payload=payload
        or json.dumps({"type": "createOrder", "params": {"card_title": f"退货申请 {n}"}}, ensure_ascii=False),
    )


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def group_exists(redis: aioredis.Redis, group: str) -> bool:
    try:
        return any(g["name"] == group for g in await redis.xinfo_groups(KEYS.audit_stream))
    except Exception:
        return False


async def finish(process: subprocess.Popen[bytes], timeout: float = 20.0) -> tuple[int, bytes, bytes]:
    out, err = await asyncio.to_thread(process.communicate, timeout=timeout)
    return process.returncode, out, err


# --- tail ----------------------------------------------------------------------------------------


async def test_tail_json_prints_and_acks(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    log = AuditLog(redis_client, KEYS)
    records = [record(n) for n in range(4)]
    appended = await log.append_many(records)

    done = await asyncio.to_thread(
        run_cli, "tail", "--count", "3", "--json", "--from-start", cwd=tmp_path, PANEL_REDIS_URL=redis_server.url
    )
    assert done.returncode == 0, done.stderr.decode()
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [line.pop("entry_id") for line in lines] == [a.entry_id for a in appended[:3]]
    assert [AuditRecord.model_validate(line) for line in lines] == records[:3]
    assert lines[0]["agent"] == "客服0@acme.example"
    assert (await redis_client.xpending(KEYS.audit_stream, "cli"))["pending"] == 0, "what it printed is acked"
    assert await redis_client.xinfo_consumers(KEYS.audit_stream, "cli") == [], "the consumer tidies itself away"

    again = await asyncio.to_thread(
        run_cli, "tail", "--count", "1", "--json", cwd=tmp_path, PANEL_REDIS_URL=redis_server.url
    )
    assert json.loads(again.stdout)["id"] == records[3].id, "the group carries on where the last run stopped"


async def test_tail_follows_new_entries(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    process = start_cli("tail", "--group", "live", "--count", "2", cwd=tmp_path, PANEL_REDIS_URL=redis_server.url)
    try:
        await wait_for(lambda: group_exists(redis_client, "live"), what="tail to create its group")
        log = AuditLog(redis_client, KEYS)
        card = json.dumps(
            {
                "cid": "c1",
                "uid": "u1",
                "msgType": 25,
                "miniPage": json.dumps({"orderCode": "A123", "totalFee": "1050", "goodsCount": 2}),
            }
        )
        await log.append(record(1, "order_card", card))
        await log.append(record(2, "ticket"))
        code, out, err = await finish(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0, err.decode()
    first, second = out.decode().splitlines()
    shown = datetime.fromtimestamp(record(1).at / 1000, timezone(timedelta(hours=8))).strftime("%Y-%m-%d %H:%M:%S")
    assert first.startswith(shown), "time in China time"
    assert "order_card" in first and "客服1@acme.example" in first and "partner=P1" in first
    assert "order A123 ¥10.50 ×2" in first
    assert "ticket" in second and "退货申请 2" in second


async def test_tail_kind_filter_acks_what_it_skips(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    log = AuditLog(redis_client, KEYS)
    await log.append_many([record(1, "order_card"), record(2, "ticket"), record(3, "goods_card"), record(4, "ticket")])
    done = await asyncio.to_thread(
        run_cli,
        "tail",
        "--kind",
        "ticket",
        "--count",
        "2",
        "--json",
        "--from-start",
        cwd=tmp_path,
        PANEL_REDIS_URL=redis_server.url,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert [json.loads(line)["id"] for line in done.stdout.decode().splitlines()] == [record(2).id, record(4).id]
    (group,) = await redis_client.xinfo_groups(KEYS.audit_stream)
    assert (group["pending"], group["lag"]) == (0, 0), "filtered-out entries are acked too"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_tail_stops_cleanly_on_a_signal(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, tmp_path: Path, signum: int
) -> None:
    process = start_cli("tail", "--group", "sig", cwd=tmp_path, PANEL_REDIS_URL=redis_server.url)
    try:
        await wait_for(lambda: group_exists(redis_client, "sig"), what="tail to create its group")
        process.send_signal(signum)
        code, _, err = await finish(process, timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0, err.decode()
    assert b"Traceback" not in err


# --- export --------------------------------------------------------------------------------------


async def test_export_csv_opens_in_excel_and_round_trips_chinese(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    log = AuditLog(redis_client, KEYS)
    tricky = json.dumps({"type": "createOrder", "params": {"card_desc": '多行\n"引号", 逗号'}}, ensure_ascii=False)
    records = [record(1), record(2, "ticket", tricky), record(3)]
    appended = await log.append_many(records)
    target = tmp_path / "审计.csv"

    done = await asyncio.to_thread(
        run_cli, "export", "--format", "csv", "--output", str(target), cwd=tmp_path, PANEL_REDIS_URL=redis_server.url
    )
    assert done.returncode == 0, done.stderr.decode()
    raw = target.read_bytes()
    assert raw.startswith(BOM)
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
    assert rows[0] == HEADER
    expected = [[a.entry_id, *r.fields().values()] for a, r in zip(appended, records, strict=True)]
    for row in expected:
        row[HEADER.index("at")] = datetime.fromtimestamp(int(row[HEADER.index("at")]) / 1000, CHINA).isoformat(
            timespec="milliseconds"
        )
    assert rows[1:] == expected
    assert rows[1][HEADER.index("at")].endswith("+08:00"), "ISO 8601, China time"
    assert rows[2][HEADER.index("payload")] == tricky
    assert not list(tmp_path.glob("*.part"))

    to_stdout = await asyncio.to_thread(
        run_cli,
        "export",
        "--format",
        "csv",
        "--since",
        str(record(2).at - 60_000),
        cwd=tmp_path,
        PANEL_REDIS_URL=redis_server.url,
    )
    assert to_stdout.stdout.startswith(BOM)


async def test_export_jsonl_by_range(redis_client: aioredis.Redis, redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    for n in range(5):
        fields = record(n).fields()
        await redis_client.xadd(KEYS.audit_stream, fields, id=f"{fields['at']}-0")  # type: ignore[arg-type]
    done = await asyncio.to_thread(
        run_cli,
        "export",
        "--since",
        str(record(1).at),
        "--until",
        str(record(3).at),
        cwd=tmp_path,
        PANEL_REDIS_URL=redis_server.url,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert not done.stdout.startswith(BOM)
    lines = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [line["id"] for line in lines] == [record(n).id for n in (1, 2, 3)]
    assert lines[0]["at"] == record(1).at and lines[0]["entry_id"] == f"{record(1).at}-0"


async def test_export_since_a_relative_time_written_apart(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """The README's own `audit export --since -1h` (argparse took `-1h` for an option)."""
    now = int(time.time() * 1000)
    await redis_client.xadd(KEYS.audit_stream, record(1).fields(), id=f"{now - 3 * 3_600_000}-0")  # type: ignore[arg-type]
    await redis_client.xadd(KEYS.audit_stream, record(2).fields(), id=f"{now - 60_000}-0")  # type: ignore[arg-type]
    for args in (("--since", "-1h"), ("--since=-1h",), ("--since", "-2h", "--until", "-30s")):
        done = await asyncio.to_thread(run_cli, "export", *args, cwd=tmp_path, PANEL_REDIS_URL=redis_server.url)
        assert done.returncode == 0, (args, done.stderr.decode())
        assert [json.loads(line)["id"] for line in done.stdout.decode().splitlines()] == [record(2).id], args


async def test_export_filters_by_kind_agent_and_partner(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    await AuditLog(redis_client, KEYS).append_many([record(n, "ticket" if n % 2 else "order_card") for n in range(6)])
    cases = {
        ("--kind", "ticket"): [1, 3, 5],
        ("--agent", record(2).agent, "--agent", record(3).agent): [2, 3],
        ("--partner", "P4", "--kind", "order_card"): [4],
        ("--partner", "P4", "--kind", "ticket"): [],
    }
    for args, expected in cases.items():
        done = await asyncio.to_thread(run_cli, "export", *args, cwd=tmp_path, PANEL_REDIS_URL=redis_server.url)
        assert done.returncode == 0, done.stderr.decode()
        assert [json.loads(line)["id"] for line in done.stdout.decode().splitlines()] == [
            record(n).id for n in expected
        ]


async def test_export_into_a_closed_pipe_ends_quietly(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, tmp_path: Path
) -> None:
    """`export ... | head` printed "Redis unavailable: [Errno 32] Broken pipe" and exited 1."""
    await AuditLog(redis_client, KEYS).append_many([record(n) for n in range(3000)])
    for fmt in ("jsonl", "csv"):
        command = " ".join([*cli_command(), "audit", "export", "--format", fmt])
        done = await asyncio.to_thread(
            subprocess.run, ["bash", "-o", "pipefail", "-c", f"{command} | head -n 2"], cwd=tmp_path,
            env=cli_env(PANEL_REDIS_URL=redis_server.url), capture_output=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr.decode()
        assert done.stderr == b"", done.stderr.decode()
        assert len(done.stdout.splitlines()) == 2


async def test_export_finds_the_embedded_server_by_its_socket(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "d" / "redis")
    if server.socket_path.parent != server.data_dir:
        pytest.skip("the temporary path is too long for a unix socket in the data dir")
    server.start()
    try:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        await AuditLog(client, KEYS).append(record(1))
        await client.aclose()
        done = await asyncio.to_thread(run_cli, "export", cwd=tmp_path, PANEL_DATA_DIR=str(tmp_path / "d"))
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["id"] == record(1).id


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("export",), 1, "no Redis: PANEL_REDIS_URL is not set"),
        (("tail", "--count", "1"), 1, "no Redis: PANEL_REDIS_URL is not set"),
        (("export", "--since", "yesterday"), 2, "'yesterday' is not a time"),
    ],
    ids=["export-no-redis", "tail-no-redis", "bad-since"],
)
def test_errors_are_one_clear_line(tmp_path: Path, args: tuple[str, ...], code: int, message: str) -> None:
    done = run_cli(*args, cwd=tmp_path, PANEL_DATA_DIR=str(tmp_path / "nothing-here"))
    assert done.returncode == code
    err = done.stderr.decode()
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_bad_setting_is_named(tmp_path: Path) -> None:
    done = run_cli("export", cwd=tmp_path, PANEL_REDIS_URL="http://nope")
    assert done.returncode == 2
    assert "PANEL_REDIS_URL" in done.stderr.decode()


# --- the human line ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"type": "createOrder", "params": {"card_title": "换货", "card_note": "x"}}, "ticket 换货"),
        ({"type": "createOrder", "params": {"a": "1", "b": "2"}}, "ticket a=1, b=2"),
        (
            {"msgType": 25, "miniPage": json.dumps({"orderCode": "O-1", "totalFee": "1000", "goodsCount": 3})},
            "order O-1 ¥10.00 ×3",
        ),
        ({"msgType": 24, "miniPage": json.dumps({"title": "保温杯", "label": "100元"})}, "goods 保温杯 100元"),
        (
            {
                "msgType": 28,
                "miniPage": json.dumps(
                    {"cardType": 0, "customCards": [{"customCardName": "耳机", "customCardCode": "O-9"}]}
                ),
            },
            "order card O-9 耳机",
        ),
        (
            {"msgType": 28, "miniPage": json.dumps({"cardType": 1, "customCards": [{"customCardName": "耳机"}]})},
            "goods card 耳机",
        ),
    ],
    ids=["ticket-title", "ticket-params", "order-25", "goods-24", "order-28", "goods-28"],
)
def test_summary_of_each_message(payload: dict[str, object], expected: str) -> None:
    assert summarize("", json.dumps(payload, ensure_ascii=False)) == expected


def test_summary_of_something_unexpected_is_the_raw_payload_cut_short() -> None:
    assert summarize("ticket", "not json " * 20).endswith("…")
    assert len(summarize("ticket", "not json " * 20)) == 80
    line = human_line(Entry("1-0", {"kind": "ticket", "payload": "{}"}))
    assert line.startswith("?  ticket  -  ")

"""The audit stream: appends a second through the service's own producer against raw XADD, in the same run.

    python -m bench audit [--seconds 3] [--entries 1000000]

1. In process: `sobot_panel.audit.producer.AuditLog.append` one at a time and 50 at once, `append_many` in batches of
   100, against redis-py's raw `XADD` unpipelined (one at a time and 50 at once) and pipelined by 100
   (same record fields, same MAXLEN ~ 1,000,000 as the service's default retention).
2. Over HTTP at 50 connections: `POST /panel/send` (a valid token, an order card built from the sample
   customer's first order, a fresh event id per request) against a bare aiohttp handler doing one XADD,
   with 1 and 2 workers, and with the ops consumer in a process of its own. Each scenario alternates
   rounds with the bare handler (`--http-rounds`) and reports the median of the rounds' ratios, and the
   CPU-µs per request of the server's processes (from /proc), of the consumer and of redis-server.
   `--only http` runs this part alone.
3. The ops dashboard with 1,000,000 entries in the stream (filled by a Lua loop): `GET /ops?token=...`
   against the raw Redis reads a dashboard needs (XLEN, XINFO GROUPS, XREVRANGE COUNT 50). Skipped, with
   a message, while `/ops` is not served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from sobot_panel.audit.producer import AuditLog, AuditRecord
from sobot_panel.directory.sample import load_customers
from sobot_panel.protocol.card_builders import order_card_from_order
from sobot_panel.redis import EmbeddedRedis, connect
from sobot_panel.redis.keys import Keys

from .common import (
    OPS_TOKEN,
    RESULTS,
    Load,
    children,
    cpu_seconds,
    dump_json,
    free_port,
    helper,
    load,
    machine,
    now_ms,
    raise_fd_limit,
    ratio,
    redis_server,
    render_table,
    service,
    summary,
    use_uvloop,
)
from .live_bench import mint_token

MAXLEN = 1_000_000  # the service's default PANEL_AUDIT_MAXLEN
BATCH = 100
CONCURRENCY = 50


def order_data(base_url: str) -> dict[str, object]:
    customer = load_customers()[0]
    return order_card_from_order(customer.orders[0].model_dump(), base_url=base_url)


def sample_record(event_id: str) -> AuditRecord:
    """An order-card record shaped like the ones the service writes (payload = the message posted to Sobot)."""
    page = json.dumps(order_data("http://127.0.0.1:8080"), ensure_ascii=False, separators=(",", ":"))
    payload = json.dumps({"cid": "c-C1001", "uid": "u-C1001", "msgType": 25, "miniPage": page}, ensure_ascii=False,
                         separators=(",", ":"))  # fmt: skip
    return AuditRecord(kind="order_card", id=event_id, at=now_ms(), surface="workbench", agent="agent@bench.cn",
                       partner_id="C1001", uid="u-C1001", cid="c-C1001", payload=payload)  # fmt: skip


# --- 1. in process -------------------------------------------------------------------------------


async def timed(seconds: float, step: Callable[[int], Awaitable[int]], workers: int = 1) -> float:
    """Appends a second: `workers` loops each calling `step(serial)` (returns how many it appended)."""
    done = 0
    serial = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done, serial
        while time.perf_counter() < deadline:
            serial += 1
            appended = await step(serial)  # not `done += await ...`: that reads `done` before awaiting
            done += appended

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(workers)))
    return done / (time.perf_counter() - began)


async def producer_rates(redis_url: str, seconds: float) -> list[tuple[str, float]]:
    client = connect(redis_url)
    keys = Keys("bench-audit:")
    audit = AuditLog(client, keys)
    template = sample_record("template-0001")
    fields = template.fields()
    raw_key = "bench-raw:audit"
    run = f"{time.time_ns():x}"

    def record(serial: int, offset: int = 0) -> AuditRecord:
        return template.model_copy(update={"id": f"b{run}-{serial}-{offset}", "at": now_ms()})

    async def append(serial: int) -> int:
        await audit.append(record(serial))
        return 1

    async def append_many(serial: int) -> int:
        return len(await audit.append_many([record(serial, i) for i in range(BATCH)]))

    async def xadd(serial: int) -> int:
        await client.xadd(raw_key, {**fields, "id": f"r{run}-{serial}"}, maxlen=MAXLEN, approximate=True)
        return 1

    async def xadd_pipelined(serial: int) -> int:
        async with client.pipeline(transaction=False) as pipe:
            for i in range(BATCH):
                pipe.xadd(raw_key, {**fields, "id": f"p{run}-{serial}-{i}"}, maxlen=MAXLEN, approximate=True)
            await pipe.execute()
        return BATCH

    scenarios: list[tuple[str, Callable[[int], Awaitable[int]], int]] = [
        ("raw XADD, one at a time", xadd, 1),
        ("AuditLog.append, one at a time", append, 1),
        (f"raw XADD, {CONCURRENCY} at once", xadd, CONCURRENCY),
        (f"AuditLog.append, {CONCURRENCY} at once", append, CONCURRENCY),
        (f"raw XADD, pipelined by {BATCH}", xadd_pipelined, 1),
        (f"AuditLog.append_many, batches of {BATCH}", append_many, 1),
    ]
    rates = []
    try:
        await timed(0.5, xadd)  # warm the pool and the script cache
        await timed(0.5, append)
        for name, step, workers in scenarios:
            rates.append((name, await timed(seconds, step, workers)))
            print(f"  {name}: {rates[-1][1]:,.0f}/s", file=sys.stderr, flush=True)
    finally:
        await client.aclose()
    return rates


# --- 2. over HTTP --------------------------------------------------------------------------------


def send_body(port: int) -> str:
    """A `/panel/send` body as panel.js submits it, with `@ID@` where each request puts a fresh event id."""
    token = mint_token(0, "C1001")
    body = {"token": token, "kind": "order_card", "id": "@ID@", "data": order_data(f"http://127.0.0.1:{port}")}
    return json.dumps(body, ensure_ascii=True, separators=(",", ":"))


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (a supervisor's workers), from /proc."""
    return cpu_seconds(pid) + sum(tree_cpu_seconds(child) for child in children(pid)) if pid else 0.0


@dataclass
class Sends:
    """One HTTP scenario, measured in rounds that alternate with the bare handler (the machine's other load
    drifts during a run; each round's ratio compares two loads a second apart): the service's load summed
    over its rounds, the bare handler's likewise, the median of the rounds' ratios, and the CPU-µs each
    request cost the server's processes, the bare handler, the ops consumer's own process (when it runs
    apart) and Redis."""

    load: Load
    bare: Load
    ratio: float
    server_cpu_us: float
    bare_cpu_us: float
    consumer_cpu_us: float
    redis_cpu_us: float


def _sum(loads: list[Load]) -> Load:
    count = len(loads)
    return Load(sum(x.requests_per_s for x in loads) / count, statistics.median(x.p50_ms for x in loads),
                max(x.p99_ms for x in loads), sum(x.errors for x in loads), sum(x.requests for x in loads),
                loads[0].tool)  # fmt: skip


def http_rates(redis: EmbeddedRedis, seconds: float, rounds: int) -> list[tuple[str, Sends]]:
    rows: list[tuple[str, Sends]] = []
    redis_pid = redis.process.pid if redis.process is not None else 0

    def timed_load(url: str, body: str, pids: tuple[int, ...]) -> tuple[Load, list[float]]:
        before = [tree_cpu_seconds(pid) for pid in pids]
        result = load(url, seconds=seconds, method="POST", body_template=body, expect=200)
        return result, [tree_cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]

    def scenario(name: str, bare_url: str, bare_pid: int, url: str, body: str, pid: int, consumer_pid: int = 0) -> None:
        load(url, seconds=1, method="POST", body_template=body, expect=200)  # warm up
        ours, theirs, ratios = [], [], []
        cpu = [0.0, 0.0, 0.0, 0.0]  # server, bare, consumer, redis (the last two during the server's loads)
        for _ in range(rounds):
            base, used = timed_load(bare_url, send_body(8080), (bare_pid,))
            cpu[1] += used[0]
            result, used = timed_load(url, body, (pid, consumer_pid, redis_pid))
            cpu[0], cpu[2], cpu[3] = cpu[0] + used[0], cpu[2] + used[1], cpu[3] + used[2]
            ours.append(result)
            theirs.append(base)
            ratios.append(result.requests_per_s / base.requests_per_s if base.requests_per_s else float("nan"))
        mine, bare = _sum(ours), _sum(theirs)
        per = [cpu[0] / mine.requests, cpu[1] / bare.requests, cpu[2] / mine.requests, cpu[3] / mine.requests]
        rows.append((name, Sends(mine, bare, statistics.median(ratios), *(x * 1e6 for x in per))))
        print(f"  {name}: {mine.requests_per_s:,.0f}/s, {statistics.median(ratios):.0%} of the bare handler, "
              f"{per[0] * 1e6:.0f} CPU-µs/request", file=sys.stderr, flush=True)  # fmt: skip

    with helper("bare", redis.url) as (bare_base, bare_proc):
        bare_url = f"{bare_base}/xadd"
        load(bare_url, seconds=1, method="POST", body_template=send_body(8080), expect=200)
        for workers in (1, 2):
            port = free_port()
            with service(port, redis.url, workers=workers) as proc:
                label = "1 worker" if workers == 1 else f"--workers {workers}"
                scenario(f"POST /panel/send (order card), {label}", bare_url, bare_proc.pid,
                         f"http://127.0.0.1:{port}/panel/send", send_body(port), proc.pid)  # fmt: skip
        # The deployment the README recommends at scale: the replicas that take sends run no ops consumer
        # (PANEL_OPS_CONSUMER=off); one process of its own counts for them (on the same two cores here).
        with service(free_port(), redis.url) as counter:
            for workers in (1, 2):
                port = free_port()
                with service(port, redis.url, workers=workers, PANEL_OPS_CONSUMER="off") as proc:
                    label = "1 worker" if workers == 1 else f"--workers {workers}"
                    scenario(f"POST /panel/send, {label}, ops consumer in its own process", bare_url, bare_proc.pid,
                             f"http://127.0.0.1:{port}/panel/send", send_body(port), proc.pid, counter.pid)  # fmt: skip
    return rows


def sends_table(rows: list[tuple[str, Sends]]) -> str:
    return render_table(
        ["scenario", "req/s", "bare req/s", "vs bare XADD", "CPU-µs/req", "bare CPU-µs/req", "vs bare",
         "consumer CPU-µs/req", "redis CPU-µs/req", "p50 ms", "p99 ms", "errors"],
        [(name, r.load.requests_per_s, r.bare.requests_per_s, f"{r.ratio:.0%}", r.server_cpu_us, r.bare_cpu_us,
          ratio(r.server_cpu_us, r.bare_cpu_us), r.consumer_cpu_us, r.redis_cpu_us, r.load.p50_ms, r.load.p99_ms,
          r.load.errors + r.bare.errors) for name, r in rows],
    )  # fmt: skip


# --- 3. the dashboard over a big stream ----------------------------------------------------------

_FILL = """
local n = tonumber(ARGV[1])
local start = tonumber(ARGV[2])
for i = 1, n do
  local id = 'fill-' .. (start + i)
  redis.call('XADD', KEYS[1], '*', 'kind', 'order_card', 'id', id, 'at', ARGV[3], 'surface', 'workbench',
             'agent', 'agent' .. (i % 500) .. '@bench.cn', 'partner_id', 'C10' .. (10 + i % 12), 'uid', 'u-1',
             'cid', 'c-1', 'payload', ARGV[4])
end
return n
"""


async def fill_stream(redis_url: str, entries: int) -> tuple[float, int]:
    client = connect(redis_url)
    key = Keys().audit_stream
    payload = '{"cid":"c-1","uid":"u-1","msgType":25,"miniPage":"{\\"orderCode\\":\\"SO1\\"}"}'
    script = client.register_script(_FILL)
    began = time.perf_counter()
    chunk = 50_000
    try:
        for start in range(0, entries, chunk):
            await script(keys=[key], args=[min(chunk, entries - start), start, now_ms(), payload])
        length = int(await client.xlen(key))
    finally:
        await client.aclose()
    return time.perf_counter() - began, length


async def raw_dashboard_reads(redis_url: str, rounds: int) -> dict[str, float]:
    client: aioredis.Redis = connect(redis_url)
    keys = Keys()
    times = []
    try:
        for _ in range(rounds):
            began = time.perf_counter()
            await client.xlen(keys.audit_stream)
            await client.xinfo_groups(keys.audit_stream)
            await client.xrevrange(keys.audit_stream, count=50)
            times.append((time.perf_counter() - began) * 1000)
    finally:
        await client.aclose()
    return summary(times)


def get_ms(url: str) -> tuple[int, float, int]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {OPS_TOKEN}"})
    began = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            size = len(response.read())
            status = response.status
    except urllib.error.HTTPError as error:
        status, size = error.code, 0
    return status, (time.perf_counter() - began) * 1000, size


DASHBOARD_VIEWS = (
    ("GET /ops", "/ops"),
    ("GET /ops?agent=… (filtered scan)", "/ops?agent=agent7%40bench.cn"),
    ("GET /ops/api/summary", "/ops/api/summary"),
)


def dashboard(redis_url: str, entries: int, rounds: int) -> dict[str, object]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with service(port, redis_url):
        status, _, _ = get_ms(base + "/ops")
        if status == 404:
            return {"skipped": "/ops answered 404: the ops dashboard is not served yet; dashboard timing skipped"}
        fill_s, length = asyncio.run(fill_stream(redis_url, entries))
        print(f"  filled {length:,} entries in {fill_s:.1f} s", file=sys.stderr, flush=True)
        lag_before = asyncio.run(group_lag(redis_url))
        lag_began = time.perf_counter()
        views = []
        for name, path in DASHBOARD_VIEWS:
            first = get_ms(base + path)
            times = [get_ms(base + path) for _ in range(rounds)]
            statuses = sorted({status for status, _, _ in [first, *times]})
            views.append({"view": name, "path": path, "first_ms": first[1], "bytes": first[2], "statuses": statuses,
                          **summary([ms for _, ms, _ in times])})  # fmt: skip
        lag_after = asyncio.run(group_lag(redis_url))
        lag_s = time.perf_counter() - lag_began
        raw = asyncio.run(raw_dashboard_reads(redis_url, rounds))
    return {"entries": length, "fill_s": fill_s, "fill_per_s": entries / fill_s, "views": views, "raw": raw,
            "group_lag_before": lag_before, "group_lag_after": lag_after, "group_lag_interval_s": lag_s}  # fmt: skip


async def group_lag(redis_url: str) -> dict[str, object]:
    """Each consumer group's lag on the stream (the dashboard's own consumers may still be catching up)."""
    client = connect(redis_url)
    try:
        groups = await client.xinfo_groups(Keys().audit_stream)
    except Exception:
        groups = []
    finally:
        await client.aclose()
    return {str(group["name"]): group.get("lag") for group in groups}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench audit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--seconds", type=float, default=3.0, help="per in-process scenario (HTTP: +2 s)")
    parser.add_argument("--entries", type=int, default=1_000_000, help="stream length for the dashboard")
    parser.add_argument("--rounds", type=int, default=20, help="dashboard loads timed")
    parser.add_argument("--quick", action="store_true", help="1 s per scenario, 100,000 entries")
    parser.add_argument("--http-rounds", type=int, default=5, help="alternating rounds per HTTP scenario")
    parser.add_argument("--only", choices=("producer", "http", "dashboard"), help="run one part alone")
    parser.add_argument("--out", help="JSON file (default bench/results/audit-<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.entries, args.rounds, args.http_rounds = 1.0, 100_000, 5, 3
    raise_fd_limit()
    loop = use_uvloop()
    parts = {args.only} if args.only else {"producer", "http", "dashboard"}
    with redis_server() as redis:
        rates = asyncio.run(producer_rates(redis.url, args.seconds)) if "producer" in parts else []
        http = http_rates(redis, max(1.0, args.seconds), args.http_rounds) if "http" in parts else []
        board = dashboard(redis.url, args.entries, args.rounds) if "dashboard" in parts else {"skipped": "not run"}
    if rates:
        raw_single = rates[0][1]
        print(render_table(["producer (in process, " + loop + ")", "appends/s", "vs raw XADD 1-at-a-time"],
                           [(name, rate, ratio(rate, raw_single)) for name, rate in rates]))  # fmt: skip
        print()
    if http:
        print(sends_table(http))
        print()
    if "skipped" in board:
        print(f"dashboard: SKIPPED — {board['skipped']}")
    else:
        raw = board["raw"]
        rows = [(f"{v['view']} {v['statuses']}", v["first_ms"], v["p50"], v["p99"], ratio(v["p50"], raw["p50"]),  # type: ignore[index]
                 v["bytes"]) for v in board["views"]]  # type: ignore[union-attr]  # fmt: skip
        rows.append(("raw XLEN + XINFO GROUPS + XREVRANGE 50", raw["p50"], raw["p50"], raw["p99"], "1.00x", 0))  # type: ignore[index]
        print(render_table([f"dashboard, {board['entries']:,} entries [statuses]", "first ms", "p50 ms", "p99 ms",
                            "p50 vs raw", "bytes"], rows))  # fmt: skip
        print(f"stream filled at {board['fill_per_s']:,.0f} entries/s (Lua loop, {board['fill_s']:.1f} s); "
              f"{args.rounds} loads each, one at a time, ops token in the Authorization header; consumer-group lag "
              f"{board['group_lag_before']} before the loads, {board['group_lag_after']} "
              f"{board['group_lag_interval_s']:.1f} s later")  # fmt: skip
    out = dump_json(args.out or RESULTS / f"audit-{time.strftime('%Y%m%d-%H%M%S')}.json",
                    {"bench": "audit", "machine": machine(), "client_loop": loop,
                     "producer": [{"scenario": n, "per_s": r} for n, r in rates],
                     "http": [{"scenario": n, **vars(r.load), "bare": vars(r.bare), "vs_bare": r.ratio,
                               "server_cpu_us": r.server_cpu_us, "bare_cpu_us": r.bare_cpu_us,
                               "consumer_cpu_us": r.consumer_cpu_us, "redis_cpu_us": r.redis_cpu_us}
                              for n, r in http], "dashboard": board})  # fmt: skip
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""Live panels on one process: resident memory per open panel and relay-to-push latency, against an echo.

    python -m bench live [--panels 1000 10000] [--rate 200] [--seconds 10]

For each N: start one service process, open N panel websockets (tokens minted with the service's
PANEL_SESSION_KEY, exactly as a page load would issue them), read the process's VmRSS before and after,
then relay correctly signed `selected` frames to random panels at `--rate` a second and time each until
its `panel` frame arrives. The same N sockets and the same rate against a bare aiohttp echo websocket
(bench/bare.py, answering with a frame as large as the panel's) give the baseline, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from sobot_panel.directory.sample import load_customers
from sobot_panel.protocol.tokens import SessionClaims, SessionTokens

from .common import (
    RESULTS,
    SESSION_KEY,
    dump_json,
    free_port,
    helper,
    machine,
    now_ms,
    raise_fd_limit,
    ratio,
    redis_server,
    render_table,
    rss_kib,
    service,
    signed_fields,
    summary,
    use_uvloop,
)

PARTNERS = [customer.partnerId for customer in load_customers()]
FRAME_HEAD = re.compile(r'"type":"(\w+)","id":(\d+|null)')
CONNECT_CONCURRENCY = 100
SETTLE_S = 2.0


def agent_email(index: int) -> str:
    return f"agent{index}@bench.cn"


def mint_token(index: int, partner_id: str) -> str:
    """The token a signed page load for this agent and customer would carry (same claims, same key)."""
    fields = signed_fields(partner_id, agent_email(index))
    claims = SessionClaims(
        surface="workbench", agent=agent_email(index), partner_id=partner_id, uid=fields["uid"], cid=fields["cid"],
        expires_ms=now_ms() + 3_600_000, context=tuple((k, v) for k, v in fields.items() if k != "sign" and v),
    )  # fmt: skip
    return SessionTokens(SESSION_KEY.encode()).issue(claims)


@dataclass
class Run:
    """N open sockets, the relays sent to them and what came back."""

    sockets: list[aiohttp.ClientWebSocketResponse] = field(default_factory=list)
    pending: dict[int, tuple[int, float]] = field(default_factory=dict)  # socket -> (relay id, sent at)
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    frame_bytes: list[int] = field(default_factory=list)
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    closing: bool = False

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def _reader(run: Run, index: int, ws: aiohttp.ClientWebSocketResponse) -> None:
    async for message in ws:
        if message.type is not aiohttp.WSMsgType.TEXT:
            continue
        text: str = message.data
        head = FRAME_HEAD.search(text[:120])
        kind, raw_id = (head.group(1), head.group(2)) if head else (json.loads(text).get("type"), "null")
        if raw_id == "null":
            continue
        waiting = run.pending.get(index)
        if waiting is None or waiting[0] != int(raw_id):
            continue
        started = run.pending.pop(index)[1]
        if kind == "panel":
            run.latencies_ms.append((time.perf_counter() - started) * 1000)
            run.frame_bytes.append(len(text.encode()))
        else:
            run.error(f"{kind}:{json.loads(text).get('code')}")
    if not run.closing:
        run.error(f"closed:{ws.close_code}")


# Where to connect, and the first frame to send (the service's hello with the token; None for the echo).
Target = tuple[str, str | None]


def hello(token: str) -> str:
    return json.dumps({"type": "hello", "token": token, "view": None})


async def open_sockets(session: aiohttp.ClientSession, run: Run, url_of: list[Target]) -> float:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    started = time.perf_counter()

    async def one(index: int) -> None:
        url, first = url_of[index]
        async with gate:
            for attempt in range(3):
                try:
                    ws = await session.ws_connect(url, autoping=True, max_msg_size=0)
                    if first is not None:
                        await ws.send_str(first)
                        ready = await ws.receive(timeout=10)
                        if ready.type is not aiohttp.WSMsgType.TEXT:
                            raise aiohttp.ClientError(f"refused: {ws.close_code}")
                    break
                except (aiohttp.ClientError, OSError):
                    if attempt == 2:
                        raise
                    await asyncio.sleep(0.2)
            run.sockets[index] = ws
            run.readers.append(asyncio.create_task(_reader(run, index, ws)))

    run.sockets = [None] * len(url_of)  # type: ignore[list-item]
    await asyncio.gather(*(one(i) for i in range(len(url_of))))
    return time.perf_counter() - started


FrameOf = Callable[[int, int], str]


async def switch(run: Run, rate: float, seconds: float, frame_of: FrameOf) -> None:
    """Send `rate` relays a second (paced in 10 ms ticks) to random idle sockets, then wait for stragglers."""
    counter = 0
    began = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - began) < seconds:
        due = int(elapsed * rate) - sent
        for _ in range(max(0, due)):
            index = random.randrange(len(run.sockets))
            if index in run.pending:  # one relay at a time per panel, as an agent clicks
                index = random.randrange(len(run.sockets))
                if index in run.pending:
                    run.error("skipped_busy")
                    sent += 1
                    continue
            counter += 1
            frame = frame_of(index, counter)
            run.pending[index] = (counter, time.perf_counter())
            try:
                await run.sockets[index].send_str(frame)
            except (ConnectionError, RuntimeError):
                run.pending.pop(index, None)
                run.error("send_failed")
            sent += 1
        await asyncio.sleep(0.01)
    deadline = time.perf_counter() + 5
    while run.pending and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    if run.pending:
        run.errors["no_answer_5s"] = run.errors.get("no_answer_5s", 0) + len(run.pending)
        run.pending.clear()


async def measure(url_of: list[Target], pid: int, rate: float, seconds: float, frame_of: FrameOf,
                  warm_url: Target) -> dict[str, object]:  # fmt: skip
    run = Run()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm the server's code paths (one socket, one relay) so "before" is a served process.
        warm = Run()
        await open_sockets(session, warm, [warm_url])
        await switch(warm, 20, 0.5, frame_of)
        await warm.sockets[0].close()
        await asyncio.sleep(0.5)
        before = rss_kib(pid)
        connect_s = await open_sockets(session, run, url_of)
        await asyncio.sleep(SETTLE_S)
        gc.collect()
        gc.freeze()  # the client's own full collections must not show up as server latency
        after = rss_kib(pid)
        await switch(run, rate, seconds, frame_of)
        after_switching = rss_kib(pid)
        run.closing = True
        await asyncio.gather(*(ws.close() for ws in run.sockets), return_exceptions=True)
        for task in run.readers:
            task.cancel()
    n = len(url_of)
    lat = summary(run.latencies_ms)
    return {
        "panels": n, "rss_before_kib": before, "rss_after_kib": after, "rss_after_switching_kib": after_switching,
        "kib_per_panel": (after - before) / n, "connect_s": connect_s, "relays": lat["count"],
        "p50_ms": lat["p50"], "p95_ms": lat["p95"], "p99_ms": lat["p99"], "max_ms": lat["max"],
        "errors": run.errors, "frame_bytes": int(sum(run.frame_bytes) / max(1, len(run.frame_bytes))),
    }  # fmt: skip


def selected_frame(index: int, request_id: int) -> str:
    partner = random.choice(PARTNERS)
    fields = signed_fields(partner, agent_email(index))
    return json.dumps({"type": "selected", "id": request_id, "view": None, "query": fields, "params": None,
                       "partnerId": partner, "uid": fields["uid"]}, separators=(",", ":"))  # fmt: skip


def run_panels(redis_url: str, panels: int, rate: float, seconds: float) -> dict[str, object]:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    targets: list[Target] = [(url, hello(mint_token(i, random.choice(PARTNERS)))) for i in range(panels)]
    with service(port, redis_url) as proc:
        warm = (url, hello(mint_token(99_999, "C1001")))
        return asyncio.run(measure(targets, proc.pid, rate, seconds, selected_frame, warm))


def run_echo(panels: int, rate: float, seconds: float, reply_bytes: int) -> dict[str, object]:
    def frame(index: int, request_id: int) -> str:
        return json.dumps({"type": "selected", "id": request_id, "pad": reply_bytes})

    with helper("bare", name="echo") as (base, proc):
        url = base.replace("http://", "ws://") + "/ws"
        return asyncio.run(measure([(url, None)] * panels, proc.pid, rate, seconds, frame, (url, None)))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench live", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--panels", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rate", type=float, default=200.0, help="relays a second, over all panels")
    parser.add_argument("--seconds", type=float, default=10.0, help="switching time per run")
    parser.add_argument("--quick", action="store_true", help="200 panels, 3 s")
    parser.add_argument("--out", help="JSON file (default bench/results/live-<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.panels, args.seconds = [200], 3.0
    limit = raise_fd_limit()  # the clients' sockets are all in this process; each server has its own limit
    if limit < max(args.panels) + 200:
        print(f"open-file limit {limit} is too low for {max(args.panels)} panels", file=sys.stderr)
        return 2
    loop = use_uvloop()
    rows = []
    with redis_server() as redis:
        for panels in args.panels:
            panel = run_panels(redis.url, panels, args.rate, args.seconds)
            print(f"  {panels} panels: {panel['kib_per_panel']:.1f} KiB each, p50 {panel['p50_ms']:.1f} ms",
                  file=sys.stderr, flush=True)  # fmt: skip
            echo = run_echo(panels, args.rate, args.seconds, int(panel["frame_bytes"]))  # type: ignore[call-overload]
            rows.append({"panel": panel, "echo": echo})
    table = []
    for row in rows:
        panel, echo = row["panel"], row["echo"]
        for name, result in (("echo websocket", echo), ("panel", panel)):
            table.append((f"{result['panels']} {name}", result["rss_before_kib"] / 1024, result["rss_after_kib"] / 1024,
                          result["kib_per_panel"], ratio(result["kib_per_panel"], echo["kib_per_panel"]),  # type: ignore[arg-type]
                          result["connect_s"], result["relays"], result["p50_ms"],
                          result["p99_ms"], ratio(result["p50_ms"], echo["p50_ms"]),  # type: ignore[arg-type]
                          ratio(result["p99_ms"], echo["p99_ms"]),  # type: ignore[arg-type]
                          sum(result["errors"].values()) or 0))  # type: ignore[union-attr]  # fmt: skip
    print(render_table(["sockets", "RSS0 MiB", "RSS MiB", "KiB/conn", "KiB vs echo", "open s", "relays", "p50 ms",
                        "p99 ms", "p50 vs echo", "p99 vs echo", "errors"], table))  # fmt: skip
    frame = rows[0]["panel"]["frame_bytes"] if rows else 0
    print(f"\n{args.rate:.0f} relays/s for {args.seconds:.0f} s; panel frame ~{frame} bytes (the echo answers as "
          f"many); client on {loop}, one process; errors: "
          + "; ".join(f"{r['panel']['panels']}: {r['panel']['errors'] or 'none'}" for r in rows))  # fmt: skip
    out = dump_json(args.out or RESULTS / f"live-{time.strftime('%Y%m%d-%H%M%S')}.json",
                    {"bench": "live", "machine": machine(), "rate": args.rate, "seconds": args.seconds,
                     "client_loop": loop, "rows": rows})  # fmt: skip
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

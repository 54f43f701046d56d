"""Reconnect storms: every panel of a replica coming back at once, on two replicas sharing one Redis.

    python -m bench storm [--panels 5000] [--customers 1000] [--clients 2] [--quick]

Starts a redis-server, the fake enterprise API (bench/enterprise.py, counting upstream lookups) and two
replicas (`python -m sobot_panel serve`), then N panels in `--clients` client processes. Each panel does
what panel.js does: the hello with its token, a first `selected` for its customer (Sobot's first switch
of the shift), handles `panel` and `pong` frames (keeping the renewed token), and on a close reconnects
after a backoff with full jitter (`random() * min(15 s, 0.5 s * 2^attempt)`) to a replica the "load
balancer" (the list of replicas in rotation) picks, then sends a `resync`.

(a) Replica replaced: a new replica starts; once it is ready it enters the rotation, the old one leaves
    it and gets SIGTERM (it closes its sockets with 1001). Measured: from the new replica ready until
    every moved panel shows its customer again (a `panel` frame after its close), upstream lookups
    against the distinct customers, 5xx answers seen by the panels.
(b) Redis restart: the redis-server is killed and started again on the same port with the same data.
    Measured: from Redis back until every panel of both replicas is resynchronised (their
    `panel_resyncs_total`), renders per panel, pushes skipped as identical, the most resynchronised at
    once against PANEL_RESYNC_CONCURRENCY, panel frames each panel received (at most 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import random
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from multiprocessing.connection import Connection as Pipe
from typing import Any

import aiohttp

from .common import (
    RESULTS,
    cpu_seconds,
    dump_json,
    free_port,
    helper,
    machine,
    process,
    raise_fd_limit,
    redis_server,
    render_table,
    service_env,
    signed_fields,
    summary,
    use_uvloop,
)
from .enterprise import TOKEN as ENTERPRISE_TOKEN
from .live_bench import agent_email, mint_token

RESYNC_CONCURRENCY = 16
CONNECT_CONCURRENCY = 200
DEADLINE_S = 120.0


def partner_of(index: int, customers: int) -> str:
    return f"P{index % customers:06d}"


# --- the panels (in client processes) ----------------------------------------------------------


class Panel:
    """One panel.js: a socket, its token, and what it was shown since the last mark."""

    def __init__(self, client: Client, index: int, partner: str) -> None:
        self.client, self.index, self.partner = client, index, partner
        self.token = mint_token(index, partner)
        self.ever = False
        self.warm = False
        self.attempts = 0
        self.closed_at: float | None = None  # the last close since the mark
        self.back_at: float | None = None  # the first panel frame after it
        self.frames = 0  # panel frames since the mark

    async def run(self) -> None:
        while not self.client.stopping:
            url = random.choice(self.client.rotation)
            try:
                async with self.client.gate:
                    ws = await self.client.session.ws_connect(url, max_msg_size=0)
                await self.serve(ws)
            except aiohttp.WSServerHandshakeError as error:
                self.client.count(f"http_{error.status}")
            except (TimeoutError, aiohttp.ClientError, OSError) as error:
                self.client.count(type(error).__name__)
            if self.client.stopping:
                return
            self.attempts += 1
            await asyncio.sleep(random.random() * min(15.0, 0.5 * 2 ** min(self.attempts, 5)))

    async def serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_str(json.dumps({"type": "hello", "token": self.token, "view": None}))
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = json.loads(message.data)
            kind = frame.get("type")
            if kind == "ready":
                self.attempts = 0
                if self.ever:
                    await ws.send_str('{"type":"resync","view":null}')
                else:
                    fields = signed_fields(self.partner, agent_email(self.index))
                    await ws.send_str(json.dumps({"type": "selected", "id": 1, "view": None, "query": fields,
                                                  "partnerId": self.partner, "uid": fields["uid"]}))  # fmt: skip
                self.ever = True
            elif kind == "panel":
                self.token = frame["token"]
                self.frames += 1
                if frame.get("partnerId") != self.partner:
                    self.client.count("wrong_customer")
                self.warm = True
                if self.closed_at is not None and self.back_at is None:
                    self.back_at = time.monotonic()
            elif kind == "pong" and frame.get("token"):
                self.token = frame["token"]
            elif kind == "error":
                self.client.count(f"error:{frame.get('code')}")
        if self.client.stopping:
            return
        if ws.close_code == 4401:
            self.client.count("session_over")
        self.closed_at, self.back_at = time.monotonic(), None


class Client:
    def __init__(self, rotation: list[str], indices: range, customers: int) -> None:
        self.rotation = rotation
        self.stopping = False
        self.errors: dict[str, int] = {}
        self.panels = [Panel(self, i, partner_of(i, customers)) for i in indices]
        self.gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    def count(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def mark(self) -> None:
        self.errors.clear()
        for panel in self.panels:
            panel.closed_at = panel.back_at = None
            panel.frames = 0

    def snapshot(self) -> dict[str, Any]:
        moved = [p for p in self.panels if p.closed_at is not None]
        back = [p.back_at for p in moved if p.back_at is not None]
        closes = [p.closed_at for p in moved if p.closed_at is not None]
        gaps = [p.back_at - p.closed_at for p in moved if p.back_at is not None and p.closed_at is not None]
        return {"warm": sum(p.warm for p in self.panels), "moved": len(moved), "back": len(back),
                "back_last": max(back, default=None), "frames": sum(p.frames for p in self.panels),
                "framed": sum(p.frames > 0 for p in self.panels), "gaps": gaps,
                "first_close": min(closes, default=None), "last_close": max(closes, default=None),
                "max_frames": max((p.frames for p in self.panels), default=0), "errors": dict(self.errors)}  # fmt: skip


def client_main(pipe: Pipe, rotation: list[str], start: int, stop: int, customers: int) -> None:
    raise_fd_limit()
    use_uvloop()

    async def run() -> None:
        client = Client(list(rotation), range(start, stop), customers)
        tasks = [asyncio.create_task(panel.run()) for panel in client.panels]
        loop = asyncio.get_running_loop()
        while True:
            command, argument = await loop.run_in_executor(None, pipe.recv)
            if command == "rotation":
                client.rotation[:] = argument
            elif command == "mark":
                client.mark()
            elif command == "snapshot":
                pipe.send(client.snapshot())
            elif command == "stop":
                client.stopping = True
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await client.session.close()
                pipe.send("stopped")
                return

    asyncio.run(run())


class Clients:
    def __init__(self, rotation: list[str], panels: int, customers: int, processes: int) -> None:
        context = multiprocessing.get_context("fork")
        self.pipes: list[Pipe] = []
        self.procs = []
        bounds = [panels * i // processes for i in range(processes + 1)]
        for start, stop in itertools.pairwise(bounds):
            ours, theirs = context.Pipe()
            proc = context.Process(target=client_main, args=(theirs, rotation, start, stop, customers), daemon=True)
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)

    def tell(self, command: str, argument: object = None) -> None:
        for pipe in self.pipes:
            pipe.send((command, argument))

    def snapshot(self) -> dict[str, Any]:
        self.tell("snapshot")
        parts = [pipe.recv() for pipe in self.pipes]
        errors: dict[str, int] = {}
        for part in parts:
            for kind, count in part["errors"].items():
                errors[kind] = errors.get(kind, 0) + count
        lasts = [p["back_last"] for p in parts if p["back_last"] is not None]
        firsts = [p["first_close"] for p in parts if p["first_close"] is not None]
        last_closes = [p["last_close"] for p in parts if p["last_close"] is not None]
        return {"warm": sum(p["warm"] for p in parts), "moved": sum(p["moved"] for p in parts),
                "back": sum(p["back"] for p in parts), "back_last": max(lasts, default=None),
                "frames": sum(p["frames"] for p in parts), "max_frames": max(p["max_frames"] for p in parts),
                "framed": sum(p["framed"] for p in parts), "gaps": [g for p in parts for g in p["gaps"]],
                "first_close": min(firsts, default=None), "last_close": max(last_closes, default=None),
                "errors": errors}  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.tell("stop")
            for pipe in self.pipes:
                if pipe.poll(30):
                    pipe.recv()
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


# --- the orchestrator --------------------------------------------------------------------------


def metric(base: str, name: str) -> float:
    """One unlabelled sample of a replica's /metrics (0 when absent or unreachable)."""
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (OSError, urllib.error.URLError):
        return float("nan")
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def upstream_calls(enterprise: str) -> int:
    with urllib.request.urlopen(f"{enterprise}/_stats", timeout=5) as response:
        return int(json.loads(response.read())["calls"])


def wait_ready(base: str, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
            if response.status == 200:
                return time.monotonic()
        time.sleep(0.02)
    raise TimeoutError(f"{base} not ready within {timeout}s")


def wait_for(what: str, check: Any, timeout: float = DEADLINE_S, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(every)


def replica(stack: ExitStack, redis_url: str, enterprise: str, name: str) -> tuple[str, Any]:
    port = free_port()
    env = service_env(port, redis_url, PANEL_DIRECTORY_URL=enterprise, PANEL_DIRECTORY_TOKEN=ENTERPRISE_TOKEN,
                      PANEL_RESYNC_CONCURRENCY=str(RESYNC_CONCURRENCY))  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    proc = stack.enter_context(process([sys.executable, "-m", "sobot_panel", "serve"], env, f"{base}/healthz",
                                       name=f"replica-{name}"))  # fmt: skip
    return base, proc


def run(panels: int, customers: int, clients_n: int) -> dict[str, Any]:
    distinct = min(panels, customers)
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server())
        enterprise, _ = stack.enter_context(helper("enterprise", "--customers", str(customers)))
        a, proc_a = replica(stack, redis.url, enterprise, "a")
        b, proc_b = replica(stack, redis.url, enterprise, "b")
        wait_ready(a), wait_ready(b)
        ws = {base: base.replace("http://", "ws://") + "/ws" for base in (a, b)}
        clients = Clients([ws[a], ws[b]], panels, customers, clients_n)
        stack.callback(clients.stop)
        began = time.monotonic()
        wait_for("every panel open and shown", lambda: clients.snapshot()["warm"] >= panels)
        opened_s = time.monotonic() - began
        print(f"  {panels} panels open on two replicas in {opened_s:.1f} s", file=sys.stderr, flush=True)

        # (a) a replica replaced
        calls0 = upstream_calls(enterprise)
        clients.tell("mark")
        c, proc_c = replica(stack, redis.url, enterprise, "c")
        ready_at = wait_ready(c)
        busy = {"replica b": proc_b.pid, "replica c": proc_c.pid,
                **{f"client {i}": proc.pid for i, proc in enumerate(clients.procs)}}  # fmt: skip
        cpu0 = {name: cpu_seconds(pid) for name, pid in busy.items()}
        ws[c] = c.replace("http://", "ws://") + "/ws"
        clients.tell("rotation", [ws[b], ws[c]])
        on_a = metric(a, "panel_websockets_open")
        proc_a.send_signal(signal.SIGTERM)
        proc_a.wait(60)
        snap = wait_for(
            "every moved panel back",
            lambda: (s := clients.snapshot())["moved"] >= on_a and s["back"] >= s["moved"] and s,
        )
        window = snap["back_last"] - ready_at
        cpu = {name: (cpu_seconds(pid) - cpu0[name]) / window for name, pid in busy.items()}  # share of a core
        replaced = {"cpu_share": cpu, "panels_on_old": on_a, "moved": snap["moved"], "back": snap["back"],
                    "back_s": snap["back_last"] - ready_at, "upstream_lookups": upstream_calls(enterprise) - calls0,
                    "distinct_customers": distinct, "errors": snap["errors"],
                    "http_5xx": sum(n for k, n in snap["errors"].items() if k.startswith("http_5")),
                    # where the time goes: SIGTERM to the closes, then each panel's close to its panel frame
                    "closes_from_s": snap["first_close"] - ready_at, "closes_until_s": snap["last_close"] - ready_at,
                    "close_to_back": summary(snap["gaps"])}  # fmt: skip
        print(f"  (a) {snap['back']} panels back {replaced['back_s']:.2f} s after the new replica was ready",
              file=sys.stderr, flush=True)  # fmt: skip

        # (b) Redis restarted
        time.sleep(1.0)  # the last resyncs of (a) land before the counters are read
        replicas = [b, c]
        calls0 = upstream_calls(enterprise)
        clients.tell("mark")
        before = {r: (metric(r, "panel_resyncs_total"), metric(r, "panel_pushes_skipped_total")) for r in replicas}
        open_now = {r: metric(r, "panel_websockets_open") for r in replicas}
        redis.kill()
        redis.start()
        back_at = time.monotonic()
        # Resynchronised: each replica's panel_resyncs_total says so (a version without that counter pushed
        # every panel, so there every panel has received a frame).
        wait_for("every panel resynchronised",
                 lambda: all(metric(r, "panel_resyncs_total") - before[r][0] >= open_now[r] for r in replicas)
                 or clients.snapshot()["framed"] >= panels)  # fmt: skip
        resynced_s = time.monotonic() - back_at
        time.sleep(0.5)  # pushes (if any) reach the panels
        snap = clients.snapshot()
        resyncs = sum(metric(r, "panel_resyncs_total") - before[r][0] for r in replicas)
        restart = {"panels": sum(open_now.values()), "resynced_s": resynced_s, "resyncs": resyncs,
                   "renders_per_panel": resyncs / max(1, sum(open_now.values())),
                   "pushes_skipped": sum(metric(r, "panel_pushes_skipped_total") - before[r][1] for r in replicas),
                   "pushed_frames": snap["frames"], "max_frames_per_panel": snap["max_frames"],
                   "peak_concurrency": max(metric(r, "panel_resync_peak") for r in replicas),
                   "concurrency_bound": RESYNC_CONCURRENCY, "upstream_lookups": upstream_calls(enterprise) - calls0,
                   "distinct_customers": distinct, "errors": snap["errors"]}  # fmt: skip
        print(f"  (b) {restart['panels']:.0f} panels resynchronised {resynced_s:.2f} s after Redis was back",
              file=sys.stderr, flush=True)  # fmt: skip
    return {"panels": panels, "customers": customers, "clients": clients_n, "open_s": opened_s,
            "replaced": replaced, "restart": restart}  # fmt: skip


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench storm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--panels", type=int, default=5000)
    parser.add_argument("--customers", type=int, default=1000, help="distinct customers the panels show")
    parser.add_argument("--clients", type=int, default=2, help="client processes the panels are spread over")
    parser.add_argument("--quick", action="store_true", help="500 panels, 100 customers")
    parser.add_argument("--out", help="JSON file (default bench/results/storm-<time>.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.panels, args.customers = 500, 100
    limit = raise_fd_limit()
    if limit < args.panels // args.clients + 200:
        print(f"open-file limit {limit} is too low for {args.panels} panels in {args.clients} processes",
              file=sys.stderr)  # fmt: skip
        return 2
    result = run(args.panels, args.customers, args.clients)
    a, b = result["replaced"], result["restart"]
    print(render_table(
        ["(a) replica replaced", "panels moved", "back", "back after ready s", "target s", "upstream lookups",
         "distinct customers", "5xx", "other errors"],
        [(f"{args.panels} panels", a["moved"], a["back"], a["back_s"], 10.0, a["upstream_lookups"],
          a["distinct_customers"], a["http_5xx"], sum(a["errors"].values()) - a["http_5xx"])],
    ))  # fmt: skip
    print()
    print(render_table(
        ["(b) Redis restart", "panels", "resynced after back s", "target s", "renders/panel", "max frames/panel",
         "pushes skipped", "pushed", "peak at once", "bound", "upstream lookups"],
        [(f"{args.panels} panels", b["panels"], b["resynced_s"], 5.0, b["renders_per_panel"],
          b["max_frames_per_panel"], b["pushes_skipped"], b["pushed_frames"], b["peak_concurrency"],
          b["concurrency_bound"], b["upstream_lookups"])],
    ))  # fmt: skip
    gap = a["close_to_back"]
    print(
        f"\n(a) the old replica's panels saw their close {a['closes_from_s']:.2f}-{a['closes_until_s']:.2f} s after "
        f"the new replica was ready; close to panel shown again: p50 {gap['p50']:.2f} s, p99 {gap['p99']:.2f} s, "
        f"max {gap['max']:.2f} s (backoff with full jitter: 0-1 s, then the reconnect, hello and resync); CPU "
        "meanwhile, share of a core: " + ", ".join(f"{k} {v:.0%}" for k, v in a["cpu_share"].items())
    )
    print(
        f"two replicas + one new, one redis-server, {args.clients} client processes; errors (a): "
        f"{a['errors'] or 'none'}; (b): {b['errors'] or 'none'}"
    )
    out = dump_json(args.out or RESULTS / f"storm-{time.strftime('%Y%m%d-%H%M%S')}.json",
                    {"bench": "storm", "machine": machine(), **result})  # fmt: skip
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

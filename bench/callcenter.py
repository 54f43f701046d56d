"""A call-center shift against the service as production runs it, with faults (issue 7).

    python -m bench callcenter [--agents 2000] [--fault all] [--quick] [--out FILE.json]

Starts a redis-server, the enterprise's customer API (bench/enterprise.py: the test fake, with
`--upstream-latency`) and `python -m sobot_panel serve --workers 2` against both (PANEL_SIGN_MAX_AGE=300,
as in production). N agents each load a signed panel and hold its websocket, then, for the rest of the
shift, at the given rates (events a second over all agents, Poisson arrivals): relay correctly signed
`selected` messages, open fresh panels (signed page loads), send order cards and tickets, while the
enterprise backend invalidates customers that agents are looking at. Phases: ramp (every agent logs in),
steady, then one phase per fault:

  redis             redis-server SIGKILLed, restarted after --redis-down seconds
  slow-upstream     the customer API answers after 2 s
  failing-upstream  the customer API answers 500
  kill-worker       one worker SIGKILLed (the supervisor starts another)
  drain-worker      one worker SIGTERMed (it closes its sockets with 1001 and drains)
  forged            a flood of forged (bad sign) and replayed (expired timestamp) page loads and relays

Per phase: page loads/s and p50/p95/p99, relay-to-push, sends/s and latency, invalidation-to-push,
errors by kind, resident memory per process, Redis commands/s; per fault, the time to recover after the
fault is lifted, and the audit check: every send the page was told was recorded (200, ok: true,
`spooled` included) is in the stream exactly once (by its event `id`). Baselines from the same run: the
same agents and rates against a bare aiohttp handler (GET /), an echo websocket, and one raw XADD per
POST. Output: a table, a JSON file and a PNG of latency over time (next to the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from sobot_panel.protocol.signing import SignPolicy
from sobot_panel.redis import EmbeddedRedis, connect
from sobot_panel.redis.keys import Keys

from .agents import Agent, Recorder, World, poisson
from .common import (
    API_TOKEN,
    RESULTS,
    SECRET,
    SYSNUM,
    children,
    cpu_seconds,
    dump_json,
    free_port,
    helper,
    machine,
    raise_fd_limit,
    redis_server,
    rss_kib,
    service,
    signed_fields,
    signed_query,
    use_uvloop,
)
from .enterprise import TOKEN as ENTERPRISE_TOKEN
from .enterprise import customers
from .report import capacity, phase_stats, print_report, recovery, timeline

FAULTS = ("redis", "slow-upstream", "failing-upstream", "kill-worker", "drain-worker", "forged")
SIGN_MAX_AGE = 300
POLICY = SignPolicy(sys_num=SYSNUM, secret=SECRET, wecom_secret=None, max_age_s=SIGN_MAX_AGE)


@dataclass
class Phase:
    name: str
    kind: str  # baseline | ramp | steady | fault
    start_s: float
    end_s: float = 0.0
    injected_s: float | None = None
    lifted_s: float | None = None


@dataclass
class Rig:
    """The processes of the run, for faults and for /proc readings."""

    redis: EmbeddedRedis
    enterprise_url: str
    enterprise_pid: int
    service_pid: int
    workers: int

    def worker_pids(self) -> list[int]:
        return children(self.service_pid) if self.workers > 1 else [self.service_pid]


# --- monitoring ----------------------------------------------------------------------------------


class Monitor:
    """Every half second: panels connected, Redis commands processed, RSS and CPU of each process."""

    def __init__(self, recorder: Recorder, agents: list[Agent], rig: Rig | None, redis_url: str,
                 pids: dict[str, int]) -> None:  # fmt: skip
        self.recorder, self.agents, self.rig, self.pids = recorder, agents, rig, pids
        self.client = connect(redis_url)
        self.samples: list[dict[str, Any]] = []

    async def lag(self, stop: asyncio.Event) -> None:
        """The driver's own event-loop lag (a 10 ms sleep's overshoot): large values mean the client, not the
        server, is slow, and every latency it measured at that moment is inflated by as much."""
        while not stop.is_set():
            began = time.perf_counter()
            await asyncio.sleep(0.01)
            self.recorder.ok("lag", (time.perf_counter() - began) * 1000 - 10)

    async def run(self, stop: asyncio.Event) -> None:
        lag = asyncio.create_task(self.lag(stop))
        while not stop.is_set():
            sample: dict[str, Any] = {"t": self.recorder.now(), "connected": sum(a.connected for a in self.agents)}
            try:
                info = await asyncio.wait_for(self.client.info("stats"), 0.5)
                sample["redis_commands"] = int(info["total_commands_processed"])
            except Exception:  # Redis away (the redis fault): no reading
                sample["redis_commands"] = None
            roles = dict(self.pids)
            if self.rig is not None:
                roles["redis"] = self.rig.redis.process.pid if self.rig.redis.process else 0
                if self.rig.workers > 1:
                    roles["supervisor"] = self.rig.service_pid
                for n, pid in enumerate(self.rig.worker_pids()):
                    roles[f"worker{n + 1}"] = pid
            sample["rss_kib"] = {role: rss_kib(pid) for role, pid in roles.items()}
            sample["cpu_s"] = {role: cpu_seconds(pid) for role, pid in roles.items()}
            self.samples.append(sample)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        await lag
        await self.client.aclose()


# --- the shift -----------------------------------------------------------------------------------


def settle_gc() -> None:
    """Keep the driver's own full collections (100+ ms with thousands of sockets) out of what it measures:
    what exists after the ramp is moved out of the collector's reach. The `lag` figures show what is left."""
    gc.collect()
    gc.freeze()


@dataclass
class Config:
    agents: int
    customers: int
    steady_s: float
    switch_rate: float
    page_rate: float
    send_rate: float
    ticket_share: float
    invalidate_rate: float
    faults: list[str]
    observe_s: float
    fault_s: float
    redis_down_s: float
    baseline_s: float
    forged_concurrency: int
    upstream_latency: float
    workers: int
    ramp_concurrency: int


async def login(agent: Agent, gate: asyncio.Semaphore) -> None:
    async with gate:
        for _ in range(3):
            if await agent.open_panel(agent.world.random_partner()):
                return
            await asyncio.sleep(0.5)


async def invalidate(agent: Agent) -> None:
    """The enterprise backend changed this customer: POST /api/partners/{id}/invalidate."""
    world, partner = agent.world, agent.partner
    if not partner:
        return
    previous = world.invalidated.get(partner)
    world.invalidated[partner] = world.recorder.now()  # before the call: the push may beat the 202
    started = time.perf_counter()
    try:
        async with world.http.post(f"{world.base}/api/partners/{partner}/invalidate",
                                   headers={"Authorization": f"Bearer {API_TOKEN}"}) as response:  # fmt: skip
            status = response.status
            code = "" if status == 202 else (await response.json(content_type=None)).get("code", "")
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        world.recorder.error("invalidate", type(error).__name__)
        _forget(world, partner, previous)
        return
    ms = (time.perf_counter() - started) * 1000
    if status == 202:
        world.recorder.ok("invalidate", ms)
    else:
        _forget(world, partner, previous)
        world.recorder.error("invalidate", f"http {status} {code}".strip(), ms)


def _forget(world: World, partner: str, previous: float | None) -> None:
    """A refused invalidation pushes nothing: a later push (a resync) must not be timed from it."""
    if previous is None:
        world.invalidated.pop(partner, None)
    else:
        world.invalidated[partner] = previous


class Forged:
    """Counts of the forged and replayed requests: every one must be refused."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    async def flood(self, world: World, agents: list[Agent], seconds: float, concurrency: int) -> None:
        deadline = time.monotonic() + seconds

        async def worker(n: int) -> None:
            while time.monotonic() < deadline:
                partner = world.random_partner()
                if n % 4 == 0:
                    await self.relay(world, agents, partner)
                else:
                    await self.page(world, partner, replayed=n % 2 == 1)

        await asyncio.gather(*(worker(n) for n in range(concurrency)))

    async def page(self, world: World, partner: str, *, replayed: bool) -> None:
        if replayed:  # a URL that was correctly signed, long ago
            query = signed_query(partner, "intruder@bench.cn", at_ms=int(time.time() * 1000) - 2 * SIGN_MAX_AGE * 1000,
                                 policy=POLICY)  # fmt: skip
        else:
            query = signed_query(partner, "intruder@bench.cn", policy=POLICY).replace("sign=", "sign=f0", 1)
        self.counts["pages_sent"] += 1
        try:
            async with world.http.get(f"{world.base}/embed/workbench?{query}") as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            self.counts["pages_transport_error"] += 1
            world.recorder.error("forged", type(error).__name__)
            return
        if status == 403:
            self.counts["pages_refused_403"] += 1
            world.recorder.ok("forged", 0.0)
        else:
            self.counts["pages_accepted" if status < 300 else "pages_other_status"] += 1
            world.recorder.error("forged", f"answered {status}")

    async def relay(self, world: World, agents: list[Agent], partner: str) -> None:
        agent = agents[random.randrange(len(agents))]
        if not agent.connected or agent.busy:
            await asyncio.sleep(0.01)
            return
        fields = signed_fields(partner, agent.email, policy=POLICY)
        if random.random() < 0.5:  # a wrong sign (its last digit changed)
            fields["sign"] = fields["sign"][:-1] + ("1" if fields["sign"][-1] == "0" else "0")
        else:
            fields = signed_fields(partner, agent.email, at_ms=int(time.time() * 1000) - 2 * SIGN_MAX_AGE * 1000,
                                   policy=POLICY)  # fmt: skip
        agent.busy = True
        try:
            outcome = await agent.relay(partner, fields=fields, kind="forged_relay")
        finally:
            agent.busy = False
        self.counts["relays_sent"] += 1
        if outcome == "panel":
            self.counts["relays_accepted"] += 1
        elif outcome.startswith("sign_"):
            self.counts["relays_refused"] += 1
        else:
            self.counts["relays_other"] += 1

    def summary(self) -> dict[str, Any]:
        c = self.counts
        ok = c["pages_accepted"] == 0 and c["pages_other_status"] == 0 and c["relays_accepted"] == 0
        return {"sent": c["pages_sent"], "refused": c["pages_refused_403"], "accepted": c["pages_accepted"],
                "other_status": c["pages_other_status"], "transport_errors": c["pages_transport_error"],
                "relays_sent": c["relays_sent"], "relays_refused": c["relays_refused"],
                "relays_accepted": c["relays_accepted"], "relays_other": c["relays_other"],
                "ok": ok and c["pages_sent"] > 0}  # fmt: skip


async def inject(fault: str, rig: Rig, cfg: Config, phase: Phase, world: World, agents: list[Agent],
                 forged: Forged) -> str:  # fmt: skip
    """Apply one fault and lift it; returns a note on what was done."""
    now = world.recorder.now
    phase.injected_s = now()
    if fault == "redis":
        rig.redis.kill()
        await asyncio.sleep(cfg.redis_down_s)
        # Spawned on the loop's thread: a redis-server started from a pool thread would get its parent-death
        # signal when that thread exits (sobot_panel.redis.embedded), killing it under the baseline.
        rig.redis.spawn()
        await asyncio.to_thread(rig.redis.wait_until_answers)
        phase.lifted_s = now()
        return f"redis-server SIGKILLed, restarted after {cfg.redis_down_s:.0f} s (AOF on)"
    if fault in ("slow-upstream", "failing-upstream"):
        knobs: dict[str, Any] = {"latency": 2.0} if fault == "slow-upstream" else {"fail_with": 500}
        async with world.http.post(f"{rig.enterprise_url}/_control", json=knobs) as response:
            await response.read()
        await asyncio.sleep(cfg.fault_s)
        async with world.http.post(f"{rig.enterprise_url}/_control",
                                   json={"latency": cfg.upstream_latency, "fail_with": None}) as response:  # fmt: skip
            await response.read()
        phase.lifted_s = now()
        return f"customer API {'2 s slow' if fault == 'slow-upstream' else 'answering 500'} for {cfg.fault_s:.0f} s"
    if fault in ("kill-worker", "drain-worker"):
        pids = rig.worker_pids()
        if rig.workers < 2 or not pids:
            phase.lifted_s = now()
            return "skipped: needs --workers 2 or more"
        victim = pids[0]
        os.kill(victim, signal.SIGKILL if fault == "kill-worker" else signal.SIGTERM)
        phase.lifted_s = now()
        return f"worker {victim} {'SIGKILLed' if fault == 'kill-worker' else 'SIGTERMed (drain)'}"
    if fault == "forged":
        await forged.flood(world, agents, cfg.fault_s, cfg.forged_concurrency)
        phase.lifted_s = now()
        return f"{cfg.forged_concurrency} clients sending forged and replayed requests for {cfg.fault_s:.0f} s"
    raise ValueError(fault)


async def shift(cfg: Config, base: str, rig: Rig) -> dict[str, Any]:
    recorder = Recorder()
    phases: list[Phase] = []
    notes: dict[str, str] = {}
    forged = Forged()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256),
                                     timeout=aiohttp.ClientTimeout(total=10)) as http, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as sockets:  # fmt: skip
        world = World(base, POLICY, customers(cfg.customers), recorder, http, sockets)
        agents = [Agent(world, i) for i in range(cfg.agents)]
        monitor = Monitor(recorder, agents, rig, rig.redis.url, {"enterprise": rig.enterprise_pid,
                                                                  "driver": os.getpid()})  # fmt: skip
        stop_monitor = asyncio.Event()
        monitor_task = asyncio.create_task(monitor.run(stop_monitor))

        phases.append(Phase("ramp", "ramp", recorder.now()))
        gate = asyncio.Semaphore(cfg.ramp_concurrency)
        await asyncio.gather(*(login(agent, gate) for agent in agents))
        phases[-1].end_s = recorder.now()
        settle_gc()

        stop_load = False

        def until() -> bool:
            return stop_load

        ops = [
            (cfg.switch_rate, lambda a: a.relay(world.random_partner()), "relay"),
            (cfg.page_rate, lambda a: a.open_panel(world.random_partner()), "page"),
            (cfg.send_rate, lambda a: a.send("ticket" if random.random() < cfg.ticket_share else "order_card"),
             "send"),
            (cfg.invalidate_rate, invalidate, "invalidate"),
        ]  # fmt: skip
        load = [asyncio.create_task(poisson(world, agents, rate, op, until, kind)) for rate, op, kind in ops]
        phases.append(Phase("steady", "steady", recorder.now()))
        await asyncio.sleep(cfg.steady_s)
        phases[-1].end_s = recorder.now()
        for fault in cfg.faults:
            phase = Phase(fault, "fault", recorder.now())
            phases.append(phase)
            notes[fault] = await inject(fault, rig, cfg, phase, world, agents, forged)
            await asyncio.sleep(cfg.observe_s)
            phase.end_s = recorder.now()
        stop_load = True
        await asyncio.gather(*load)
        await asyncio.wait(list(world.tasks), timeout=15) if world.tasks else None
        audit = await check_audit(rig.redis.url, world, phases)
        world.stopping = True
        stop_monitor.set()
        await monitor_task
        await asyncio.gather(*(agent.close() for agent in agents), return_exceptions=True)
    frame = sorted(world.frame_bytes)[len(world.frame_bytes) // 2] if world.frame_bytes else 0
    return {"recorder": recorder, "phases": phases, "notes": notes, "samples": monitor.samples,
            "audit": audit, "forged": forged.summary(), "frame_bytes": frame}  # fmt: skip


async def check_audit(redis_url: str, world: World, phases: list[Phase], timeout: float = 30.0) -> dict[str, Any]:
    """Every send told "recorded" is in the stream exactly once (waiting for spooled ones to be replayed)."""
    client = connect(redis_url)
    stream = Keys().audit_stream
    deadline = time.monotonic() + timeout
    counts: Counter[str] = Counter()
    try:
        while True:
            counts.clear()
            with contextlib.suppress(Exception):
                start = "-"
                while True:
                    page = await client.xrange(stream, min=start, count=10_000)
                    counts.update(fields.get("id", "") for _, fields in page)
                    if len(page) < 10_000:
                        break
                    start = "(" + page[-1][0]
            missing = [event_id for event_id in world.told if counts[event_id] == 0]
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
    finally:
        await client.aclose()
    lost = [event_id for event_id in world.told if counts[event_id] == 0]
    duplicated = [event_id for event_id in world.attempted if counts[event_id] > 1]
    unconfirmed = [event_id for event_id in world.attempted if counts[event_id] and event_id not in world.told]
    per_phase = {}
    for phase in phases:
        told = [t for t in world.told.values() if phase.start_s <= t.at < (phase.end_s or float("inf"))]
        ids = {t.event_id for t in told}
        per_phase[phase.name] = {"told": len(told), "spooled": sum(t.spooled for t in told),
                                 "lost": len(ids.intersection(lost)),
                                 "duplicated": len(ids.intersection(duplicated))}  # fmt: skip
    return {"told_recorded": len(world.told), "spooled": sum(t.spooled for t in world.told.values()),
            "attempted": len(world.attempted), "lost": len(lost), "duplicated": len(duplicated),
            "unconfirmed_in_stream": len(unconfirmed), "lost_ids": lost[:20], "duplicated_ids": duplicated[:20],
            "per_phase": per_phase, "ok": not lost and not duplicated and bool(world.told)}  # fmt: skip


# --- the baseline: same agents and rates against bare servers -------------------------------------


class EchoAgent(Agent):
    """The baseline's agent: GET / for a page, an echo frame for a relay, one XADD per send."""

    pad = 10_000

    async def open_panel(self, partner: str) -> bool:
        started = time.perf_counter()
        try:
            async with self.world.http.get(f"{self.world.base}/") as response:
                await response.read()
                ok = response.status == 200
        except (aiohttp.ClientError, TimeoutError) as error:
            self.world.recorder.error("page", type(error).__name__)
            return False
        if ok:
            self.world.recorder.ok("page", (time.perf_counter() - started) * 1000)
        else:
            self.world.recorder.error("page", f"http {response.status}")
        if self.ws is None:
            self.partner = partner
            return await self.connect(resync=False)
        return ok

    async def relay(self, partner: str, **_: Any) -> str:
        started = time.perf_counter()
        outcome, _text = await self._request({"type": "selected", "pad": self.pad})
        if outcome == "panel":
            self.world.recorder.ok("relay", (time.perf_counter() - started) * 1000)
        else:
            self.world.recorder.error("relay", outcome)
        return outcome

    async def send(self, kind: str) -> None:
        body = {"kind": kind, "id": f"base-{random.getrandbits(48):x}", "agent": self.email,
                "data": {"orderCode": "SO20250312001", "totalFee": 65800}}  # fmt: skip
        started = time.perf_counter()
        try:
            async with self.world.http.post(f"{self.world.base}/xadd", json=body) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            self.world.recorder.error("send", type(error).__name__)
            return
        if status == 200:
            self.world.recorder.ok("send", (time.perf_counter() - started) * 1000)
        else:
            self.world.recorder.error("send", f"http {status}")


async def baseline_shift(cfg: Config, base: str, redis_url: str, bare_pid: int, frame_bytes: int) -> dict[str, Any]:
    recorder = Recorder()
    EchoAgent.pad = frame_bytes or 10_000
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as http, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as sockets:  # fmt: skip
        world = World(base, POLICY, customers(12), recorder, http, sockets)
        agents: list[Agent] = [EchoAgent(world, i) for i in range(cfg.agents)]
        monitor = Monitor(recorder, agents, None, redis_url, {"bare": bare_pid, "driver": os.getpid()})
        stop_monitor = asyncio.Event()
        monitor_task = asyncio.create_task(monitor.run(stop_monitor))
        gate = asyncio.Semaphore(cfg.ramp_concurrency)
        await asyncio.gather(*(login(agent, gate) for agent in agents))
        settle_gc()
        phase = Phase("baseline", "baseline", recorder.now())
        stop = False
        ops = [(cfg.switch_rate, lambda a: a.relay(""), "relay"), (cfg.page_rate, lambda a: a.open_panel(""), "page"),
               (cfg.send_rate, lambda a: a.send("order_card"), "send")]  # fmt: skip
        load = [asyncio.create_task(poisson(world, agents, rate, op, lambda: stop, kind)) for rate, op, kind in ops]
        await asyncio.sleep(cfg.baseline_s)
        stop = True
        await asyncio.gather(*load)
        phase.end_s = recorder.now()
        world.stopping = True
        stop_monitor.set()
        await monitor_task
        await asyncio.gather(*(agent.close() for agent in agents), return_exceptions=True)
    return {"recorder": recorder, "phase": phase, "samples": monitor.samples}


# --- the command ---------------------------------------------------------------------------------


def parse(argv: list[str]) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench callcenter", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--agents", type=int, default=2000)
    parser.add_argument("--customers", type=int, default=5000, help="customers in the enterprise API")
    parser.add_argument("--steady", type=float, default=30.0, help="seconds of the steady phase")
    parser.add_argument("--switch-rate", type=float, default=100.0, help="relays a second, all agents")
    parser.add_argument("--page-rate", type=float, default=20.0, help="fresh panels (page loads) a second")
    parser.add_argument("--send-rate", type=float, default=10.0, help="sends (cards and tickets) a second")
    parser.add_argument("--ticket-share", type=float, default=0.3, help="share of sends that are tickets")
    parser.add_argument("--invalidate-rate", type=float, default=5.0, help="invalidations a second")
    parser.add_argument("--upstream-latency", type=float, default=0.02, help="customer API latency, seconds")
    parser.add_argument("--fault", action="append", choices=[*FAULTS, "all", "none"],
                        help="repeatable; default all (--quick: redis and forged)")  # fmt: skip
    parser.add_argument("--fault-seconds", type=float, default=10.0, help="how long a slow/failing/forged fault lasts")
    parser.add_argument("--redis-down", type=float, default=5.0, help="seconds Redis stays down")
    parser.add_argument("--observe", type=float, default=10.0, help="seconds watched after each fault is lifted")
    parser.add_argument("--baseline", type=float, default=15.0, help="seconds of the baseline run")
    parser.add_argument("--forged-concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="50 agents, short phases, faults redis + forged")
    parser.add_argument("--out", help="JSON file (default bench/results/callcenter-<time>.json); PNG beside it")
    parser.add_argument("--events", help="also write every observation (t, kind, ms, error) as JSON lines here")
    args = parser.parse_args(argv)
    faults = args.fault or (["redis", "forged"] if args.quick else ["all"])
    if "all" in faults:
        faults = list(FAULTS)
    faults = [f for f in dict.fromkeys(faults) if f != "none"]
    if args.quick:
        args.agents, args.customers, args.steady = min(args.agents, 50), min(args.customers, 200), 5.0
        args.switch_rate, args.page_rate, args.send_rate, args.invalidate_rate = 20.0, 5.0, 8.0, 2.0
        args.fault_seconds, args.redis_down, args.observe, args.baseline = 3.0, 2.0, 4.0, 3.0
        args.forged_concurrency = 8
    cfg = Config(args.agents, args.customers, args.steady, args.switch_rate, args.page_rate, args.send_rate,
                 args.ticket_share, args.invalidate_rate, faults, args.observe, args.fault_seconds, args.redis_down,
                 args.baseline, args.forged_concurrency, args.upstream_latency, args.workers,
                 ramp_concurrency=32)  # fmt: skip
    return cfg, args


def main(argv: list[str]) -> int:
    cfg, args = parse(argv)
    random.seed(args.seed)
    limit = raise_fd_limit()
    if limit < cfg.agents * 3 + 500:
        print(f"open-file limit {limit} is too low for {cfg.agents} agents", file=sys.stderr)
        return 2
    loop = use_uvloop()
    began = time.monotonic()
    out = Path(args.out) if args.out else RESULTS / f"callcenter-{time.strftime('%Y%m%d-%H%M%S')}.json"
    with redis_server() as redis, helper("enterprise", "--customers", str(cfg.customers), "--latency",
                                         str(cfg.upstream_latency)) as (enterprise_url, enterprise):  # fmt: skip
        port = free_port()
        # The simulated agents file tickets from the workbench too, so it offers them here.
        env = {"PANEL_DIRECTORY_URL": enterprise_url, "PANEL_DIRECTORY_TOKEN": ENTERPRISE_TOKEN,
               "PANEL_SIGN_MAX_AGE": str(SIGN_MAX_AGE), "PANEL_TICKET_SURFACES": "workbench ticket"}  # fmt: skip
        with service(port, redis.url, workers=cfg.workers, **env) as proc:
            rig = Rig(redis, enterprise_url, enterprise.pid, proc.pid, cfg.workers)
            run = asyncio.run(shift(cfg, f"http://127.0.0.1:{port}", rig))
        with helper("bare", redis.url) as (bare_url, bare):
            base = asyncio.run(baseline_shift(cfg, bare_url, redis.url, bare.pid, run["frame_bytes"]))
    result = build_result(cfg, args, run, base, loop, time.monotonic() - began, out)
    dump_json(out, result)
    if args.events:
        with open(args.events, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(event) + "\n" for event in run["recorder"].events)
    print_report(result)
    print(f"JSON: {out}\nPNG: {result['plot']}")
    return 0 if result["audit"]["ok"] and result["forged"]["ok"] is not False else 1


def build_result(cfg: Config, args: argparse.Namespace, run: dict[str, Any], base: dict[str, Any], loop: str,
                 elapsed: float, out: Path) -> dict[str, Any]:  # fmt: skip
    from .plot import plot

    recorder: Recorder = run["recorder"]
    phases = [vars(p) for p in run["phases"]]
    rows = [phase_stats(base["recorder"].events, base["samples"], vars(base["phase"]))]
    for phase in phases:
        stats = phase_stats(recorder.events, run["samples"], phase)
        if phase["kind"] == "fault":
            stats["fault"] = {"note": run["notes"].get(phase["name"], ""),
                              **recovery(recorder.events, run["samples"], phase, cfg.agents),
                              "audit": run["audit"]["per_phase"].get(phase["name"], {})}  # fmt: skip
        rows.append(stats)
    line = timeline(recorder.events, run["samples"])
    sizing = capacity(rows[1:], run["samples"], cfg.agents)
    png = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    renderer = plot(png, line, phases, f"call-center shift: {cfg.agents} agents, --workers {cfg.workers}")
    forged = run["forged"] if "forged" in cfg.faults else {**run["forged"], "ok": None}
    return {"bench": "callcenter", "machine": machine(), "client_loop": loop, "quick": args.quick,
            "config": vars(cfg), "elapsed_s": elapsed, "panel_frame_bytes": run["frame_bytes"], "phases": rows,
            "audit": run["audit"], "forged": forged, "timeline": line, "plot": str(png),
            "plot_renderer": renderer, "capacity": sizing}  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

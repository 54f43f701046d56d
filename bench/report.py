"""Figures of a call-center run: per-phase statistics, recovery after a fault, a per-second timeline, tables."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from .common import percentile, ratio, render_table, summary

Event = tuple[float, str, float, str]  # (seconds since start, kind, ms, error detail or "")
KINDS = ("page", "relay", "send", "push", "invalidate", "reconnect", "lag")
# What an agent would notice; "forged" are the attacker's own requests, "skipped" a saturated driver.
AGENT_ERRORS = frozenset({"page", "relay", "send", "socket", "connect", "invalidate"})


def _window(events: Sequence[Event], start: float, end: float) -> list[Event]:
    return [e for e in events if start <= e[0] < end]


def phase_stats(events: Sequence[Event], samples: Sequence[dict[str, Any]], phase: dict[str, Any]) -> dict[str, Any]:
    start, end = float(phase["start_s"]), float(phase["end_s"])
    duration = max(end - start, 1e-9)
    window = _window(events, start, end)
    out: dict[str, Any] = {"name": phase["name"], "kind": phase["kind"], "start_s": start, "end_s": end,
                           "duration_s": duration}  # fmt: skip
    for kind in KINDS:
        ok = [ms for _, k, ms, err in window if k == kind and not err]
        out[kind] = {"per_s": len(ok) / duration, **summary(ok)}
    errors = Counter(f"{k}: {err}" for _, k, _, err in window if err and k in AGENT_ERRORS)
    out["errors"] = dict(errors.most_common())
    out["error_count"] = sum(errors.values())
    out["skipped"] = dict(Counter(err for _, k, _, err in window if k == "skipped"))
    out["spooled"] = sum(1 for _, k, _, _ in window if k == "spooled")
    inside = [s for s in samples if start <= s["t"] < end] or [s for s in samples if s["t"] >= start][:1]
    out["connected_min"] = min((s["connected"] for s in inside), default=None)
    out["rss_mib"] = _rss(inside)
    out["cpu_pct"] = _cpu(inside)
    out["redis_ops_per_s"] = _redis_rate(inside)
    return out


def _rss(samples: Sequence[dict[str, Any]]) -> dict[str, float]:
    peak: dict[str, float] = {}
    for sample in samples:
        rss = sample["rss_kib"]
        workers = sum(v for k, v in rss.items() if k.startswith("worker"))
        for role, kib in [*rss.items(), ("workers_total", workers)]:
            peak[role] = max(peak.get(role, 0.0), kib / 1024)
    return peak


def _cpu(samples: Sequence[dict[str, Any]]) -> dict[str, float]:
    if len(samples) < 2:
        return {}
    first, last = samples[0], samples[-1]
    elapsed = max(last["t"] - first["t"], 1e-9)
    out = {}
    for role, seconds in last["cpu_s"].items():
        before = first["cpu_s"].get(role)
        if before is not None and seconds >= before:  # a restarted worker starts again from 0: no figure
            out[role] = 100 * (seconds - before) / elapsed
    return out


def _redis_rate(samples: Sequence[dict[str, Any]]) -> float:
    readings = [(s["t"], s["redis_commands"]) for s in samples if s.get("redis_commands") is not None]
    if len(readings) < 2:
        return float("nan")
    total = 0
    for (_, a), (_, b) in itertools.pairwise(readings):
        total += b - a if b >= a else b  # a restarted Redis counts from 0
    return total / max(readings[-1][0] - readings[0][0], 1e-9)


def recovery(events: Sequence[Event], samples: Sequence[dict[str, Any]], phase: dict[str, Any],
             agents: int) -> dict[str, Any]:  # fmt: skip
    """Errors agents saw from the fault's start to the phase's end, and when all was well again.

    `recovered_s`: seconds from the fault being lifted (Redis back, upstream healthy, worker signalled,
    flood over) until the last error an agent saw and every panel connected again; None when that did
    not happen before the phase ended.
    """
    injected, lifted, end = float(phase["injected_s"]), float(phase["lifted_s"]), float(phase["end_s"])
    seen = [e for e in _window(events, injected, end) if e[3] and e[1] in AGENT_ERRORS]
    last_error = max((e[0] for e in seen), default=None)
    after = [s for s in samples if injected <= s["t"] < end]
    min_connected = min((s["connected"] for s in after), default=agents)
    settled_from = max(lifted, last_error or lifted)
    if last_error is None and min_connected >= agents:
        recovered: float | None = 0.0
    else:
        full = next((s["t"] for s in after if s["t"] >= settled_from and s["connected"] >= agents), None)
        recovered = None if full is None else max(0.0, max(full, last_error or 0.0) - lifted)
    return {"errors": len(seen), "errors_by_kind": dict(Counter(f"{e[1]}: {e[3]}" for e in seen).most_common()),
            "recovered_s": recovered, "min_connected": min_connected,
            "last_error_after_lift_s": None if last_error is None else last_error - lifted}  # fmt: skip


def timeline(events: Sequence[Event], samples: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Per second: p50 and p99 of relay, page and send latency, agent errors, panels connected."""
    end = max([e[0] for e in events] + [s["t"] for s in samples] + [1.0])
    buckets: dict[tuple[int, str], list[float]] = defaultdict(list)
    errors: Counter[int] = Counter()
    for t, kind, ms, err in events:
        if err and kind in AGENT_ERRORS:
            errors[int(t)] += 1
        elif not err and kind in ("relay", "page", "send", "lag"):
            buckets[(int(t), kind)].append(ms)
    seconds = list(range(int(end) + 1))
    line: dict[str, list[float]] = {"t": [float(s) for s in seconds]}
    for kind in ("relay", "page", "send", "lag"):
        for q in (50, 99):
            line[f"{kind}_p{q}"] = [percentile(buckets.get((s, kind), []), q) for s in seconds]
    line["errors"] = [float(errors[s]) for s in seconds]
    connected: dict[int, float] = {}
    for sample in samples:
        connected[int(sample["t"])] = sample["connected"]
    last = 0.0
    line["connected"] = []
    for s in seconds:
        last = connected.get(s, last)
        line["connected"].append(last)
    return line


def capacity(phases: Sequence[dict[str, Any]], samples: Sequence[dict[str, Any]], agents: int,
             targets: Sequence[int] = (2_000, 10_000)) -> dict[str, Any]:  # fmt: skip
    """Sizing from the steady phase: agents one core carries at 50 % CPU, and resident memory per panel.

    CPU: the workers' CPU at steady (every agent connected, switching, opening panels, sending), scaled to
    half a core. Memory: the workers' peak RSS at steady minus their RSS before the first agent logged in,
    over the agents. A pod for N agents: N / (agents per core at 50 %) cores, and its workers' idle RSS
    plus N panels; the 50 % leaves the other half for reconnect storms and the first page of a shift."""
    steady = next((p for p in phases if p["kind"] == "steady"), None)
    if steady is None or not samples:
        return {}
    cpu = sum(pct for role, pct in steady["cpu_pct"].items() if role.startswith("worker"))
    idle = _rss(samples[:1]).get("workers_total", math.nan)
    busy = steady["rss_mib"].get("workers_total", math.nan)
    workers = sum(1 for role in samples[0]["rss_kib"] if role.startswith("worker")) or 1
    per_core = agents * 50 / cpu if cpu > 0 else math.nan
    per_panel_kib = (busy - idle) * 1024 / agents if agents else math.nan
    pods = []
    for target in targets:
        cores = target / per_core if per_core == per_core else math.nan
        mib = idle / workers * max(1, math.ceil(cores)) + target * per_panel_kib / 1024
        pods.append({"agents": target, "cores": cores, "workers": max(1, math.ceil(cores)), "memory_mib": mib})
    return {"agents": agents, "workers_cpu_pct": cpu, "agents_per_core_at_50pct": per_core,
            "idle_worker_mib": idle / workers, "panel_kib": per_panel_kib, "pods": pods}  # fmt: skip


# --- printing -------------------------------------------------------------------------------------


def _trio(stats: dict[str, Any]) -> str:
    if not stats["count"]:
        return "-"
    return "/".join(_num(stats[q]) for q in ("p50", "p95", "p99"))


def _num(value: float) -> str:
    if value != value:
        return "-"
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def print_report(result: dict[str, Any]) -> None:
    cfg = result["config"]
    phases = result["phases"]
    print(f"\ncall-center shift: {cfg['agents']} agents, serve --workers {cfg['workers']}, rates/s: relay "
          f"{cfg['switch_rate']:g}, page {cfg['page_rate']:g}, send {cfg['send_rate']:g}, invalidate "
          f"{cfg['invalidate_rate']:g}; customer API latency {cfg['upstream_latency'] * 1000:.0f} ms; "
          f"{result['machine']['nproc']} cores, driver on {result['client_loop']}")  # fmt: skip
    rows = []
    for p in phases:
        server_mib = p["rss_mib"].get("workers_total") or p["rss_mib"].get("bare", math.nan)
        rows.append((p["name"], p["duration_s"], p["page"]["per_s"], _trio(p["page"]), p["relay"]["per_s"],
                     _trio(p["relay"]), p["send"]["per_s"], _trio(p["send"]), _trio(p["push"]), p["error_count"],
                     p["redis_ops_per_s"], server_mib, p["lag"]["p99"]))  # fmt: skip
    print(render_table(["phase", "s", "pages/s", "page ms p50/95/99", "relays/s", "relay→push ms", "sends/s",
                        "send ms", "invalidate→push ms", "errors", "redis ops/s", "server MiB", "lag p99"],
                       rows))  # fmt: skip
    print("(server MiB: all workers, peak RSS; lag p99: the driver's own event-loop lag, ms)")
    base = phases[0]
    steady = next((p for p in phases if p["kind"] == "steady"), None)
    if steady is not None:
        print("\nsteady vs baseline (bare GET /, echo websocket, one XADD per POST; same agents and rates):")
        print(render_table(["", "baseline p50", "service p50", "p50 ratio", "baseline p99", "service p99",
                            "p99 ratio"], [
            (kind, base[kind]["p50"], steady[kind]["p50"], ratio(steady[kind]["p50"], base[kind]["p50"]),
             base[kind]["p99"], steady[kind]["p99"], ratio(steady[kind]["p99"], base[kind]["p99"]))
            for kind in ("page", "relay", "send")]))  # fmt: skip
        print("resident memory at steady (MiB, peak): " + ", ".join(
            f"{role} {mib:.0f}" for role, mib in steady["rss_mib"].items()) + "; CPU %: " + ", ".join(
            f"{role} {pct:.0f}" for role, pct in steady["cpu_pct"].items()))  # fmt: skip
    sizing = result.get("capacity") or {}
    if sizing:
        print(f"\ncapacity: {sizing['agents']} agents took {sizing['workers_cpu_pct']:.0f} % of a core over the "
              f"workers at steady -> {sizing['agents_per_core_at_50pct']:,.0f} agents per core at 50 % CPU; "
              f"{sizing['panel_kib']:.0f} KiB per panel over an idle worker's "
              f"{sizing['idle_worker_mib']:.0f} MiB")  # fmt: skip
        print(render_table(["agents", "cores at 50 %", "workers", "memory MiB"],
                           [(p["agents"], f"{p['cores']:.2f}", p["workers"], f"{p['memory_mib']:.0f}")
                            for p in sizing["pods"]]))  # fmt: skip
    faults = [p for p in phases if p["kind"] == "fault"]
    if faults:
        print(
            "\nfaults (recovered: seconds after the fault was lifted until no agent error and every panel connected):"
        )
        print(render_table(["fault", "errors", "top errors", "recovered s", "min connected", "told", "spooled",
                            "lost", "dup"], [
            (p["name"], f["errors"], "; ".join(f"{k} ×{n}" for k, n in list(f["errors_by_kind"].items())[:3]) or "-",
             "not yet" if f["recovered_s"] is None else f"{f['recovered_s']:.1f}", f["min_connected"],
             f["audit"].get("told", 0), f["audit"].get("spooled", 0), f["audit"].get("lost", 0),
             f["audit"].get("duplicated", 0))
            for p in faults for f in [p["fault"]]]))  # fmt: skip
        for p in faults:
            print(f"  {p['name']}: {p['fault']['note']}")
    audit = result["audit"]
    print(f"\naudit: {audit['told_recorded']} sends told recorded ({audit['spooled']} spooled), "
          f"{audit['lost']} lost, {audit['duplicated']} duplicated, {audit['unconfirmed_in_stream']} in the stream "
          f"without a confirmation -> {'OK' if audit['ok'] else 'FAILED'}")  # fmt: skip
    forged = result["forged"]
    if forged.get("ok") is not None:
        print(f"forged/replayed: {forged['sent']} page loads, {forged['refused']} refused 403, {forged['accepted']} "
              f"accepted, {forged['other_status']} other status, {forged['transport_errors']} transport errors; "
              f"{forged['relays_sent']} relays, {forged['relays_refused']} refused, {forged['relays_accepted']} "
              f"accepted -> {'OK' if forged['ok'] else 'FAILED'}")  # fmt: skip
    print(f"panel frame ~{result['panel_frame_bytes']} bytes; run took {result['elapsed_s']:.0f} s")

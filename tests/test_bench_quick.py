"""The call-center bench's quick run end to end: the harness works and the invariants it checks hold.

It starts redis-server, the fake customer API and `serve --workers 2`, simulates 50 agents for a short
shift with Redis killed and restarted and a flood of forged requests, and writes its JSON. Only the
invariants are asserted (no send lost or doubled, every forged request refused), never a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)
def test_callcenter_quick_keeps_the_audit_invariant_and_refuses_forgeries(tmp_path: Path) -> None:
    out = tmp_path / "callcenter.json"
    env = {name: value for name, value in os.environ.items() if not name.startswith("PANEL_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "callcenter", "--quick", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=220,
    )  # fmt: skip
    assert out.exists(), f"no JSON written (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(out.read_text(encoding="utf-8"))

    phases = {phase["name"]: phase for phase in result["phases"]}
    assert {"baseline", "ramp", "steady", "redis", "forged"} <= set(phases)
    assert phases["steady"]["relay"]["count"] > 0 and phases["steady"]["page"]["count"] > 0
    baseline = phases["baseline"]  # the same agents against the bare handlers: every ratio divides by it
    assert all(baseline[kind]["count"] > 0 for kind in ("page", "relay", "send")), baseline
    assert baseline["error_count"] == 0, baseline["errors"]

    audit = result["audit"]
    assert audit["told_recorded"] > 0
    assert audit["lost"] == 0, audit["lost_ids"]
    assert audit["duplicated"] == 0, audit["duplicated_ids"]
    assert audit["per_phase"]["redis"]["told"] > 0  # sends went on while Redis was away

    forged = result["forged"]
    assert forged["sent"] > 0 and forged["relays_sent"] > 0
    assert forged["accepted"] == 0 and forged["other_status"] == 0, forged
    assert forged["relays_accepted"] == 0, forged
    assert forged["refused"] == forged["sent"] - forged["transport_errors"]

    sizing = result["capacity"]
    assert sizing["agents_per_core_at_50pct"] > 0 and sizing["panel_kib"] == sizing["panel_kib"]
    assert [pod["agents"] for pod in sizing["pods"]] == [2_000, 10_000]

    assert Path(result["plot"]).stat().st_size > 0
    assert done.returncode == 0, done.stdout[-3000:]


def test_capacity_scales_the_steady_phase_to_half_a_core_and_counts_memory_per_panel() -> None:
    from bench.report import capacity

    mib = 1024  # KiB
    samples = [{"t": 0.0, "rss_kib": {"worker1": 50 * mib, "worker2": 50 * mib, "redis": 9 * mib}}]
    steady = {"kind": "steady", "cpu_pct": {"worker1": 10.0, "worker2": 15.0, "redis": 40.0},
              "rss_mib": {"workers_total": 100.0 + 2_000 * 25 / 1024}}  # fmt: skip
    sizing = capacity([{"kind": "ramp"}, steady], samples, 2_000)
    assert sizing["agents_per_core_at_50pct"] == pytest.approx(4_000)  # 2,000 agents on 25 % of a core
    assert sizing["panel_kib"] == pytest.approx(25)
    assert sizing["idle_worker_mib"] == pytest.approx(50)
    small, large = sizing["pods"]
    assert (small["agents"], small["cores"], small["workers"]) == (2_000, 0.5, 1)
    assert small["memory_mib"] == pytest.approx(50 + 2_000 * 25 / 1024)
    assert (large["cores"], large["workers"]) == (2.5, 3)
    assert large["memory_mib"] == pytest.approx(3 * 50 + 10_000 * 25 / 1024)

"""gate-abort: 1.0.0 everywhere, then 2.0.0 (same predictions, ~20x the compute) rolled out in two
waves with `latency_p95_ratio<=1.2`. Live traffic runs throughout, so every heartbeat carries a
health window. Expected: the first wave's p95 breaches the gate, the rollout aborts, the second
wave is skipped, and the devices that ran 2.0.0 are back on 1.0.0 (asked of the agents)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.scenarios import builds
from edgekit.scenarios.harness import MODEL, Harness, Traffic, check, eval_inputs, wait_for

ABOUT = "a slower release breaches a latency gate; the wave aborts and rolls back"
GATE = "latency_p95_ratio<=1.2"
BAKE_S = 60.0  # long enough that the breach, not the bake's end, decides (heartbeats are 1 s); 30 s once ended first in a loaded CI run


def baselines_reported(h: Harness, version: str) -> bool:
    """Has every device reported a p95 for `version`? (the gate's per-device baseline)"""
    rows = h.db_rows(
        "SELECT COUNT(*) FROM device_health WHERE model=? AND version=? AND requests > 0 AND p95_ms IS NOT NULL",
        (MODEL, version),
    )
    return rows[0][0] == len(h.agents)


def run(h: Harness, cache: Path) -> dict[str, Any]:
    base, slow = builds.base(cache), builds.slow(cache)
    h.release(base, "1.0.0")
    with Traffic(h.agents, eval_inputs()) as traffic:
        wait_for("every agent reported 1.0.0's latency", lambda: baselines_reported(h, "1.0.0"), 60)
        h.publish(slow, "2.0.0")
        st = h.start_rollout("2.0.0", waves=[50, 100], gates=[GATE], bake=BAKE_S, on_breach="abort")
        h.console.print(
            f"  rollout {st['id']}: 2.0.0 in waves 50%, 100% with --gate '{GATE}' --bake {BAKE_S:.0f}s"
        )
        st = h.wait_rollout(st["id"], timeout=180)
        h.console.print(f"  rollout {st['id']}: {st['state']} ({st['reason']})")
        check(st["state"] == "aborted", f"the rollout of 2.0.0 aborted (it is {st['state']}: {st['reason']})")
        check(
            st["reason"].startswith(f"gate {GATE} breached"), f"the latency gate aborted it ({st['reason']})"
        )
        first, second = st["waves"]
        ratio = first["gates"]["latency_p95_ratio"]
        check(ratio is not None and ratio > 1.2, f"wave 1's latency_p95_ratio is above 1.2 ({ratio})")
        check(second["skipped"] == second["devices"] > 0, "wave 2 was never dispatched")
        st = wait_for(
            "wave 1 rolled back",
            lambda: (
                (s := h.admin.get(f"/api/rollouts/{st['id']}"))["totals"]["rolled_back"] == first["devices"]
                and s
            ),
            60,
        )
        # The agents' own word: every one serves 1.0.0 again, and answers with it.
        for a in h.agents:
            wait_for(f"{a.device} serves 1.0.0 again", lambda a=a: a.active_version() == "1.0.0", 60)
        n = len(traffic.served)
        wait_for(
            "every agent answered again after the rollback",
            lambda: len(traffic.served) > n + 2 * len(h.agents),
            30,
        )
        last = {a.device: traffic.last_version(a.device) for a in h.agents}
        ran_slow = [a.device for a in h.agents if "2.0.0" in traffic.versions(a.device)]
    check(
        len(ran_slow) == first["devices"],
        f"the wave-1 devices answered with 2.0.0 before the rollback ({ran_slow})",
    )
    check(all(v == "1.0.0" for v in last.values()), f"every agent answers with 1.0.0 at the end ({last})")
    p50 = {v: traffic.p50_ms(v) for v in ("1.0.0", "2.0.0")}
    h.console.print(
        f"  wave 1 ({', '.join(ran_slow)}): latency_p95_ratio {ratio:.2f} > 1.2 -> aborted, rolled back to 1.0.0;"
        f" client p50 {p50['1.0.0']:.2f} ms (1.0.0) vs {p50['2.0.0']:.2f} ms (2.0.0)"
    )
    return {
        "rollout": {
            "id": st["id"],
            "state": st["state"],
            "reason": st["reason"],
            "gates": st["gates"],
            "waves": [
                {k: w[k] for k in ("devices", "active", "rolled_back", "skipped", "gates")}
                for w in st["waves"]
            ],
        },
        "latency_p95_ratio": ratio,
        "client_p50_ms": p50,
        "requests": len(traffic.served),
        "agents": [
            {"device": a.device, "served_versions": traffic.versions(a.device), "active": last[a.device]}
            for a in h.agents
        ],
    }

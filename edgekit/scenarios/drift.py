"""drift: two cohorts, site=north and site=south. 1.0.0 everywhere, then 1.1.0 (the fine-tuned
CNN, whose signed baseline is its conversion's evaluation inputs and outputs) rolled out with
`--gate 'drift_psi<=0.2' --on-breach pause` while live traffic runs: north is sent the bundled
digits as they are, south the same digits through a camera whose gain and offset changed
(`shifted`). Expected: south's drift score passes 0.2, north's stays under it (asked of
`edgekit fleet drift digits --by site --json`), and the rollout pauses with the gate as its reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.launch import run_cli
from edgekit.scenarios import builds
from edgekit.scenarios.harness import MODEL, AgentSpec, Harness, Traffic, check, eval_inputs, wait_for

ABOUT = "shifted inputs on one cohort raise its drift score; the drift gate pauses the rollout"
NORTH, SOUTH = "north", "south"
AGENT_CONFIG = {"agent": {"drift_share": 1.0}}  # summarise every request: the scenario counts rows
AGENTS = [
    AgentSpec("cam-north-1", {"kind": "store-pc", "site": NORTH}),
    AgentSpec("cam-south-1", {"kind": "store-pc", "site": SOUTH}),
]
LIMIT = 0.2  # PSI > 0.2 is the customary reading of "shifted" (fleet.drift)
GATE = f"drift_psi<={LIMIT:g}"
NORTH_MAX = 0.1  # unshifted inputs score "stable" (< 0.1) against their own baseline
BAKE_S = 60.0  # the wave is judged for this long after activation; the breach comes well before
GAIN, OFFSET = 0.8, 0.15  # south's camera: less contrast, brighter (pixels stay in [0, 1])


def shifted(x: np.ndarray, gain: float = GAIN, offset: float = OFFSET) -> np.ndarray:
    """Images as a camera with another gain and offset would take them."""
    return np.clip(x * gain + offset, 0.0, 1.0).astype(np.float32)


def drift_table(h: Harness, version: str) -> dict[str, Any]:
    """`edgekit fleet drift digits --version V --by site --json`: the operator's view."""
    proc = run_cli(
        "fleet", "drift", MODEL, "--version", version, "--by", "site", "--json", "--config", str(h.fleet_toml)
    )
    check(proc.returncode == 0, f"fleet drift {MODEL}: {proc.stderr[-500:]}")
    return json.loads(proc.stdout)


def worst_psi(doc: dict[str, Any], version: str) -> dict[str, float | None]:
    """Per cohort, the worst PSI over its tensors and kinds (None: too few rows to score yet)."""
    out: dict[str, float | None] = {}
    for v in doc["versions"]:
        if v["version"] != version:
            continue
        for r in v["rows"]:
            have = out.get(r["cohort"])
            if r["psi"] is not None:
                out[r["cohort"]] = r["psi"] if have is None else max(have, r["psi"])
            else:
                out.setdefault(r["cohort"], None)
    return out


def scored(h: Harness, version: str, north_rows: int) -> dict[str, float] | None:
    """Both cohorts' worst PSI once every row of both is scored and north served `north_rows`
    (a full pass over its inputs: a partial one scores its sampling noise, ~9/rows for the
    ten classes, not drift)."""
    doc = drift_table(h, version)
    rows = [r for v in doc["versions"] if v["version"] == version for r in v["rows"]]
    cohorts = {r["cohort"] for r in rows}
    if cohorts != {NORTH, SOUTH} or any(r["psi"] is None for r in rows):
        return None
    if any(r["count"] < north_rows for r in rows if r["cohort"] == NORTH):
        return None
    return worst_psi(doc, version)  # type: ignore[return-value]


def run(h: Harness, cache: Path) -> dict[str, Any]:
    base, tuned = builds.base(cache), builds.finetuned(cache)
    h.release(base, "1.0.0")
    inputs = eval_inputs(360)  # the whole bundled set: north's traffic is the baseline's own data
    site = {s.device: s.labels["site"] for s in AGENTS}
    south = next(d for d, where in site.items() if where == SOUTH)
    # each device cycles its own copy in full (shared inputs would alternate between the two)
    own = {d: shifted(inputs) if where == SOUTH else inputs for d, where in site.items()}
    with Traffic(h.agents, inputs, per_device=own) as traffic:
        h.publish(tuned, "1.1.0")
        st = h.start_rollout("1.1.0", gates=[GATE], bake=BAKE_S, on_breach="pause")
        h.console.print(
            f"  rollout {st['id']}: 1.1.0 with --gate '{GATE}' --on-breach pause --bake {BAKE_S:.0f}s;"
            f" {south} sees its digits x{GAIN:g} + {OFFSET:g}"
        )
        st = wait_for(
            "the rollout of 1.1.0 paused",
            lambda: (s := h.admin.get(f"/api/rollouts/{st['id']}"))["state"] != "running" and s,
            BAKE_S + 60,
        )
        h.console.print(f"  rollout {st['id']}: {st['state']} ({st['reason']})")
        check(st["state"] == "paused", f"the rollout of 1.1.0 paused (it is {st['state']}: {st['reason']})")
        check(
            (st["reason"] or "").startswith(f"gate {GATE} breached"),
            f"the drift gate paused it ({st['reason']})",
        )
        gate_psi = st["waves"][0]["gates"]["drift_psi"]
        check(
            gate_psi is not None and gate_psi > LIMIT, f"the wave's drift_psi is above {LIMIT} ({gate_psi})"
        )
        # Both cohorts scored: north has to have served enough to show that it did not drift.
        psi = wait_for(
            "both sites' 1.1.0 drift is scored", lambda: scored(h, "1.1.0", north_rows=len(inputs)), 90
        )
        table = drift_table(h, "1.1.0")
        served = {a.device: traffic.versions(a.device) for a in h.agents}
    check(psi[SOUTH] > LIMIT, f"south's drift score is above {LIMIT} ({psi[SOUTH]:.3f})")
    check(psi[NORTH] < NORTH_MAX, f"north's drift score stays under {NORTH_MAX} ({psi[NORTH]:.3f})")
    for a in h.agents:  # paused, not rolled back: both keep serving what they were given
        check("1.1.0" in served[a.device], f"{a.device} answered with 1.1.0 ({served[a.device]})")
    rows = [
        {k: r[k] for k in ("cohort", "io", "tensor", "kind", "count", "mean", "baseline_mean", "psi", "ks")}
        for v in table["versions"]
        for r in v["rows"]
    ]
    h.console.print(
        f"  drift of 1.1.0 by site: south PSI {psi[SOUTH]:.2f} > {LIMIT}, north PSI {psi[NORTH]:.3f};"
        f" gate drift_psi {gate_psi:.2f} -> paused"
    )
    return {
        "rollout": {"id": st["id"], "state": st["state"], "reason": st["reason"], "gates": st["gates"]},
        "drift_psi_gate": gate_psi,
        "psi_by_site": psi,
        "drift": rows,
        "requests": len(traffic.served),
    }

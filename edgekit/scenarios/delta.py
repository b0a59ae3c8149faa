"""delta: 1.0.0 everywhere, then 1.1.0, the same CNN with its last layer retrained on the bundled
labelled digits. The fleet offers 1.1.0 as a binary delta from the blob the devices report
active. Expected: every agent rebuilt 1.1.0 from the delta (its status says `delta: used`),
serves the signed sha256 and answers with 1.1.0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from edgekit.scenarios import builds
from edgekit.scenarios.harness import MODEL, Harness, check, eval_inputs, oip_request

ABOUT = "a fine-tuned release (last layer retrained) goes out as a verified delta"
GOAL = 0.3  # issue 13: delta bytes on the wire <= 0.3x the full artifact for a last-layer fine-tune


def onnx_artifact(published: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in published["artifacts"] if a["key"] == "onnx")


def run(h: Harness, cache: Path) -> dict[str, Any]:
    base, tuned = builds.base(cache), builds.finetuned(cache)
    old = onnx_artifact(h.release(base, "1.0.0"))
    new = onnx_artifact(h.release(tuned, "1.1.0"))
    check(old["sha256"] != new["sha256"], "the fine-tuned artifact differs from 1.0.0's")
    # What the fleet made and offered: the cached delta from the blob the devices ran.
    rows = h.db_rows("SELECT size FROM deltas WHERE base=? AND target=?", (old["sha256"], new["sha256"]))
    check(bool(rows) and rows[0]["size"] is not None, "the fleet made a delta 1.0.0 -> 1.1.0 worth shipping")
    delta_bytes, full_bytes = int(rows[0]["size"]), int(new["size"])
    agents = []
    x = eval_inputs(1)
    for a in h.agents:
        st = a.status()
        upd = st["updates"]["models"][MODEL]
        check(
            upd.get("delta") == "used",
            f"{a.device} installed 1.1.0 from the delta (delta: {upd.get('delta')})",
        )
        check(st["models"][MODEL]["sha256"] == new["sha256"], f"{a.device} serves 1.1.0's signed sha256")
        r = httpx.post(f"{a.url}/v2/models/{MODEL}/infer", json=oip_request(x), timeout=10)
        check(r.status_code == 200, f"{a.device} answers after the delta update ({r.status_code})")
        version = r.json()["parameters"]["model_version"]
        check(version == "1.1.0", f"{a.device} answers with 1.1.0 (it says {version})")
        agents.append(
            {"device": a.device, "version": version, "delta": upd["delta"], "sha256": new["sha256"]}
        )
    ratio = delta_bytes / full_bytes
    h.console.print(
        f"  1.0.0 -> 1.1.0 on {len(agents)} agents as a delta: {delta_bytes} B vs {full_bytes} B full"
        f" ({ratio:.3f}x; goal <= {GOAL}x), verified against the signed sha256, delta: used"
    )
    check(ratio <= GOAL, f"the delta is at most {GOAL}x the full artifact ({ratio:.3f}x)")
    return {
        "delta_bytes": delta_bytes,
        "full_bytes": full_bytes,
        "delta_ratio": round(ratio, 4),
        "goal_ratio": GOAL,
        "from": {"version": "1.0.0", "sha256": old["sha256"]},
        "to": {"version": "1.1.0", "sha256": new["sha256"]},
        "agents": agents,
    }

"""`edgekit demo` end to end: the README's main command must really do every step."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(600)


def test_demo_runs_every_step(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit.cli", "demo", "--workdir", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=580,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["steps"]["rollout"]["state"] == "completed"
    assert summary["steps"]["rollout"]["waves"] == 2
    agents = {a["device"]: a for a in summary["agents"]}
    assert len(agents) == 3
    for a in agents.values():
        assert a["state"] == "active" and a["version"] == "1.0.0"
        assert a["artifact"] == "int8-static"  # the edge runs the calibrated int8 model
        assert a["local"] > 0
        assert a["top1"] > 0.9
    assert agents["store-berlin-1"]["fallbacks"].get("low_confidence", 0) >= 1
    assert agents["arm-box-3"]["fallbacks"]["missing_model"] == 5
    # Everything the demo started is gone: no agent, fleet or cloud process outlives it.
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""

"""`import agent` (and the agent's modules) must never pull in tensorflow, torch or coremltools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("tensorflow", "torch", "coremltools", "tf_keras", "jax", "onnx2tf")

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    "stmt",
    [
        "import agent",
        "import agent.cli",
        "import agent.daemon, agent.engine, agent.server, agent.updater, agent.mqtt, agent.serve",
    ],
)
def test_no_heavy_imports(stmt: str) -> None:
    code = (
        f"{stmt}\nimport sys\nprint(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_import_agent_is_tiny() -> None:
    code = "import sys\nbefore=set(sys.modules)\nimport agent, agent.cli\nprint(','.join(sorted(set(sys.modules)-before)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=100)
    mods = set(out.stdout.strip().split(","))
    assert not {"onnxruntime", "numpy", "onnx"} & mods  # CLI registration stays light too

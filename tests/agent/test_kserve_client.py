"""KServe's own REST client (kserve.InferenceRESTClient, protocol v2) against `edgekit serve`:
health, model readiness, inference with JSON and with binary tensors, a 404 for an unknown model."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.agent.support import expected_probs
from tests.support.kserve_client import client_python

pytestmark = pytest.mark.timeout(1500)  # the first run builds the client's venv
PROBE = Path(__file__).with_name("kserve_probe.py")


def test_kserve_rest_client(cloud) -> None:
    x = np.array([[2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0]], np.float32)
    p = subprocess.run(
        [str(client_python()), str(PROBE), cloud.url, "cls", json.dumps(x.tolist())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert (out["live"], out["ready"], out["model_ready"]) == (True, True, True)
    for binary in (False, True):
        r = out[f"binary={binary}"]
        assert (r["name"], r["shape"], r["model"]) == ("probs", [2, 3], "cls")
        np.testing.assert_allclose(np.array(r["data"], np.float32), expected_probs(x), atol=1e-6)
    assert "404" in out["unknown"] and "unknown model" in out["unknown"]

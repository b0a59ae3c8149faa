"""`edgekit serve` as a real process on the trained digits sample, called with tritonclient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.agent.conftest import start_serve

pytestmark = pytest.mark.timeout(60)
SAMPLES = Path(__file__).resolve().parents[2] / "edgekit" / "samples"


@pytest.mark.skipif(not (SAMPLES / "digits_cnn.onnx").exists(), reason="digits sample not present")
def test_edgekit_serve_digits_with_tritonclient() -> None:
    import tritonclient.http as th

    data = np.load(SAMPLES / "digits_eval.npz")
    x, y = data["input"][:64], data["labels"][:64]
    sp = start_serve([SAMPLES / "digits_cnn.onnx"], ["digits"], version="7")
    try:
        client = th.InferenceServerClient(url=f"127.0.0.1:{sp.port}")
        assert client.is_model_ready("digits")
        name = client.get_model_metadata("digits")["outputs"][0]["name"]
        inp = th.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer("digits", [inp], outputs=[th.InferRequestedOutput(name)])
        pred = res.as_numpy(name).argmax(axis=1)
        assert (pred == y).mean() > 0.9
        assert res.get_response()["model_version"] == "7"
        client.close()
    finally:
        sp.stop()

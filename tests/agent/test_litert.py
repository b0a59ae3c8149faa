"""The agent's LiteRT path: `edgekit serve` on .tflite files from a real conversion (fp32 and full int8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters.toolchains.manager import resolve
from tests.agent.conftest import start_serve

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        not resolve("tflite").installed(),
        reason="tflite toolchain not installed: edgekit toolchain install tflite",
    ),
]
SAMPLES = Path(__file__).resolve().parents[2] / "edgekit" / "samples"


@pytest.fixture(scope="module")
def tflite_dir(tmp_path_factory) -> Path:
    from converters.pipeline import convert

    out = tmp_path_factory.mktemp("tflite-conv")
    report = convert("sample:digits", targets=["tflite"], modes=["none", "int8"], out=out)
    assert report.ok, [(a.mode, a.error) for a in report.artifacts]
    return out / "tflite"


@pytest.mark.parametrize("kind", ["float32", "full_integer_quant"])
def test_serve_tflite_with_tritonclient(tflite_dir: Path, kind: str) -> None:
    import tritonclient.http as th

    (path,) = tflite_dir.glob(f"*_{kind}.tflite")
    data = np.load(SAMPLES / "digits_eval.npz")
    x, y = data["input"][:64], data["labels"][:64]
    sp = start_serve([path], ["digits"], version="tfl")
    try:
        client = th.InferenceServerClient(url=f"127.0.0.1:{sp.port}")
        meta = client.get_model_metadata("digits")
        # Named as in the model card next to the file, even where the quantized file renamed them.
        assert [o["name"] for o in meta["outputs"]] == ["logits"]
        assert [i["name"] for i in meta["inputs"]] == ["input"]
        inp = th.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer("digits", [inp], outputs=[th.InferRequestedOutput("logits")])
        assert (res.as_numpy("logits").argmax(axis=1) == y).mean() > 0.9
        client.close()
    finally:
        sp.stop()

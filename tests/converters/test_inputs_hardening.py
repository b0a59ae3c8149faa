"""Issue 10, converter inputs: pickled object arrays in an .npz are a named refusal (and never
unpickled); a model whose weights sit in an external data file next to it converts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.pipeline import convert
from edgekit.errors import DataError, InvalidModelError
from edgekit.launch import run_cli

pytestmark = pytest.mark.timeout(300)


class _TouchOnUnpickle:
    """Unpickling this creates `marker`: proof that a data file was (or was not) unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _pickled(tmp_path: Path) -> tuple[np.ndarray, Path]:
    marker = tmp_path / "unpickled"
    return np.array([_TouchOnUnpickle(marker), None], dtype=object), marker


def test_pickled_input_array_is_a_named_error_and_never_unpickled(tmp_path, digits_cnn):
    arr, marker = _pickled(tmp_path)
    npz = tmp_path / "calib.npz"
    np.savez(npz, input=arr)
    with pytest.raises(DataError, match=r"'input' is a pickled object array"):
        convert(digits_cnn, targets=["onnx"], modes=["int8"], calibration=npz, out=tmp_path / "out")
    assert not marker.exists()


def test_pickled_labels_are_a_named_error_in_the_cli(tmp_path, digits_cnn):
    arr, marker = _pickled(tmp_path)
    npz = tmp_path / "eval.npz"
    np.savez(npz, input=np.zeros((2, 1, 8, 8), np.float32), labels=arr)
    proc = run_cli(
        "convert", str(digits_cnn), "--target", "onnx", "--eval", str(npz), "--out", str(tmp_path / "o")
    )
    assert proc.returncode == 2, proc.stderr
    assert "'labels' is a pickled object array" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not marker.exists()


def _external_model(folder: Path, location: str) -> tuple[Path, np.ndarray]:
    """y = x @ W + b with W, b stored in the external file `location` (relative to the model)."""
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((4, 64)).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / location).parent.mkdir(parents=True)
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location=location, size_threshold=0)
    assert path.stat().st_size < w.nbytes  # the weights really are outside the .onnx
    return path, np.concatenate([w, b[None]])


@pytest.mark.parametrize("location", ["model.onnx.data", "weights/params.bin"])
def test_model_with_external_data_converts_to_onnx(tmp_path, location):
    path, wb = _external_model(tmp_path / "src", location)
    out = tmp_path / "out"
    proc = run_cli(
        "convert", str(path), "--target", "onnx", "-q", "none", "-q", "int8-dynamic", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["ok"] and {a["status"] for a in report["artifacts"]} == {"ok"}
    # The exported fp32 model is self-contained and computes x @ W + b.
    shutil.rmtree(tmp_path / "src")
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 8
    sess = ort.InferenceSession(str(out / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ wb[:4] + wb[4], rtol=1e-5, atol=1e-5)


def test_missing_external_data_is_a_named_error(tmp_path):
    path, _ = _external_model(tmp_path / "src", "model.onnx.data")
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(path, alone / "model.onnx")  # the .onnx without its data file
    with pytest.raises(InvalidModelError, match=r"external data \['model.onnx.data'\]"):
        convert(alone / "model.onnx", targets=["onnx"], out=tmp_path / "out")

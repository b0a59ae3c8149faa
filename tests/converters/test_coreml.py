"""Core ML backend: every mode on two trained digits models, checked statically and by simulation.

Core ML cannot predict on Linux, so parity here is the *simulated* one the backend reports (the
package's own weights, decompressed, run in the torch intermediate, fp16 activations for fp16
programs) against the fp32 onnxruntime reference. Tolerances were set from measured numbers
(see the module constants); palettize4 is the lossy one and gets a looser, stated bound.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converters.backends.base import ExportJob, ExportResult
from converters.backends.coreml import CoreMLBackend
from converters.toolchains import manager
from edgekit.modelcard import ModelCard, TensorSpec

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "edgekit" / "samples"
MODES = ["none", "fp16", "int8-dynamic", "palettize6", "palettize4"]
COMPRESSED = {"int8-dynamic": "int8-linear", "palettize6": "lut-6bit", "palettize4": "lut-4bit"}

# Measured on both models (2 cores, coremltools 9.0): fp32 max abs ~7e-6; fp16 max abs ~6e-4 of
# the largest logit; cosine int8 >= 0.999996, palettize6 >= 0.99995, palettize4 >= 0.9992;
# top-1 drop int8 0, palettize6 0, palettize4 within +-0.3 pt. Bounds below leave headroom.
FP32_MAX_ABS = 1e-4
FP16_MAX_ABS_REL = 2e-3  # of max |reference logit|
MIN_COSINE = {"int8-dynamic": 0.9999, "palettize6": 0.9995, "palettize4": 0.995}
MAX_TOP1_DROP_PTS = {"fp16": 0.5, "int8-dynamic": 1.0, "palettize6": 1.5, "palettize4": 3.0}
# weight.bin bytes relative to the fp32 package's
MAX_SIZE_RATIO = {"fp16": 0.51, "int8-dynamic": 0.30, "palettize6": 0.25, "palettize4": 0.19}


def _installed() -> bool:
    return manager.resolve("coreml").installed()


needs_toolchain = pytest.mark.skipif(
    not _installed(), reason="coreml toolchain not installed: run `edgekit toolchain install coreml`"
)


def digits_card(name: str, size: int = 8) -> ModelCard:
    return ModelCard(
        name,
        inputs=[TensorSpec("input", "float32", ["batch", 1, size, size], "NCHW")],
        outputs=[TensorSpec("logits", "float32", ["batch", 10])],
    )


def run_backend(tmp: Path, onnx_path: Path, card: ModelCard, x: dict[str, np.ndarray], modes: list[str]):
    inputs = tmp / "inputs.npz"
    np.savez(inputs, **x)
    out = tmp / "coreml"
    out.mkdir()
    job = ExportJob("coreml", onnx_path, card, modes, out, inputs, options={"work_dir": str(tmp / "work")})
    return job, CoreMLBackend().export(job)


def reference(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


@pytest.fixture(scope="module", params=["cnn", "mobilenet"])
def exported(request, tmp_path_factory) -> dict[str, Any]:
    """One backend run per model covering every mode, plus the fp32 onnxruntime reference."""
    if not _installed():
        pytest.skip("coreml toolchain not installed: run `edgekit toolchain install coreml`")
    tmp = tmp_path_factory.mktemp(f"coreml-{request.param}")
    if request.param == "cnn":
        onnx_path = SAMPLES / "digits_cnn.onnx"
        ev = np.load(SAMPLES / "digits_eval.npz")
        x, y = ev["input"], ev["labels"]
    else:  # the session's trained MobileNet-style net (tests/converters/conftest.py), 16x16 digits
        mn = request.getfixturevalue("mobilenetish")
        onnx_path = mn["onnx"]
        ev = np.load(mn["eval"])
        x, y = ev["input"], ev["labels"]
    card = digits_card(request.param, size=x.shape[-1])
    job, results = run_backend(tmp, onnx_path, card, {"input": x}, MODES)
    return {
        "job": job,
        "results": {r.mode: r for r in results},
        "ref": reference(onnx_path, x),
        "labels": y,
        "name": request.param,
    }


def _sim(res: ExportResult) -> np.ndarray:
    assert res.simulated_outputs is not None
    return np.load(res.simulated_outputs)["logits"]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def _top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


@needs_toolchain
def test_every_mode_exports_a_package(exported):
    job, results = exported["job"], exported["results"]
    assert list(results) == MODES
    for mode, res in results.items():
        assert res.ok, f"{mode}: {res.error}"
        pkg = res.files[0]
        assert pkg.suffix == ".mlpackage" and pkg.is_dir() and (pkg / "Manifest.json").exists()
        assert pkg.parent == job.out_dir
        # the simulation is evidence for the report, not an artifact: it stays out of DIR/coreml
        assert job.out_dir not in res.simulated_outputs.parents
        assert res.runtime_note.startswith("simulated: Core ML runtime needs macOS")
        assert (
            res.versions["coremltools"] == "9.0" and "torch" in res.versions and "onnx2torch" in res.versions
        )
        assert res.checks["spec_loads"] and res.seconds > 0


@needs_toolchain
def test_spec_io_matches_card(exported):
    for mode, res in exported["results"].items():
        c = res.checks
        assert c["io_matches_card"], (mode, c["io_mismatches"])
        (inp,) = c["spec_inputs"]
        size = exported["job"].card.inputs[0].shape[-1]
        assert inp["name"] == "input" and inp["dtype"] == "float32" and inp["shape"] == [None, 1, size, size]
        assert inp["ranges"][0][0] == 1 and inp["ranges"][0][1] >= 1  # dynamic batch kept
        assert [o["name"] for o in c["spec_outputs"]] == ["logits"]
        assert c["spec_outputs"][0]["dtype"] == "float32"  # fp32 I/O even for fp16 programs


@needs_toolchain
def test_spec_read_independently(exported):
    """Re-read every saved spec in the toolchain interpreter: the checks must describe the files."""
    paths = [str(r.files[0]) for r in exported["results"].values()]
    code = (
        "import json,sys,coremltools as ct\n"
        "out={}\n"
        "for p in json.loads(sys.argv[1]):\n"
        "    s=ct.models.MLModel(p, skip_model_load=True).get_spec()\n"
        "    out[p]=[[f.name for f in s.description.input],[f.name for f in s.description.output],"
        "s.WhichOneof('Type')]\n"
        "print('RESULT'+json.dumps(out))\n"
    )
    tc = manager.require("coreml")
    proc = subprocess.run(
        [str(tc.python), "-c", code, json.dumps(paths)],
        capture_output=True,
        text=True,
        env=manager.worker_env(tc.root),
        timeout=300,
    )
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    for p, (ins, outs, kind) in json.loads(line[len("RESULT") :]).items():
        assert (ins, outs, kind) == (["input"], ["logits"], "mlProgram"), p


@needs_toolchain
def test_compute_precision_and_weight_storage(exported):
    results = exported["results"]
    fp32 = results["none"].checks
    assert "float16" not in fp32["compute_dtypes"] and set(fp32["weights"]["storage"]) == {"float32"}
    for mode in ("fp16", *COMPRESSED):
        c = results[mode].checks
        # fp16 compute: every compute op but the final cast to the fp32 output yields fp16
        assert c["compute_dtypes"].get("float16", 0) > c["compute_dtypes"].get("float32", 0), mode
        assert "float32" not in c["weights"]["storage"], mode
    for mode, storage in COMPRESSED.items():
        w = results[mode].checks["weights"]
        assert w["storage"].get(storage, 0) >= 2, (mode, w["storage"])
        assert set(w["storage"]) <= {storage, "float16"}, (mode, w["storage"])
        # only tensors up to coremltools' 2048-element threshold (biases, tiny convs) stay fp16
        assert w["compressed_fraction"] >= 0.85, (mode, w["compressed_fraction"])
        big = [t for t in w["tensors"] if t["elements"] > w["weight_threshold"]]
        assert big and all(t["storage"] == storage for t in big), mode
        assert (
            results[mode]
            .checks["mil_ops"]
            .get("constexpr_affine_dequantize" if storage.startswith("int") else "constexpr_lut_to_dense", 0)
            == w["storage"][storage]
        )


@needs_toolchain
def test_file_size_ratios(exported):
    results = exported["results"]
    base = results["none"].checks["weight_bytes"]
    ratios = {m: results[m].checks["weight_bytes"] / base for m in MAX_SIZE_RATIO}
    for mode, bound in MAX_SIZE_RATIO.items():
        assert ratios[mode] <= bound, (exported["name"], ratios)
    assert ratios["palettize4"] < ratios["palettize6"] < ratios["int8-dynamic"] < ratios["fp16"]


@needs_toolchain
def test_simulated_parity_fp32_and_fp16(exported):
    ref, results = exported["ref"], exported["results"]
    assert np.abs(_sim(results["none"]) - ref).max() <= FP32_MAX_ABS
    assert results["none"].checks["simulation"]["activations"] == "fp32"
    fp16 = results["fp16"]
    assert np.abs(_sim(fp16) - ref).max() <= FP16_MAX_ABS_REL * np.abs(ref).max()
    assert fp16.checks["simulation"]["activations"] == "fp16"  # torch CPU ran it in half precision


@needs_toolchain
@pytest.mark.parametrize("mode", ["fp16", "int8-dynamic", "palettize6", "palettize4"])
def test_simulated_accuracy(exported, mode):
    ref, y, res = exported["ref"], exported["labels"], exported["results"][mode]
    got = _sim(res)
    sim = res.checks["simulation"]
    assert sim["weights_loaded"] >= 4 and sim["unmapped_weights"] == []
    drop = (_top1(ref, y) - _top1(got, y)) * 100
    assert drop <= MAX_TOP1_DROP_PTS[mode], f"{exported['name']} {mode}: top-1 drop {drop:.2f} pt"
    if mode in MIN_COSINE:
        assert _cosine(got, ref) >= MIN_COSINE[mode]
        # the compressed weights really reached the simulation: outputs differ from plain fp16
        assert not np.array_equal(got, _sim(exported["results"]["fp16"]))


def _graph_with(node: onnx.NodeProto, inputs, outputs, extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph([node], "g", inputs, outputs)
    opsets = [helper.make_opsetid("", 17), *extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def _nms_model(path: Path) -> ModelCard:
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["selected"], name="nms_0")
    model = _graph_with(
        node,
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 8, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 8]),
        ],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
    )
    onnx.save(model, path)
    return ModelCard(
        "nms",
        inputs=[TensorSpec("boxes", "float32", [1, 8, 4]), TensorSpec("scores", "float32", [1, 1, 8])],
        outputs=[TensorSpec("selected", "int64", [None, 3])],
    )


@needs_toolchain
def test_unsupported_op_names_op_node_and_target(tmp_path):
    card = _nms_model(tmp_path / "nms.onnx")
    x = {"boxes": np.zeros((1, 8, 4), np.float32), "scores": np.zeros((1, 1, 8), np.float32)}
    _, results = run_backend(tmp_path, tmp_path / "nms.onnx", card, x, ["none", "fp16"])
    assert [r.mode for r in results] == ["none", "fp16"]
    for r in results:
        assert not r.ok and r.error_kind == "unsupported_op"
        assert "NonMaxSuppression" in r.error and "nms_0" in r.error and "coreml" in r.error
        assert r.checks["op"] == "NonMaxSuppression" and r.checks["node"] == "nms_0"
        assert r.checks["target"] == "coreml"


@needs_toolchain
def test_unknown_domain_op_is_unsupported(tmp_path):
    node = helper.make_node("Mystery", ["input"], ["logits"], name="mystery_1", domain="com.example")
    model = _graph_with(
        node,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        extra_opsets=[helper.make_opsetid("com.example", 1)],
    )
    onnx.save(model, tmp_path / "mystery.onnx")
    x = {"input": np.zeros((2, 1, 8, 8), np.float32)}
    _, results = run_backend(tmp_path, tmp_path / "mystery.onnx", digits_card("mystery"), x, ["fp16"])
    (r,) = results
    assert r.error_kind == "unsupported_op"
    assert "Mystery" in r.error and "mystery_1" in r.error and r.error.startswith("coreml:")


def test_missing_toolchain_names_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_TOOLCHAINS", str(tmp_path / "no-toolchains"))
    x = {"input": np.zeros((2, 1, 8, 8), np.float32)}
    _, results = run_backend(
        tmp_path, SAMPLES / "digits_cnn.onnx", digits_card("digits"), x, ["none", "fp16"]
    )
    for r in results:
        assert not r.ok and r.error_kind == "toolchain_missing"
        assert "edgekit toolchain install coreml" in r.error


@needs_toolchain
def test_spec_card_mismatch_fails_the_artifact(tmp_path):
    """A card naming the output differently from the ONNX graph: the spec check fails the artifact."""
    card = digits_card("liar")
    card.outputs[0].name = "probs"
    x = {"input": np.zeros((2, 1, 8, 8), np.float32)}
    _, results = run_backend(tmp_path, SAMPLES / "digits_cnn.onnx", card, x, ["none"])
    (r,) = results
    assert not r.ok and r.error_kind == "spec_mismatch"
    assert "output names ['logits'] != card ['probs']" in r.error


@needs_toolchain
def test_unsupported_attribute_names_the_node(tmp_path):
    """onnx2torch has a Pad converter but raises for mode="wrap": still op, node and target."""
    pads = helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 1, 1, 0, 0, 1, 1])
    node = helper.make_node("Pad", ["input", "pads"], ["logits"], name="wrap_pad", mode="wrap")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 10, 10])],
        initializer=[pads],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), tmp_path / "pad.onnx")
    card = ModelCard(
        "pad",
        inputs=[TensorSpec("input", "float32", ["batch", 1, 8, 8])],
        outputs=[TensorSpec("logits", "float32", ["batch", 1, 10, 10])],
    )
    _, results = run_backend(
        tmp_path, tmp_path / "pad.onnx", card, {"input": np.zeros((2, 1, 8, 8), np.float32)}, ["none"]
    )
    (r,) = results
    assert r.error_kind == "unsupported_op", r.error
    assert "Pad" in r.error and "wrap_pad" in r.error and "coreml" in r.error and "wrap" in r.error

"""TFLite backend: real onnx2tf conversions run in LiteRT, compared to onnxruntime fp32.

Bounds were measured first (numbers in the comments, digits CNN / MobileNetish) and set with a
margin; quantized modes are judged by cosine and top-1 on the digits eval set, not max abs (int8
logits step by the output scale). Re-measure: `.venv/bin/pytest tests/converters/test_tflite.py -s`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters.backends.base import ExportJob, ExportResult
from edgekit.modelcard import ModelCard, TensorSpec

ALL_MODES = ["none", "fp16", "int8-dynamic", "int8"]

# max abs error on logits vs onnxruntime fp32 (measured: fp32 1.3e-5, fp16 7e-3 on logits up to ~30)
FP32_MAX_ABS = 1e-4
FP16_MAX_REL = 2e-3  # max abs / max |ref|; fp16 weights keep ~3 significant digits
INT8_MIN_COSINE = 0.99  # measured >= 0.9996 (digits), see -s output
MAX_TOP1_DROP_PT = 1.0


def require_toolchain():
    from converters.toolchains.manager import resolve

    tc = resolve("tflite")
    if not tc.installed():
        pytest.skip("tensorflow toolchain not installed: run `edgekit toolchain install tflite`")
    return tc


def card_for(onnx_path: Path, name: str) -> ModelCard:
    import onnx

    m = onnx.load(str(onnx_path))
    init = {i.name for i in m.graph.initializer}

    def spec(vi) -> TensorSpec:
        dims = [
            d.dim_value if d.dim_value > 0 else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim
        ]
        return TensorSpec(vi.name, "float32", dims)

    return ModelCard(
        name=name,
        inputs=[spec(v) for v in m.graph.input if v.name not in init],
        outputs=[spec(v) for v in m.graph.output],
    )


def export(
    backend,
    target: str,
    onnx_path: Path,
    modes: list[str],
    out: Path,
    inputs_npz: Path,
    calib: Path | None,
    work_dir: Path,
    **options,
) -> dict[str, ExportResult]:
    job = ExportJob(
        target,
        onnx_path,
        card_for(onnx_path, onnx_path.stem),
        modes,
        out / target,
        inputs_npz,
        calib,
        options={"work_dir": str(work_dir), **options},
    )
    job.out_dir.mkdir(parents=True, exist_ok=True)
    return {r.mode: r for r in backend.export(job)}


def reference(onnx_path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def metrics(out: np.ndarray, ref: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
    m = {
        "max_abs": float(np.abs(out - ref).max()),
        "max_rel": float(np.abs(out - ref).max() / np.abs(ref).max()),
        "cos_min": float(cos.min()),
    }
    if labels is not None:
        m["top1"] = float((out.argmax(1) == labels).mean())
        m["top1_drop_pt"] = 100 * (float((ref.argmax(1) == labels).mean()) - m["top1"])
    return m


def check_mode(mode: str, m: dict[str, float]) -> None:
    print(f"  {mode:13s} " + " ".join(f"{k}={v:.3g}" for k, v in m.items()))
    if mode == "none":
        assert m["max_abs"] <= FP32_MAX_ABS, m
    elif mode == "fp16":
        assert m["max_rel"] <= FP16_MAX_REL, m
    else:
        assert m["cos_min"] >= INT8_MIN_COSINE, m
    if "top1_drop_pt" in m:
        assert m["top1_drop_pt"] <= MAX_TOP1_DROP_PT, m


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits_cnn, digits_npz):
    require_toolchain()
    from converters.backends.tflite import TFLiteBackend

    calib, ev = digits_npz
    d = tmp_path_factory.mktemp("tflite-digits")
    return export(TFLiteBackend(), "tflite", digits_cnn, ALL_MODES, d, ev, calib, d / "work")


@pytest.fixture(scope="module")
def mobilenetish_run(tmp_path_factory, mobilenetish):
    require_toolchain()
    from converters.backends.tflite import TFLiteBackend

    d = tmp_path_factory.mktemp("tflite-mnish")
    m = mobilenetish
    return export(TFLiteBackend(), "tflite", m["onnx"], ALL_MODES, d, m["eval"], m["calib"], d / "work")


def _parity(results: dict[str, ExportResult], onnx_path: Path, eval_npz: Path) -> None:
    from targets.runtimes.litert import LiteRTRuntime

    data = np.load(eval_npz)
    feeds = {"input": data["input"]}
    ref = reference(onnx_path, feeds)
    for mode in ALL_MODES:
        r = results[mode]
        assert r.ok, f"{mode}: {r.error}"
        assert r.files[0].suffix == ".tflite" and r.files[0].is_relative_to(r.files[0].parent)
        rt = LiteRTRuntime(r.files[0], output_names=r.output_names)
        out = rt.run(feeds)["logits"]
        check_mode(mode, metrics(out, ref, data["labels"]))


def test_digits_all_modes_parity(digits_run, digits_cnn, digits_npz):
    _parity(digits_run, digits_cnn, digits_npz[1])


def test_mobilenetish_all_modes_parity(mobilenetish_run, mobilenetish):
    _parity(mobilenetish_run, mobilenetish["onnx"], mobilenetish["eval"])


def test_int8_file_has_int8_io_and_versions(digits_run):
    from ai_edge_litert.interpreter import Interpreter

    r = digits_run["int8"]
    it = Interpreter(model_path=str(r.files[0]))
    assert it.get_input_details()[0]["dtype"] == np.int8
    assert it.get_output_details()[0]["dtype"] == np.int8
    assert r.output_names == ["logits"]  # the file itself says output_0 / PartitionedCall
    assert r.versions["onnx2tf"] == "1.29.24"
    # NCHW kept by default: the .tflite takes the ONNX input shape
    assert list(it.get_input_details()[0]["shape"][1:]) == [1, 8, 8]
    # the whole run was one onnx2tf call, split over the four modes
    assert len({round(x.seconds, 6) for x in digits_run.values()}) == 1


def test_nhwc_layout_option(tmp_path, digits_cnn, digits_npz):
    require_toolchain()
    from ai_edge_litert.interpreter import Interpreter

    from converters.backends.tflite import TFLiteBackend
    from targets.runtimes.litert import LiteRTRuntime

    ev = digits_npz[1]
    res = export(
        TFLiteBackend(), "tflite", digits_cnn, ["none"], tmp_path, ev, None, tmp_path / "w", layout="nhwc"
    )
    r = res["none"]
    assert r.ok, r.error
    assert list(Interpreter(model_path=str(r.files[0])).get_input_details()[0]["shape"][1:]) == [8, 8, 1]
    x = np.load(ev)["input"][:16]
    out = LiteRTRuntime(r.files[0], output_names=r.output_names).run({"input": np.moveaxis(x, 1, -1)})[
        "logits"
    ]
    assert np.abs(out - reference(digits_cnn, {"input": x})).max() <= FP32_MAX_ABS


def castlike_model(path: Path) -> Path:
    """CastLike is a standard ONNX op (opset 15+) that onnxruntime runs and onnx2tf 1.29 lacks."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    like = numpy_helper.from_array(np.zeros((1,), np.float16), "like")
    nodes = [
        helper.make_node("Relu", ["input"], ["r"], name="relu0"),
        helper.make_node("CastLike", ["r", "like"], ["h"], name="cast_like_to_half"),
        helper.make_node("Cast", ["h"], ["out"], to=TensorProto.FLOAT, name="back"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        [like],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def test_unsupported_op_names_op_node_and_target(tmp_path):
    require_toolchain()
    from converters.backends.tflite import TFLiteBackend

    m = castlike_model(tmp_path / "castlike.onnx")
    np.savez(tmp_path / "x.npz", input=np.ones((2, 4), np.float32))
    res = export(
        TFLiteBackend(),
        "tflite",
        m,
        ["none", "int8-dynamic"],
        tmp_path,
        tmp_path / "x.npz",
        None,
        tmp_path / "w",
    )
    for r in res.values():
        assert not r.ok and r.error_kind == "unsupported_op"
        assert "tflite" in r.error and "CastLike" in r.error and "cast_like_to_half" in r.error, r.error


def test_unsupported_op_caught_inside_onnx2tf_too(tmp_path):
    """Without the pre-check, onnx2tf's own failure (it sys.exits/raises) still becomes a named error."""
    require_toolchain()
    from converters.toolchains.manager import run_worker

    m = castlike_model(tmp_path / "castlike.onnx")
    reply = run_worker(
        "tensorflow",
        "onnx2tf_worker.py",
        {
            "model": str(m),
            "out_dir": str(tmp_path / "o"),
            "precisions": ["float32"],
            "precheck": False,
        },
    ).data
    assert reply["ok"] is False
    assert reply["error"]["kind"] == "unsupported_op"
    assert (reply["error"]["op"], reply["error"]["node"]) == ("CastLike", "cast_like_to_half")
    assert m.read_bytes() == castlike_model(tmp_path / "again.onnx").read_bytes()  # input left untouched

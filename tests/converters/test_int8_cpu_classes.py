"""Static int8 gives the same numbers on every x86 CPU class, measured on ONNX Runtime's real kernels.

The host here has AVX-512 VNNI; the AVX2-without-VNNI class (a store PC, an AMD EPYC before Zen 4),
whose U8S8 kernels saturate, runs under QEMU user-mode emulation (converters/quantize/cpu_classes.py)
so ONNX Runtime dispatches its AVX2 code path for real. scripts/system-deps.sh installs QEMU.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.pipeline import convert
from converters.quantize.cpu_classes import CPU_CLASSES, run, unavailable
from converters.validate import top1

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"emulated CPU classes: {unavailable()}")

HOST, AVX2, AVX = CPU_CLASSES["host"], CPU_CLASSES["avx2"], CPU_CLASSES["avx"]
K = 64  # reduction length of the probe: 32 VPMADDUBSW pairs


def _probe(path, weight: int, dtype=np.int8):
    """MatMulInteger uint8 x `dtype`, every value at the extreme: 2 x 255 x weight per int16 pair sum."""
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, K])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, 8])],
        [numpy_helper.from_array(np.full((K, 8), weight, dtype), "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_emulated_class_runs_the_saturating_avx2_kernel(tmp_path):
    """Without this, 'same result under emulation' could just mean QEMU ran the host's kernels."""
    a = {"a": np.full((4, K), 255, np.uint8)}
    jobs = [
        (_probe(tmp_path / "w127.onnx", 127), a),
        (_probe(tmp_path / "w64.onnx", 64), a),
        (_probe(tmp_path / "u8.onnx", 255, np.uint8), a),
    ]
    emu = run(AVX2, jobs)
    assert emu.mismatched_features() == [], emu.features
    saturated, bound, u8u8 = (o["y"] for o in emu.outputs)
    # VPMADDUBSW: each pair 255*127 + 255*127 = 64770 clamps to 32767, then 32 pairs are summed exactly.
    assert (saturated == 32767 * (K // 2)).all(), saturated[0, 0]
    # The weight bound INT8_STATIC guarantees (reduce_range: |w| <= 64): 2 x 255 x 64 = 32640, exact.
    assert (bound == 255 * 64 * K).all(), bound[0, 0]
    # uint8 x uint8 (a MatMul of two QUInt8 activations) runs a kernel that widens to int16 first.
    assert (u8u8 == 255 * 255 * K).all(), u8u8[0, 0]
    host = run(HOST, jobs)
    if host.features.get("AVX512VNNI"):  # a VNNI host accumulates in int32 and never saturates
        assert (host.outputs[0]["y"] == 255 * 127 * K).all()


def _int8_weights_beyond(model_path, bound: int) -> list[str]:
    """Names of int8 weight initializers with values beyond +-bound."""
    m = onnx.load(str(model_path))
    return [
        t.name
        for t in m.graph.initializer
        if t.data_type == TensorProto.INT8 and np.abs(numpy_helper.to_array(t).astype(np.int32)).max() > bound
    ]


@pytest.mark.parametrize(
    "model,max_drop",
    [("digits", 0.5), ("mobilenetish", 1.0)],  # the bounds of test_onnx_target.py for the same models
)
def test_int8_static_same_accuracy_on_every_cpu_class(model, max_drop, request, tmp_path):
    if model == "digits":
        src, (calib, ev) = request.getfixturevalue("digits_cnn"), request.getfixturevalue("digits_npz")
    else:
        m = request.getfixturevalue("mobilenetish")
        src, calib, ev = m["onnx"], m["calib"], m["eval"]
    report = convert(
        src, targets=["onnx"], modes=["none", "int8"], out=tmp_path, calibration=calib, eval_data=ev
    )
    assert report.ok, [(a.mode, a.status, a.error) for a in report.artifacts]
    rows = {a.mode: a for a in report.artifacts}
    fp32_path, int8_path = (tmp_path / rows[mode].main_file for mode in ("none", "int8"))

    data = np.load(ev)
    feeds, labels = {"input": data["input"]}, data["labels"]
    jobs = [(fp32_path, feeds), (int8_path, feeds)]
    runs = {c.name: run(c, jobs) for c in (HOST, AVX2, AVX)}
    for name, r in runs.items():
        assert r.mismatched_features() == [], (name, r.features)
        fp32, int8 = r.outputs
        drop = 100 * (top1(fp32, labels) - top1(int8, labels))
        assert drop <= max_drop, (name, drop)
        # The gate measured where edgekit converted is the accuracy on the device, to the sample.
        assert drop == pytest.approx(rows["int8"].top1_drop_pts, abs=1e-3), name
        a, b = fp32["logits"].ravel(), int8["logits"].ravel()
        # Measured >= 0.9997 on every class; the old U8S8 8-bit weights gave 0.982-0.998 on AVX2.
        assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.999, name
        # Integer kernels without saturation agree bit for bit; fp32 ops around them may round
        # differently across instruction sets, hence a small tolerance (old setting: 3.3-4.8 apart).
        np.testing.assert_allclose(int8["logits"], runs["host"].outputs[1]["logits"], rtol=0, atol=1e-4)
    # The reason it is exact everywhere, AVX-512 without VNNI included (which QEMU cannot emulate).
    assert _int8_weights_beyond(int8_path, 64) == []

"""Keras source: keras.applications.MobileNetV2(weights=None) -> ONNX (tf2onnx) -> TFLite, in LiteRT.

Random weights with BatchNorm statistics re-estimated (see keras_worker), so logits are O(1).
Measured: fp32 max abs 1.9e-5 vs onnxruntime; full int8 cosine and argmax agreement printed with -s.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.test_tflite import export, metrics, reference, require_toolchain

SHAPE = (64, 64, 3)


@pytest.fixture(scope="module")
def mnv2_onnx(tmp_path_factory):
    require_toolchain()
    from converters.keras_source import keras_to_onnx, make_mobilenetv2
    from converters.optimize import optimize

    d = tmp_path_factory.mktemp("keras")
    keras_file = make_mobilenetv2(d / "mnv2.keras", input_shape=SHAPE, classes=10)
    raw = keras_to_onnx(keras_file, d / "raw.onnx")
    optimize(raw, d / "mnv2.onnx")  # what the pipeline does before any backend
    rng = np.random.default_rng(1)
    np.savez(d / "eval.npz", input_layer=rng.uniform(-1, 1, (32, *SHAPE)).astype(np.float32))
    np.savez(d / "calib.npz", input_layer=rng.uniform(-1, 1, (64, *SHAPE)).astype(np.float32))
    return d


def test_keras_to_onnx_io(mnv2_onnx):
    import onnx

    m = onnx.load(str(mnv2_onnx / "raw.onnx"))
    assert [i.name for i in m.graph.input] == ["input_layer"]
    assert [o.name for o in m.graph.output] == ["predictions"]
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == list(SHAPE)  # NHWC, as the Keras model takes it
    x = np.load(mnv2_onnx / "eval.npz")["input_layer"]
    assert np.abs(reference(mnv2_onnx / "raw.onnx", {"input_layer": x})).max() > 0.1  # not vanished


@pytest.fixture(scope="module")
def mnv2_tflite(mnv2_onnx):
    from converters.backends.tflite import TFLiteBackend

    d = mnv2_onnx
    return export(
        TFLiteBackend(),
        "tflite",
        d / "mnv2.onnx",
        ["none", "int8"],
        d,
        d / "eval.npz",
        d / "calib.npz",
        d / "work",
    )


def test_mobilenetv2_tflite_fp32_parity(mnv2_onnx, mnv2_tflite):
    _check(mnv2_onnx, mnv2_tflite, "none")


@pytest.mark.xfail(
    strict=True,
    reason="known issue: full-int8 MobileNetV2 (random weights, BN re-estimated) "
    "measured cosine 0.61 / argmax agreement 0.66 vs onnxruntime; cause not yet found",
)
def test_mobilenetv2_tflite_int8_parity(mnv2_onnx, mnv2_tflite):
    _check(mnv2_onnx, mnv2_tflite, "int8")


def _check(d, res, mode):
    from targets.runtimes.litert import LiteRTRuntime

    x = np.load(d / "eval.npz")["input_layer"]
    ref = reference(d / "mnv2.onnx", {"input_layer": x})
    if True:  # one mode per test
        r = res[mode]
        assert r.ok, f"{mode}: {r.error}"
        out = LiteRTRuntime(r.files[0], output_names=r.output_names).run({"input_layer": x})["predictions"]
        m = metrics(out, ref)
        m["argmax_agree"] = float((out.argmax(1) == ref.argmax(1)).mean())
        print(f"  mobilenetv2 {mode}: " + " ".join(f"{k}={v:.3g}" for k, v in m.items()))
        if mode == "none":
            assert m["max_abs"] <= 1e-4, m
        else:
            assert m["cos_min"] >= 0.95, m


def test_bad_keras_paths_are_clear_errors(tmp_path):
    require_toolchain()
    from converters.keras_source import keras_to_onnx
    from edgekit.errors import InvalidModelError

    with pytest.raises(InvalidModelError):
        keras_to_onnx(tmp_path / "missing.keras", tmp_path / "x.onnx")
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(InvalidModelError):
        keras_to_onnx(tmp_path / "bad.keras", tmp_path / "x.onnx")

"""Keras source: keras.applications.MobileNetV2(weights=None) -> ONNX (tf2onnx) -> TFLite, in LiteRT.

The model is trained for 3 epochs on scikit-learn's digits (upscaled to 64x64x3, [-1, 1]; ~70 s on
2 CPUs) before conversion. A random-weight MobileNetV2 (BatchNorm re-estimated on noise) is no
int8 test: it is chaotic. Measured on one (onnxruntime fp32 alone): input noise of std 0.01 gave
cosine 0.66 / argmax agreement 0.69, int8 per-channel weights alone cosine 0.81 / 0.75, while
logits of *unrelated* inputs have mean cosine 0.49. Its full int8 (cosine 0.61 / argmax 0.66) was
no worse than onnxruntime's own static QDQ int8 on the same ONNX and calibration (0.63 / 0.63).
Trained, onnx2tf full int8 matches onnxruntime's static int8 (cosine mean 0.995 both).
Measured here: fp32 max abs 3.1e-5; int8 numbers below and printed with -s.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.test_tflite import export, metrics, reference, require_toolchain

SHAPE = (64, 64, 3)
# Full int8 vs onnxruntime fp32 on the 360 held-out digits. Measured (3-epoch model, fp32 top-1
# 0.931): cosine mean 0.995, min 0.944, argmax agreement 0.986, top-1 drop 0.6 pt.
INT8_MIN_COS_MEAN = 0.98
INT8_MIN_COS = 0.8
INT8_MIN_ARGMAX_AGREE = 0.93
INT8_MAX_TOP1_DROP_PT = 2.0


def _digits_nhwc():
    from tests.converters.models import digits_data

    x_tr, x_te, y_tr, y_te = digits_data(size=SHAPE[0])  # train_test_split order; NCHW, [0, 1]

    def rgb(x):
        return np.ascontiguousarray(np.repeat(x.transpose(0, 2, 3, 1), 3, axis=3) * 2 - 1, dtype=np.float32)

    return rgb(x_tr), y_tr, rgb(x_te), y_te


@pytest.fixture(scope="module")
def mnv2_onnx(tmp_path_factory):
    require_toolchain()
    from converters.keras_source import keras_to_onnx, make_mobilenetv2
    from converters.optimize import optimize

    d = tmp_path_factory.mktemp("keras")
    x_tr, y_tr, x_te, y_te = _digits_nhwc()
    np.savez(d / "train.npz", x=x_tr, y=y_tr)
    keras_file = make_mobilenetv2(d / "mnv2.keras", input_shape=SHAPE, classes=10, train_npz=d / "train.npz")
    raw = keras_to_onnx(keras_file, d / "raw.onnx")
    optimize(raw, d / "mnv2.onnx")  # what the pipeline does before any backend
    np.savez(d / "eval.npz", input_layer=x_te, labels=y_te)
    np.savez(d / "calib.npz", input_layer=x_tr[:200])
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


def test_mobilenetv2_tflite_int8_parity(mnv2_onnx, mnv2_tflite):
    _check(mnv2_onnx, mnv2_tflite, "int8")


def _check(d, res, mode):
    from targets.runtimes.litert import LiteRTRuntime

    ev = np.load(d / "eval.npz")
    x, labels = ev["input_layer"], ev["labels"]
    ref = reference(d / "mnv2.onnx", {"input_layer": x})
    r = res[mode]
    assert r.ok, f"{mode}: {r.error}"
    out = LiteRTRuntime(r.files[0], output_names=r.output_names).run({"input_layer": x})["predictions"]
    m = metrics(out, ref, labels)
    cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
    m["cos_mean"] = float(cos.mean())
    m["argmax_agree"] = float((out.argmax(1) == ref.argmax(1)).mean())
    print(f"  mobilenetv2 {mode}: " + " ".join(f"{k}={v:.3g}" for k, v in m.items()))
    assert (ref.argmax(1) == labels).mean() >= 0.7, "the trained fixture did not learn the digits"
    if mode == "none":
        assert m["max_abs"] <= 1e-4, m
    else:
        assert m["cos_mean"] >= INT8_MIN_COS_MEAN, m
        assert m["cos_min"] >= INT8_MIN_COS, m
        assert m["argmax_agree"] >= INT8_MIN_ARGMAX_AGREE, m
        assert m["top1_drop_pt"] <= INT8_MAX_TOP1_DROP_PT, m


def test_bad_keras_paths_are_clear_errors(tmp_path):
    require_toolchain()
    from converters.keras_source import keras_to_onnx
    from edgekit.errors import InvalidModelError

    with pytest.raises(InvalidModelError):
        keras_to_onnx(tmp_path / "missing.keras", tmp_path / "x.onnx")
    (tmp_path / "bad.keras").write_bytes(b"not a zip")
    with pytest.raises(InvalidModelError):
        keras_to_onnx(tmp_path / "bad.keras", tmp_path / "x.onnx")

"""TF.js backend: SavedModel from onnx2tf -> tensorflowjs graph models, run with @tensorflow/tfjs in Node.

Measured on the digits CNN (logits up to ~30): fp32 max abs 7.6e-6, float16 weights 7e-3,
uint8 weights 0.19 (cosine 0.99998, same top-1). Re-measure: `pytest tests/converters/test_tfjs.py -s`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.converters.test_tflite import check_mode, export, metrics, reference, require_toolchain

MODES = ["none", "fp16", "int8-dynamic"]


@pytest.fixture(scope="module")
def tfjs_run(tmp_path_factory, digits_cnn, digits_npz):
    require_toolchain()
    from converters.backends.tfjs import TfjsBackend

    d = tmp_path_factory.mktemp("tfjs-digits")
    # small shards so the sharding path is exercised on a 150 KB model
    return export(
        TfjsBackend(), "tfjs", digits_cnn, MODES, d, digits_npz[1], None, d / "work", shard_bytes=65536
    )


def test_tfjs_modes_parity_in_node(tfjs_run, digits_cnn, digits_npz):
    from converters.toolchains.manager import require
    from targets.runtimes.tfjs_node import TfjsNodeRuntime

    data = np.load(digits_npz[1])
    feeds = {"input": data["input"]}
    ref = reference(digits_cnn, feeds)
    for mode in MODES:
        r = tfjs_run[mode]
        assert r.ok, f"{mode}: {r.error}"
        # the pipeline constructs it exactly like this (no output_names): model.json carries ONNX names
        with TfjsNodeRuntime(r.files[0], require("tfjs").node_modules) as rt:
            assert [o.name for o in rt.outputs] == ["logits"]
            assert rt.versions()["tfjs-backend"] == "cpu"
            out = rt.run(feeds)["logits"]
            one = rt.run({"input": data["input"][:1]})["logits"]  # batch is really dynamic
        assert one.shape == (1, 10)
        check_mode(mode, metrics(out, ref, data["labels"]))


def test_tfjs_weights_quantized_and_sharded(tfjs_run):
    dtypes = {}
    for mode in MODES:
        r = tfjs_run[mode]
        manifest = json.loads(r.files[0].read_text())
        assert r.files[0].name == "model.json" and manifest["format"] == "graph-model"
        shards = [p for g in manifest["weightsManifest"] for p in g["paths"]]
        assert [f.name for f in r.files[1:]] == shards and all(f.stat().st_size <= 65536 for f in r.files[1:])
        dtypes[mode] = {
            w.get("quantization", {}).get("dtype")
            for g in manifest["weightsManifest"]
            for w in g["weights"]
            if w["dtype"] == "float32"
        }
    assert dtypes["none"] == {None}
    assert "float16" in dtypes["fp16"] and "uint8" in dtypes["int8-dynamic"]
    sizes = {m: sum(f.stat().st_size for f in tfjs_run[m].files[1:]) for m in MODES}
    assert sizes["fp16"] < 0.6 * sizes["none"] and sizes["int8-dynamic"] < 0.35 * sizes["none"]


def test_tflite_then_tfjs_runs_onnx2tf_once(tmp_path, digits_cnn, digits_npz):
    require_toolchain()
    from converters.backends.tfjs import TfjsBackend
    from converters.backends.tflite import TFLiteBackend

    calib, ev = digits_npz
    work = tmp_path / "work"
    export(TFLiteBackend(), "tflite", digits_cnn, ["none", "int8"], tmp_path, ev, calib, work)
    manifest = next((work / "onnx2tf").glob("*/manifest.json"))
    stamp = manifest.stat().st_mtime_ns
    res = export(TfjsBackend(), "tfjs", digits_cnn, ["none"], tmp_path, ev, None, work)
    assert res["none"].ok, res["none"].error
    assert manifest.stat().st_mtime_ns == stamp  # served from the cache, no second onnx2tf run


def test_tfjs_unsupported_op_names_target(tmp_path):
    require_toolchain()
    from converters.backends.tfjs import TfjsBackend
    from tests.converters.test_tflite import castlike_model

    m = castlike_model(tmp_path / "castlike.onnx")
    np.savez(tmp_path / "x.npz", input=np.ones((2, 4), np.float32))
    r = export(TfjsBackend(), "tfjs", m, ["none"], tmp_path, tmp_path / "x.npz", None, tmp_path / "w")["none"]
    assert r.error_kind == "unsupported_op"
    assert "tfjs" in r.error and "CastLike" in r.error and "cast_like_to_half" in r.error

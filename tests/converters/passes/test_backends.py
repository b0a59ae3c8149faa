"""Legalized models through the real converters: what the passes are for.

Without the passes these models do not convert (measured on ONNX's node tests through the same
workers): onnx2tf lowers Acos/Asin/Acosh/Asinh/Atanh to Flex ops LiteRT cannot
run, and onnx2torch has no converter for Mish, Celu, GroupNormalization, Atanh or GlobalMaxPool
(Clip with computed bounds needs the coreml worker to map torch.less to torch.lt first).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from converters.legalize import legalize
from tests.converters.passes.helpers import model, op_types, run, tensor

rng = np.random.default_rng(0)


def _trig_model() -> onnx.ModelProto:
    """Five Flex-only ops on one input, concatenated: x in (-1, 1)."""
    nodes = [
        helper.make_node("Acos", ["x"], ["a"]),
        helper.make_node("Asin", ["x"], ["b"]),
        helper.make_node("Mul", ["x", "k99"], ["x99"]),
        helper.make_node("Atanh", ["x99"], ["c"]),
        helper.make_node("Mul", ["x", "k50"], ["x50"]),
        helper.make_node("Asinh", ["x50"], ["d"]),
        helper.make_node("Abs", ["x50"], ["ax"]),
        helper.make_node("Add", ["ax", "one"], ["ax1"]),
        helper.make_node("Acosh", ["ax1"], ["e"]),
        helper.make_node("Concat", ["a", "b", "c", "d", "e"], ["y"], axis=1),
    ]
    consts = {"k99": np.float32(0.99), "k50": np.float32(50.0), "one": np.float32(1.0)}
    return model(nodes, [tensor("x", np.float32, [1, 64])], [tensor("y", np.float32, [1, 320])], consts)


@pytest.mark.toolchain("tensorflow")
def test_flex_only_trig_ops_convert_to_tflite_builtins(tmp_path: Path) -> None:
    from tests.converters.test_tflite import require_toolchain

    require_toolchain()
    from converters.backends.tflite import TFLiteBackend
    from targets.runtimes.litert import LiteRTRuntime
    from tests.converters.test_tflite import export

    src, legal = tmp_path / "trig.onnx", tmp_path / "trig-tflite.onnx"
    onnx.save(_trig_model(), src)
    applied = legalize(src, legal, "tflite")
    assert {
        "decompose-Acos",
        "decompose-Asin",
        "decompose-Atanh",
        "decompose-Asinh",
        "decompose-Acosh",
    } <= set(applied)
    x = rng.uniform(-1, 1, (1, 64)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x[None])
    res = export(
        TFLiteBackend(),
        "tflite",
        legal,
        ["none"],
        tmp_path / "out",
        tmp_path / "eval.npz",
        None,
        tmp_path / "w",
    )
    r = res["none"]
    assert r.ok, r.error
    got = LiteRTRuntime(r.files[0], output_names=r.output_names).run({"x": x})["y"]
    want = run(_trig_model(), {"x": x})[0]
    # fp32 on both sides; LiteRT's Log/Sqrt/Div kernels differ from onnxruntime's by a few ulp
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


def _coreml_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Mish", ["x"], ["m"]),
        helper.make_node("Celu", ["m"], ["c"], alpha=0.5),
        helper.make_node("GroupNormalization", ["c", "s", "b"], ["g"], num_groups=2),
        helper.make_node("Tanh", ["g"], ["t"]),
        helper.make_node("Mul", ["t", "k"], ["tk"]),
        helper.make_node("Atanh", ["tk"], ["a"]),
        helper.make_node("GlobalMaxPool", ["a"], ["y"]),
    ]
    consts = {
        "s": rng.uniform(0.5, 1.5, 4).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
        "k": np.float32(0.9),
    }
    return model(
        nodes,
        [tensor("x", np.float32, [1, 4, 6, 6])],
        [tensor("y", np.float32, [1, 4, 1, 1])],
        consts,
        opset=21,
    )


@pytest.mark.toolchain("coreml")
def test_ops_onnx2torch_lacks_convert_to_core_ml(tmp_path: Path) -> None:
    from tests.converters.test_coreml import _installed, run_backend

    if not _installed():
        pytest.skip("coreml toolchain not installed: run `edgekit toolchain install coreml`")
    from edgekit.modelcard import ModelCard, TensorSpec

    src, legal = tmp_path / "m.onnx", tmp_path / "m-coreml.onnx"
    original = _coreml_model()
    onnx.save(original, src)
    applied = legalize(src, legal, "coreml")
    assert {
        "expand-Mish",
        "expand-Celu",
        "expand-GroupNormalization",
        "decompose-Atanh",
        "globalmaxpool-to-reducemax",
    } <= set(applied), applied
    assert not op_types(onnx.load(legal)) & {"Mish", "Celu", "GroupNormalization", "Atanh", "GlobalMaxPool"}
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32) * 2
    card = ModelCard(
        "m",
        inputs=[TensorSpec("x", "float32", [1, 4, 6, 6])],
        outputs=[TensorSpec("y", "float32", [1, 4, 1, 1])],
    )
    _, results = run_backend(tmp_path, legal, card, {"x": x[None]}, ["none"])
    r = results[0]
    assert r.ok, r.error
    got = np.load(r.simulated_outputs)["y"][0]  # simulated: the torch intermediate Core ML was built from
    np.testing.assert_allclose(got, run(original, {"x": x})[0], rtol=1e-5, atol=1e-5)

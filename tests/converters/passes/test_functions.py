"""expand-<Op>: nodes replaced by their ONNX function bodies compute what onnxruntime's kernels do."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from converters.legalize import downgrade_opset
from converters.passes import REGISTRY
from converters.passes.functions import expand_newer_than
from tests.converters.passes.helpers import legalize_and_compare, model, op_types, run, tensor, unary

rng = np.random.default_rng(0)
X = rng.standard_normal((2, 4, 3, 5)).astype(np.float32) * 3


def _norm_model(op: str, opset: int, c: int = 4, **attrs) -> onnx.ModelProto:
    scale = rng.uniform(0.5, 1.5, c).astype(np.float32)
    bias = rng.standard_normal(c).astype(np.float32)
    if op == "LayerNormalization":
        scale, bias = rng.uniform(0.5, 1.5, 5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    return model(
        [helper.make_node(op, ["x", "s", "b"], ["y"], **attrs)],
        [tensor("x", np.float32, list(X.shape))],
        [tensor("y", np.float32, list(X.shape))],
        {"s": scale, "b": bias},
        opset=opset,
    )


# (model, feeds) per op: activations over a range that crosses their kinks, normalizations with
# real statistics, reductions over an axis, CastLike/Range with the inputs their bodies need
CASES = {
    "Gelu": lambda: (unary("Gelu", shape=X.shape, opset=20), {"x": X}),
    "Gelu-tanh": lambda: (unary("Gelu", shape=X.shape, opset=20, approximate="tanh"), {"x": X}),
    "Mish": lambda: (unary("Mish", shape=X.shape, opset=18), {"x": X}),
    "HardSwish": lambda: (unary("HardSwish", shape=X.shape), {"x": X}),
    "Softsign": lambda: (unary("Softsign", shape=X.shape), {"x": X}),
    "Celu": lambda: (unary("Celu", shape=X.shape, alpha=1.5), {"x": X}),
    "Selu": lambda: (unary("Selu", shape=X.shape), {"x": X}),
    "ThresholdedRelu": lambda: (unary("ThresholdedRelu", shape=X.shape, alpha=0.5), {"x": X}),
    "LayerNormalization": lambda: (_norm_model("LayerNormalization", 17, axis=-1, epsilon=1e-3), {"x": X}),
    "GroupNormalization": lambda: (_norm_model("GroupNormalization", 21, num_groups=2), {"x": X}),
    "MeanVarianceNormalization": lambda: (
        unary("MeanVarianceNormalization", shape=X.shape, axes=[0, 2, 3]),
        {"x": X},
    ),
    "ReduceLogSumExp": lambda: (
        model(
            [helper.make_node("ReduceLogSumExp", ["x", "axes"], ["y"], keepdims=0)],
            [tensor("x", np.float32, list(X.shape))],
            [tensor("y", np.float32, [2, 3, 5])],
            {"axes": np.int64([1])},
            opset=18,  # ONNX gives this op a function body from opset 18 on
        ),
        {"x": X},
    ),
    "CastLike": lambda: (
        model(
            [helper.make_node("CastLike", ["x", "like"], ["y"])],
            [tensor("x", np.float32, [6]), tensor("like", np.int32, [1])],
            [tensor("y", np.int32, [6])],
        ),
        {"x": np.float32([-2.7, -0.5, 0, 0.5, 3.9, 100.2]), "like": np.int32([0])},
    ),
    "Range": lambda: (
        model(
            [helper.make_node("Range", ["a", "b", "d"], ["y"])],
            [tensor("a", np.float32, []), tensor("b", np.float32, []), tensor("d", np.float32, [])],
            [tensor("y", np.float32, [None])],
        ),
        {"a": np.array(1.5, np.float32), "b": np.array(9.0, np.float32), "d": np.array(0.75, np.float32)},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_expansion_matches_onnxruntime(case: str) -> None:
    op = case.split("-")[0]
    m, feeds = CASES[case]()
    legalize_and_compare(m, f"expand-{op}", feeds, rtol=1e-5, atol=1e-5, gone=[op])


def test_only_the_named_op_is_expanded() -> None:
    m = model(
        [helper.make_node("Mish", ["x"], ["h"]), helper.make_node("Softsign", ["h"], ["y"])],
        [tensor("x", np.float32, [8])],
        [tensor("y", np.float32, [8])],
        opset=18,
    )
    assert REGISTRY["expand-Mish"].apply(m)
    assert "Mish" not in op_types(m) and "Softsign" in op_types(m)
    assert not REGISTRY["expand-Gelu"].apply(m)
    assert [o.domain for o in m.opset_import] == [""] and not m.functions  # no scaffolding left


def test_ops_newer_than_the_backend_are_expanded_before_version_conversion() -> None:
    """Swish (opset 24) inside a SwiGLU-like block at opset 24: the version converter alone cannot
    go below the opset that introduced Swish; with the expansion the whole model reaches 17."""
    m = model(
        [helper.make_node("Swish", ["x"], ["s"], alpha=1.0), helper.make_node("Mul", ["s", "x"], ["y"])],
        [tensor("x", np.float32, [16])],
        [tensor("y", np.float32, [16])],
        opset=24,
    )
    x = rng.standard_normal(16).astype(np.float32) * 4
    want = run(m, {"x": x})
    done = downgrade_opset(m, 17)
    assert done[0] == "expand-Swish" and done[-1] == "opset-24-to-17", done
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version == 17 and "Swish" not in op_types(m)
    np.testing.assert_allclose(run(m, {"x": x})[0], want[0], rtol=1e-6, atol=1e-6)
    assert expand_newer_than(m, 17) == []  # nothing left to do

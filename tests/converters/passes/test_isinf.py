"""decompose-IsInf: the same booleans as onnxruntime's IsInf, for each side it may detect."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.converters.passes.helpers import legalize_and_compare, model, tensor

X = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 3e38, -3e38, 1e-45], np.float32)


@pytest.mark.parametrize("neg,pos", [(1, 1), (1, 0), (0, 1), (0, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_onnxruntime(neg: int, pos: int, dtype) -> None:
    m = model(
        [helper.make_node("IsInf", ["x"], ["y"], detect_negative=neg, detect_positive=pos)],
        [tensor("x", dtype, [len(X)])],
        [tensor("y", np.bool_, [len(X)])],
    )
    _, (got,) = legalize_and_compare(
        m, "decompose-IsInf", {"x": X.astype(dtype)}, rtol=0, atol=0, gone=["IsInf"]
    )
    assert got.sum() == (neg + pos)  # each detected side exactly once in X


def test_integer_inputs_are_left_alone() -> None:
    from converters.passes import REGISTRY

    m = model(
        [helper.make_node("IsInf", ["x"], ["y"])],
        [tensor("x", np.float32, [3])],
        [tensor("y", np.bool_, [3])],
    )
    m.graph.input[0].type.tensor_type.elem_type = 6  # int32: IsInf is not defined for it; no match
    assert not REGISTRY["decompose-IsInf"].apply(m)

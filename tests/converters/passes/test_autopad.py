"""explicit-pads: SAME_UPPER / SAME_LOWER turned into pads compute exactly what onnxruntime's
auto_pad does, for odd and even sizes, kernels and strides."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import helper

from converters.passes import REGISTRY
from tests.converters.passes.helpers import legalize_and_compare, model, tensor

rng = np.random.default_rng(0)
OPS = ["Conv", "ConvTranspose", "MaxPool", "AveragePool"]
GRID = list(itertools.product(OPS, ["SAME_UPPER", "SAME_LOWER"], [7, 8], [2, 3], [1, 2]))


def _model(op: str, mode: str, size: int, k: int, s: int, shape=None):
    x_shape = shape or [1, 2, size, size + 1]
    attrs = {"auto_pad": mode, "strides": [s, s]}
    inits, ins = {}, ["x"]
    if op.startswith("Conv"):
        inits["w"] = rng.standard_normal((2, 2, k, k)).astype(np.float32)
        ins.append("w")
    else:
        attrs["kernel_shape"] = [k, k]
    return model(
        [helper.make_node(op, ins, ["y"], **attrs)],
        [tensor("x", np.float32, x_shape)],
        [tensor("y", np.float32, [1, 2, None, None])],
        inits,
    )


@pytest.mark.parametrize(("op", "mode", "size", "k", "s"), GRID)
def test_explicit_pads_match_auto_pad(op: str, mode: str, size: int, k: int, s: int) -> None:
    x = rng.standard_normal((1, 2, size, size + 1)).astype(np.float32)
    out, _ = legalize_and_compare(
        _model(op, mode, size, k, s), "explicit-pads", {"x": x}, rtol=1e-6, atol=1e-6
    )
    node = out.graph.node[0]
    assert {a.name for a in node.attribute} >= {"pads"} and "auto_pad" not in {a.name for a in node.attribute}


def test_dynamic_spatial_dims_are_left_alone() -> None:
    m = _model("Conv", "SAME_UPPER", 7, 3, 2, shape=[1, 2, "h", "w"])
    assert not REGISTRY["explicit-pads"].apply(m)

"""widen-narrow-ints: narrow-int Max/Min/Mod and bool ReduceMax/ReduceMin computed in int32 give
exactly onnxruntime's answer on the original node, over each type's whole range."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from converters.passes import REGISTRY
from tests.converters.passes.helpers import legalize_and_compare, model, tensor


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_minmax_over_the_whole_range(op: str, dtype) -> None:
    info = np.iinfo(dtype)
    a = np.array([info.min, info.min, -1 if info.min < 0 else 0, 0, 1, info.max, info.max], dtype)
    b = np.array([info.max, info.min, 0, 0, 2, info.min, 7], dtype)
    m = model(
        [helper.make_node(op, ["a", "b"], ["y"])],
        [tensor("a", dtype, [7]), tensor("b", dtype, [7])],
        [tensor("y", dtype, [7])],
    )
    out, _ = legalize_and_compare(m, "widen-narrow-ints", {"a": a, "b": b}, rtol=0, atol=0, gone=[])
    assert {n.op_type for n in out.graph.node} == {"Cast", op}


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_mod_keeps_the_divisors_sign(dtype) -> None:
    a = (
        np.array([7, -7, 7, -7, 0, 127], dtype)
        if dtype == np.int8
        else np.array([7, 250, 3, 0, 255, 9], dtype)
    )
    b = np.array([3, 3, -3, -3, 5, 2], dtype) if dtype == np.int8 else np.array([3, 7, 250, 5, 16, 9], dtype)
    m = model(
        [helper.make_node("Mod", ["a", "b"], ["y"])],
        [tensor("a", dtype, [6]), tensor("b", dtype, [6])],
        [tensor("y", dtype, [6])],
    )
    legalize_and_compare(m, "widen-narrow-ints", {"a": a, "b": b}, rtol=0, atol=0, gone=[])


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_bool_reductions(op: str, keepdims: int) -> None:
    x = np.array([[True, False, True], [False, False, False], [True, True, True]])
    m = model(
        [helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)],
        [tensor("x", np.bool_, [3, 3])],
        [tensor("y", np.bool_, [3, 1] if keepdims else [3])],
        initializers={"axes": np.array([1], np.int64)},
        opset=20,  # bool reductions exist from opset 20
    )
    legalize_and_compare(m, "widen-narrow-ints", {"x": x}, rtol=0, atol=0, gone=[])


def test_wide_types_are_left_alone() -> None:
    m = model(
        [helper.make_node("Max", ["a", "b"], ["y"])],
        [tensor("a", np.int32, [2]), tensor("b", np.int32, [2])],
        [tensor("y", np.int32, [2])],
    )
    assert not REGISTRY["widen-narrow-ints"].apply(m)

"""Piecewise activations, position masks, Max/Min selections and passthrough outputs: each pass
computes exactly what onnxruntime computes on the original node (NaN, inf and -0.0 included)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.converters.passes.helpers import legalize_and_compare, model, tensor, unary

SPECIAL = np.array([-3, -1, -0.5, -0.0, 0, 0.2, 0.5, 0.7, 1, 2, np.nan, np.inf, -np.inf], np.float32)


@pytest.mark.parametrize(
    "op,attrs",
    [
        ("Selu", {}),
        ("Selu", {"alpha": 2.0, "gamma": 3.0}),  # ONNX's node test: onnx2torch takes only torch's constants
        ("ThresholdedRelu", {}),
        ("ThresholdedRelu", {"alpha": 0.6}),
        ("Shrink", {}),
        ("Shrink", {"bias": 1.5, "lambd": 0.6}),
        ("Softsign", {}),
    ],
)
def test_activations(op: str, attrs: dict) -> None:
    m = unary(op, shape=(len(SPECIAL),), **attrs)
    legalize_and_compare(m, f"decompose-{op}", {"x": SPECIAL}, rtol=1e-6, atol=1e-6, gone=[op])


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_minmax_broadcasting_nan_propagating(op: str, n: int) -> None:
    shapes = [[2, 5], [5], [2, 1], [1, 5]][:n]
    rng = np.random.default_rng(n)
    feeds = {f"x{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}
    feeds["x0"][0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    feeds["x1"][2] = np.nan  # NaN from a later input propagates too
    m = model(
        [helper.make_node(op, list(feeds), ["y"])],
        [tensor(k, np.float32, s) for k, s in zip(feeds, shapes, strict=True)],
        [tensor("y", np.float32, [2, 5])],
    )
    legalize_and_compare(m, "minmax-to-where", feeds, rtol=0, atol=0, gone=[op])


def test_minmax_integers() -> None:
    m = model(
        [helper.make_node("Max", ["a", "b"], ["y"])],
        [tensor("a", np.int64, [3]), tensor("b", np.int64, [3])],
        [tensor("y", np.int64, [3])],
    )
    feeds = {"a": np.array([1, 5, -2]), "b": np.array([3, 4, -2])}
    legalize_and_compare(m, "minmax-to-where", feeds, rtol=0, atol=0, gone=["Max"])


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_hardmax_first_maximum_wins(axis: int) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    x[0, 0, :2] = x[0, :2, 0] = x[:2, 0, 0] = 5.0  # ties along every axis
    m = model(
        [helper.make_node("Hardmax", ["x"], ["y"], axis=axis)],
        [tensor("x", np.float32, [2, 3, 4])],
        [tensor("y", np.float32, [2, 3, 4])],
    )
    legalize_and_compare(m, "decompose-Hardmax", {"x": x}, rtol=0, atol=0, gone=["Hardmax"])


def test_hardmax_before_opset_13_is_left_alone() -> None:
    from converters.passes import REGISTRY

    m = model(
        [helper.make_node("Hardmax", ["x"], ["y"])],
        [tensor("x", np.float32, [2, 3])],
        [tensor("y", np.float32, [2, 3])],
        opset=11,
    )
    assert not REGISTRY["decompose-Hardmax"].apply(m)  # opset 11 coerces to 2-D: another op


# index dtype, depth dtype: the combinations onnxruntime implements
@pytest.mark.parametrize("idt,ddt", [(np.int64, np.int64), (np.float32, np.float32), (np.int32, np.float32)])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_onehot_negative_and_out_of_range_indices(idt, ddt, axis: int) -> None:
    idx = np.array([[1, -1, 7], [0, 2, -4]], idt)  # -1 counts from the end; 7 matches nothing
    shape = [2, 3]
    shape.insert(axis if axis >= 0 else len(shape) + 1 + axis, 4)
    m = model(
        [helper.make_node("OneHot", ["i", "d", "v"], ["y"], axis=axis)],
        [tensor("i", idt, [2, 3])],
        [tensor("y", np.float32, shape)],
        initializers={"d": np.array(4, ddt), "v": np.array([-2.0, 3.0], np.float32)},
    )
    legalize_and_compare(m, "decompose-OneHot", {"i": idx}, rtol=0, atol=0, gone=["OneHot"])


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, -1, 0, 2, 9])
def test_trilu(upper: int, k: int | None) -> None:
    x = np.random.default_rng(1).standard_normal((2, 4, 5)).astype(np.float32)
    x[0, 0, 0], x[1, 3, 0] = np.nan, np.inf
    m = model(
        [helper.make_node("Trilu", ["x"] + (["k"] if k is not None else []), ["y"], upper=upper)],
        [tensor("x", np.float32, [2, 4, 5])],
        [tensor("y", np.float32, [2, 4, 5])],
        initializers={"k": np.array(k, np.int64)} if k is not None else None,
    )
    legalize_and_compare(m, "trilu-to-where", {"x": x}, rtol=0, atol=0, gone=["Trilu"])


@pytest.mark.parametrize(
    "op,dtype",
    [("Identity", np.float32), ("Identity", np.int64), ("Identity", np.bool_), ("Dropout", np.float32)],
)  # Dropout is defined for floats only
def test_passthrough_outputs_become_new_tensors(op: str, dtype) -> None:
    m = unary(op, dtype=dtype, shape=(len(SPECIAL),))
    x = SPECIAL.astype(dtype) if dtype != np.float32 else SPECIAL
    _, (got,) = legalize_and_compare(
        m, "materialize-passthrough-outputs", {"x": x}, rtol=0, atol=0, gone=[op]
    )
    assert np.array_equal(np.signbit(got), np.signbit(x)) if dtype == np.float32 else True  # -0.0 kept


def test_dropout_with_a_mask_output_is_left_alone() -> None:
    from converters.passes import REGISTRY

    m = model(
        [helper.make_node("Dropout", ["x"], ["y", "mask"])],
        [tensor("x", np.float32, [3])],
        [tensor("y", np.float32, [3]), tensor("mask", np.bool_, [3])],
    )
    assert not REGISTRY["materialize-passthrough-outputs"].apply(m)


@pytest.mark.parametrize("axis", [0, 1, 3, -1])
def test_flatten_to_reshape(axis: int) -> None:
    x = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)
    rows = int(np.prod(x.shape[: axis % 4]))
    m = model(
        [helper.make_node("Flatten", ["x"], ["y"], axis=axis)],
        [tensor("x", np.float32, [2, 3, 4, 5])],
        [tensor("y", np.float32, [rows, 120 // rows])],
    )
    _, (got,) = legalize_and_compare(m, "flatten-to-reshape", {"x": x}, rtol=0, atol=0, gone=["Flatten"])
    assert got.shape == (rows, 120 // rows)

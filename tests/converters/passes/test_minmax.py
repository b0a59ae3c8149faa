"""clip-dynamic-bounds and globalmaxpool-to-reducemax against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from converters.passes import REGISTRY
from tests.converters.passes.helpers import legalize_and_compare, model, tensor

rng = np.random.default_rng(0)
X = np.concatenate([rng.standard_normal(200) * 3, [np.nan, np.inf, -np.inf, 0.0]]).astype(np.float32)


@pytest.mark.parametrize(
    ("inputs", "lo", "hi"),
    [
        (["x", "lo", "hi"], -1.0, 2.0),
        (["x", "lo", "hi"], 2.0, -1.0),  # min > max: the spec says every value becomes max
        (["x", "", "hi"], None, 0.5),
        (["x", "lo"], -0.25, None),
        (["x", "lo", ""], -0.25, None),
    ],
)
def test_dynamic_clip_becomes_selections(inputs: list[str], lo: float | None, hi: float | None) -> None:
    bounds = [tensor(n, np.float32, []) for n in inputs[1:] if n]
    m = model(
        [helper.make_node("Clip", inputs, ["y"])],
        [tensor("x", np.float32, [X.size]), *bounds],
        [tensor("y", np.float32, [X.size])],
    )
    feeds = {"x": X}
    if lo is not None:
        feeds["lo"] = np.array(lo, np.float32)
    if hi is not None:
        feeds["hi"] = np.array(hi, np.float32)
    # exact: the selections compute the same comparisons Clip does
    legalize_and_compare(m, "clip-dynamic-bounds", feeds, rtol=0, atol=0, gone=["Clip"])


def test_constant_clip_bounds_are_left_alone() -> None:
    m = model(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
        [tensor("x", np.float32, [4])],
        [tensor("y", np.float32, [4])],
        {"lo": np.float32(0), "hi": np.float32(6)},
    )
    assert not REGISTRY["clip-dynamic-bounds"].apply(m)


@pytest.mark.parametrize(
    ("shape", "opset"), [((2, 3, 5, 7), 17), ((2, 3, 5, 7), 18), ((1, 4, 9), 18), ((1, 2, 3, 4, 5), 13)]
)
def test_globalmaxpool_becomes_reducemax(shape: tuple[int, ...], opset: int) -> None:
    x = rng.standard_normal(shape).astype(np.float32)
    out = [shape[0], shape[1]] + [1] * (len(shape) - 2)
    m = model(
        [helper.make_node("GlobalMaxPool", ["x"], ["y"])],
        [tensor("x", np.float32, list(shape))],
        [tensor("y", np.float32, out)],
        opset=opset,
    )
    legalize_and_compare(m, "globalmaxpool-to-reducemax", {"x": x}, rtol=0, atol=0, gone=["GlobalMaxPool"])


def test_globalmaxpool_of_unknown_rank_is_left_alone() -> None:
    m = model(
        [helper.make_node("GlobalMaxPool", ["x"], ["y"])],
        [tensor("x", np.float32, None)],
        [tensor("y", np.float32, None)],
        check=False,
    )
    assert not REGISTRY["globalmaxpool-to-reducemax"].apply(m)


def test_two_input_sum_becomes_add() -> None:
    a, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    m = model(
        [helper.make_node("Sum", ["a", "b"], ["y"])],
        [tensor("a", np.float32, [3, 4]), tensor("b", np.float32, [4])],
        [tensor("y", np.float32, [3, 4])],
    )
    legalize_and_compare(m, "sum-to-add", {"a": a, "b": b}, rtol=0, atol=0, gone=["Sum"])

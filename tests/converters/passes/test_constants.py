"""fold-constants: constant subgraphs become initializers, an If on a constant takes its branch,
and what the model computes does not change."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from converters.passes import REGISTRY
from tests.converters.passes.helpers import legalize_and_compare, model, op_types, tensor

rng = np.random.default_rng(0)


def test_constant_parameters_are_folded_into_initializers() -> None:
    """Clip bounds and Pad pads computed by Constant/Cast/Shape nodes become plain initializers
    (backends read parameters from initializers; onnx2torch refuses computed Clip bounds)."""
    nodes = [
        helper.make_node(
            "Constant", [], ["lo64"], value=helper.make_tensor("v", TensorProto.DOUBLE, [], [-0.5])
        ),
        helper.make_node("CastLike", ["lo64", "x"], ["lo"]),
        helper.make_node("Constant", [], ["hi"], value_float=0.75),
        helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
        helper.make_node("Shape", ["x"], ["shape"]),  # static: folds to [2, 3, 4]
        helper.make_node("Sub", ["shape", "three"], ["pads_half"]),
        helper.make_node("Concat", ["pads_half", "pads_half"], ["pads"], axis=0),
        helper.make_node("Abs", ["pads"], ["pads_pos"]),
        helper.make_node("Pad", ["c", "pads_pos"], ["y"], mode="constant"),
    ]
    m = model(
        nodes,
        [tensor("x", np.float32, [2, 3, 4])],
        [tensor("y", np.float32, [4, 3, 6])],
        {"three": np.int64([3, 3, 3])},
    )
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    out, _ = legalize_and_compare(
        m,
        "fold-constants",
        {"x": x},
        rtol=0,
        atol=0,
        gone=["Constant", "CastLike", "Shape", "Concat", "Sub", "Abs"],
    )
    assert [n.op_type for n in out.graph.node] == ["Clip", "Pad"]
    inits = {i.name for i in out.graph.initializer}
    assert set(out.graph.node[0].input[1:]) <= inits and out.graph.node[1].input[1] in inits


def test_if_on_a_constant_condition_keeps_the_taken_branch() -> None:
    """Core ML's converter has no If; with a constant condition there is nothing to decide."""
    then = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [5])],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [5])],
    )
    cond = helper.make_node(
        "Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [False])
    )
    m = model(
        [cond, helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
        [tensor("x", np.float32, [5])],
        [tensor("y", np.float32, [5])],
    )
    out, _ = legalize_and_compare(
        m, "fold-constants", {"x": rng.standard_normal(5).astype(np.float32)}, rtol=0, atol=0, gone=["If"]
    )
    assert op_types(out) == {"Neg"}


def test_a_model_whose_output_would_become_constant_is_left_alone() -> None:
    """Shape of a static input is a constant, but a graph with no computation left gives
    TorchScript nothing to trace (measured: Core ML then fails where it converted before)."""
    m = model(
        [helper.make_node("Shape", ["x"], ["y"])],
        [tensor("x", np.float32, [2, 3])],
        [tensor("y", np.int64, [2])],
    )
    assert not REGISTRY["fold-constants"].apply(m)
    assert op_types(m) == {"Shape"}


def test_nothing_to_fold_is_no_change() -> None:
    m = model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [tensor("x", np.float32, [3])],
        [tensor("y", np.float32, [3])],
    )
    before = m.SerializeToString()
    assert not REGISTRY["fold-constants"].apply(m)
    assert m.SerializeToString() == before
    onnx.checker.check_model(m)

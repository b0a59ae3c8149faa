"""Tiny ONNX models with fixed weights, so tests control outputs and confidence exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def classifier(path: Path, scale: float = 1.0, bias: float = 0.0, fixed_batch: int | None = None) -> Path:
    """input "input" float32 [N,4] -> probs float32 [N,3] = softmax(scale * x[:, :3] + bias).

    x=[10,0,0,0] is confidently class 0; x=0 gives 1/3 each (low confidence). `bias` changes the
    outputs so two versions are distinguishable. With `fixed_batch`, a Reshape to that batch
    makes any other batch fail *inside* the runtime (a real local error, not a validation error).
    """
    w = np.zeros((4, 3), np.float32)
    w[0, 0] = w[1, 1] = w[2, 2] = scale
    b = np.array([bias, 0.0, 0.0], np.float32)
    nodes = [helper.make_node("Gemm", ["input", "W", "B"], ["logits"])]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    src = "logits"
    if fixed_batch:
        inits.append(numpy_helper.from_array(np.array([fixed_batch, 3], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["logits", "shape"], ["logits_r"]))
        src = "logits_r"
    nodes.append(helper.make_node("Softmax", [src], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    return _save(graph, path)


def slow_classifier(path: Path, size: int = 768) -> Path:
    """Same outputs as classifier(), plus an input-dependent size^3 MatMul (milliseconds of work)
    whose result is multiplied by 0: slow enough to miss a 1 ms local deadline, never folded."""
    w = np.zeros((4, 3), np.float32)
    w[0, 0] = w[1, 1] = w[2, 2] = 1.0
    big = np.full((size, size), 1e-6, np.float32)
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.zeros(3, np.float32), "B"),
        numpy_helper.from_array(big, "BIG"),
        numpy_helper.from_array(np.array([size, size], np.int64), "BIGSHAPE"),
        numpy_helper.from_array(np.array(0.0, np.float32), "ZERO"),
    ]
    nodes = [
        helper.make_node("ReduceSum", ["input"], ["s"], keepdims=0),
        helper.make_node("Expand", ["s", "BIGSHAPE"], ["e"]),
        helper.make_node("MatMul", ["e", "BIG"], ["m1"]),
        helper.make_node("MatMul", ["m1", "BIG"], ["m2"]),
        helper.make_node("ReduceSum", ["m2"], ["r"], keepdims=0),
        helper.make_node("Mul", ["r", "ZERO"], ["z"]),
        helper.make_node("Gemm", ["input", "W", "B"], ["logits"]),
        helper.make_node("Add", ["logits", "z"], ["logits2"]),
        helper.make_node("Softmax", ["logits2"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "slow_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    return _save(graph, path)


CONFIDENT = np.array([[10.0, 0.0, 0.0, 0.0]], np.float32)
UNSURE = np.zeros((1, 4), np.float32)

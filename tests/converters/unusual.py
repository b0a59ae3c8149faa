"""Small ONNX models shaped like real exports, not like the sample: no batch axis, fixed batches,
dynamic non-batch dims, integer/bool inputs, state inputs, exporter names with `.` and `::`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper, numpy_helper

RNG = np.random.default_rng(0)


def vi(name: str, dtype: int, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def weight(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    return numpy_helper.from_array(
        np.random.default_rng(seed).standard_normal(shape).astype(np.float32), name
    )


def save(path: Path, nodes, inputs, outputs, inits=(), opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=list(inits))
    # IR 9: what torch and tf2onnx write; the newest onnx would stamp IR versions older runtimes refuse
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def no_batch_axis(d: Path) -> Path:
    """x: float[3,4,5], a one-op model without any batch axis."""
    return save(
        d / "nobatch.onnx",
        [helper.make_node("Tanh", ["x"], ["y"])],
        [vi("x", T.FLOAT, [3, 4, 5])],
        [vi("y", T.FLOAT, [3, 4, 5])],
    )


def exporter_names(d: Path) -> Path:
    """`input.1` -> MatMul -> `403` -> Relu -> `out::y`, names as torch and TF exporters write them."""
    nodes = [
        helper.make_node("MatMul", ["input.1", "w"], ["403"], name="/fc/MatMul"),
        helper.make_node("Relu", ["403"], ["out::y"], name="/act/Relu"),
    ]
    return save(
        d / "names.onnx",
        nodes,
        [vi("input.1", T.FLOAT, ["batch", 8])],
        [vi("out::y", T.FLOAT, ["batch", 4])],
        [weight("w", (8, 4))],
    )


def dynamic_width(d: Path) -> Path:
    """x: float[N,3,8,W] -> conv -> mean over H: y [N,4,W] (an OCR-style sequence of columns)."""
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["c"], ["y"], axes=[2], keepdims=0),
    ]
    return save(
        d / "dynw.onnx",
        nodes,
        [vi("x", T.FLOAT, ["N", 3, 8, "W"])],
        [vi("y", T.FLOAT, ["N", 4, "W"])],
        [weight("wc", (4, 3, 3, 3), 1)],
    )


def token_ids(d: Path) -> Path:
    """ids: int64[b, 5] index a 50-row embedding table (so valid ids are 0..49)."""
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"], axis=0),
        helper.make_node("ReduceMean", ["e"], ["y"], axes=[1], keepdims=0),
    ]
    return save(
        d / "ids.onnx",
        nodes,
        [vi("ids", T.INT64, ["b", 5])],
        [vi("y", T.FLOAT, ["b", 6])],
        [weight("emb", (50, 6), 2)],
    )


def lengths(d: Path) -> Path:
    """An int64 input the graph says nothing about (a length added to features)."""
    nodes = [helper.make_node("Cast", ["n"], ["nf"], to=T.FLOAT), helper.make_node("Add", ["x", "nf"], ["y"])]
    return save(
        d / "lengths.onnx",
        nodes,
        [vi("x", T.FLOAT, ["b", 4]), vi("n", T.INT64, ["b", 1])],
        [vi("y", T.FLOAT, ["b", 4])],
    )


def fixed_batch(d: Path, batch: int) -> Path:
    """A conv net exported with a static batch (what most exporters write without dynamic_axes)."""
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["y"]),
    ]
    return save(
        d / f"batch{batch}.onnx",
        nodes,
        [vi("x", T.FLOAT, [batch, 3, 8, 8])],
        [vi("y", T.FLOAT, [batch, 4])],
        [weight("wc", (4, 3, 3, 3), 3)],
    )


def state_inputs(d: Path) -> Path:
    """A recurrent step: x [4] and state [2,1,4] (no batch axis) -> y, new_state."""
    nodes = [
        helper.make_node("Reshape", ["x", "shape"], ["xr"]),
        helper.make_node("Add", ["state", "xr"], ["s2"]),
        helper.make_node("Tanh", ["s2"], ["new_state"]),
        helper.make_node("ReduceSum", ["new_state", "axes"], ["y"], keepdims=0),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 1, 4], np.int64), "shape"),
        numpy_helper.from_array(np.array([0, 1], np.int64), "axes"),
    ]
    return save(
        d / "state.onnx",
        nodes,
        [vi("x", T.FLOAT, [4]), vi("state", T.FLOAT, [2, 1, 4])],
        [vi("y", T.FLOAT, [4]), vi("new_state", T.FLOAT, [2, 1, 4])],
        inits,
    )


def bool_mask(d: Path) -> Path:
    nodes = [helper.make_node("Where", ["m", "x", "zero"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    return save(
        d / "mask.onnx",
        nodes,
        [vi("x", T.FLOAT, ["b", 6]), vi("m", T.BOOL, ["b", 6])],
        [vi("y", T.FLOAT, ["b", 6])],
        inits,
    )


def no_inputs(d: Path) -> Path:
    nodes = [
        helper.make_node(
            "Constant", [], ["y"], value=numpy_helper.from_array(np.arange(6, dtype=np.float32), "c")
        )
    ]
    return save(d / "const.onnx", nodes, [], [vi("y", T.FLOAT, [6])])


def custom_op(d: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")],
        "custom",
        [vi("x", T.FLOAT, [1, 4])],
        [vi("y", T.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
        ir_version=9,
    )
    onnx.save(model, str(d / "custom.onnx"))
    return d / "custom.onnx"


def scalar_input(d: Path) -> Path:
    """A 0-d input (a temperature, a threshold): each sample is a scalar."""
    nodes = [helper.make_node("Mul", ["x", "t"], ["y"])]
    return save(
        d / "scalar.onnx", nodes, [vi("x", T.FLOAT, [3]), vi("t", T.FLOAT, [])], [vi("y", T.FLOAT, [3])]
    )


def parameter_inputs(d: Path) -> Path:
    """Conv weights and Reduce axes exported as graph inputs (what ONNX's node tests do)."""
    return save(
        d / "params.onnx",
        [
            helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("ReduceMean", ["c", "axes"], ["y"], keepdims=0),
        ],
        [vi("x", T.FLOAT, ["N", 1, 6, 6]), vi("W", T.FLOAT, [2, 1, 3, 3]), vi("axes", T.INT64, [2])],
        [vi("y", T.FLOAT, ["N", 2])],
        opset=18,
    )


def reshape_by_input(d: Path) -> Path:
    """Reshape whose target shape is a graph input and whose output shape is declared (onnxslim
    once folded the input into a constant read off the declared output)."""
    return save(
        d / "reshape_in.onnx",
        [helper.make_node("Reshape", ["data", "shape"], ["y"])],
        [vi("data", T.FLOAT, [3, 4, 5]), vi("shape", T.INT64, [1])],
        [vi("y", T.FLOAT, [60])],
    )

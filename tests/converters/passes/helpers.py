"""Build one-node models, apply a pass, and check it against onnxruntime on the original."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from converters.passes import REGISTRY
from converters.passes._rewrite import iter_nodes

OPSET = 17


def tensor(
    name: str, dtype: type | np.dtype, shape: Sequence[int | str | None] | None
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)


def model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Mapping[str, np.ndarray] | None = None,
    opset: int = OPSET,
    check: bool = True,
) -> onnx.ModelProto:
    inits = [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8  # what the toolchains' onnx (1.19) and onnx2torch read
    if check:  # off only for models the strict checker cannot type (unknown ranks)
        onnx.checker.check_model(m, full_check=True)
    return m


def unary(op: str, dtype=np.float32, shape=(64,), opset: int = OPSET, **attrs) -> onnx.ModelProto:
    return model(
        [helper.make_node(op, ["x"], ["y"], name="n0", **attrs)],
        [tensor("x", dtype, list(shape))],
        [tensor("y", dtype, list(shape))],
        opset=opset,
    )


def run(m: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    # graph optimizations off: compare the two graphs as written, not ORT's fusions of them
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, dict(feeds))


def op_types(m: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in iter_nodes(m.graph)}


def legalize_and_compare(
    m: onnx.ModelProto,
    pass_name: str,
    feeds: Mapping[str, np.ndarray],
    *,
    rtol: float,
    atol: float,
    gone: Sequence[str] = (),
) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """Apply `pass_name` to a copy of `m`; it must change the model, remove `gone`, pass the
    checker and compute what `m` computes (within rtol/atol, NaN where the original is NaN)."""
    want = run(m, feeds)
    out = onnx.ModelProto()
    out.CopyFrom(m)
    assert REGISTRY[pass_name].apply(out), f"{pass_name} did not change the model"
    onnx.checker.check_model(out, full_check=True)
    left = op_types(out) & set(gone)
    assert not left, f"{pass_name} left {left} in the model"
    got = run(out, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
    return out, got

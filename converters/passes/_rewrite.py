"""Shared plumbing for passes written as onnxscript rewrite rules over onnx-ir.

Passes work on `onnx.ModelProto` in place (the registry's contract); rule-based ones round-trip
through onnx-ir only when the model holds an op they rewrite, so a pass that has nothing to do
costs a scan of the node list and never re-serializes the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.rewriter import pattern

FLOATS = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE})


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, subgraphs (If/Loop/Scan bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_nodes(g)


def has_op(model: onnx.ModelProto, ops: Iterable[str]) -> bool:
    """Does any node (subgraphs included) run one of `ops` from the default ONNX domain?"""
    wanted = set(ops)
    return any(n.op_type in wanted and n.domain in ("", "ai.onnx") for n in iter_nodes(model.graph))


def opset_version(model: onnx.ModelProto) -> int:
    """The model's default-domain opset."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-inferred copy (with constant propagation); the model itself if inference fails.

    Rules consult value types and shapes; an exotic graph that ONNX cannot infer still gets the
    rules that need no shapes."""
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        return model


def apply_rules(model: onnx.ModelProto, rules: Sequence[pattern.RewriteRule], ops: Iterable[str]) -> bool:
    """Apply `rules` (which match ops in `ops`) to `model` in place; True if any rule fired."""
    if not has_op(model, ops):
        return False
    ir_model = ir.serde.deserialize_model(infer_shapes(model))
    count = pattern.RewriteRuleSet(list(rules)).apply_to_model(ir_model)
    if not count:
        return False
    model.CopyFrom(ir.serde.serialize_model(ir_model))
    return True


def is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype in FLOATS


def in_float(op: pattern.OpsetPatternBuilder, x: ir.Value, build) -> ir.Value:
    """`build(op, x, dtype)` in x's precision, except float16, which is computed in float32 and cast
    back: polynomial and log1p/expm1 forms lose their accuracy in fp16 arithmetic (measured: Erf
    off by 0.04 near +-1 when evaluated in fp16), and the op they replace rounds only its result."""
    if x.dtype == ir.DataType.FLOAT16:
        y = build(op, op.Cast(x, to=ir.DataType.FLOAT), ir.DataType.FLOAT)
        return op.Cast(y, to=ir.DataType.FLOAT16)
    return build(op, x, x.dtype)


def const(op: pattern.OpsetPatternBuilder, value: float | Sequence[float], dtype: ir.DataType) -> ir.Value:
    """A Constant holding `value` as `dtype` (rules compute in the input's own precision).

    Values a rule creates carry no type, so rules take the dtype from the matched input once."""
    return op.Constant(value=ir.tensor(np.asarray(value, dtype=dtype.numpy())))


def int64s(op: pattern.OpsetPatternBuilder, values: Sequence[int]) -> ir.Value:
    return op.Constant(value=ir.tensor(np.asarray(values, dtype=np.int64)))

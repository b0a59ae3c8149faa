"""Graph outputs that are a graph input passed through (Identity, inference-mode Dropout).

onnx2torch's Identity and eval-mode Dropout return their input tensor itself, so the traced
TorchScript graph's output *is* its input, and coremltools refuses it ("Main block's input name,
'x', is different from its corresponding var's name, 'y'"). Multiplying by one makes a new tensor
with the same values: exact for every number, -0.0, inf and NaN included. Booleans use Or(x, false).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converters.passes.registry import register

_PASSTHROUGH = {"Identity", "Dropout"}


def _inference_dropout(node: onnx.NodeProto) -> bool:
    """A Dropout that is the identity: one output (no mask), and no training_mode input, or an
    empty one (a constant training_mode could still be true; a dynamic one can't be judged)."""
    if len(node.output) > 1 and node.output[1]:
        return False
    return len(node.input) < 3 or not node.input[2]


@register("materialize-passthrough-outputs", {"coreml"})
def materialize_passthrough_outputs(model: onnx.ModelProto) -> bool:
    """Identity / inference Dropout from a graph input to a graph output -> Mul(x, 1) (Or for bool)."""
    g = model.graph
    inputs = {i.name: i for i in g.input}
    outputs = {o.name for o in g.output}
    changed = False
    for idx, node in enumerate(list(g.node)):
        if node.op_type not in _PASSTHROUGH or node.domain not in ("", "ai.onnx"):
            continue
        if node.input[0] not in inputs or node.output[0] not in outputs:
            continue
        if node.op_type == "Dropout" and not _inference_dropout(node):
            continue
        elem = inputs[node.input[0]].type.tensor_type.elem_type
        if elem == 0:
            continue  # not a tensor (or untyped): leave it to the backend
        np_type = helper.tensor_dtype_to_np_dtype(elem)
        one_name = f"{node.output[0]}__one"
        if np_type == np.bool_:
            one, op_type = np.array(False), "Or"
        else:
            one, op_type = np.array(1, dtype=np_type), "Mul"
        g.initializer.append(numpy_helper.from_array(one, one_name))
        new = helper.make_node(op_type, [node.input[0], one_name], [node.output[0]], name=node.name or None)
        g.node.remove(node)
        g.node.insert(idx, new)
        changed = True
    return changed


def _flatten_shape(dims: list[int], axis: int) -> list[int] | None:
    axis = axis + len(dims) if axis < 0 else axis
    if any(not isinstance(d, int) or d <= 0 for d in dims):
        return None
    return [int(np.prod(dims[:axis], dtype=np.int64)), int(np.prod(dims[axis:], dtype=np.int64))]


@register("flatten-to-reshape", {"coreml"})
def flatten_to_reshape(model: onnx.ModelProto) -> bool:
    """Flatten of a statically shaped tensor -> Reshape to its constant 2-D shape.

    onnx2torch maps Flatten to torch.flatten(start_dim=axis), which is not ONNX's Flatten for
    axis 0 (ONNX gives [1, N]; torch: "Dimension out of range")."""
    from converters.passes._rewrite import infer_shapes

    g = model.graph
    if not any(n.op_type == "Flatten" for n in g.node):
        return False
    typed = infer_shapes(model).graph
    shapes: dict[str, list[int]] = {}
    for vi in list(typed.input) + list(typed.value_info) + list(typed.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    changed = False
    for idx, node in enumerate(list(g.node)):
        if node.op_type != "Flatten" or node.domain not in ("", "ai.onnx") or node.input[0] not in shapes:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        target = _flatten_shape(shapes[node.input[0]], axis)
        if target is None:
            continue
        shape_name = f"{node.output[0]}__shape"
        g.initializer.append(numpy_helper.from_array(np.array(target, np.int64), shape_name))
        new = helper.make_node(
            "Reshape", [node.input[0], shape_name], list(node.output), name=node.name or None
        )
        g.node.remove(node)
        g.node.insert(idx, new)
        changed = True
    return changed

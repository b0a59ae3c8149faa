"""Integer and boolean ops that TFLite has only as Flex (SELECT_TF_OPS), computed in int32.

LiteRT's builtin MAXIMUM/MINIMUM/FLOOR_MOD and its reductions take int32 but not int8/uint8 or
bool (ONNX's node tests test_max_int8, test_mod_uint8, test_reduce_max_bool_inputs: "Select
TensorFlow op(s) ... not supported by this interpreter"). Widening to int32 and narrowing the
result back is exact: every value of the narrow type is an int32, and max/min/mod of such values is
again one of the narrow type's values (Mod's result has the magnitude of the divisor or less).
For bool, ReduceMax is "any" and ReduceMin "all": the same over 0/1.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from converters.passes._rewrite import infer_shapes
from converters.passes.registry import register

# int16/uint16 too in principle, but onnxruntime has no Max/Min for them: no reference to judge by
_NARROW = {TensorProto.INT8, TensorProto.UINT8}
_ELEMENTWISE = {"Max", "Min", "Mod"}
_REDUCE = {"ReduceMax", "ReduceMin"}


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = infer_shapes(model).graph
    out = {
        vi.name: vi.type.tensor_type.elem_type for vi in list(g.input) + list(g.value_info) + list(g.output)
    }
    out.update({i.name: i.data_type for i in model.graph.initializer})
    return out


@register("widen-narrow-ints", {"tflite", "tfjs", "coreml"})
def widen_narrow_ints(model: onnx.ModelProto) -> bool:
    """Max/Min/Mod on int8/uint8 and ReduceMax/ReduceMin on bool -> in int32, cast back."""
    g = model.graph
    wanted = _ELEMENTWISE | _REDUCE
    if not any(n.op_type in wanted and n.domain in ("", "ai.onnx") for n in g.node):
        return False
    types = _elem_types(model)
    new_nodes: list[onnx.NodeProto] = []
    changed = False
    for k, node in enumerate(g.node):
        elem = types.get(node.input[0]) if node.input else None
        widen = node.domain in ("", "ai.onnx") and (
            (node.op_type in _ELEMENTWISE and elem in _NARROW)
            or (node.op_type in _REDUCE and elem == TensorProto.BOOL)
        )
        if not widen:
            new_nodes.append(node)
            continue
        data_inputs = node.input if node.op_type in _ELEMENTWISE else node.input[:1]
        wide = []
        for i, name in enumerate(data_inputs):
            w = f"{node.output[0]}__int32_in{i}_{k}"
            new_nodes.append(helper.make_node("Cast", [name], [w], to=TensorProto.INT32))
            wide.append(w)
        inner = helper.make_node(
            node.op_type, wide + list(node.input[len(data_inputs) :]), [f"{node.output[0]}__int32_{k}"]
        )
        inner.attribute.extend(node.attribute)
        new_nodes.append(inner)
        new_nodes.append(helper.make_node("Cast", [inner.output[0]], [node.output[0]], to=elem))
        changed = True
    if changed:
        del g.node[:]
        g.node.extend(new_nodes)
    return changed

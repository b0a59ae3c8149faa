"""fold-constants: evaluate what is constant, so backends see initializers, not subgraphs.

Constant nodes become initializers and nodes whose inputs are all constant (CastLike of a
constant, Shape of a static tensor, Range with constant bounds, the Constant/CastLike prologues
that expanded function bodies bring) are evaluated, with onnxscript's constant folder (the
optimizer behind torch.onnx). After `pin-input-shapes` this also folds shape arithmetic that the
target-independent simplification could not (dims were dynamic then). Its default size limits
keep large tensors from being materialized.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer

from converters.passes._rewrite import infer_shapes
from converters.passes.registry import register


@register("fold-constants")
def fold_constants(model: onnx.ModelProto) -> bool:
    """Constant nodes -> initializers; nodes with constant inputs -> their value."""
    ir_model = ir.serde.deserialize_model(infer_shapes(model))
    before = _signature(model)
    onnxscript.optimizer.fold_constants(ir_model)
    onnxscript.optimizer.remove_unused_nodes(ir_model)
    # the folder leaves small Constant nodes (value_float, ...) in place; converters read
    # parameters from initializers (onnx2torch has no Constant converter past opset 13...)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(ir_model)
    out = ir.serde.serialize_model(ir_model)
    if _signature(out) == before or _constant_outputs(out) - _constant_outputs(model):
        # a graph output that became a constant gives converters a graph with nothing to trace
        # (onnx2torch/TorchScript fail on it); such a model is better left as it was
        return False
    model.CopyFrom(out)
    return True


def _constant_outputs(model: onnx.ModelProto) -> set[str]:
    computed = {o for n in model.graph.node if n.op_type != "Constant" for o in n.output}
    return {o.name for o in model.graph.output if o.name not in computed}


def _signature(model: onnx.ModelProto) -> tuple[tuple[str, ...], int]:
    """What folding can change: the node list and the number of initializers."""
    return tuple(n.op_type for n in model.graph.node), len(model.graph.initializer)

"""explicit-pads: auto_pad=SAME_UPPER/SAME_LOWER -> explicit `pads`, where the input's spatial
shape is known (the pads depend on it).

Backends implement SAME padding with their own conventions (TensorFlow's SAME puts the extra
pixel at the end, i.e. SAME_UPPER only; torch has no SAME for strided convolutions), so explicit
pads are the form every converter reads the same way. Formulas are the ONNX spec's: for Conv and
pools, out = ceil(in / stride), total = max(0, (out - 1) * stride + (k - 1) * dilation + 1 - in);
for ConvTranspose, out = in * stride and total = stride * (in - 1) + output_padding +
(k - 1) * dilation + 1 - out. SAME_UPPER puts the odd pixel at the end for Conv/pools.
"""

from __future__ import annotations

import onnx
from onnx import helper

from converters.passes._rewrite import infer_shapes
from converters.passes.registry import register

_POOLS = {"AveragePool", "MaxPool", "LpPool"}
_OPS = {"Conv", "ConvInteger", "QLinearConv", "ConvTranspose", *_POOLS}


def _shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    g = model.graph
    out: dict[str, list[int | None]] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    for init in g.initializer:
        out[init.name] = list(init.dims)
    return out


def _kernel(node: onnx.NodeProto, attrs: dict, shapes: dict) -> list[int] | None:
    if "kernel_shape" in attrs:
        return list(attrs["kernel_shape"])
    if node.op_type in _POOLS:
        return None
    w = node.input[3] if node.op_type == "QLinearConv" else node.input[1]
    ws = shapes.get(w)
    return ws[2:] if ws and all(isinstance(d, int) for d in ws[2:]) else None


def explicit_pads(node: onnx.NodeProto, in_shape: list[int | None], kernel: list[int]) -> list[int] | None:
    """The `pads` equivalent to the node's SAME auto_pad for this input shape, or None."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    mode = attrs["auto_pad"].decode() if isinstance(attrs["auto_pad"], bytes) else attrs["auto_pad"]
    spatial = in_shape[2:]
    n = len(kernel)
    if len(spatial) != n or any(d is None or d <= 0 for d in spatial) or attrs.get("ceil_mode", 0):
        return None
    strides = list(attrs.get("strides", [1] * n))
    dilations = list(attrs.get("dilations", [1] * n))
    begins, ends = [], []
    for i in range(n):
        extent = (kernel[i] - 1) * dilations[i] + 1
        if node.op_type == "ConvTranspose":
            if "output_shape" in attrs:
                return None  # pads then follow output_shape; leave that to the backend
            out_padding = list(attrs.get("output_padding", [0] * n))
            total = strides[i] * (spatial[i] - 1) + out_padding[i] + extent - spatial[i] * strides[i]
            if total < 0:
                return None
        else:
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + extent - spatial[i])
        small, large = total // 2, total - total // 2
        begin, end = (small, large) if mode == "SAME_UPPER" else (large, small)
        begins.append(begin)
        ends.append(end)
    return begins + ends


@register("explicit-pads")
def explicit_pads_pass(model: onnx.ModelProto) -> bool:
    """auto_pad=SAME_* -> explicit pads (Conv, ConvTranspose, pools) where input shapes are known."""
    todo = [
        n
        for n in model.graph.node
        if n.op_type in _OPS
        and any(a.name == "auto_pad" and a.s in (b"SAME_UPPER", b"SAME_LOWER") for a in n.attribute)
    ]
    if not todo:
        return False
    shapes = _shapes(infer_shapes(model))
    changed = False
    for node in todo:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        in_shape = shapes.get(node.input[0])
        kernel = _kernel(node, attrs, shapes)
        pads = explicit_pads(node, in_shape, kernel) if in_shape and kernel else None
        if pads is None:
            continue
        keep = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend([*keep, helper.make_attribute("pads", pads)])
        changed = True
    return changed

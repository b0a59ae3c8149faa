"""Passes that fix what backends reject but that is not about any one op.

- inline-local-functions: exporters emit model-local functions; converters read plain nodes only.
- sanitize-node-names: onnx2tf names Keras layers after nodes, and TensorFlow rejects characters
  such as ':' in them. Node names only: tensor names are the model's public input/output names.
"""

from __future__ import annotations

import re

import onnx
from onnx import inliner

from converters.passes.registry import register

_TF_NAME = re.compile(r"[^A-Za-z0-9_.\-/]")


@register("inline-local-functions", {"onnx", "tflite", "tfjs", "coreml"})
def inline_local_functions(model: onnx.ModelProto) -> bool:
    """Inline every model-local function (onnx.inliner)."""
    if not model.functions:
        return False
    model.CopyFrom(inliner.inline_local_functions(model))
    return True


@register("sanitize-node-names", {"tflite", "tfjs"})
def sanitize_node_names(model: onnx.ModelProto) -> bool:
    """Node names -> unique [A-Za-z0-9_.-/] names starting with an alphanumeric."""
    changed = False
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        name = _TF_NAME.sub("_", node.name or f"{node.op_type}_{i}").lstrip("/_-") or f"node_{i}"
        if not name[0].isalnum():
            name = f"n{name}"
        base, k = name, 1
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        seen.add(name)
        if name != node.name:
            node.name = name
            changed = True
    return changed


@register("drop-empty-optional-inputs", {"tflite", "tfjs", "coreml"})
def drop_empty_optional_inputs(model: onnx.ModelProto) -> bool:
    """Trailing '' inputs mean "not given" in ONNX (Clip's max, Resize's scales); onnx2torch looks
    them up as tensors and fails (seen on a BERT encoder's Clip). Dropping them changes nothing."""
    changed = False
    for node in model.graph.node:
        while node.input and node.input[-1] == "":
            node.input.pop()
            changed = True
    return changed

"""Cheap ONNX-level passes that fix what backends reject but that is not the model's fault.

- node names with characters TensorFlow rejects (onnx2tf names Keras layers after nodes);
- model-local functions (exporters emit them; backends convert only plain nodes);
- opsets newer than a backend knows (onnx.version_converter down to the backend's maximum).
Tensor (value) names are never changed: they are the model's public input/output names.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import onnx

from converters.optimize import opset_of

log = logging.getLogger(__name__)

# Highest default-domain opset each backend's converter handles (onnx2tf 1.29, onnx2torch 1.5).
MAX_OPSET = {"onnx": None, "tflite": 20, "tfjs": 20, "coreml": 17}
_TF_NAME = re.compile(r"[^A-Za-z0-9_.\-/]")


def legalize(src: Path, dest: Path, target: str) -> list[str]:
    """Write a legalized copy for `target`; return the passes that changed something."""
    model = onnx.load(str(src))
    applied: list[str] = []
    if model.functions:
        from onnx import inliner

        model = inliner.inline_local_functions(model)
        applied.append("inline-local-functions")
    if target in ("tflite", "tfjs") and _sanitize_node_names(model):
        applied.append("sanitize-node-names")
    limit = MAX_OPSET.get(target)
    current = opset_of(model)
    if limit and current > limit:
        try:
            from onnx import version_converter

            model = version_converter.convert_version(model, limit)
            applied.append(f"opset-{current}-to-{limit}")
        except Exception as e:  # the converter lacks adapters for some ops; let the backend try
            log.warning("%s: cannot convert opset %d down to %d: %s", target, current, limit, e)
    onnx.save(model, str(dest))
    return applied


def _sanitize_node_names(model: onnx.ModelProto) -> bool:
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

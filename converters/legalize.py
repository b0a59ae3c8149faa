"""ONNX-level legalization for one target: the target's passes (converters/passes), then opsets.

Each pass is a small rewrite that never changes what the model computes; the pipeline reports the
ones that changed something (`legalized`). After them, opsets newer than the backend knows are
converted down (onnx.version_converter). Ops that did not exist yet at the backend's opset are
expanded into their ONNX function bodies first, before the target's passes (the version converter
has no adapter for such an op, and one of them used to block the conversion of the whole model).
Tensor (value) names are never changed: they are the model's public input/output names.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from converters.passes import DEFAULT_PASSES, run_passes
from converters.passes.opset import downgrade_opset, expand_new_ops

__all__ = ["MAX_OPSET", "downgrade_opset", "legalize"]

# Highest default-domain opset each backend's converter handles (onnx2tf 1.29, onnx2torch 1.5).
MAX_OPSET = {"onnx": None, "tflite": 20, "tfjs": 20, "coreml": 17}


def legalize(src: Path, dest: Path, target: str) -> list[str]:
    """Write a legalized copy for `target`; return the passes that changed something."""
    model = onnx.load(str(src))
    limit = MAX_OPSET.get(target)
    applied = expand_new_ops(model, limit)
    applied += run_passes(model, target, DEFAULT_PASSES.get(target, ()))
    applied += downgrade_opset(model, limit)
    onnx.save(model, str(dest))
    return applied

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

from converters.passes import run_passes
from converters.passes.opset import downgrade_opset, expand_new_ops
from edgekit.formats import TARGETS

__all__ = ["downgrade_opset", "legalize"]


def legalize(src: Path, dest: Path, target: str) -> list[str]:
    """Write a legalized copy for `target`; return the passes that changed something."""
    model = onnx.load(str(src))
    row = TARGETS[target]  # the target's highest opset and its passes (edgekit/formats.py)
    limit = row.max_opset
    applied = expand_new_ops(model, limit)
    applied += run_passes(model, target, row.passes)
    applied += downgrade_opset(model, limit)
    onnx.save(model, str(dest))
    return applied

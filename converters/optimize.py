"""Target-independent ONNX clean-up: shape inference and simplification (onnxslim).

Simplification folds constants and fuses BatchNorm into Conv, which every backend then converts
more reliably. A simplifier failure is not the user's problem: keep the unsimplified model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

log = logging.getLogger(__name__)


def optimize(src: Path, dest: Path) -> dict[str, object]:
    model = onnx.load(str(src))
    n_before = len(model.graph.node)
    info: dict[str, object] = {"nodes_before": n_before, "simplified": False}
    try:
        import onnxslim

        slim = onnxslim.slim(model)
        if slim is not None and len(slim.graph.node) > 0:
            onnx.checker.check_model(slim)
            if _interface(slim) != _interface(model):
                # onnxslim may fold an input into a constant taken from the declared output shape
                # (a Reshape's `shape`): the user's model would lose an input; keep it whole
                raise ValueError(f"it changed the model's inputs/outputs {_interface(model)}")
            model = slim
            info["simplified"] = True
    except Exception as e:  # onnxslim raises many kinds on exotic graphs
        log.warning("onnxslim failed, keeping the unsimplified model: %s", e)
        info["simplify_error"] = str(e)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.save(model, str(dest))
    info["nodes_after"] = len(model.graph.node)
    info["opset"] = opset_of(model)
    return info


def _interface(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output]


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0

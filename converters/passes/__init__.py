"""ONNX-to-ONNX legalization passes, applied per target before export (see converters/legalize.py).

Every pass is registered by name in `registry.REGISTRY`; the target table (edgekit/formats.py,
`Target.passes`) is the one place that says which passes each target runs, in order. The lists were chosen by measurement: each decomposition
or expansion listed for a target turned a failing ONNX node test (onnx.backend.test.case.node)
into a matching conversion through that target's real toolchain; explicit-pads and fold-constants
are normalizations every target gets. The conformance matrix (`make coverage`) runs the pipeline,
hence these passes, and is the place to re-measure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import onnx

from converters.passes import (  # noqa: F401
    activations,
    autopad,
    constants,
    erf,
    functions,
    hygiene,
    intwiden,
    isinf,
    masks,
    minmax,
    opset,
    passthrough,
    rnn,
    trig,
)
from converters.passes.registry import EDGE_TARGETS, REGISTRY, Pass, register

__all__ = ["EDGE_TARGETS", "REGISTRY", "Pass", "register", "run_passes"]

log = logging.getLogger(__name__)


def run_passes(model: onnx.ModelProto, target: str, names: Iterable[str]) -> list[str]:
    """Apply the named passes to `model` in place, in order; the names of those that changed it.

    A pass that raises is skipped with the model as it was before it (passes are an improvement,
    never a reason for a conversion to fail); the backend and validation still judge the result.
    """
    applied = []
    for name in names:
        p = REGISTRY[name]
        if target not in p.targets:
            raise ValueError(f"pass {name!r} is not written for target {target!r} (only {sorted(p.targets)})")
        before = onnx.ModelProto()
        before.CopyFrom(model)
        try:
            if p.apply(model):
                applied.append(name)
        except Exception as e:
            log.warning("%s: pass %s failed, skipped: %s: %s", target, name, type(e).__name__, e)
            model.CopyFrom(before)
    return applied

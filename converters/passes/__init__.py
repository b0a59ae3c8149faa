"""ONNX-to-ONNX legalization passes, applied per target before export (see converters/legalize.py).

Every pass is registered by name in `registry.REGISTRY`; DEFAULT_PASSES is the one place that says
which passes each target runs, in order. The lists were chosen by measurement: each decomposition
or expansion listed for a target turned a failing ONNX node test (onnx.backend.test.case.node)
into a matching conversion through that target's real toolchain; explicit-pads and fold-constants
are normalizations every target gets. The conformance matrix (`make coverage`) runs the pipeline,
hence these passes, and is the place to re-measure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import onnx

from converters.passes import autopad, constants, erf, functions, hygiene, minmax, opset, trig  # noqa: F401
from converters.passes.registry import EDGE_TARGETS, REGISTRY, Pass, register

__all__ = ["DEFAULT_PASSES", "EDGE_TARGETS", "REGISTRY", "Pass", "register", "run_passes"]

log = logging.getLogger(__name__)

# Composite ops come before the ops their bodies use (SoftmaxCrossEntropyLoss's body calls
# NegativeLogLikelihoodLoss; many bodies use CastLike), and fold-constants comes last, to fold the
# Constant/CastLike prologues of expanded bodies and what pin-input-shapes made static.
_COMMON_TAIL = ("explicit-pads", "fold-constants")
_TF = (
    "inline-local-functions",
    "sanitize-node-names",
    # measured on ONNX's node tests through onnx2tf 1.29.24 + LiteRT: Flex-only (LiteRT cannot
    # run them) or wrong before, matched after
    "decompose-Acos",
    "decompose-Asin",
    "decompose-Acosh",
    "decompose-Asinh",
    "decompose-Atanh",
    "expand-DepthToSpace",
    "expand-SpaceToDepth",
    "expand-CastLike",  # onnx2tf has no CastLike converter
    *_COMMON_TAIL,
)
DEFAULT_PASSES: dict[str, tuple[str, ...]] = {
    "onnx": ("inline-local-functions",),
    "tflite": _TF,
    "tfjs": _TF,
    "coreml": (
        "inline-local-functions",
        # measured on ONNX's node tests through onnx2torch 1.5 + coremltools 9 (no converter before)
        "expand-SoftmaxCrossEntropyLoss",
        "expand-NegativeLogLikelihoodLoss",
        "expand-SwiGLU",
        "expand-Swish",
        "expand-Mish",
        "expand-Celu",
        "expand-GroupNormalization",
        "expand-MeanVarianceNormalization",
        "expand-RMSNormalization",
        "expand-ReduceL1",
        "expand-ReduceL2",
        "expand-ReduceLogSumExp",
        "expand-ReduceSumSquare",
        "expand-CastLike",
        "decompose-Atanh",
        # these three need Greater/Less, which the coreml worker converts only once onnx2torch's
        # torch.greater/torch.less are mapped to torch.gt/torch.lt (see the legalization notes)
        "decompose-Acosh",
        "decompose-Asinh",
        "decompose-Cosh",
        "decompose-Sinh",
        "globalmaxpool-to-reducemax",
        "sum-to-add",  # e.g. in Gelu's body
        "clip-dynamic-bounds",  # onnx2torch: "Dynamic value of min/max is not implemented"
        *_COMMON_TAIL,
    ),
}


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

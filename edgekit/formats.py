"""The one table of deployment targets and their precisions.

Each target is one typed row (backend plug-in, runtime, file suffixes, toolchain, highest opset its
converter knows, what it does with dynamic dims) with one entry per precision mode (the tool
arguments that produce it and the parity tolerance that judges it). The converter, the runtimes,
device profiles, bundles, `fleet publish` (which signs the tolerance into the smoke test) and the
agent all read this table, so an artifact is judged by the same numbers on the laptop and on the
box. Adding a target (say OpenVINO IR) is one row here, one backend, one runtime adapter, one
profile. Stdlib only: this module is part of the shared base every package imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Tolerance:
    """How close an artifact's outputs must be to the fp32 ONNX Runtime reference.

    Conversion demands `min_cosine` over the validation set (and, for fp32, max abs within
    `max_abs_rel` x the output scale). The on-device smoke test, on one golden sample, passes an
    output when cosine >= min_cosine or max abs <= atol (near-zero outputs make cosine meaningless).
    """

    min_cosine: float
    atol: float
    max_abs_rel: float | None = None

    def to_dict(self) -> dict[str, float]:
        return {"min_cosine": self.min_cosine, "atol": self.atol}


FP32 = Tolerance(0.99999, 1e-3, max_abs_rel=1e-4)
FP16 = Tolerance(0.999, 2e-2)
INT8_WEIGHTS = Tolerance(0.99, 0.25)
INT8 = Tolerance(0.98, 0.25)
PALETTE6 = Tolerance(0.98, 0.25)
PALETTE4 = Tolerance(0.90, 0.5)


@dataclass(frozen=True)
class Precision:
    label: str  # what reports, manifests and bundles call it
    description: str
    tolerance: Tolerance
    args: Mapping[str, Any] = field(default_factory=dict)  # the backend's tool arguments for this mode
    needs_calibration: bool = False


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    backend: str  # "module:Class" of the converter plug-in (converters/backends)
    runtime: str  # the runtime adapter that validates it (targets/runtimes), also on the box
    suffixes: tuple[str, ...]  # main artifact suffixes; a directory target (.mlpackage) or a
    # multi-file one (model.json + shards) is shipped as one tar by `fleet publish`
    toolchain: str | None  # isolated environment its converter needs (None: the user's env)
    max_opset: int | None  # highest default-domain opset its converter knows (None: any)
    shapes: str  # "dynamic": keeps dynamic dims; "static": pins all but the batch axis;
    # "ranges": keeps LO..HI ranges flexible, pins the rest (see converters/shapes.py)
    modes: Mapping[str, Precision]
    passes: tuple[str, ...] = ()  # ONNX legalization passes run before its backend, in order
    companions: Mapping[str, str] = field(default_factory=dict)  # suffix -> format of the same model
    # element types its artifacts' I/O cannot carry -> the type they take instead (the card keeps
    # the model's own type; an app casts at the boundary, as it must for the format anyway)
    io_dtypes: Mapping[str, str] = field(default_factory=dict)


def _modes(**kw: Precision) -> Mapping[str, Precision]:
    return MappingProxyType(kw)


# Legalization passes per target, in order (converters/passes registers them by name). Chosen by
# measurement: each decomposition or expansion listed turned a failing ONNX node test into a
# matching conversion through that target's real toolchain (`make coverage` re-measures).
# Composite ops come before the ops their bodies use (SoftmaxCrossEntropyLoss's body calls
# NegativeLogLikelihoodLoss; many bodies use CastLike), and fold-constants comes last, to fold the
# Constant/CastLike prologues of expanded bodies and what pin-input-shapes made static.
_PASSES_TAIL = ("explicit-pads", "fold-constants")
_PASSES_TF = (
    "inline-local-functions",
    "drop-empty-optional-inputs",
    "sanitize-node-names",
    # measured on ONNX's node tests through onnx2tf 1.29.24 + LiteRT: Flex-only (LiteRT cannot
    # run them) or wrong before, matched after
    "decompose-Acos",
    "decompose-Asin",
    "decompose-Acosh",
    "decompose-Asinh",
    "decompose-Atanh",
    "decompose-Atan",
    "decompose-Sinh",
    "decompose-Cosh",
    "decompose-Tan",
    "decompose-IsInf",
    "decompose-Erf",  # a BERT encoder's erf GELU came out FlexErf (LiteRT cannot run Flex ops)
    "expand-DepthToSpace",
    "expand-SpaceToDepth",
    "expand-CastLike",  # onnx2tf has no CastLike converter
    "decompose-OneHot",  # TF.js: wrong values from onnx2tf's OneHot
    "decompose-Softsign",  # LiteRT: Flex only
    "widen-narrow-ints",  # LiteRT: int8/uint8 Max/Min/Mod and bool ReduceMax/Min are Flex only
    "expand-CenterCropPad",
    "trilu-to-where",  # TF.js: wrong values from onnx2tf's Trilu
    *_PASSES_TAIL,
)
_PASSES: dict[str, tuple[str, ...]] = {
    "onnx": ("inline-local-functions",),
    "tflite": _PASSES_TF,
    "tfjs": _PASSES_TF,
    "coreml": (
        "inline-local-functions",
        "drop-empty-optional-inputs",  # onnx2torch fails on Clip(x, min, '') (a BERT encoder)
        # measured on ONNX's node tests through onnx2torch 1.5 + coremltools 9 (no converter before)
        "expand-SoftmaxCrossEntropyLoss",
        "expand-NegativeLogLikelihoodLoss",
        "expand-Attention",
        "expand-RotaryEmbedding",
        "expand-AffineGrid",
        "expand-CenterCropPad",
        "expand-DynamicQuantizeLinear",
        "expand-ReduceLogSum",
        "expand-SpaceToDepth",
        "expand-DepthToSpace",
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
        "decompose-IsInf",
        # these need Greater/Less, which the coreml worker maps to torch.gt/torch.lt (coremltools
        # has no aten::greater/less)
        "decompose-Acosh",
        "decompose-Asinh",
        "decompose-Cosh",
        "decompose-Sinh",
        # onnx2torch has no converter, or maps the op to a torch one that differs (Selu's alpha,
        # Flatten's axis 0, Max/Min's broadcast_to, an output that is the input itself)
        "decompose-Selu",
        "decompose-Shrink",
        "decompose-ThresholdedRelu",
        "decompose-Hardmax",
        "decompose-OneHot",
        "trilu-to-where",
        "minmax-to-where",
        "widen-narrow-ints",  # bool ReduceMax/Min: the opset adapters refuse bool
        "flatten-to-reshape",
        "materialize-passthrough-outputs",
        "unroll-recurrent",  # onnx2torch has no LSTM/GRU/RNN converter
        "globalmaxpool-to-reducemax",
        "sum-to-add",  # e.g. in Gelu's body
        "clip-dynamic-bounds",  # onnx2torch: "Dynamic value of min/max is not implemented"
        *_PASSES_TAIL,
    ),
}


MODES = ("none", "fp16", "int8-dynamic", "int8")
COREML_EXTRA_MODES = ("palettize6", "palettize4")  # Core ML's target-native weight compression
ALL_MODES = MODES + COREML_EXTRA_MODES

TARGETS: Mapping[str, Target] = MappingProxyType(
    {
        "onnx": Target(
            name="onnx",
            passes=_PASSES["onnx"],
            description="ONNX (+ ORT format), for onnxruntime on PCs, ARM boxes, mobile and web",
            backend="converters.backends.onnx:OnnxBackend",
            runtime="onnxruntime",
            suffixes=(".onnx",),
            toolchain=None,
            max_opset=None,
            shapes="dynamic",
            companions={".ort": "ort"},
            modes=_modes(
                none=Precision("fp32", "float32", FP32, {"file": "model.onnx"}),
                fp16=Precision(
                    "fp16",
                    "float16 weights and compute, float32 I/O (onnxconverter-common)",
                    FP16,
                    {"file": "model_fp16.onnx"},
                ),
                **{
                    "int8-dynamic": Precision(
                        "int8-dynamic",
                        "int8 weights, activations quantized at run time; MatMul/Gemm only",
                        INT8_WEIGHTS,
                        {"file": "model_int8_dynamic.onnx"},
                    ),
                    "int8": Precision(
                        "int8-static",
                        "QDQ int8, per-channel weights, calibrated activations",
                        INT8,
                        {"file": "model_int8.onnx"},
                        needs_calibration=True,
                    ),
                },
            ),
        ),
        "tflite": Target(
            name="tflite",
            passes=_PASSES["tflite"],
            description="TFLite / LiteRT flatbuffer via onnx2tf, for Android, ARM Linux, MCUs",
            backend="converters.backends.tflite:TFLiteBackend",
            runtime="litert",
            suffixes=(".tflite",),
            toolchain="tensorflow",
            max_opset=20,  # onnx2tf 1.29
            shapes="static",
            modes=_modes(
                none=Precision("fp32", "float32", FP32, {"onnx2tf": "float32", "suffix": "float32"}),
                fp16=Precision(
                    "fp16",
                    "float16 weights, dequantized to float32 at load",
                    FP16,
                    {"onnx2tf": "float16", "suffix": "float16"},
                ),
                **{
                    "int8-dynamic": Precision(
                        "dynamic-range",
                        "int8 weights, float activations",
                        INT8_WEIGHTS,
                        {"onnx2tf": "dynamic_range", "suffix": "dynamic_range_quant"},
                    ),
                    "int8": Precision(
                        "full-int8",
                        "int8 weights and activations, int8 input/output tensors",
                        INT8,
                        {"onnx2tf": "full_integer", "suffix": "full_integer_quant"},
                        needs_calibration=True,
                    ),
                },
            ),
        ),
        "tfjs": Target(
            name="tfjs",
            passes=_PASSES["tfjs"],
            description="TF.js graph model (model.json + sharded weights) for browsers and Node",
            backend="converters.backends.tfjs:TfjsBackend",
            runtime="tfjs-node",
            suffixes=(".json",),
            toolchain="tensorflow",
            max_opset=20,  # converts the SavedModel onnx2tf writes
            shapes="static",
            modes=_modes(
                none=Precision("fp32", "float32 weights", FP32, {"quantize": None, "folder": "fp32"}),
                fp16=Precision(
                    "fp16-weights",
                    "float16 weight quantization, float32 compute",
                    FP16,
                    {"quantize": "float16", "folder": "fp16"},
                ),
                **{
                    "int8-dynamic": Precision(
                        "uint8-weights",
                        "uint8 affine weight quantization, float32 compute",
                        INT8_WEIGHTS,
                        {"quantize": "uint8", "folder": "uint8"},
                    ),
                },
            ),
        ),
        "coreml": Target(
            name="coreml",
            passes=_PASSES["coreml"],
            description="Core ML mlprogram (.mlpackage, iOS 16+) via onnx2torch + coremltools",
            backend="converters.backends.coreml:CoreMLBackend",
            runtime="coreml-spec",
            suffixes=(".mlpackage", ".mlmodel"),
            toolchain="coreml",
            max_opset=17,  # onnx2torch 1.5
            shapes="ranges",
            # Core ML model I/O is float32/float16/int32 only (int8 from iOS 26); coremltools
            # declares bool tensors as float32 0/1 itself
            io_dtypes=MappingProxyType(
                {
                    "float32": "float32",
                    "float16": "float16",
                    "float64": "float32",
                    "int32": "int32",
                    "int64": "int32",
                    "int16": "int32",
                    "int8": "int32",
                    "uint8": "int32",
                    "uint16": "int32",
                    "bool": "float32",
                }
            ),
            modes=_modes(
                none=Precision("fp32", "float32 compute", FP32, {"compute": "fp32", "compress": None}),
                fp16=Precision(
                    "fp16", "float16 compute and weights", FP16, {"compute": "fp16", "compress": None}
                ),
                **{
                    "int8-dynamic": Precision(
                        "w8-linear",
                        "int8 per-channel linear weights, fp16 compute",
                        INT8_WEIGHTS,
                        {"compute": "fp16", "compress": ["linear", 8]},
                    ),
                },
                palettize6=Precision(
                    "w6-palette",
                    "6-bit palettized weights (k-means), fp16 compute",
                    PALETTE6,
                    {"compute": "fp16", "compress": ["palette", 6]},
                ),
                palettize4=Precision(
                    "w4-palette",
                    "4-bit palettized weights (k-means), fp16 compute",
                    PALETTE4,
                    {"compute": "fp16", "compress": ["palette", 4]},
                ),
            ),
        ),
    }
)
# tflite before tfjs: the TF.js backend reuses the SavedModel onnx2tf wrote for TFLite.
TARGET_ORDER = ("onnx", "tflite", "tfjs", "coreml")

UNSUPPORTED: Mapping[tuple[str, str], str] = MappingProxyType(
    {
        ("coreml", "int8"): "calibrating Core ML activations needs the Core ML runtime (macOS only); "
        "use int8-dynamic (int8 weights) or palettize6",
        ("tfjs", "int8"): "TF.js has no integer kernels; use int8-dynamic (uint8 weights)",
    }
)
NEEDS_CALIBRATION = frozenset(m for t in TARGETS.values() for m, p in t.modes.items() if p.needs_calibration)


def support(target: str, mode: str) -> tuple[bool, str]:
    """Whether `target` accepts `mode`, and why not when it does not."""
    fmt = TARGETS[target]
    if mode in fmt.modes:
        return True, ""
    return False, UNSUPPORTED.get((target, mode)) or f"{target} supports {', '.join(fmt.modes)}"


def precision(target: str, mode: str) -> Precision:
    return TARGETS[target].modes[mode]


def tolerance_for_label(label: str) -> Tolerance | None:
    """The tolerance of a precision label (`int8-static`, `full-int8`, ...) as reports name it."""
    for t in TARGETS.values():
        for p in t.modes.values():
            if p.label == label:
                return p.tolerance
    return None


def smoke_tolerances() -> dict[str, dict[str, float]]:
    """label -> {min_cosine, atol}: what `fleet publish` signs into every smoke test."""
    out = {p.label: p.tolerance.to_dict() for t in TARGETS.values() for p in t.modes.values()}
    return {"default": FP32.to_dict(), **out}


def runtime_for(path: str | Path) -> str | None:
    """The runtime that runs an artifact file, by its suffix (companions included)."""
    suffix = Path(path).suffix
    for t in TARGETS.values():
        if suffix in t.suffixes or suffix in t.companions:  # a companion is the same model, same runtime
            return t.runtime
    return None


def format_for(path: str | Path) -> str | None:
    """The format name `fleet publish` records for an artifact file (`ort` for ORT companions)."""
    p = Path(path)
    if p.name == "model.json":
        return "tfjs"
    for t in TARGETS.values():
        if p.suffix in t.companions:
            return t.companions[p.suffix]
        if p.suffix in t.suffixes and p.suffix != ".json":
            return t.name
    return None


def toolchain_aliases() -> dict[str, str]:
    """What users may type to `edgekit toolchain install` -> the environment it names."""
    return {name: t.toolchain for name, t in TARGETS.items() if t.toolchain}

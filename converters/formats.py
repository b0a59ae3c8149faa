"""One table of export targets, the quantization modes each accepts, and what each mode means there.

Like Ultralytics' exporter table: the CLI, the pipeline and the docs all read this, so a target's
capabilities are stated once. A (target, mode) pair missing here is reported as skipped with the
reason in `UNSUPPORTED`, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("none", "fp16", "int8-dynamic", "int8")
# Core ML's target-native weight compression; only the coreml target accepts these.
COREML_EXTRA_MODES = ("palettize6", "palettize4")
ALL_MODES = MODES + COREML_EXTRA_MODES

NEEDS_CALIBRATION = {"int8"}


@dataclass(frozen=True)
class Precision:
    label: str  # what the report calls it
    description: str


@dataclass(frozen=True)
class TargetFormat:
    name: str
    suffix: str  # main artifact file suffix
    runtime: str  # what validates it
    toolchain: str | None  # isolated environment it needs (None: runs in the user's env)
    modes: dict[str, Precision]
    description: str


TARGETS: dict[str, TargetFormat] = {
    "onnx": TargetFormat(
        name="onnx",
        suffix=".onnx",
        runtime="onnxruntime",
        toolchain=None,
        description="ONNX (+ ORT format), for onnxruntime on PCs, ARM boxes, mobile and web",
        modes={
            "none": Precision("fp32", "float32"),
            "fp16": Precision("fp16", "float16 weights and compute, float32 I/O (onnxconverter-common)"),
            "int8-dynamic": Precision(
                "int8-dynamic", "int8 weights, activations quantized at run time; MatMul/Gemm only"
            ),
            "int8": Precision("int8-static", "QDQ int8, per-channel weights, calibrated activations"),
        },
    ),
    "tflite": TargetFormat(
        name="tflite",
        suffix=".tflite",
        runtime="litert",
        toolchain="tensorflow",
        description="TFLite / LiteRT flatbuffer via onnx2tf, for Android, ARM Linux, MCUs",
        modes={
            "none": Precision("fp32", "float32"),
            "fp16": Precision("fp16", "float16 weights, dequantized to float32 at load"),
            "int8-dynamic": Precision("dynamic-range", "int8 weights, float activations"),
            "int8": Precision("full-int8", "int8 weights and activations, int8 input/output tensors"),
        },
    ),
    "coreml": TargetFormat(
        name="coreml",
        suffix=".mlpackage",
        runtime="coreml-spec",
        toolchain="coreml",
        description="Core ML mlprogram (.mlpackage, iOS 16+) via onnx2torch + coremltools",
        modes={
            "none": Precision("fp32", "float32 compute"),
            "fp16": Precision("fp16", "float16 compute and weights"),
            "int8-dynamic": Precision("w8-linear", "int8 per-channel linear weights, fp16 compute"),
            "palettize6": Precision("w6-palette", "6-bit palettized weights (k-means), fp16 compute"),
            "palettize4": Precision("w4-palette", "4-bit palettized weights (k-means), fp16 compute"),
        },
    ),
    "tfjs": TargetFormat(
        name="tfjs",
        suffix=".json",
        runtime="tfjs-node",
        toolchain="tensorflow",
        description="TF.js graph model (model.json + sharded weights) for browsers and Node",
        modes={
            "none": Precision("fp32", "float32 weights"),
            "fp16": Precision("fp16-weights", "float16 weight quantization, float32 compute"),
            "int8-dynamic": Precision("uint8-weights", "uint8 affine weight quantization, float32 compute"),
        },
    ),
}

UNSUPPORTED: dict[tuple[str, str], str] = {
    ("coreml", "int8"): "calibrating Core ML activations needs the Core ML runtime (macOS only); "
    "use int8-dynamic (int8 weights) or palettize6",
    ("tfjs", "int8"): "TF.js has no integer kernels; use int8-dynamic (uint8 weights)",
}


def support(target: str, mode: str) -> tuple[bool, str]:
    """Whether `target` accepts `mode`, and why not when it does not."""
    fmt = TARGETS[target]
    if mode in fmt.modes:
        return True, ""
    reason = UNSUPPORTED.get((target, mode))
    if reason is None:
        reason = f"{target} supports {', '.join(fmt.modes)}"
    return False, reason

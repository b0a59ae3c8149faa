"""ONNX quantizers (onnxruntime.quantization, onnxconverter-common), one function per mode.

Measured here (shared notes): dynamic quantization of Conv produces ConvInteger, 4-19x slower
than fp32 on CPU, so dynamic mode quantizes MatMul/Gemm only; static QDQ per-channel with
calibration is both the smallest and the fastest on CPU.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from converters.data import Dataset
from converters.quantize.calibration import DatasetReader

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Static:
    """Static QDQ int8 settings (names are onnxruntime.quantization.QuantType members)."""

    activations: str = "QUInt8"
    weights: str = "QInt8"
    reduce_range: bool = True  # weights in [-64, 64] (7 bits) instead of [-127, 127]
    per_channel: bool = True


# Why reduce_range: on x86 without VNNI (AVX2 such as Haswell..Zen 3, and AVX-512 without VNNI),
# ONNX Runtime's U8S8 kernels multiply with VPMADDUBSW, whose int16 pair sums saturate once
# 2 * 255 * |w| > 32767, i.e. |w| > 64. 7-bit weights can never saturate, so the int8 model computes
# the same numbers on every x86 class and the accuracy gate measured where edgekit converts holds on
# the device. Measured 2026-12-01 with `python -m converters.quantize.sweep` (ORT 1.32; host AVX-512
# VNNI; avx2 = QEMU Haswell, avx = QEMU SandyBridge; 360 eval samples; drop = top-1 pts vs fp32 on
# the same class; cosine vs fp32 on avx2; latency int8/fp32 on the host, 1 thread, batch 32):
#   setting              digits CNN                           MobileNet-style 16x16
#                        drop host/avx2/avx   cos     lat     drop host/avx2/avx   cos     lat
#   u8s8 (old default)   0.00 / 0.28 / 0.00   0.99806 0.72    0.00 / 2.22 / 0.00   0.98277 0.67
#   u8s8 reduce_range    0.00 / 0.00 / 0.00   0.99991 0.70    0.28 / 0.28 / 0.28   0.99966 0.66
#   u8u8                 0.28 / 0.28 / 0.28   0.99995 1.29    0.28 / 0.28 / 0.28   0.99983 1.13
#   s8s8                 0.00 / 0.28 / 0.00   0.99806 0.69    0.00 / 2.22 / 0.00   0.98277 0.66
#   u8s8 + ORT session.x64quantprecision=1 (runtime switch to U8U8): exact, lat 1.30 / 1.14
#   BERT-style encoder (tests/converters/real_models.py; MatMul/Gemm/Conv only, 128 eval): u8s8 drop
#   host 0.78 / avx2 2.34, cosine 0.99974 / 0.98975; reduce_range drop 0.00 / 0.00, cosine 0.99973 both.
# reduce_range and u8u8 give bit-identical outputs on all three classes (and a model quantized under
# QEMU AVX2 is byte-identical to one quantized here); u8u8 is slower than fp32, so reduce_range is the
# cheapest exact choice (size int8/fp32 0.31 / 0.37 either way). QInt8 activations give bit for bit the
# u8s8 outputs on every class, so they buy nothing; with QUInt8
# activations a MatMul of two activations (attention) runs ORT's U8U8 kernel, which does not
# saturate on AVX2 either (MatMulInteger 255 x 255 over 64 terms is exact under QEMU Haswell).
INT8_STATIC = Int8Static()


def to_fp16(src: Path, dest: Path) -> None:
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dest))


def to_int8_dynamic(src: Path, dest: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dest),
        op_types_to_quantize=["MatMul", "Gemm"],
        weight_type=QuantType.QInt8,
        per_channel=False,
    )


def to_int8_static(src: Path, dest: Path, calibration: Dataset, settings: Int8Static = INT8_STATIC) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edgekit-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            # ORT's symbolic shape inference drops a debug model (sym_shape_infer_temp.onnx + .data)
            # into the working directory when it gives up: keep it in our temp dir
            with contextlib.chdir(tmp):
                quant_pre_process(str(Path(src).resolve()), str(pre), skip_symbolic_shape=False)
        except Exception as e:  # pre-processing is an optimisation, not a requirement
            log.warning("quant_pre_process failed (%s); quantizing the model as is", e)
            pre = src
        named = Path(tmp) / "named.onnx"
        excluded = _name_nodes_and_find_softmax_inputs(pre, named)
        quantize_static(
            str(named),
            str(dest),
            DatasetReader(calibration),
            nodes_to_exclude=excluded,
            quant_format=QuantFormat.QDQ,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=QuantType[settings.activations],
            weight_type=QuantType[settings.weights],
            calibrate_method=CalibrationMethod.MinMax,
        )


# Producers of a Softmax input that carry an additive attention mask (scores + -10000 or -inf).
_MASK_OPS = {"Add", "Sub", "Where", "Mul", "Div"}


def _name_nodes_and_find_softmax_inputs(src: Path, dest: Path) -> list[str]:
    """Write `src` with every node named; return the nodes to keep in float: each Softmax and the
    op computing its input. One uint8 scale cannot hold attention scores next to an additive mask
    of -10000: quantized, a BERT-style encoder fell to cosine 0.07 (top-1 81% -> 15%); with these
    kept in float it matches (measured in tests/converters/test_real_models.py)."""
    model = onnx.load(str(src))
    producer = {}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}_edgekit"
        for out in node.output:
            producer[out] = node
    keep = []
    for node in model.graph.node:
        if node.op_type == "Softmax":
            keep.append(node.name)
            src_node = producer.get(node.input[0])
            if src_node is not None and src_node.op_type in _MASK_OPS:
                keep.append(src_node.name)
    onnx.save(model, str(dest))
    return keep

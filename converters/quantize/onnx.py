"""ONNX quantizers (onnxruntime.quantization, onnxconverter-common), one function per mode.

Measured here (shared notes): dynamic quantization of Conv produces ConvInteger, 4-19x slower
than fp32 on CPU, so dynamic mode quantizes MatMul/Gemm only; static QDQ per-channel with
calibration is both the smallest and the fastest on CPU.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx

from converters.data import Dataset
from converters.quantize.calibration import DatasetReader

log = logging.getLogger(__name__)


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


def to_int8_static(src: Path, dest: Path, calibration: Dataset) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edgekit-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        except Exception as e:  # pre-processing is an optimisation, not a requirement
            log.warning("quant_pre_process failed (%s); quantizing the model as is", e)
            pre = src
        quantize_static(
            str(pre),
            str(dest),
            DatasetReader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )

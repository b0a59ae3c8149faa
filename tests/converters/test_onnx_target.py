"""ONNX target, every mode, validated in ONNX Runtime against the fp32 reference."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from converters.pipeline import convert
from converters.report import Report

MODES = ["none", "fp16", "int8-dynamic", "int8"]


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory, digits_cnn, digits_npz):
    calib, ev = digits_npz
    out = tmp_path_factory.mktemp("onnx-digits")
    return convert(
        digits_cnn, targets=["onnx"], modes=MODES, out=out, calibration=calib, eval_data=ev, max_drop=0.5
    )


def _row(report: Report, mode: str):
    return next(a for a in report.artifacts if a.target == "onnx" and a.mode == mode)


def test_every_mode_ok_within_bounds(digits_report):
    assert digits_report.ok, [(a.mode, a.status, a.error) for a in digits_report.artifacts]
    assert digits_report.reference["top1"] > 0.95
    fp32 = _row(digits_report, "none")
    assert fp32.max_abs_err < 1e-4 and fp32.cosine > 0.99999
    assert _row(digits_report, "fp16").cosine > 0.9999
    for mode in ("int8-dynamic", "int8"):
        row = _row(digits_report, mode)
        assert row.cosine > 0.99, (mode, row.cosine)
        assert row.top1_drop_pts <= 0.5, (mode, row.top1_drop_pts)


def test_int8_static_is_small_and_really_quantized(digits_report, tmp_path):
    fp32, int8 = _row(digits_report, "none"), _row(digits_report, "int8")
    assert int8.bytes / fp32.bytes <= 0.35
    model = onnx.load(str(digits_report.out_dir + "/" + int8.main_file))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    dyn = onnx.load(str(digits_report.out_dir + "/" + _row(digits_report, "int8-dynamic").main_file))
    # Dynamic quantization stays off Conv: ConvInteger is many times slower than fp32 on CPU.
    assert "ConvInteger" not in {n.op_type for n in dyn.graph.node}
    assert "MatMulInteger" in {n.op_type for n in dyn.graph.node}


def test_report_card_and_ort_companions(digits_report):
    out = digits_report.out_dir
    data = json.loads(Path(out, "report.json").read_text())
    assert data["ok"] is True
    card = json.loads(Path(out, "model_card.json").read_text())
    assert card["inputs"][0]["name"] == "input" and card["inputs"][0]["layout"] == "NCHW"
    assert card["outputs"][0]["name"] == "logits"
    assert len(card["source"]["sha256"]) == 64
    assert card["task"] == "classification"
    assert json.loads(Path(out, "onnx", "model_card.json").read_text()) == card
    for row in digits_report.artifacts:
        assert row.sha256 and row.files[0].sha256 == row.sha256
        assert row.companions and row.companions[0].path.endswith(".ort")
        assert row.checks["companion:.ort"]["ok"] is True
        assert row.latency_ms and row.latency_ms > 0
        assert row.versions["onnxruntime"]


def test_mobilenetish_int8_static(mobilenetish, tmp_path):
    report = convert(
        mobilenetish["onnx"],
        targets=["onnx"],
        modes=["none", "int8"],
        out=tmp_path,
        calibration=mobilenetish["calib"],
        eval_data=mobilenetish["eval"],
    )
    assert report.ok, [(a.mode, a.status, a.error) for a in report.artifacts]
    int8 = _row(report, "int8")
    assert int8.top1_drop_pts <= 1.0
    assert int8.bytes / _row(report, "none").bytes <= 0.4


def test_torch_module_through_python_api(mobilenetish, tmp_path):
    import torch

    report = convert(
        mobilenetish["module"],
        example_inputs=torch.zeros(1, 1, 16, 16),
        targets=["onnx"],
        modes=["none"],
        out=tmp_path,
        eval_data=mobilenetish["eval"],
    )
    assert report.ok
    assert report.source["format"] == "torch"
    row = _row(report, "none")
    assert row.top1_drop_pts == 0.0 and row.max_abs_err < 1e-4

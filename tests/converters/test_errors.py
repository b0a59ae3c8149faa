"""Errors users will hit: one clear line, non-zero exit, no traceback, nothing else lost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converters.pipeline import convert
from edgekit.errors import DataError, EdgekitError, InvalidModelError
from edgekit.launch import run_cli


def test_truncated_onnx_is_a_clear_error(tmp_path, digits_cnn):
    bad = tmp_path / "half.onnx"
    bad.write_bytes(digits_cnn.read_bytes()[:5000])
    with pytest.raises(InvalidModelError, match="truncated"):
        convert(bad, targets=["onnx"], out=tmp_path / "out")
    proc = run_cli("convert", str(bad), "--target", "onnx", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "truncated" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_not_onnx_at_all(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_text("this is not a model")
    with pytest.raises(InvalidModelError):
        convert(bad, targets=["onnx"], out=tmp_path / "out")


def test_checker_failure_names_the_problem(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "dangling.onnx"
    onnx.save(model, str(path))
    with pytest.raises(InvalidModelError, match="checker"):
        convert(path, targets=["onnx"], out=tmp_path / "out")


def test_npz_with_wrong_input_names(tmp_path, digits_cnn):
    npz = tmp_path / "calib.npz"
    np.savez(npz, image=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"missing \['input'\].*unexpected \['image'\]"):
        convert(digits_cnn, targets=["onnx"], modes=["int8"], calibration=npz, out=tmp_path / "out")


def test_npz_with_wrong_shape(tmp_path, digits_cnn):
    npz = tmp_path / "calib.npz"
    np.savez(npz, input=np.zeros((4, 3, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"shape \[4, 3, 8, 8\]"):
        convert(digits_cnn, targets=["onnx"], modes=["int8"], calibration=npz, out=tmp_path / "out")


def test_int8_without_calibration_is_refused_not_randomly_calibrated(tmp_path, digits_cnn):
    with pytest.raises(DataError, match="needs calibration data"):
        convert(digits_cnn, targets=["onnx"], modes=["int8"], out=tmp_path / "out")
    assert not (tmp_path / "out" / "onnx").exists()


def test_max_drop_without_labels(tmp_path, digits_cnn):
    npz = tmp_path / "eval.npz"
    np.savez(npz, input=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match="labels"):
        convert(digits_cnn, targets=["onnx"], eval_data=npz, max_drop=1.0, out=tmp_path / "out")


def test_unknown_target_and_mode():
    with pytest.raises(EdgekitError, match="unknown target"):
        convert("sample:digits", targets=["tensorrt"])
    with pytest.raises(EdgekitError, match="no requested target supports --quantize palettize4"):
        convert("sample:digits", targets=["onnx"], modes=["palettize4"])


def test_missing_toolchain_names_the_install_command_and_keeps_other_targets(tmp_path):
    env = {"EDGEKIT_TOOLCHAINS": str(tmp_path / "no-toolchains")}
    out = tmp_path / "out"
    proc = run_cli(
        "convert",
        "sample:digits",
        "-t",
        "onnx",
        "-t",
        "tflite",
        "-t",
        "coreml",
        "--out",
        str(out),
        "--json",
        env=env,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    rows = {(a["target"], a["mode"]): a for a in report["artifacts"]}
    assert rows[("onnx", "none")]["status"] == "ok"
    assert (out / "onnx" / "model.onnx").exists()
    assert rows[("tflite", "none")]["status"] == "failed"
    assert "edgekit toolchain install tflite" in rows[("tflite", "none")]["error"]
    assert "edgekit toolchain install coreml" in rows[("coreml", "none")]["error"]


def test_max_drop_fails_the_command(tmp_path, digits_cnn, digits_npz):
    """A deliberately broken 'int8' calibration (all zeros) must be caught by the accuracy gate."""
    _, ev = digits_npz
    zeros = tmp_path / "zeros.npz"
    np.savez(zeros, input=np.zeros((50, 1, 8, 8), np.float32))
    report = convert(
        digits_cnn,
        targets=["onnx"],
        modes=["int8"],
        calibration=zeros,
        eval_data=ev,
        max_drop=0.5,
        out=tmp_path / "out",
    )
    row = report.artifacts[0]
    assert not report.ok
    assert row.status in ("accuracy-drop", "mismatch"), row
    assert row.top1_drop_pts > 0.5


def test_cli_json_is_pure_json(tmp_path):
    proc = run_cli(
        "convert",
        "sample:digits",
        "-t",
        "onnx",
        "-q",
        "none",
        "-q",
        "int8",
        "--out",
        str(tmp_path / "o"),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and len(report["artifacts"]) == 2
    assert Path(report["out_dir"], "report.json").exists()

"""`convert --freeze-input`: parameters exported as graph inputs become constants from the data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from converters.pipeline import convert
from edgekit.errors import DataError
from tests.converters import unusual


def _data(tmp_path, n: int = 4, vary_axes: bool = False):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)
    axes = np.tile(np.array([2, 3], np.int64), (n, 1))
    if vary_axes:
        axes[1] = [3, 2]
    path = tmp_path / "eval.npz"
    np.savez(
        path,
        x=rng.standard_normal((n, 1, 1, 6, 6)).astype(np.float32),
        W=np.repeat(w[None], n, axis=0),
        axes=axes,
    )
    return path


def test_frozen_inputs_become_constants_and_validate(tmp_path):
    model = unusual.parameter_inputs(tmp_path)
    out = tmp_path / "out"
    report = convert(model, targets=["onnx"], out=out, eval_data=_data(tmp_path), freeze_inputs=["W", "axes"])
    assert report.ok, report.to_dict()
    assert report.reference["frozen_inputs"] == ["W", "axes"]
    artifact = onnx.load(str(out / "onnx" / "model.onnx"))
    assert [i.name for i in artifact.graph.input] == ["x"]
    assert [i["name"] for i in json.loads((out / "model_card.json").read_text())["inputs"]] == ["x"]
    golden = np.load(out / "golden_input.npz")
    assert golden.files == ["x"]


def test_a_value_that_varies_is_data_not_a_parameter(tmp_path):
    model = unusual.parameter_inputs(tmp_path)
    with pytest.raises(DataError, match="axes: its value differs between samples"):
        convert(
            model,
            targets=["onnx"],
            out=tmp_path / "o",
            eval_data=_data(tmp_path, vary_axes=True),
            freeze_inputs=["axes"],
        )


def test_freezing_needs_data_and_a_real_input(tmp_path):
    model = unusual.parameter_inputs(tmp_path)
    with pytest.raises(DataError, match="values come from the data"):
        convert(model, targets=["onnx"], out=tmp_path / "o", freeze_inputs=["W"])
    with pytest.raises(DataError, match=r"no model input \['nope'\]"):
        convert(
            model, targets=["onnx"], out=tmp_path / "o", eval_data=_data(tmp_path), freeze_inputs=["nope"]
        )


def test_optimization_never_drops_an_input(tmp_path):
    model = unusual.reshape_by_input(tmp_path)
    data = tmp_path / "eval.npz"
    rng = np.random.default_rng(1)
    np.savez(data, data=rng.standard_normal((2, 3, 4, 5)).astype(np.float32), shape=np.full((2, 1), 60))
    report = convert(model, targets=["onnx"], out=tmp_path / "out", eval_data=data)
    assert report.ok, report.to_dict()
    card = json.loads((tmp_path / "out" / "model_card.json").read_text())
    assert [i["name"] for i in card["inputs"]] == ["data", "shape"]

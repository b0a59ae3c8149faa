"""`edgekit convert` on models not shaped like the sample: they validate, or stop with one clear line.

Every refusal is an EdgekitError whose message is one line (plus an optional hint line), and the
CLI exits 2 with no traceback. Every accepted model is validated in its runtime on values it can
take. Conversions to the toolchain targets are kept to a few representative models (slow).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from converters.pipeline import convert
from converters.shapes import parse_input_shape
from edgekit.errors import DataError, EdgekitError, InvalidModelError
from edgekit.launch import run_cli
from tests.converters import unusual


def one_line(e: BaseException) -> None:
    lines = str(e).splitlines()
    assert len(lines) <= 2, str(e)
    assert len(lines) == 1 or lines[1].startswith("  hint:"), str(e)
    assert "Traceback" not in str(e)


def refused(tmp_path, model, exc=EdgekitError, match: str | None = None, **kw):
    with pytest.raises(exc, match=match) as info:
        convert(model, out=tmp_path / "out", **{"targets": ["onnx"], **kw})
    one_line(info.value)
    return info.value


def test_cli_refusal_is_one_line_exit_2(tmp_path):
    model = unusual.dynamic_width(tmp_path)
    proc = run_cli("convert", str(model), "--target", "onnx", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert err[0].startswith("error: dynamic dims without a size: x axis 3 'W'"), proc.stderr
    assert "--input-shape x:" in proc.stderr


def test_missing_litert_hint_keeps_its_brackets(tmp_path):
    # rich markup once swallowed "[litert]" from this hint
    proc = run_cli("convert", str(tmp_path / "nope.onnx"), "--target", "onnx", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "model file not found" in proc.stderr
    from targets.runtimes.base import RuntimeUnavailableError

    assert "[litert]" in str(RuntimeUnavailableError("x", hint="pip install 'edgekit[litert]'"))


# ------------------------------------------------------------------ refused, with the reason named


def test_empty_graph(tmp_path):
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(tmp_path / "e.onnx"))
    refused(tmp_path, tmp_path / "e.onnx", InvalidModelError, "empty graph")


def test_custom_op_onnxruntime_cannot_run(tmp_path):
    e = refused(tmp_path, unusual.custom_op(tmp_path), EdgekitError)
    assert "Frobnicate" in str(e) or "com.example" in str(e)


def test_dynamic_dim_without_size_names_it(tmp_path):
    refused(tmp_path, unusual.dynamic_width(tmp_path), DataError, r"x axis 3 'W'")


def test_input_shape_unknown_name(tmp_path):
    refused(
        tmp_path, unusual.dynamic_width(tmp_path), EdgekitError, "unknown input", input_shapes=["y:1,3,8,8"]
    )


def test_input_shape_wrong_rank(tmp_path):
    refused(tmp_path, unusual.dynamic_width(tmp_path), EdgekitError, "3 dims given", input_shapes=["x:1,3,8"])


@pytest.mark.parametrize("bad", ["x:1,a", "x", "x:1,3,8,9..2", ":1,2"])
def test_input_shape_syntax(bad):
    with pytest.raises(EdgekitError) as info:
        parse_input_shape(bad)
    one_line(info.value)


def test_input_shape_contradicts_fixed_dim(tmp_path):
    refused(
        tmp_path, unusual.dynamic_width(tmp_path), EdgekitError, "fixed at 3", input_shapes=["x:1,4,8,16"]
    )


def test_integer_input_without_data_or_range(tmp_path):
    refused(tmp_path, unusual.lengths(tmp_path), DataError, r"integer input\(s\) n \(int64\)")


def test_fractional_values_for_integer_input(tmp_path):
    model = unusual.token_ids(tmp_path)
    np.savez(tmp_path / "ev.npz", ids=np.full((4, 5), 1.5))
    refused(tmp_path, model, DataError, "fractional", eval_data=tmp_path / "ev.npz")


def test_data_of_wrong_rank(tmp_path):
    model = unusual.no_batch_axis(tmp_path)
    np.savez(tmp_path / "ev.npz", x=np.zeros((4, 5), np.float32))
    refused(tmp_path, model, DataError, "give 4 dims", eval_data=tmp_path / "ev.npz")


def test_rows_not_a_multiple_of_a_fixed_batch(tmp_path):
    model = unusual.fixed_batch(tmp_path, 4)
    np.savez(tmp_path / "ev.npz", x=np.zeros((6, 3, 8, 8), np.float32))
    refused(
        tmp_path,
        model,
        DataError,
        "not a multiple of the model's fixed batch 4",
        eval_data=tmp_path / "ev.npz",
    )


def test_inputs_with_different_sample_counts(tmp_path):
    model = unusual.state_inputs(tmp_path)
    np.savez(tmp_path / "ev.npz", x=np.zeros((3, 4), np.float32), state=np.zeros((2, 2, 1, 4), np.float32))
    refused(tmp_path, model, DataError, "different sample counts", eval_data=tmp_path / "ev.npz")


def test_unreadable_npz(tmp_path):
    (tmp_path / "ev.npz").write_bytes(b"PK\x03\x04 not really")
    refused(
        tmp_path,
        unusual.no_batch_axis(tmp_path),
        DataError,
        "not a readable .npz",
        eval_data=tmp_path / "ev.npz",
    )


def test_npz_with_zero_samples(tmp_path):
    np.savez(tmp_path / "ev.npz", x=np.zeros((0, 3, 4, 5), np.float32))
    refused(tmp_path, unusual.no_batch_axis(tmp_path), DataError, "no samples", eval_data=tmp_path / "ev.npz")


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "dir").mkdir()
    refused(tmp_path, tmp_path / "dir", InvalidModelError, "cannot tell what")


# ------------------------------------------------------------------ accepted and validated (ONNX Runtime)


def rows(report):
    return {(a.target, a.mode): a for a in report.artifacts}


def test_no_batch_axis_validates(tmp_path):
    rep = convert(unusual.no_batch_axis(tmp_path), targets=["onnx"], out=tmp_path / "o")
    assert rep.ok and rep.reference["input_shapes"] == {"x": [3, 4, 5]}
    assert json.loads((tmp_path / "o" / "model_card.json").read_text())["inputs"][0]["shape"] == [3, 4, 5]


def test_static_batch_1_takes_a_stack_of_rows_for_int8(tmp_path):
    model = unusual.fixed_batch(tmp_path, 1)
    x = np.random.default_rng(0).random((64, 3, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    rep = convert(
        model,
        targets=["onnx"],
        modes=["none", "int8"],
        calibration=tmp_path / "calib.npz",
        out=tmp_path / "o",
    )
    assert rep.ok, [a.error for a in rep.artifacts]
    assert rep.reference["samples"] == 64
    # the golden input is one whole input, as the model takes it
    assert np.load(tmp_path / "o" / "golden_input.npz")["x"].shape == (1, 3, 8, 8)


def test_static_batch_4_groups_rows(tmp_path):
    model = unusual.fixed_batch(tmp_path, 4)
    np.savez(tmp_path / "ev.npz", x=np.random.default_rng(1).random((8, 3, 8, 8), dtype=np.float32))
    rep = convert(model, targets=["onnx"], eval_data=tmp_path / "ev.npz", out=tmp_path / "o")
    assert rep.ok and rep.reference["samples"] == 2
    assert rows(rep)[("onnx", "none")].outputs["y"].shape == (2, 4, 4)


def test_token_ids_get_values_the_table_has(tmp_path):
    rep = convert(unusual.token_ids(tmp_path), targets=["onnx"], out=tmp_path / "o")
    assert rep.ok
    ids = np.load(tmp_path / "o" / "golden_input.npz")["ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 50


def test_state_inputs_as_a_stack_of_whole_inputs(tmp_path):
    model = unusual.state_inputs(tmp_path)
    rng = np.random.default_rng(2)
    np.savez(
        tmp_path / "ev.npz",
        x=rng.random((5, 4), dtype=np.float32),
        state=rng.random((5, 2, 1, 4), dtype=np.float32),
    )
    rep = convert(model, targets=["onnx"], eval_data=tmp_path / "ev.npz", out=tmp_path / "o")
    assert rep.ok
    out = rows(rep)[("onnx", "none")].outputs
    assert out["new_state"].shape == (5, 2, 1, 4) and out["y"].shape == (5, 4)


def test_bool_and_float_inputs(tmp_path):
    rep = convert(unusual.bool_mask(tmp_path), targets=["onnx"], out=tmp_path / "o")
    assert rep.ok


def test_model_without_inputs(tmp_path):
    rep = convert(unusual.no_inputs(tmp_path), targets=["onnx"], out=tmp_path / "o")
    assert rep.ok
    np.testing.assert_array_equal(rows(rep)[("onnx", "none")].outputs["y"][0], np.arange(6))


def test_input_shape_pins_only_what_targets_need(tmp_path):
    rep = convert(
        unusual.dynamic_width(tmp_path),
        targets=["onnx"],
        input_shapes={"x": [1, 3, 8, 24]},
        out=tmp_path / "o",
    )
    assert rep.ok
    assert rows(rep)[("onnx", "none")].input_shapes == {"x": ["N", 3, 8, "W"]}  # ONNX keeps dynamic dims
    card = json.loads((tmp_path / "o" / "model_card.json").read_text())
    assert card["inputs"][0]["shape"] == ["N", 3, 8, "W"]


# ------------------------------------------------------------------ toolchain targets (slow)


def _needs(name: str) -> None:
    from converters.toolchains.manager import resolve

    if not resolve(name).installed():
        pytest.skip(f"{name} toolchain not installed: run `edgekit toolchain install {name}`")


@pytest.mark.slow
def test_exporter_names_keep_public_names_on_every_target(tmp_path):
    _needs("tflite")
    _needs("coreml")
    rep = convert(
        unusual.exporter_names(tmp_path), targets=["onnx", "tflite", "tfjs", "coreml"], out=tmp_path / "o"
    )
    assert rep.ok, {k: v.error for k, v in rows(rep).items()}
    for a in rep.artifacts:
        assert set(a.outputs) == {"out::y"}, a.target
    coreml = rows(rep)[("coreml", "none")]
    assert coreml.checks["name_map"] == {"input.1": "input_1", "out::y": "out__y"}


@pytest.mark.slow
def test_no_batch_axis_on_tflite_and_tfjs(tmp_path):
    _needs("tflite")
    rep = convert(unusual.no_batch_axis(tmp_path), targets=["tflite", "tfjs"], out=tmp_path / "o")
    assert rep.ok, {k: v.error for k, v in rows(rep).items()}


@pytest.mark.slow
def test_dynamic_width_pinned_for_tflite_range_for_coreml(tmp_path):
    _needs("tflite")
    _needs("coreml")
    rep = convert(
        unusual.dynamic_width(tmp_path),
        targets=["tflite", "coreml"],
        input_shapes=["x:1,3,8,16..64"],
        out=tmp_path / "o",
    )
    assert rep.ok, {k: v.error for k, v in rows(rep).items()}
    tfl, cml = rows(rep)[("tflite", "none")], rows(rep)[("coreml", "none")]
    assert tfl.input_shapes == {"x": [1, 3, 8, 16]} and "pin-input-shapes" in tfl.legalized
    # onnx2tf leaves [N,C,W] channels-last; the runtime adapter restores the model's layout
    assert tfl.checks["output_perms"] == {"y": [0, 2, 1]}
    assert cml.input_shapes == {"x": [1, 3, 8, [16, 64]]}
    spec_in = cml.checks["spec_inputs"][0]
    assert spec_in["ranges"][3] == [16, 64]


@pytest.mark.slow
def test_timeout_is_a_row_not_a_hang(tmp_path):
    _needs("tflite")
    rep = convert(
        unusual.no_batch_axis(tmp_path), targets=["onnx", "tflite"], timeout=0.5, out=tmp_path / "o"
    )
    assert rows(rep)[("onnx", "none")].status == "ok"
    t = rows(rep)[("tflite", "none")]
    assert t.status == "failed" and t.error_kind == "timeout", t.error


def test_inspect_names_dynamic_dims_ranges_and_passes(tmp_path):
    from converters.inspect import inspect_model

    info = inspect_model(unusual.dynamic_width(tmp_path))
    assert info["inputs"][0]["dynamic_axes"] == [0, 3]
    assert info["targets"]["tflite"]["needs_shapes"] == ["x axis 3"]
    assert info["targets"]["onnx"]["needs_shapes"] == []
    assert info["ops"] == {"Conv": 1, "ReduceMean": 1}
    ids = inspect_model(unusual.token_ids(tmp_path))
    assert ids["inputs"][0]["valid_range"] == [0, 50]
    proc = run_cli("inspect", str(unusual.exporter_names(tmp_path)), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["inputs"][0]["name"] == "input.1"


def test_scalar_input(tmp_path):
    model = unusual.scalar_input(tmp_path)
    np.savez(tmp_path / "ev.npz", x=np.ones((4, 3), np.float32), t=np.arange(4, dtype=np.float32))
    rep = convert(model, targets=["onnx"], eval_data=tmp_path / "ev.npz", out=tmp_path / "o")
    assert rep.ok, [a.error for a in rep.artifacts]
    np.testing.assert_array_equal(rows(rep)[("onnx", "none")].outputs["y"][:, 0], np.arange(4))

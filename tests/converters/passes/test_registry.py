"""The registry, DEFAULT_PASSES and legalize(): every listed pass exists and is written for its
target, failures never escape, and legalize() reports what changed the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from converters.legalize import legalize
from converters.passes import REGISTRY, Pass, run_passes
from converters.passes.registry import add
from edgekit.formats import TARGETS
from tests.converters.passes.helpers import model, op_types, run, tensor

DEFAULT_PASSES = {t: row.passes for t, row in TARGETS.items()}  # the target table's pass lists


@pytest.mark.parametrize("target", sorted(DEFAULT_PASSES))
def test_default_passes_exist_and_fit_their_target(target: str) -> None:
    names = DEFAULT_PASSES[target]
    assert len(set(names)) == len(names), "a pass listed twice"
    for name in names:
        assert name in REGISTRY, name
        assert target in REGISTRY[name].targets, (name, target)


def test_a_failing_pass_is_skipped_and_leaves_the_model_as_it_was() -> None:
    def broken(m: onnx.ModelProto) -> bool:
        del m.graph.node[:]  # damage first, then fail: the runner must restore the model
        raise RuntimeError("boom")

    add(Pass("test-broken", frozenset({"tflite"}), broken))
    try:
        m = model(
            [helper.make_node("Relu", ["x"], ["y"])],
            [tensor("x", np.float32, [3])],
            [tensor("y", np.float32, [3])],
        )
        assert run_passes(m, "tflite", ["test-broken"]) == []
        assert op_types(m) == {"Relu"}
    finally:
        del REGISTRY["test-broken"]


def test_a_pass_is_refused_for_a_target_it_is_not_written_for() -> None:
    m = model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [tensor("x", np.float32, [3])],
        [tensor("y", np.float32, [3])],
    )
    with pytest.raises(ValueError, match="not written for target"):
        run_passes(m, "coreml", ["sanitize-node-names"])


def test_legalize_reports_the_passes_that_changed_the_model(tmp_path: Path) -> None:
    """A transformer-ish block: Gelu written with Erf, an Acosh, a SAME conv, names with ':'.
    For tflite: Erf and Acosh are decomposed (a BERT encoder's Erf came out FlexErf), pads made explicit."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="enc:conv", auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Erf", ["c"], ["e"], name="enc:erf"),
        helper.make_node("Abs", ["e"], ["a"]),
        helper.make_node("Add", ["a", "one"], ["a1"]),
        helper.make_node("Acosh", ["a1"], ["y"], name="enc:acosh"),
    ]
    m = model(
        nodes,
        [tensor("x", np.float32, [1, 2, 9, 9])],
        [tensor("y", np.float32, [1, 2, 5, 5])],
        {"w": rng.standard_normal((2, 2, 3, 3)).astype(np.float32), "one": np.float32(1.0)},
    )
    src, dest = tmp_path / "m.onnx", tmp_path / "tflite.onnx"
    onnx.save(m, src)
    applied = legalize(src, dest, "tflite")
    # fold-constants turns the decomposition's Constant nodes into initializers
    assert applied == [
        "sanitize-node-names",
        "decompose-Acosh",
        "decompose-Erf",
        "explicit-pads",
        "fold-constants",
    ], applied
    out = onnx.load(dest)
    onnx.checker.check_model(out, full_check=True)
    assert "Acosh" not in op_types(out) and "Erf" not in op_types(out)
    assert all(":" not in n.name for n in out.graph.node)
    assert [i.name for i in out.graph.input] == ["x"] and [o.name for o in out.graph.output] == ["y"]
    x = rng.standard_normal((1, 2, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(run(out, {"x": x})[0], run(m, {"x": x})[0], rtol=2e-6, atol=1e-6)


def test_onnx_target_only_inlines_local_functions(tmp_path: Path) -> None:
    m = model(
        [helper.make_node("Acosh", ["x"], ["y"])],
        [tensor("x", np.float32, [3])],
        [tensor("y", np.float32, [3])],
    )
    onnx.save(m, tmp_path / "m.onnx")
    assert legalize(tmp_path / "m.onnx", tmp_path / "o.onnx", "onnx") == []
    assert op_types(onnx.load(tmp_path / "o.onnx")) == {"Acosh"}

"""The judge is judged: ONNX Runtime's fp32 outputs against ONNX's reference evaluator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from converters import speccheck
from converters.coverage import cases
from converters.pipeline import convert


def one_op(path: Path, op: str, n_nodes: int = 1, domain: str = "") -> Path:
    nodes = [helper.make_node(op, [f"t{i}"], [f"t{i + 1}"], domain=domain) for i in range(n_nodes)]
    nodes[-1].output[0] = "y"
    nodes[0].input[0] = "x"
    for i, nd in enumerate(nodes[1:], 1):
        nd.input[0] = f"t{i}"
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(g, opset_imports=opsets), path)
    return path


def ort_run(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feed), strict=True))


X = {"x": np.array([[-1.0, 0.5, 2.0], [3.0, -0.25, np.nan]], np.float32)}


def test_agreeing_runtime_agrees(tmp_path):
    m = one_op(tmp_path / "relu.onnx", "Relu")
    assert speccheck.check(m, X, ort_run(m, X)).status == "agrees"


def test_outputs_off_by_more_than_the_conformance_tolerance_disagree(tmp_path):
    m = one_op(tmp_path / "relu.onnx", "Relu")
    y = ort_run(m, X)["y"].copy()
    y[0, 2] += 2e-3  # |2.0| x rtol 1e-3 + atol 1e-4 = 2.1e-3 allowed
    assert speccheck.check(m, X, {"y": y}).status == "agrees"
    y[0, 2] += 1e-3
    r = speccheck.check(m, X, {"y": y})
    assert (r.status, r.output) == ("disagrees", "y") and abs(r.max_abs - 3e-3) < 1e-6


def test_nan_pattern_and_shape_must_match(tmp_path):
    m = one_op(tmp_path / "relu.onnx", "Relu")
    y = ort_run(m, X)["y"]
    assert speccheck.check(m, X, {"y": np.nan_to_num(y)}).max_abs == float("inf")
    assert speccheck.check(m, X, {"y": y.reshape(3, 2)}).status == "disagrees"


def test_large_graphs_and_foreign_domains_are_skipped_with_a_reason(tmp_path):
    big = one_op(tmp_path / "big.onnx", "Relu", n_nodes=speccheck.MAX_NODES + 1)
    r = speccheck.check(big, X, ort_run(big, X))
    assert r.status == "skipped" and "nodes" in r.reason
    foreign = one_op(tmp_path / "ms.onnx", "Gelu", domain="com.microsoft")
    r = speccheck.check(foreign, X, {"y": np.zeros((2, 3), np.float32)})
    assert r.status == "skipped" and "com.microsoft" in r.reason
    r = speccheck.check(big, {"x": np.zeros((300, 300), np.float32)}, {})
    assert r.status == "skipped"


def test_convert_never_calls_ok_what_the_reference_got_wrong(tmp_path):
    """ONNX's MaxUnpool node test: whatever ONNX Runtime's verdict, convert's agrees with the evaluator's."""
    (case,) = cases.collect({"MaxUnpool"})
    folder = tmp_path / "case"
    model = cases.write(case, folder) / cases.MODEL_FILE
    feed = dict(case.inputs)
    disagree = speccheck.check(model, feed, ort_run(model, feed)).status == "disagrees"
    report = convert(
        model,
        targets=["onnx"],
        modes=["none"],
        out=tmp_path / "out",
        eval_data=cases.eval_data(folder),
        freeze_inputs=cases.frozen(folder),
    )
    row = report.artifacts[0]
    assert report.reference["spec_check"]["status"] == ("disagrees" if disagree else "agrees")
    if disagree:
        assert (row.status, row.error_kind) == ("mismatch", "reference_disagrees")
        assert "onnx.reference" in row.error
    else:
        assert row.status == "ok"

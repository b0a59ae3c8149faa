"""The conformance matrix (converters/coverage) and the persistent toolchain workers it runs on.

Fast subset for CI: the selection rules, the classification (ok-but-wrong caught), the worker
protocol (reuse, timeout, crash, recycling) on a stdlib worker, and a handful of real cases
through edgekit's pipeline per target. The whole matrix is `make coverage` (docs/coverage.md).
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converters.coverage import cases, classify
from converters.report import ArtifactReport
from converters.toolchains import manager
from converters.toolchains.manager import WORKERS, PersistentWorker, WorkerTimeoutError
from edgekit.errors import BackendError, DataError, UnsupportedOperatorError

# ---------------------------------------------------------------------------------- selection


def _one_node(op: str, in_type: int = TensorProto.FLOAT, nodes: int = 1) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", in_type, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    chain = [
        helper.make_node(op, ["x" if i == 0 else f"t{i}"], [f"t{i + 1}" if i < nodes - 1 else "y"])
        for i in range(nodes)
    ]
    return helper.make_model(helper.make_graph(chain, "g", [x], [y]))


def test_eligibility_rules():
    assert cases.eligible("test_relu", _one_node("Relu"))
    assert cases.eligible(
        "test_equal_bool", _one_node("Equal", TensorProto.BOOL)
    )  # bool is a tensor type edge targets have
    assert not cases.eligible("test_relu_expanded", _one_node("Relu"))
    assert not cases.eligible("test_softmax_expanded_ver18", _one_node("Softmax"))
    assert not cases.eligible("test_cast_FLOAT_to_BFLOAT16", _one_node("Cast"))
    assert not cases.eligible("test_cast_FLOAT_to_FLOAT8E4M3FN", _one_node("Cast"))
    assert not cases.eligible("test_dequantizelinear_uint4", _one_node("DequantizeLinear"))
    assert not cases.eligible("test_relu_str", _one_node("Relu", TensorProto.STRING))  # by type, not name
    assert not cases.eligible("test_relu_twice", _one_node("Relu", nodes=2))


def test_preference_order():
    names = [
        "test_reduce_max_empty_set",
        "test_reduce_max_bool_inputs",
        "test_reduce_max_do_not_keepdims_example",
    ]
    assert min(names, key=lambda n: cases.preference("ReduceMax", n)) == "test_reduce_max_bool_inputs"
    names = ["test_relu_expanded_x", "test_relu", "test_re"]
    assert min(names, key=lambda n: cases.preference("Relu", n)) == "test_relu"
    names = ["test_globalaveragepool_precomputed", "test_globalaveragepool"]
    assert min(names, key=lambda n: cases.preference("GlobalAveragePool", n)) == "test_globalaveragepool"
    assert (
        min(["test_a_empty", "test_a_longer_name"], key=lambda n: cases.preference("A", n))
        == "test_a_longer_name"
    )


@pytest.fixture(scope="module")
def all_cases() -> list[cases.Case]:
    return cases.collect()


def test_collect_one_case_per_op(all_cases):
    keys = [c.key for c in all_cases]
    assert len(keys) == len(set(keys))
    # onnx 1.23 generates 189 (the issue counted 187 with onnx 1.19); a big drop means a broken filter
    assert len(all_cases) >= 180, len(all_cases)
    by_key = {c.key: c for c in all_cases}
    assert by_key["Relu"].name == "test_relu"
    assert by_key["Conv"].name.startswith("test_conv")
    assert "ai.onnx.ml.Binarizer" in by_key
    for c in all_cases:
        assert len(c.model.graph.node) == 1 and not c.name.endswith("_expanded")
        assert set(c.inputs) == {i.name for i in c.model.graph.input}


def test_written_case_follows_the_data_convention(all_cases, tmp_path):
    case = next(c for c in all_cases if c.key == "Add")
    folder = cases.write(case, tmp_path / case.name)
    with np.load(folder / cases.EVAL_FILE) as npz:
        for name, x in case.inputs.items():
            assert npz[name].shape == (1, *x.shape)  # a stack of one whole input
            np.testing.assert_array_equal(npz[name][0], x)
    assert cases.load_expected(folder).keys() == case.expected.keys()
    onnx.checker.check_model(onnx.load(str(folder / cases.MODEL_FILE)))


# ---------------------------------------------------------------------------------- classification


def _row(status: str, outputs=None, error=None, error_kind=None) -> ArtifactReport:
    row = ArtifactReport("tflite", "none", "fp32", status, runtime="litert", error=error)
    row.error_kind = error_kind
    row.outputs = outputs
    return row


def test_classification_of_rows():
    expected = {"y": np.array([1.0, 2.0, 3.0], np.float32)}
    close = {"y": (expected["y"] + 5e-5)[None]}  # within atol 1e-4
    off = {"y": (expected["y"] * 1.01)[None]}  # 1% off: beyond rtol 1e-3

    o = classify.from_row(_row("ok", close), expected)
    assert (o.status, o.ok_but_wrong) == (classify.MATCHED, False)

    o = classify.from_row(_row("ok", off), expected)
    assert (o.status, o.kind, o.ok_but_wrong) == (classify.MISMATCH, "ok_but_wrong", True)

    o = classify.from_row(_row("ok", {"y": expected["y"][None, None]}), expected)  # right values, wrong shape
    assert o.ok_but_wrong and "shape" in o.reason

    o = classify.from_row(_row("mismatch", off, "outputs differ", "mismatch"), expected)
    assert (o.status, o.ok_but_wrong) == (classify.MISMATCH, False)

    msg = "tflite: unsupported operator Erf (node 'n0'): onnx2tf has no converter for it"
    o = classify.from_row(_row("failed", error=msg, error_kind="unsupported_op"), expected)
    assert (o.status, o.reason) == (classify.REFUSED, "unsupported op Erf")

    o = classify.from_row(
        _row("failed", error="onnx2tf_worker.py timed out after 120s", error_kind="timeout"), expected
    )
    assert (o.status, o.kind) == (classify.FAILED, "timeout")

    o = classify.from_row(_row("ok", None), expected)  # nothing to check: never counted as matched
    assert o.status == classify.FAILED


def test_classification_of_exceptions():
    o = classify.from_exception(UnsupportedOperatorError("Erf", "n0", "tflite", "no converter"))
    assert (o.status, o.kind, o.reason) == (classify.REFUSED, "unsupported_op", "unsupported op Erf")
    o = classify.from_exception(DataError("eval.npz: input 'x' has shape [2], the model takes [3]"))
    assert (o.status, o.kind) == (classify.REFUSED, "data")
    o = classify.from_exception(ValueError("zero-dimensional arrays cannot be concatenated"))
    assert (o.status, o.kind) == (classify.FAILED, "traceback")


def test_nan_and_integer_outputs_compare_exactly():
    ok, _, _ = classify.compare({"y": np.array([np.nan, 1.0])}, {"y": np.array([np.nan, 1.0])})
    assert ok
    ok, _, why = classify.compare({"y": np.array([1, 3])}, {"y": np.array([1, 2])})
    assert not ok and "not allclose" in why


def test_without_passes_leaves_out_only_those(monkeypatch):
    import converters.legalize as legalize
    from converters.coverage.runner import without_passes

    monkeypatch.setattr(legalize, "TARGETS", legalize.TARGETS)  # restored after the test
    full = legalize.TARGETS["tflite"].passes
    assert "fold-constants" in full and "explicit-pads" in full
    without_passes(["fold-constants"])
    assert legalize.TARGETS["tflite"].passes == tuple(p for p in full if p != "fold-constants")
    without_passes(["all"])
    assert all(not row.passes for row in legalize.TARGETS.values())


# ---------------------------------------------------------------------------------- persistent workers

ECHO_WORKER = textwrap.dedent(
    f"""
    import os, sys, time
    sys.path.insert(0, {str(WORKERS)!r})
    from _worker import main

    def handle(req):
        action = req["action"]
        print("chatter on stdout")  # must not corrupt the reply channel
        os.write(1, b"raw bytes on fd 1\\n")
        if action == "sleep":
            time.sleep(req["seconds"])
        if action == "die":
            print("about to die", file=sys.stderr, flush=True)
            os._exit(7)
        if action == "cwd":
            os.chdir("/")
        return {{"pid": os.getpid(), "cwd": os.getcwd()}}

    if __name__ == "__main__":
        main(handle)
    """
)


@pytest.fixture
def echo(tmp_path) -> Path:
    script = tmp_path / "echo_worker.py"
    script.write_text(ECHO_WORKER)
    return script


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_persistent_worker_reuses_one_process(echo, tmp_path):
    w = PersistentWorker(sys.executable, echo)
    try:
        a = w.call({"action": "echo"}, timeout=30).data
        b = w.call({"action": "cwd"}, timeout=30).data
        c = w.call({"action": "echo"}, timeout=30).data
        assert a["ok"] and b["ok"] and c["ok"]
        assert a["pid"] == b["pid"] == c["pid"] and w.starts == 1
        assert c["cwd"] == a["cwd"]  # a handler's chdir does not leak into the next request
    finally:
        w.shutdown()
    assert not _alive(a["pid"])


def test_persistent_worker_timeout_kills_and_restarts(echo):
    w = PersistentWorker(sys.executable, echo)
    try:
        first = w.call({"action": "echo"}, timeout=30).data["pid"]
        t0 = time.monotonic()
        with pytest.raises(WorkerTimeoutError, match=r"timed out after 0\.5s"):
            w.call({"action": "sleep", "seconds": 60}, timeout=0.5)
        assert time.monotonic() - t0 < 5
        assert not _alive(first)
        again = w.call({"action": "echo"}, timeout=30).data["pid"]
        assert again != first and w.starts == 2
    finally:
        w.shutdown()


def test_persistent_worker_crash_is_reported_with_its_output(echo):
    w = PersistentWorker(sys.executable, echo)
    try:
        with pytest.raises(BackendError, match="exited with code 7") as e:
            w.call({"action": "die"}, timeout=30)
        assert "about to die" in str(e.value)
        assert w.call({"action": "echo"}, timeout=30).data["ok"]
    finally:
        w.shutdown()


def test_persistent_worker_recycles_after_max_requests(echo):
    w = PersistentWorker(sys.executable, echo, max_requests=2)
    try:
        pids = [w.call({"action": "echo"}, timeout=30).data["pid"] for _ in range(3)]
        assert pids[0] == pids[1] != pids[2]
    finally:
        w.shutdown()


def test_time_limit_bounds_worker_calls():
    with manager.time_limit(0.0), pytest.raises(WorkerTimeoutError, match="timed out"):
        manager.run_worker("tflite", "onnx2tf_worker.py", {})


# ---------------------------------------------------------------------------------- real cases

# (op, target, status, words the reason must contain). Chosen to be stable: plain ops every
# target converts, and ops a target has no converter for, named in the refusal.
REAL = [
    ("Relu", "onnx", classify.MATCHED, ""),
    ("Relu", "tflite", classify.MATCHED, ""),
    ("Add", "tflite", classify.MATCHED, ""),
    ("Relu", "tfjs", classify.MATCHED, ""),
    ("Relu", "coreml", classify.MATCHED, ""),
    ("Add", "coreml", classify.MATCHED, ""),
    ("NonMaxSuppression", "coreml", classify.REFUSED, "NonMaxSuppression"),
    ("TfIdfVectorizer", "coreml", classify.REFUSED, "TfIdfVectorizer"),
]


def _require_toolchains() -> None:
    for name in ("tflite", "coreml"):
        if not manager.resolve(name).installed():
            pytest.skip(f"{name} toolchain not installed: run `make setup-test`")


@pytest.fixture(scope="module")
def case_dirs(all_cases, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("coverage-cases")
    wanted = {op for op, *_ in REAL}
    return {c.key: cases.write(c, root / c.name) for c in all_cases if c.key in wanted}


@pytest.fixture(scope="module")
def runner():
    from converters.coverage.runner import CaseRunner

    _require_toolchains()
    r = CaseRunner(timeout=120)
    yield r
    r.close()


@pytest.mark.parametrize(("op", "target", "status", "words"), REAL, ids=[f"{o}-{t}" for o, t, *_ in REAL])
def test_real_case(runner, case_dirs, tmp_path, op, target, status, words):
    outcome = runner.run(case_dirs[op], target, tmp_path / "out")
    assert outcome.status == status, outcome
    assert words in outcome.reason
    assert not outcome.ok_but_wrong
    if status == classify.MATCHED and target == "coreml":
        assert outcome.runtime.endswith("(simulated)")  # labelled: not Core ML kernels


def test_case_time_limit_is_a_failed_row(case_dirs, tmp_path):
    """A conversion that runs out of time is reported as a timeout; the run goes on."""
    from converters.coverage.runner import CaseRunner

    _require_toolchains()
    r = CaseRunner(timeout=0.5)  # far less than starting TensorFlow takes
    try:
        outcome = r.run(case_dirs["Relu"], "tflite", tmp_path / "out")
    finally:
        r.close()
    assert (outcome.status, outcome.kind) == (classify.FAILED, "timeout"), outcome

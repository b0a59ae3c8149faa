"""Drift telemetry's cost per request, one command: `.venv/bin/python bench/drift.py [--json]`.

In-process Engine.infer p50 on a small classifier (784 -> 10, softmax: compute is tiny, so the
summary's share is at its largest) and on a 784-1024-1024-10 MLP, with the drift recorder on, over the same with it off (a
recorder that does nothing), measured in the same run, interleaved in rounds so drift of the
machine hits both alike. Prints the ratio and the added microseconds per request, at batch 1
and batch 32 (goal: <= 1.10x on the MLP; on the bare classifier the added microseconds are
the figure, its compute being about 20 us).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import itertools

from agent.drift import DriftRecorder
from agent.engine import Engine
from agent.models import ModelRegistry, load_model
from edgekit import drift as D


class NoDrift:
    def observe_inputs(self, *_a: object) -> None:
        pass

    def observe_outputs(self, *_a: object) -> None:
        pass


def build(path: Path, hidden: int) -> None:
    """784 -> 10 softmax classifier; with `hidden`, two ReLU layers of that width in between."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    widths = [784, *([hidden] * 2 if hidden else []), 10]
    nodes, inits, prev = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.05, size=(a, b)).astype(np.float32), f"W{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"W{i}"], [f"m{i}"]))
        prev = f"m{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    nodes.append(helper.make_node("Softmax", [prev], ["y"], axis=1))
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 784])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def p50_us(engine: Engine, x: np.ndarray, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        engine.infer("small", {"x": x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def measure(batch: int, hidden: int, rounds: int, n: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    calib = rng.normal(0, 1, size=(500, 1, 784)).astype(np.float32)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "small.onnx"
        build(path, hidden)
        model = load_model("small", path, "1")
        z = calib.reshape(-1, 784)
        model.extra["provenance"] = {
            "drift": D.baseline({"x": calib}, {"y": model.run({"x": z})["y"][:, None]}, True)
        }
        registry = ModelRegistry()
        registry.put(model)
        engine = Engine(registry)
        on, off = DriftRecorder(share=1.0), NoDrift()  # the cost of summarising every request
        x = rng.normal(0, 1, size=(batch, 784)).astype(np.float32)
        with_drift, without = [], []
        for _ in range(rounds):
            engine.drift = off  # type: ignore[assignment]
            without.append(p50_us(engine, x, n))
            engine.drift = on
            with_drift.append(p50_us(engine, x, n))
        engine.close()
        assert on.report() is not None
    a, b = statistics.median(with_drift), statistics.median(without)
    return {
        "batch": batch,
        "hidden": hidden,
        "p50_us_with": round(a, 1),
        "p50_us_without": round(b, 1),
        "ratio": round(a / b, 3),
        "added_us": round(a - b, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rounds, n = (3, 300) if args.quick else (7, 1000)
    results = [measure(b, h, rounds, n) for h in (0, 1024) for b in (1, 32)]
    if args.json:
        print(json.dumps(results))
        return
    for r in results:
        print(
            f"hidden {r['hidden']:>4}, batch {r['batch']:>2}: p50 {r['p50_us_with']} us with drift / {r['p50_us_without']} us without"
            f" = {r['ratio']}x, +{r['added_us']} us per request"
        )


if __name__ == "__main__":
    main()

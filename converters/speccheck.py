"""Is the judge right? ONNX Runtime's fp32 outputs checked against ONNX's own reference evaluator.

Every artifact is judged against ONNX Runtime on the source model. Where ONNX Runtime itself departs
from the ONNX specification (measured by the conformance matrix: DFT, MaxUnpool), an artifact can
match its judge and still compute the wrong thing. `onnx.reference.ReferenceEvaluator` is the
specification written in numpy: too slow for real networks, fine for small graphs, which is where
one operator's deviation is not averaged away. So small graphs are checked on one sample, with the
conformance suite's own tolerance; larger ones, and graphs the evaluator cannot run, are skipped
and say so.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

log = logging.getLogger(__name__)

# ONNX's backend test tolerance (onnx/backend/test/runner): the matrix classifies with it too.
RTOL, ATOL = 1e-3, 1e-4
MAX_NODES = 16  # the evaluator is numpy loops: bounded so a conversion never waits on it
MAX_ELEMENTS = 1 << 16  # per sample, inputs summed


@dataclass(frozen=True)
class SpecCheck:
    status: str  # agrees | disagrees | skipped
    reason: str = ""
    output: str = ""
    max_abs: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", None)}


def check(model_path: Path, feed: dict[str, np.ndarray], ort_outputs: dict[str, np.ndarray]) -> SpecCheck:
    """Compare ONNX Runtime's outputs for `feed` with the reference evaluator's."""
    model = onnx.load(str(model_path), load_external_data=False)
    g = model.graph
    if len(g.node) > MAX_NODES:
        return SpecCheck("skipped", f"{len(g.node)} nodes > {MAX_NODES}")
    size = sum(int(np.asarray(v).size) for v in feed.values())
    if size > MAX_ELEMENTS:
        return SpecCheck("skipped", f"{size} input elements > {MAX_ELEMENTS}")
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in g.initializer):
        return SpecCheck("skipped", "external data")
    domains = {n.domain for n in g.node} - {"", "ai.onnx"}
    if domains:
        return SpecCheck("skipped", f"operators from {', '.join(sorted(domains))}")
    try:
        from onnx.reference import ReferenceEvaluator

        names = [o.name for o in g.output]
        got = ReferenceEvaluator(model).run(names, {k: np.asarray(v) for k, v in feed.items()})
    except Exception as e:  # an op the evaluator lacks or rejects: no verdict, not a failure
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        log.debug("spec check skipped: %s", first)
        return SpecCheck("skipped", f"reference evaluator: {first[:200]}")
    for name, spec in zip(names, got, strict=True):
        ort = ort_outputs.get(name)
        if ort is None:
            continue
        verdict = _compare(np.asarray(ort), np.asarray(spec))
        if verdict is not None:
            return SpecCheck("disagrees", output=name, max_abs=verdict)
    return SpecCheck("agrees")


def _compare(ort: np.ndarray, spec: np.ndarray) -> float | None:
    """None when they agree, else the max abs difference (inf for a shape or NaN-pattern change)."""
    if ort.shape != spec.shape:
        return float("inf")
    if ort.dtype.kind in "biu" or spec.dtype.kind in "biu":
        diff = np.abs(ort.astype(np.float64) - spec.astype(np.float64))
        return None if not diff.size or diff.max() == 0 else float(diff.max())
    a, b = ort.astype(np.float64), spec.astype(np.float64)
    if not np.array_equal(np.isnan(a), np.isnan(b)) or not np.array_equal(a[np.isinf(a)], b[np.isinf(a)]):
        return float("inf")
    finite = np.isfinite(a) & np.isfinite(b)
    if np.allclose(a[finite], b[finite], rtol=RTOL, atol=ATOL):
        return None
    return float(np.abs(a[finite] - b[finite]).max())

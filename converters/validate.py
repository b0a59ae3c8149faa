"""Numbers that make an export trustworthy: parity with the fp32 reference, top-1, latency.

Parity bounds are per precision and explicit, from the one table (edgekit/formats.py). A conversion that "succeeds" but misses its bound is
reported as a mismatch (a failure), never as ok.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from edgekit.formats import Tolerance
from targets.runtimes.base import Runtime


@dataclass
class Parity:
    max_abs_err: float
    cosine: float
    ok: bool
    bound: str


def run_samples(
    runtime: Runtime, inputs: dict[str, np.ndarray], batchable: bool, chunk: int = 64
) -> dict[str, np.ndarray]:
    """Outputs for a sample stack (converters/data.py), stacked the same way: (samples, *out_shape).

    `batchable` (the model has a batch axis on every input and output, see shapes.batchable):
    samples are concatenated along it and run `chunk` at a time, unless the artifact fixed that
    axis (a converter may pin the batch). Otherwise each sample is one run.
    """
    n = len(next(iter(inputs.values()))) if inputs else 1
    if not inputs:
        return _stack([runtime.run({}) for _ in range(n)])
    first = runtime.inputs[0].shape[0] if runtime.inputs and runtime.inputs[0].shape else None
    if batchable and not isinstance(first, int):  # an artifact with a pinned batch runs sample by sample
        chunks: dict[str, list[np.ndarray]] = {}
        for i in range(0, n, chunk):
            feed = {k: v[i : i + chunk].reshape(-1, *v.shape[2:]) for k, v in inputs.items()}
            m = min(chunk, n - i)
            for k, y in runtime.run(feed).items():
                y = np.asarray(y)
                chunks.setdefault(k, []).append(y.reshape(m, y.shape[0] // m, *y.shape[1:]))
        return {k: np.concatenate(v) for k, v in chunks.items()}
    # np.asarray: a 0-d input's sample is a numpy scalar, which runtimes do not take as a tensor
    return _stack([runtime.run({k: np.asarray(v[i]) for k, v in inputs.items()}) for i in range(n)])


def _stack(outs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    result = {}
    for k in outs[0]:
        parts = [np.asarray(o[k]) for o in outs]
        try:
            result[k] = np.stack(parts)
        except ValueError:  # data-dependent output shapes (NMS, NonZero): compare flattened
            result[k] = np.concatenate([p.ravel() for p in parts])
    return result


def align_outputs(reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Match outputs by name, or by order when a tool renamed them (quantized TFLite does)."""
    if set(reference) <= set(got):
        return {k: got[k] for k in reference}
    if len(got) == len(reference):
        return dict(zip(reference, got.values(), strict=True))
    raise ValueError(f"artifact outputs {sorted(got)} do not match the reference {sorted(reference)}")


def parity(tol: Tolerance, reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> Parity:
    """Worst cosine over outputs >= tol.min_cosine (and, for fp32, max abs <= max_abs_rel x scale).

    Non-finite values (a Cast of 1e300 to float32, log(0)) must match exactly, same place and same
    value; the numeric bounds then judge the finite rest. A NaN never compares as "close"."""
    got = align_outputs(reference, got)
    max_abs, worst_cos, scale = 0.0, 1.0, 0.0
    nonfinite_differs = []
    for name, ref in reference.items():
        a = np.asarray(ref, dtype=np.float64).ravel()
        b = np.asarray(got[name], dtype=np.float64).reshape(np.shape(ref)).ravel()
        fa, fb = np.isfinite(a), np.isfinite(b)
        if not (np.array_equal(fa, fb) and np.array_equal(a[~fa], b[~fb], equal_nan=True)):
            nonfinite_differs.append(name)
            fa = fa & fb
        a, b = a[fa], b[fa]
        max_abs = max(max_abs, float(np.max(np.abs(a - b))) if a.size else 0.0)
        scale = max(scale, float(np.max(np.abs(a))) if a.size else 0.0)
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        cos = float(np.dot(a, b) / denom) if denom > 0 else float(np.allclose(a, b))
        worst_cos = min(worst_cos, cos)
    ok = worst_cos >= tol.min_cosine and not nonfinite_differs
    bound = f"cosine >= {tol.min_cosine}"
    if tol.max_abs_rel is not None:
        limit = tol.max_abs_rel * max(1.0, scale)
        ok = ok and max_abs <= limit
        bound += f", max_abs <= {limit:.2g}"
    if nonfinite_differs:
        bound += f"; NaN/inf differ in {', '.join(nonfinite_differs)}"
    return Parity(max_abs, worst_cos, ok, bound)


def top1(outputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    logits = next(iter(outputs.values()))
    return float((np.asarray(logits).reshape(len(labels), -1).argmax(axis=1) == labels).mean())


def latency_ms(runtime: Runtime, sample: dict[str, np.ndarray], runs: int = 30, warmup: int = 5) -> float:
    """Median single-sample latency on this machine (noisy: compare ratios, not absolutes)."""
    for _ in range(warmup):
        runtime.run(sample)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        runtime.run(sample)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0

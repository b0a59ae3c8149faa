"""Numbers that make an export trustworthy: parity with the fp32 reference, top-1, latency.

Parity bounds are per mode and explicit. A conversion that "succeeds" but misses its bound is
reported as a mismatch (a failure), never as ok.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np

from targets.runtimes.base import Runtime

# Minimum cosine similarity (flattened outputs) vs the fp32 ONNX Runtime reference, per mode.
MIN_COSINE = {
    "none": 0.99999,
    "fp16": 0.999,
    "int8-dynamic": 0.99,
    "int8": 0.98,
    "palettize6": 0.98,
    "palettize4": 0.90,
}
# fp32 exports must also match element-wise: max abs error relative to the output's scale.
FP32_MAX_ABS_REL = 1e-4


@dataclass
class Parity:
    max_abs_err: float
    cosine: float
    ok: bool
    bound: str


def run_batched(runtime: Runtime, inputs: dict[str, np.ndarray], batch: int = 64) -> dict[str, np.ndarray]:
    """Run many samples; loop in chunks (1 when the artifact's batch dim is fixed at 1)."""
    n = len(next(iter(inputs.values())))
    first = runtime.inputs[0].shape[0] if runtime.inputs and runtime.inputs[0].shape else None
    step = 1 if first == 1 else batch
    chunks: dict[str, list[np.ndarray]] = {}
    for i in range(0, n, step):
        out = runtime.run({k: v[i : i + step] for k, v in inputs.items()})
        for k, v in out.items():
            chunks.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in chunks.items()}


def align_outputs(reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Match outputs by name, or by order when a tool renamed them (quantized TFLite does)."""
    if set(reference) <= set(got):
        return {k: got[k] for k in reference}
    if len(got) == len(reference):
        return dict(zip(reference, got.values(), strict=True))
    raise ValueError(f"artifact outputs {sorted(got)} do not match the reference {sorted(reference)}")


def parity(mode: str, reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> Parity:
    got = align_outputs(reference, got)
    max_abs, worst_cos, scale = 0.0, 1.0, 0.0
    for name, ref in reference.items():
        a = np.asarray(ref, dtype=np.float64).ravel()
        b = np.asarray(got[name], dtype=np.float64).reshape(np.shape(ref)).ravel()
        max_abs = max(max_abs, float(np.max(np.abs(a - b))) if a.size else 0.0)
        scale = max(scale, float(np.max(np.abs(a))) if a.size else 0.0)
        denom = np.linalg.norm(a) * np.linalg.norm(b)
        cos = float(np.dot(a, b) / denom) if denom > 0 else float(np.allclose(a, b))
        worst_cos = min(worst_cos, cos)
    min_cos = MIN_COSINE[mode]
    ok = worst_cos >= min_cos
    bound = f"cosine >= {min_cos}"
    if mode == "none":
        limit = FP32_MAX_ABS_REL * max(1.0, scale)
        ok = ok and max_abs <= limit
        bound += f", max_abs <= {limit:.2g}"
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

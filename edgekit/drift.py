"""Drift summaries: what a model's tensors look like, reduced to a few numbers per tensor.

One definition serves both sides, so their histograms are comparable bin for bin:
- the conversion summarises the calibration inputs and the fp32 reference's outputs into a
  *baseline* (`baseline`, in report.json and the signed manifest's provenance `drift`);
- the agent summarises what it serves in the baseline's bins (agent.drift), and the fleet
  scores the two with PSI and a KS-style distance (fleet.drift).

The unit is a *row*: a tensor's first axis (the batch) when it has two or more dims, else the
whole tensor. Each row is reduced to its mean (one number whatever the tensor's size, so a
request costs one pass over its elements); a classifier's first output also gives each row's
top-1 class and confidence (softmax first when the row is not already probabilities).

Value bins are the baseline's deciles (BINS quantile bins: about a tenth of the baseline in each,
the usual choice for PSI), kept as inner edges with open-ended outer bins so nothing served falls
outside; equal edges (a constant feature) are merged. Confidence uses CONF_EDGES, fixed tenths
of [0, 1]. Classes past MAX_DRIFT_CLASSES - 1 share the last bin.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgekit.trust.manifest_schema import MAX_DRIFT_CLASSES, MAX_DRIFT_TENSORS

INPUT, OUTPUT = "input", "output"
BINS = 10
CONF_EDGES = np.linspace(0.1, 0.9, 9)  # inner edges: ten bins of width 0.1 on [0, 1]
_DIGITS = 6  # significant digits kept in a baseline (it is signed and shipped to every device)


def rows(a: Any) -> np.ndarray:
    """`a` as (rows, values per row), float64."""
    a = np.asarray(a)
    if a.ndim < 2:
        return a.reshape(1, -1).astype(np.float64, copy=False)
    return a.reshape(a.shape[0], -1).astype(np.float64, copy=False)


# A row wider than MEAN_BLOCKS * MEAN_BLOCK values is averaged over MEAN_BLOCKS evenly spaced
# contiguous blocks of MEAN_BLOCK values instead of all of them. Why: the agent takes this mean on
# every request, right after the model ran and evicted its caches; for a 224x224x3 image (600 KB)
# the full pass cost 264 us there (55 us in a hot loop), the blocks (16 KB) 178 us (12 us).
# What it sees: a shift of the whole input (brightness, contrast, a sensor offset) moves the block
# mean as it moves the full mean; a change confined to the gaps between blocks is not seen.
MEAN_BLOCKS, MEAN_BLOCK = 16, 256


@functools.lru_cache(maxsize=64)
def _block_index(width: int) -> np.ndarray:
    starts = (np.arange(MEAN_BLOCKS) * (width - MEAN_BLOCK)) // (MEAN_BLOCKS - 1)
    return (starts[:, None] + np.arange(MEAN_BLOCK)).ravel()


def row_means(r: np.ndarray) -> np.ndarray:
    """Each row's mean (float64) of a (rows, width) array; wide rows over MEAN_BLOCKS blocks.
    Both sides (the conversion's baseline and the agent) reduce rows with this function."""
    width = r.shape[1]
    if width <= MEAN_BLOCKS * MEAN_BLOCK:
        return np.add.reduce(r, axis=1, dtype=np.float64) / width
    idx = _block_index(width)
    return np.add.reduce(r[:, idx], axis=1, dtype=np.float64) / idx.size


def probabilities(r: np.ndarray) -> bool:
    """Rows that already are probability vectors (else they are logits, softmaxed by `top1`)."""
    return bool(r.size) and r.min() >= 0 and float(np.abs(r.sum(axis=1) - 1).max()) <= 1e-3


def top1(a: Any, probs: bool | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Each row's top class and its probability; None when a row is no score vector. `probs`:
    whether rows are probabilities (None: look; the agent looks once per version)."""
    r = rows(a)
    if r.shape[1] < 2 or not np.isfinite(r).all():
        return None
    cls = r.argmax(axis=1)
    top = r[np.arange(len(r)), cls]
    if probs is None:
        probs = probabilities(r)
    if not probs:  # softmax's largest entry, stably: 1 / sum(exp(z - max))
        top = 1.0 / np.exp(r - top[:, None]).sum(axis=1)
    return cls, top


def quantile_edges(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Inner edges of `bins` quantile bins of `values` (fewer when values repeat)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return np.zeros(0)
    return np.unique(np.quantile(v, np.arange(1, bins) / bins))


def histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts in len(edges)+1 bins: below edges[0], between consecutive edges, from edges[-1] up.
    A value equal to an edge counts in the bin above it (both sides use this function)."""
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def class_bins(width: int) -> int:
    return min(width, MAX_DRIFT_CLASSES)


def class_counts(classes: np.ndarray, bins: int) -> np.ndarray:
    return np.bincount(np.minimum(classes, bins - 1), minlength=bins)


def _round(x: float) -> float:
    return float(f"{x:.{_DIGITS}g}")


def _fractions(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [_round(c / total) if total else 0.0 for c in counts]


def sample_rows(stack: np.ndarray) -> np.ndarray:
    """A conversion data stack (samples, *one request's shape) as the rows the agent would see
    in those requests: `rows` applied to each sample, concatenated."""
    stack = np.asarray(stack)
    if stack.ndim >= 3:
        return stack.reshape(stack.shape[0] * stack.shape[1], -1)
    return stack.reshape(stack.shape[0], -1)


def tensor_baseline(name: str, io: str, stack: np.ndarray, classifier: bool = False) -> dict[str, Any] | None:
    """The baseline of one tensor over a conversion data stack; None when it has no finite row."""
    r = sample_rows(stack).astype(np.float64, copy=False)
    if r.shape[1] == 0:
        return None
    means = row_means(r)
    means = means[np.isfinite(means)]
    if means.size == 0:
        return None
    edges = quantile_edges(means)
    doc: dict[str, Any] = {
        "name": name,
        "io": io,
        "count": int(means.size),
        "mean": _round(float(means.mean())),
        "std": _round(float(means.std())),
        "edges": [_round(float(e)) for e in edges],
    }
    # rounding can merge edges: the histogram is taken over the edges that ship
    shipped = np.unique(np.array(doc["edges"]))
    doc["edges"] = [float(e) for e in shipped]
    doc["hist"] = _fractions(histogram(means, shipped))
    top = top1(r) if classifier else None
    if top is not None:
        doc["classes"] = _fractions(class_counts(top[0], class_bins(r.shape[1])))
        doc["conf"] = _fractions(histogram(top[1], CONF_EDGES))
    return doc


def baseline(
    inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], classifier: bool
) -> list[dict[str, Any]]:
    """Baselines of every input (calibration data) and output (the reference's outputs on the
    evaluation data), at most MAX_DRIFT_TENSORS; for a classifier the first output also gets
    class and confidence histograms (the agent does the same: agent.drift)."""
    out: list[dict[str, Any]] = []
    for name, stack in inputs.items():
        out.append(tensor_baseline(name, INPUT, stack))
    for i, (name, stack) in enumerate(outputs.items()):
        out.append(tensor_baseline(name, OUTPUT, stack, classifier and i == 0))
    return [d for d in out if d is not None][:MAX_DRIFT_TENSORS]


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None

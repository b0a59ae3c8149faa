"""Drift telemetry on the device: per model version, per input and output tensor, a compact
summary of what was served since the version was loaded (edgekit.protocol.VersionDrift).

The engine calls `DriftRecorder.observe_inputs` when it accepts a request for a local run and
`observe_outputs` with each local answer (agent.engine), one line each. Per request it
costs one mean per row of each tensor (edgekit.drift.row_means), then constant-size updates:
count, sum and sum of squares of the row means, a histogram in the baseline's bins (the release's
provenance `drift`, signed with the manifest), and for a classifier's first output the top-1
class and confidence histograms. Nothing grows with traffic: at most MAX_DRIFT_MODELS versions
(the least recently served is dropped), each a few hundred numbers.

Without a baseline (a release published without a conversion report, or a model shipped with
the box) the value histogram stays empty: count, mean and std still go out, the fleet cannot
compute PSI for it. Cloud answers are not summarised: they are not what this device's model did.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from edgekit import drift as D
from edgekit.protocol import MAX_DRIFT_MODELS, TensorDrift, VersionDrift
from edgekit.trust.manifest_schema import MAX_DRIFT_TENSORS

log = logging.getLogger(__name__)

# The drift field's share of a status message (edgekit.protocol.MAX_MESSAGE_BYTES is 64 KiB and
# health and shadow stats travel beside it): versions past it are left out of that heartbeat.
DRIFT_BYTES = 16 * 1024
FLUSH_ROWS = 1024  # rows queued per tensor before the histograms take them in
# The share of wall time summarising may take ([agent] drift_share). Right after a model ran its
# caches are cold and one summary of a 224x224x3 input costs ~0.2 ms, 3-4% of a MobileNetV2-size
# request: under load only a sample of requests is summarised (unbiased: the choice does not look
# at the values), at low load all of them. BURST_S is what an idle stretch saves up.
DEFAULT_SHARE = 0.005
BURST_S = 0.005


class Budget:
    """A token bucket of CPU seconds: `share` of the time that passes is earned, up to `burst`;
    `allow` says whether there is some left, `spend` pays what a summary cost. share >= 1: no
    limit; share 0: nothing is ever summarised."""

    def __init__(self, share: float, burst: float = BURST_S, clock=time.perf_counter) -> None:
        self.share, self.burst, self.clock = share, burst, clock
        self.tokens, self.last = burst, clock()

    def allow(self) -> bool:
        if self.share >= 1:
            return True
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.share)
        self.last = now
        return self.share > 0 and self.tokens > 0

    def spend(self, seconds: float) -> None:
        self.tokens -= seconds


class _Tensor:
    """Running summary of one tensor; `edges` come from the baseline (none: no histogram).

    A request only reduces its rows (a mean each; argmax and max for a classifier output) and
    queues them; the histograms are updated in bulk every FLUSH_ROWS rows or at report time, so
    the per-request cost is a few numpy calls whatever the bins."""

    def __init__(self, name: str, io: str, edges: list[float] | None, classes: int | None) -> None:
        self.name, self.io = name, io
        self.edges = np.asarray(edges or [], dtype=np.float64)
        self.has_hist = edges is not None
        self.count, self.sum, self.sumsq = 0, 0.0, 0.0
        self.hist = np.zeros(len(self.edges) + 1, dtype=np.int64)
        self.class_bins = classes  # None: not a classifier output
        self.classes = np.zeros(classes or 0, dtype=np.int64)
        self.conf = np.zeros(len(D.CONF_EDGES) + 1, dtype=np.int64)
        self.probs: bool | None = None  # are the outputs probabilities? (seen on the first request)
        self._means: list[np.ndarray] = []
        self._tops: list[tuple[np.ndarray, np.ndarray]] = []
        self._queued = 0

    def add(self, value: Any) -> None:
        # Bare ufunc reductions: ndarray.mean and friends cost more in Python than in C here.
        a = value if isinstance(value, np.ndarray) else np.asarray(value)
        r = a.reshape(a.shape[0], -1) if a.ndim >= 2 else a.reshape(1, -1)
        width = r.shape[1]
        if width == 0:
            return
        self._means.append(D.row_means(r))
        if self.class_bins and width >= 2:
            if self.probs is None:
                self.probs = D.probabilities(r)
            top = np.maximum.reduce(r, axis=1)
            if not self.probs:  # softmax's largest entry: 1 / sum(exp(z - max))
                top = 1.0 / np.add.reduce(np.exp(r - top[:, None]), axis=1)
            self._tops.append((r.argmax(axis=1), top))
        self._queued += len(r)
        if self._queued >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self._means:
            means = np.concatenate(self._means)
            means = means[np.isfinite(means)]
            self.count += int(means.size)
            self.sum += float(means.sum())
            self.sumsq += float(np.dot(means, means))
            if self.has_hist:
                self.hist += D.histogram(means, self.edges)
        if self._tops:
            cls = np.concatenate([c for c, _ in self._tops])
            conf = np.concatenate([p for _, p in self._tops])
            ok = np.isfinite(conf)  # a row with NaN scores has no top class
            cls, conf = cls[ok], conf[ok]
            self.classes += D.class_counts(cls, len(self.classes))
            self.conf += D.histogram(conf, D.CONF_EDGES)
        self._means, self._tops, self._queued = [], [], 0

    def wire(self) -> TensorDrift:
        self.flush()
        mean = self.sum / self.count if self.count else None
        var = self.sumsq / self.count - mean * mean if mean is not None else None
        return TensorDrift(
            name=self.name,
            io=self.io,  # type: ignore[arg-type]
            count=self.count,
            mean=mean if mean is not None and math.isfinite(mean) else None,
            std=math.sqrt(max(var, 0.0)) if var is not None and math.isfinite(var) else None,
            hist=self.hist.tolist() if self.has_hist else [],
            classes=self.classes.tolist() if self.class_bins else None,
            conf=self.conf.tolist() if self.class_bins else None,
        )


def _baseline_of(model: Any) -> dict[tuple[str, str], Mapping[str, Any]]:
    prov = model.extra.get("provenance") if isinstance(getattr(model, "extra", None), dict) else None
    rows = (prov or {}).get("drift") or []
    return {(b["io"], b["name"]): b for b in rows if isinstance(b, Mapping) and "name" in b and "io" in b}


class _Version:
    def __init__(self, model: Any) -> None:
        base = _baseline_of(model)
        names = [(D.INPUT, s.name) for s in model.inputs] + [(D.OUTPUT, s.name) for s in model.outputs]
        first_output = model.outputs[0].name if model.outputs else None
        self.tensors: dict[tuple[str, str], _Tensor] = {}
        for io, name in names[:MAX_DRIFT_TENSORS]:
            b = base.get((io, name))
            classes = None
            if io == D.OUTPUT and name == first_output and model.is_classifier:
                # the baseline's class bins when it has them (same width on both sides)
                classes = len(b["classes"]) if b and b.get("classes") else _class_width(model.outputs[0])
            self.tensors[(io, name)] = _Tensor(name, io, b.get("edges") if b else None, classes)

    def add(self, io: str, values: Mapping[str, Any]) -> None:
        for name, value in values.items():
            t = self.tensors.get((io, name))
            if t is not None:
                t.add(value)


def _class_width(spec: Any) -> int | None:
    last = spec.shape[-1] if getattr(spec, "shape", None) else None
    return D.class_bins(last) if isinstance(last, int) and last >= 2 else None


class DriftRecorder:
    """Thread-safe: the engine's worker threads call `observe`, the heartbeat calls `report`."""

    def __init__(self, share: float = DEFAULT_SHARE) -> None:
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], _Version] = {}  # most recently served last
        self._budget = Budget(share)
        self.skipped = 0  # observations left out by the budget

    def observe_inputs(self, model: Any, feeds: Mapping[str, Any]) -> None:
        """A request `model` (an agent.models.LoadedModel) accepted to run locally."""
        self._observe(model, D.INPUT, feeds)

    def observe_outputs(self, model: Any, outputs: Mapping[str, Any]) -> None:
        """A local answer of `model`."""
        self._observe(model, D.OUTPUT, outputs)

    def _observe(self, model: Any, io: str, values: Mapping[str, Any]) -> None:
        # Never raises: telemetry must not fail a request.
        key = (model.name, str(model.version))
        try:
            with self._lock:
                if not self._budget.allow():
                    self.skipped += 1
                    return
                t0 = time.perf_counter()
                v = self._versions.pop(key, None)
                if v is None:
                    v = _Version(model)
                    while len(self._versions) >= MAX_DRIFT_MODELS:
                        self._versions.pop(next(iter(self._versions)))
                self._versions[key] = v
                v.add(io, values)
                self._budget.spend(time.perf_counter() - t0)
        except Exception as e:  # an odd tensor: this request goes unsummarised
            log.debug("drift summary of %s %s skipped: %s: %s", *key, type(e).__name__, e)

    def report(self, budget: int = DRIFT_BYTES) -> list[dict[str, Any]] | None:
        """The heartbeat's `drift` field (VersionDrift dicts), most recently served first, as many
        versions as fit in `budget` bytes of JSON; None when nothing was served."""
        with self._lock:
            versions = [
                VersionDrift(model=m, version=ver, tensors=[t.wire() for t in v.tensors.values()])
                for (m, ver), v in reversed(self._versions.items())
            ]
        out: list[dict[str, Any]] = []
        used = 0
        for v in versions:
            doc = asdict(v)
            size = len(json.dumps(doc, separators=(",", ":")))
            if used + size > budget:
                break
            out.append(doc)
            used += size
        return out or None

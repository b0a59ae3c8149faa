"""On-device shadow canary: mirror a sampled share of live requests to a model's shadow version
and compare its answers with the active version's.

A shadow is a release installed with mode "shadow" (agent.updater): verified, downloaded and
smoke-tested like any update, then loaded beside the active version and never served. After the
active model answered a request, the server offers the request's inputs and outputs here
(`ShadowMirror.offer`: a coin flip and a non-blocking queue put, nothing else on the response
path). One worker thread runs the shadow on the same inputs and folds the comparison into the
shadow's `Tally`, which every status and heartbeat reports (edgekit.protocol.ShadowStats).

The CPU the mirror may take is bounded three ways:
- only a sampled share of requests is offered (`[agent] shadow_sample`, default 0.5);
- the queue is small (`[agent] shadow_queue`, default 4) and a full queue drops the request
  (counted as `dropped`): a burst never builds a backlog;
- the worker is one thread at the lowest CPU priority (nice 19), and the shadow runtime is
  opened with one intra-op thread, so it runs on that thread only: the scheduler gives the
  active model's threads the CPU whenever both want it.
So `latency_ratio` (shadow p50 / active p50 over the same requests) is measured with fewer
threads and a lower priority than the active run: on a busy or multi-core box it overstates
how much slower the shadow would be once active; read it as an upper bound.

The comparison itself is a pure function (`compare`) of the two output dicts.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_SAMPLE = 0.5  # the share the cost goal (<= 1.1x the active p50) is measured at
DEFAULT_QUEUE = 4
LATENCY_WINDOW = 512  # (active, shadow) time pairs kept per shadow for the p50s
SHADOW_THREADS = 1  # intra-op threads of a shadow runtime: its work stays on the niced worker
NICE = 19


class Incomparable(ValueError):
    """The shadow's outputs cannot be compared with the active's (other names or shapes)."""


@dataclass(frozen=True)
class Comparison:
    """One mirrored request: the active and the shadow answers side by side."""

    top1_rows: int  # rows whose top-1 class was compared (0: the first output is no score vector)
    top1_agree: int  # of those, rows where both picked the same class
    cosine: float  # of all outputs, flattened together
    max_abs: float  # largest absolute difference over all outputs


def is_score_vector(a: np.ndarray) -> bool:
    """Scores over classes: a float tensor whose last axis has more than one entry."""
    return a.dtype.kind == "f" and a.ndim >= 1 and a.shape[-1] > 1


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two flat vectors; two all-zero vectors agree (1), one does not (0)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 1.0 if na == nb else 0.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def compare(active: dict[str, np.ndarray], shadow: dict[str, np.ndarray], first: str) -> Comparison:
    """Compare the shadow's outputs with the active's on one request.

    Every active output must come back from the shadow with the same shape (else Incomparable).
    Top-1 is compared on `first` (the active model's first output) when it is a score vector:
    per row of a batch, argmax over the last axis. Cosine and max-abs cover all outputs."""
    missing = [n for n in active if n not in shadow]
    if missing:
        raise Incomparable(f"shadow has no output(s) {missing}")
    flat_a, flat_s = [], []
    for name, a in active.items():
        s = np.asarray(shadow[name])
        a = np.asarray(a)
        if a.shape != s.shape:
            raise Incomparable(f"output {name!r}: shape {list(s.shape)}, active {list(a.shape)}")
        if a.dtype.kind not in "biuf" or s.dtype.kind not in "biuf":
            raise Incomparable(f"output {name!r}: not numeric")
        flat_a.append(a.astype(np.float64, copy=False).ravel())
        flat_s.append(s.astype(np.float64, copy=False).ravel())
    va, vs = np.concatenate(flat_a), np.concatenate(flat_s)
    if not (np.isfinite(va).all() and np.isfinite(vs).all()):
        raise Incomparable("non-finite outputs")
    max_abs = float(np.max(np.abs(va - vs))) if va.size else 0.0
    rows = agree = 0
    a1 = np.asarray(active[first])
    if is_score_vector(a1):
        ta = np.argmax(a1.reshape(-1, a1.shape[-1]), axis=1)
        ts = np.argmax(np.asarray(shadow[first]).reshape(-1, a1.shape[-1]), axis=1)
        rows, agree = int(ta.size), int(np.count_nonzero(ta == ts))
    return Comparison(rows, agree, cosine(va, vs), max_abs)


def _p50(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


@dataclass
class Tally:
    """What the mirror learned about one shadow version since it was loaded."""

    model: str
    version: str
    requests: int = 0  # compared
    top1_rows: int = 0
    top1_agree: int = 0
    cosine_sum: float = 0.0
    max_abs: float = 0.0
    dropped: int = 0
    errors: int = 0
    times: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def add(self, c: Comparison, active_s: float | None, shadow_s: float) -> None:
        self.requests += 1
        self.top1_rows += c.top1_rows
        self.top1_agree += c.top1_agree
        self.cosine_sum += c.cosine
        self.max_abs = max(self.max_abs, c.max_abs)
        if active_s is not None and active_s > 0:
            self.times.append((active_s, shadow_s))

    def stats(self) -> dict[str, Any]:
        """The ShadowStats fields (edgekit.protocol): measures are None until a request compared."""
        n = self.requests
        pairs = list(self.times)
        active_p50 = _p50([a for a, _ in pairs])
        shadow_p50 = _p50([s for _, s in pairs])
        ratio = shadow_p50 / active_p50 if active_p50 and shadow_p50 is not None else None
        return {
            "model": self.model,
            "version": self.version,
            "requests": n,
            "top1_agreement": self.top1_agree / self.top1_rows if self.top1_rows else None,
            "cosine_mean": max(-1.0, min(1.0, self.cosine_sum / n)) if n else None,
            "max_abs": self.max_abs if n else None,
            "latency_ratio": ratio if ratio is not None and math.isfinite(ratio) else None,
            "dropped": self.dropped,
            "errors": self.errors,
        }


@dataclass(frozen=True)
class _Shadow:
    model: Any  # agent.models.LoadedModel
    tally: Tally


class ShadowMirror:
    """The shadows of this agent's models (one per model), the sampled mirror queue and its worker.

    `registry` is the agent's ModelRegistry: a request answered by a version other than the
    active one (a request pinning an older version) is not mirrored, since the comparison is
    shadow vs active."""

    def __init__(
        self,
        registry: Any,
        sample: float = DEFAULT_SAMPLE,
        queue_size: int = DEFAULT_QUEUE,
        seed: int | None = None,
    ):
        if not 0.0 <= sample <= 1.0:
            raise ValueError(f"shadow_sample must be in [0, 1], got {sample}")
        if queue_size < 1:
            raise ValueError(f"shadow_queue must be at least 1, got {queue_size}")
        self.registry = registry
        self.sample = sample
        self._rng = random.Random(seed)
        self._shadows: dict[str, _Shadow] = {}  # replaced whole on change: readers take no lock
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[_Shadow, dict, dict, float | None] | None] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._closed = False

    # the shadows -----------------------------------------------------------------------------
    def set(self, model: Any) -> None:
        """Make `model` its name's shadow (replacing any other), with fresh statistics."""
        with self._lock:
            self._shadows = {
                **self._shadows,
                model.name: _Shadow(model, Tally(model.name, str(model.version))),
            }
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._loop, name="edgekit-shadow", daemon=True)
                self._thread.start()
        log.info(
            "%s: shadow version %s loaded; mirroring %.0f%% of requests",
            model.name,
            model.version,
            self.sample * 100,
        )

    def drop(self, name: str) -> None:
        with self._lock:
            if name in self._shadows:
                self._shadows = {k: v for k, v in self._shadows.items() if k != name}
                log.info("%s: shadow dropped", name)

    def get(self, name: str) -> Any:
        s = self._shadows.get(name)
        return s.model if s is not None else None

    def stats(self) -> list[dict[str, Any]]:
        return [s.tally.stats() for _, s in sorted(self._shadows.items())]

    # the response path -----------------------------------------------------------------------
    def offer(
        self, name: str, version: str | None, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> bool:
        """After the active version answered: maybe queue the request for its shadow. Never blocks."""
        shadow = self._shadows.get(name)
        if shadow is None or self._rng.random() >= self.sample:
            return False
        active = self.registry.get(name)
        if active is None or active.version != version:
            return False
        try:
            self._queue.put_nowait((shadow, feeds, outputs, active.last_compute_s))
        except queue.Full:
            with self._lock:  # request threads race here; the worker owns the other counters
                shadow.tally.dropped += 1
            return False
        return True

    # the worker ------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:  # Linux: a thread is a task with its own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        except (OSError, AttributeError) as e:
            log.debug("shadow worker keeps its priority: %s", e)
        while True:
            job = self._queue.get()
            if job is None:
                return
            shadow, feeds, active_outputs, active_s = job
            try:
                t0 = time.perf_counter()
                out = shadow.model.run(feeds)
                shadow_s = time.perf_counter() - t0
                c = compare(active_outputs, out, next(iter(active_outputs)))
            except Exception as e:  # the shadow failing is what the canary is for: count it
                shadow.tally.errors += 1
                log.debug(
                    "%s: shadow %s failed a mirrored request: %s", shadow.tally.model, shadow.tally.version, e
                )
                continue
            shadow.tally.add(c, active_s, shadow_s)

    def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=1)
            except queue.Full:
                pass
            self._thread.join(timeout=5)

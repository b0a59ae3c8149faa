"""Per model version inference statistics, in the shape of Triton's statistics extension.

    GET /v2/models/stats, /v2/models/{m}/stats, /v2/models/{m}/versions/{v}/stats
    {"model_stats": [{"name", "version", "last_inference", "inference_count", "execution_count",
                      "inference_stats": {"success", "fail", "queue", "compute_input",
                                          "compute_infer", "compute_output": {"count", "ns"}},
                      "batch_stats": []}]}

Only local executions are counted (what the cloud ran is the cloud's statistic). The phases:
queue = request received until its local run starts, compute_input = decoding the request and
checking it against the model, compute_infer = the runtime's run, compute_output = encoding the
response; success = the whole of it. Every model is served with max_batch_size 0 (full shapes,
see agent/triton_config.py), so, as in Triton, inference_count counts requests. execution_count
counts runs of the model: one per request, or one per batch when the dynamic batcher
(agent/batcher.py) ran several requests together; `batch_stats` then has one row per batch size
(in samples) with its count and compute_infer time.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class Timing:
    """When a request arrived and what its decoding cost: the server fills it, the engine reads it.

    It also carries the request's cancellation: the server calls `cancel()` when the client goes
    away, which drops the request from a batch queue it waits in (the future `attach`ed to it)."""

    received: float = field(default_factory=time.perf_counter)
    input_ns: int = 0
    cancelled: bool = False
    _future: Future | None = field(default=None, repr=False)

    def attach(self, future: Future) -> None:
        self._future = future
        if self.cancelled:  # cancelled before it was queued: the worker drops it unrun
            future.cancel()

    def cancel(self) -> None:
        self.cancelled = True
        future = self._future
        if future is not None:
            future.cancel()  # False once its batch runs: then the answer is simply not sent


@dataclass
class _VersionStats:
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    durations: dict[str, list[int]] = field(default_factory=lambda: {p: [0, 0] for p in PHASES})
    batches: dict[int, list[int]] = field(default_factory=dict)  # batch size -> [count, infer ns]

    def add(self, phase: str, ns: int) -> None:
        d = self.durations[phase]
        d[0] += 1
        d[1] += ns

    def doc(self, name: str, version: str) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {p: {"count": c, "ns": ns} for p, (c, ns) in self.durations.items()},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_infer": {"count": c, "ns": ns},
                }
                for size, (c, ns) in sorted(self.batches.items())
            ],
        }


class Statistics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str], _VersionStats] = {}

    def _get(self, name: str, version: str) -> _VersionStats:
        s = self._by_key.get((name, version))
        if s is None:
            s = self._by_key[(name, version)] = _VersionStats()
        return s

    def success(self, name: str, version: str, *, queue_ns: int, input_ns: int, infer_ns: int) -> None:
        with self._lock:
            s = self._get(name, version)
            s.inference_count += 1
            s.execution_count += 1
            s.last_inference_ms = int(time.time() * 1000)
            s.add("queue", queue_ns)
            s.add("compute_input", input_ns)
            s.add("compute_infer", infer_ns)
            s.add("success", queue_ns + input_ns + infer_ns)

    def batch(
        self, name: str, version: str, requests: list[tuple[int, int]], *, infer_ns: int, size: int
    ) -> None:
        """One batched run of `requests` ((queue_ns, input_ns) each) totalling `size` samples: one
        execution, one inference per request, each request's compute_infer the batch's run."""
        now_ms = int(time.time() * 1000)
        with self._lock:
            s = self._get(name, version)
            s.inference_count += len(requests)
            s.execution_count += 1
            s.last_inference_ms = now_ms
            for queue_ns, input_ns in requests:
                s.add("queue", queue_ns)
                s.add("compute_input", input_ns)
                s.add("compute_infer", infer_ns)
                s.add("success", queue_ns + input_ns + infer_ns)
            row = s.batches.setdefault(size, [0, 0])
            row[0] += 1
            row[1] += infer_ns

    def output(self, name: str, version: str, ns: int) -> None:
        """The response's encoding, measured after the run: it joins the request's success time."""
        with self._lock:
            s = self._get(name, version)
            s.add("compute_output", ns)
            s.durations["success"][1] += ns

    def failure(self, name: str, version: str, ns: int) -> None:
        with self._lock:
            self._get(name, version).add("fail", ns)

    def snapshot(self, keys: list[tuple[str, str]]) -> dict[str, Any]:
        """The statistics document for these (model, version) pairs, zeros for any not yet run."""
        with self._lock:
            docs = [self._by_key.get(k, _VersionStats()).doc(*k) for k in keys]
        return {"model_stats": docs}

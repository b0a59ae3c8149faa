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
see agent/triton_config.py), so, as in Triton, inference_count counts requests, like
execution_count.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class Timing:
    """When a request arrived and what its decoding cost: the server fills it, the engine reads it."""

    received: float = field(default_factory=time.perf_counter)
    input_ns: int = 0


@dataclass
class _VersionStats:
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    durations: dict[str, list[int]] = field(default_factory=lambda: {p: [0, 0] for p in PHASES})

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
            "batch_stats": [],
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

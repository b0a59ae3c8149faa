"""Prometheus text exposition, written by hand (no extra dependency on the box).

Counters, gauges and histograms with labels; thread-safe; `render()` returns the text format
(version 0.0.4) that Prometheus scrapes from `/metrics`.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_esc(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: Iterable[str] = ()):
        self.name, self.help, self.labelnames = name, help, tuple(labels)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        return self.header() + [
            f"{self.name}{_labels(self.labelnames, k)} {v:g}" for k, v in sorted(self._values.items())
        ]


class Gauge(Counter):
    kind = "gauge"

    def set(self, *labels: str, value: float) -> None:
        with self._lock:
            self._values[labels] = float(value)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Iterable[str] = (), buckets=LATENCY_BUCKETS):
        super().__init__(name, help, labels)
        self.buckets = tuple(buckets)
        self._data: dict[tuple[str, ...], list[float]] = {}  # per-bucket counts + [sum, count]

    def observe(self, *labels: str, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            d = self._data.get(labels)
            if d is None:
                d = self._data[labels] = [0.0] * (len(self.buckets) + 2)
            if i < len(self.buckets):
                d[i] += 1
            d[-2] += value
            d[-1] += 1

    def count(self, *labels: str) -> float:
        d = self._data.get(labels)
        return d[-1] if d else 0.0

    def render(self) -> list[str]:
        lines = self.header()
        for key, d in sorted(self._data.items()):
            acc = 0.0
            for b, c in zip(self.buckets, d, strict=False):
                acc += c
                le = f'le="{b:g}"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {acc:g}")
            inf = 'le="+Inf"'
            lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, inf)} {d[-1]:g}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {d[-2]:.9g}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {d[-1]:g}")
        return lines


class Metrics:
    """The agent's metric set."""

    def __init__(self) -> None:
        self.requests = Counter(
            "edgekit_agent_requests_total",
            "Inference requests by model, served_by and outcome.",
            ("model", "served_by", "outcome"),
        )
        self.latency = Histogram(
            "edgekit_agent_request_seconds",
            "Inference latency by model and served_by.",
            ("model", "served_by"),
        )
        self.fallbacks = Counter(
            "edgekit_agent_fallbacks_total",
            "Requests routed away from the preferred side, by reason.",
            ("model", "reason"),
        )
        self.model_version = Gauge(
            "edgekit_agent_model_info", "Loaded model versions (value 1).", ("model", "version", "sha256")
        )
        self.update_state = Gauge(
            "edgekit_agent_update_state", "Current update state per model (value 1).", ("model", "state")
        )
        self.update_transitions = Counter(
            "edgekit_agent_update_transitions_total", "Update state transitions.", ("model", "state")
        )
        self.breaker_state = Gauge(
            "edgekit_agent_cloud_breaker_open", "1 when the cloud circuit breaker is not closed.", ()
        )
        self.mqtt_connected = Gauge("edgekit_agent_mqtt_connected", "1 while connected to the broker.", ())
        self.aborted_requests = Counter(
            "edgekit_agent_aborted_requests_total",
            "Requests whose client closed the connection before sending the whole body.",
            (),
        )
        self.aborted_requests.inc(amount=0)  # exported from 0, so rate() sees the first abort
        self._all = [
            self.requests,
            self.latency,
            self.fallbacks,
            self.model_version,
            self.update_state,
            self.update_transitions,
            self.breaker_state,
            self.mqtt_connected,
            self.aborted_requests,
        ]

    def set_model(self, name: str, version: str, sha256: str | None) -> None:
        with self.model_version._lock:
            for k in [k for k in self.model_version._values if k[0] == name]:
                del self.model_version._values[k]
        self.model_version.set(name, version, sha256 or "", value=1)

    def set_update_state(self, name: str, state: str) -> None:
        with self.update_state._lock:
            for k in [k for k in self.update_state._values if k[0] == name]:
                del self.update_state._values[k]
        self.update_state.set(name, state, value=1)
        self.update_transitions.inc(name, state)

    def render(self) -> str:
        lines: list[str] = []
        for m in self._all:
            lines.extend(m.render())
        return "\n".join(lines) + "\n"

"""The agent's Prometheus metrics, on prometheus_client.

Each `Metrics` has its own CollectorRegistry (several engines can share a process, as in the
tests) holding the standard `process_*`, `python_*` collectors, `edgekit_build_info`, and the
agent's series. `render(accept)` negotiates the format: OpenMetrics for a scraper that asks for
`application/openmetrics-text`, the classic text format (0.0.4) otherwise.

The wrappers keep one call shape for every metric - labels positional, the number by keyword
(`requests.inc("cls", "local", "ok")`, `latency.observe("cls", "local", value=0.01)`) - so callers
need not know which child object prometheus_client keeps per label set.

Per model version (local executions only: what the cloud ran is counted by `requests` with
served_by="cloud"): requests, successes, failures, and the queue time (request received until its
local run starts, less its decoding: waiting for a worker thread and in the batch queue) apart from
the compute time (the runtime's run; for a batched request, its batch's run: agent/batcher.py),
and the samples per batched run (`edgekit_agent_batch_size`). `edgekit_agent_model_info` is read
from the model registry at each scrape, so an unloaded version disappears from it with no
bookkeeping.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client import Counter as _PCounter
from prometheus_client import Gauge as _PGauge
from prometheus_client import Histogram as _PHistogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from agent import __version__

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Wrapped:
    def __init__(self, metric: Any, labelnames: tuple[str, ...]):
        self._m, self.labelnames = metric, labelnames
        # label values -> child: prometheus_client's labels() validates and locks on every call,
        # a few microseconds that dominate the request path of a tiny model.
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, labels: tuple[str, ...]) -> Any:
        if not self.labelnames:
            return self._m
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._m.labels(*labels)
        return child

    def _sample(self, suffix: str, labels: tuple[str, ...]) -> float:
        want = dict(zip(self.labelnames, labels, strict=True))
        for family in self._m.collect():
            for s in family.samples:
                if s.name.endswith(suffix) and s.labels == want:
                    return s.value
        return 0.0


class Counter(_Wrapped):
    def __init__(self, name: str, help: str, labels: Iterable[str], registry: CollectorRegistry):
        labelnames = tuple(labels)
        super().__init__(_PCounter(name, help, labelnames, registry=registry), labelnames)

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        self._child(labels).inc(amount)

    def value(self, *labels: str) -> float:
        return self._sample("_total", labels)


class Gauge(_Wrapped):
    def __init__(self, name: str, help: str, labels: Iterable[str], registry: CollectorRegistry):
        labelnames = tuple(labels)
        super().__init__(_PGauge(name, help, labelnames, registry=registry), labelnames)
        self._lock = threading.Lock()
        self._keys: set[tuple[str, ...]] = set()  # label sets in use, so a model's can be removed

    def set(self, *labels: str, value: float) -> None:
        with self._lock:
            if labels:
                self._keys.add(labels)
            self._child(labels).set(value)

    def remove_where(self, first: str) -> None:
        """Drop every series whose first label is `first` (e.g. all of one model's)."""
        with self._lock:
            for k in [k for k in self._keys if k[0] == first]:
                self._keys.discard(k)
                self._children.pop(k, None)
                self._m.remove(*k)

    def value(self, *labels: str) -> float:
        return self._sample("", labels)


class Histogram(_Wrapped):
    def __init__(
        self,
        name: str,
        help: str,
        labels: Iterable[str],
        registry: CollectorRegistry,
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ):
        labelnames = tuple(labels)
        super().__init__(_PHistogram(name, help, labelnames, registry=registry, buckets=buckets), labelnames)

    def observe(self, *labels: str, value: float) -> None:
        self._child(labels).observe(value)

    def count(self, *labels: str) -> float:
        return self._sample("_count", labels)


ModelSource = Callable[[], Iterable[Any]]  # yields objects with name, version, sha256


class _ModelInfo:
    """`edgekit_agent_model_info{model,version,sha256} 1` for every loaded version, at scrape time."""

    def __init__(self) -> None:
        self.source: ModelSource | None = None
        self.fallback: dict[str, tuple[str, str]] = {}  # set_model() when no registry is bound

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "edgekit_agent_model_info",
            "Loaded model versions (value 1).",
            labels=("model", "version", "sha256"),
        )
        if self.source is not None:
            rows = [(m.name, str(m.version), m.sha256 or "") for m in self.source()]
        else:
            rows = [(n, v, s) for n, (v, s) in self.fallback.items()]
        for row in sorted(rows):
            family.add_metric(list(row), 1.0)
        yield family


class Metrics:
    """The agent's metric set, in its own registry."""

    def __init__(self) -> None:
        reg = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        Info("edgekit_build", "The edgekit build serving these metrics.", registry=reg).info(
            {"version": __version__, "python": platform.python_version()}
        )
        self.requests = Counter(
            "edgekit_agent_requests_total",
            "Inference requests by model, served_by and outcome.",
            ("model", "served_by", "outcome"),
            reg,
        )
        self.latency = Histogram(
            "edgekit_agent_request_seconds",
            "Inference latency by model and served_by.",
            ("model", "served_by"),
            reg,
        )
        self.fallbacks = Counter(
            "edgekit_agent_fallbacks_total",
            "Requests routed away from the preferred side, by reason.",
            ("model", "reason"),
            reg,
        )
        per_version = ("model", "version")
        self.version_requests = Counter(
            "edgekit_agent_model_requests_total",
            "Requests run by a local model version.",
            per_version,
            reg,
        )
        self.version_success = Counter(
            "edgekit_agent_model_success_total",
            "Local runs of a model version that answered.",
            per_version,
            reg,
        )
        self.version_failure = Counter(
            "edgekit_agent_model_failure_total",
            "Requests to a local model version that failed (bad input or a runtime error).",
            per_version,
            reg,
        )
        self.queue_time = Histogram(
            "edgekit_agent_queue_seconds",
            "From request received until its local run starts, less decoding (worker wait, batch queue).",
            per_version,
            reg,
        )
        self.compute_time = Histogram(
            "edgekit_agent_compute_seconds",
            "The runtime's run of one request (of its batch, when batched).",
            per_version,
            reg,
        )
        self.batch_size = Histogram(
            "edgekit_agent_batch_size",
            "Samples per run of a dynamically batched model version.",
            per_version,
            reg,
            buckets=BATCH_BUCKETS,
        )
        self._model_info = _ModelInfo()
        reg.register(self._model_info)
        self.update_state = Gauge(
            "edgekit_agent_update_state", "Current update state per model (value 1).", ("model", "state"), reg
        )
        self.update_transitions = Counter(
            "edgekit_agent_update_transitions_total", "Update state transitions.", ("model", "state"), reg
        )
        self.breaker_state = Gauge(
            "edgekit_agent_cloud_breaker_open", "1 when the cloud circuit breaker is not closed.", (), reg
        )
        self.mqtt_connected = Gauge(
            "edgekit_agent_mqtt_connected", "1 while connected to the broker.", (), reg
        )
        # Exported from 0 (prometheus_client does so for a label-less counter): rate() sees the first.
        self.aborted_requests = Counter(
            "edgekit_agent_aborted_requests_total",
            "Requests whose client closed the connection before sending the whole body.",
            (),
            reg,
        )

    def bind_models(self, source: ModelSource) -> None:
        """Read `edgekit_agent_model_info` from `source` (the registry's loaded versions)."""
        self._model_info.source = source

    def set_model(self, name: str, version: str, sha256: str | None) -> None:
        # With a registry bound (any Engine binds its own) model_info follows the registry and
        # this is a no-op; a bare Metrics (an Updater alone) keeps what it was told.
        self._model_info.fallback[name] = (str(version), sha256 or "")

    def set_update_state(self, name: str, state: str) -> None:
        self.update_state.remove_where(name)
        self.update_state.set(name, state, value=1)
        self.update_transitions.inc(name, state)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition for a scraper's Accept header: (body, content type)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

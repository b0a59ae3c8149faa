"""The health object of the agent's heartbeat (edgekit.protocol.Health): what each model served
since the previous heartbeat, read from the agent's own Metrics (no hook in the request path).

Each `sample()` reads the cumulative counters once and reports the difference from the previous
sample: requests (every outcome, local or cloud), errors (requests answered with a 5xx: the
agent's fault, not the caller's), fallbacks (requests routed away from the preferred side) and
the p95 of local latency, interpolated in the latency histogram's buckets like Prometheus'
histogram_quantile. A window
is credited to the version that ran most of its local requests (the active one if none ran):
a window that spans an update is mixed, the next ones are not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from agent.metrics import Metrics
from edgekit.protocol import MAX_HEALTH_MODELS, Health, VersionHealth

LOCAL = "local"  # agent.engine's served_by for a local run


@dataclass
class _Totals:
    requests: dict[str, float] = field(default_factory=dict)  # model ->
    fallbacks: dict[str, float] = field(default_factory=dict)  # model ->
    runs: dict[tuple[str, str], float] = field(default_factory=dict)  # (model, version) ->
    errors: dict[str, float] = field(default_factory=dict)  # model ->
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # model -> le -> cumulative


def _add(d: dict, key: object, value: float) -> None:
    d[key] = d.get(key, 0.0) + value


def read_totals(metrics: Metrics) -> _Totals:
    t = _Totals()
    for family in metrics.registry.collect():
        for s in family.samples:
            lb, model = s.labels, s.labels.get("model")
            if model is None:
                continue
            if s.name == "edgekit_agent_requests_total":
                _add(t.requests, model, s.value)
                if lb.get("outcome", "").startswith("error_5"):
                    _add(t.errors, model, s.value)
            elif s.name == "edgekit_agent_fallbacks_total":
                _add(t.fallbacks, model, s.value)
            elif s.name == "edgekit_agent_model_requests_total":
                _add(t.runs, (model, lb["version"]), s.value)
            elif s.name == "edgekit_agent_request_seconds_bucket" and lb.get("served_by") == LOCAL:
                _add(t.buckets.setdefault(model, {}), float(lb["le"]), s.value)
    return t


def quantile(q: float, cumulative: Mapping[float, float]) -> float | None:
    """The q-quantile of a cumulative histogram {upper bound: count} (+Inf included), linearly
    interpolated inside its bucket; None when it is empty."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper in bounds:
        count = cumulative[upper]
        if count >= rank:
            if upper == float("inf"):  # beyond the last bound: the last bound is all we know
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = upper, count
    return lower


class HealthWindow:
    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic):
        self.metrics, self.clock = metrics, clock
        self._last, self._at = read_totals(metrics), clock()

    def sample(self, active: Mapping[str, str]) -> Health | None:
        """What each model served since the last sample (None when nothing was served);
        `active` names the loaded version per model, for a window without local runs."""
        now, cur = self.clock(), read_totals(self.metrics)
        prev, self._last, started, self._at = self._last, cur, self._at, now
        models: list[VersionHealth] = []
        for model in sorted(cur.requests):
            requests = cur.requests[model] - prev.requests.get(model, 0.0)
            if requests <= 0:
                continue
            runs = {v: n - prev.runs.get((m, v), 0.0) for (m, v), n in cur.runs.items() if m == model}
            ran = {v: n for v, n in runs.items() if n > 0}
            version = max(ran, key=ran.__getitem__) if ran else active.get(model)
            if version is None:
                continue
            errors = cur.errors.get(model, 0.0) - prev.errors.get(model, 0.0)
            fallbacks = cur.fallbacks.get(model, 0.0) - prev.fallbacks.get(model, 0.0)
            old = prev.buckets.get(model, {})
            window = {le: n - old.get(le, 0.0) for le, n in cur.buckets.get(model, {}).items()}
            p95 = quantile(0.95, window)
            models.append(
                VersionHealth(
                    model=model,
                    version=version,
                    requests=int(requests),
                    errors=int(errors),
                    fallbacks=int(fallbacks),
                    p95_ms=None if p95 is None else round(p95 * 1000, 3),
                )
            )
        if not models:
            return None
        return Health(window_s=max(now - started, 1e-3), models=models[:MAX_HEALTH_MODELS])

"""agent.health_window: the heartbeat's health object, from the agent's real Metrics."""

from __future__ import annotations

import pytest

from agent.health_window import HealthWindow, quantile
from agent.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def serve(m: Metrics, version: str, seconds: float, n: int, outcome: str = "ok") -> None:
    for _ in range(n):
        m.requests.inc("digits", "local", outcome)
        m.version_requests.inc("digits", version)
        m.latency.observe("digits", "local", value=seconds)


def test_quantile_interpolates_in_buckets() -> None:
    inf = float("inf")
    assert quantile(0.95, {}) is None
    assert quantile(0.95, {0.01: 0, 0.02: 0, inf: 0}) is None
    assert quantile(0.5, {0.01: 0, 0.02: 100, inf: 100}) == pytest.approx(0.015)
    assert quantile(0.95, {0.01: 0, 0.02: 10, inf: 100}) == 0.02  # beyond the last bound


def test_windows_report_differences_per_version() -> None:
    m, clock = Metrics(), Clock()
    serve(m, "1.0", 0.003, 50)  # before the window: not reported
    w = HealthWindow(m, clock)
    assert w.sample({"digits": "1.0"}) is None  # nothing served since
    clock.t += 5
    serve(m, "1.0", 0.003, 95)
    serve(m, "1.0", 0.04, 5)
    m.requests.inc("digits", "cloud", "ok")
    m.fallbacks.inc("digits", "timeout")
    m.requests.inc("digits", "none", "error_503")
    m.requests.inc("digits", "none", "error_400")  # the caller's fault: not an error of the model
    h = w.sample({"digits": "1.0"})
    assert h is not None and h.window_s == 5
    (v,) = h.models
    assert (v.model, v.version, v.requests, v.errors, v.fallbacks) == ("digits", "1.0", 103, 1, 1)
    assert 2.5 <= v.p95_ms <= 5.0  # 95 of 100 local runs were 3 ms: the 2.5-5 ms bucket

    clock.t += 5
    serve(m, "2.0", 0.02, 100)  # after an update: twice as slow and more
    (v2,) = w.sample({"digits": "2.0"}).models
    assert v2.version == "2.0" and v2.requests == 100 and v2.errors == 0
    assert v2.p95_ms > 2 * v.p95_ms

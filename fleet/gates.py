"""Health gates: a rollout's waves judged by what devices report after activation (issue 13).

A gate is `metric OP threshold` ("latency_p95_ratio<=1.2"). The metrics of a set of rollout
members are computed here from their health reports (edgekit.protocol.Health, stored by
fleet.devices), purely; fleet.decide compares them with the gates, fleet.rollouts reads the rows.

- latency_p95_ratio: per device, the new version's p95 over the previous version's p95; the
  median over the devices (one noisy device does not decide). The previous p95 is the device's
  own last report of that version if it was made before the manifest was sent, else the median
  p95 of the devices still running the previous version, else the device's own report made
  during the update (its window shares the CPU with the download, load and smoke test).
- error_rate, fallback_rate: errors / requests and fallbacks / requests, summed over devices.
- smoke_failure_rate: devices that failed the on-device smoke test / devices sent the manifest.
- drift_psi: the worst PSI of what the members served on the new version against the release's
  drift baseline, their cohorts grouped by the `site` label (fleet.drift; read by
  fleet.devices.rollout_drift_psi and passed in here).

A metric with no data (no request reported on the new version yet) is None and breaches nothing.
"""

from __future__ import annotations

import operator
import re
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from fleet.errors import FleetError

LATENCY_P95_RATIO, ERROR_RATE, FALLBACK_RATE, SMOKE_FAILURE_RATE, DRIFT_PSI = (
    "latency_p95_ratio",
    "error_rate",
    "fallback_rate",
    "smoke_failure_rate",
    "drift_psi",
)
METRICS = (LATENCY_P95_RATIO, ERROR_RATE, FALLBACK_RATE, SMOKE_FAILURE_RATE, DRIFT_PSI)
PAUSE, ABORT = "pause", "abort"
ON_BREACH = (PAUSE, ABORT)
MAX_GATES = 16
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}
_GATE = re.compile(r"^\s*([a-z0-9_]+)\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")
SMOKE_TEST = "smoke_test"  # the reason an agent reports when the smoke test failed


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def holds(self, value: float | None) -> bool:
        """True unless `value` is known and outside the bound."""
        return value is None or _OPS[self.op](value, self.threshold)


def parse_gate(text: str, metrics: tuple[str, ...] = METRICS, kind: str = "gate") -> Gate:
    """'latency_p95_ratio<=1.2' -> Gate; FleetError with a one-line reason otherwise. Other
    `METRIC OP VALUE` rules (fleet.shadow's promotion rule) pass their own metrics and name."""
    m = _GATE.match(text if isinstance(text, str) else "")
    if not m:
        raise FleetError(
            f"invalid {kind} {str(text)[:80]!r}",
            hint=f"write METRIC<=VALUE (or >=, <, >), METRIC one of {', '.join(metrics)}",
        )
    metric, op, value = m.group(1), m.group(2), float(m.group(3))
    if metric not in metrics:
        raise FleetError(f"unknown {kind} metric {metric!r}", hint=f"one of {', '.join(metrics)}")
    return Gate(metric, op, value)


def parse_gates(texts: Iterable[str]) -> tuple[Gate, ...]:
    gates = tuple(parse_gate(t) for t in texts)
    if len(gates) > MAX_GATES:
        raise FleetError(f"at most {MAX_GATES} gates")
    return gates


def first_breach(gates: Iterable[Gate], values: Mapping[str, float | None]) -> str | None:
    """The reason of the first gate `values` breach, or None."""
    for g in gates:
        v = values.get(g.metric)
        if not g.holds(v):
            return f"gate {g} breached: {g.metric}={v:.3g}"
    return None


@dataclass(frozen=True)
class MemberHealth:
    """One rollout member as the gates see it: its state and its latest health report of the
    rollout's version since it was sent the manifest (zeros/None when it has reported none)."""

    wave: int
    state: str
    reason: str | None
    prev_version: str | None
    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    p95_ms: float | None = None
    prev_p95_ms: float | None = None  # its own last report of prev_version
    # that report was made after the manifest was sent: its window spans the download and the new
    # version's loading and smoke test on the same CPU, so it overstates prev_version's p95
    prev_after_send: bool = False


def fleet_baseline(reports: Iterable[tuple[str, float]]) -> dict[str, float]:
    """(version, p95_ms) of the devices running each version -> median p95 per version."""
    by: dict[str, list[float]] = {}
    for version, p95 in reports:
        by.setdefault(version, []).append(p95)
    return {v: statistics.median(ps) for v, ps in by.items()}


def metrics(
    members: Iterable[MemberHealth], baseline: Mapping[str, float], drift_psi: float | None = None
) -> dict[str, float | None]:
    """Every gate metric over `members`. Their reports are of the new version, made after its
    manifest was sent (fleet.repository.member_health): a device rolled back since keeps its
    last one, so an aborted wave still shows what it was judged by. `drift_psi` is computed
    from the same members' drift reports (fleet.devices.rollout_drift_psi)."""
    requests = errors = fallbacks = sent = smoke = 0
    ratios: list[float] = []
    for m in members:
        sent += 1
        smoke += m.reason == SMOKE_TEST
        requests, errors, fallbacks = requests + m.requests, errors + m.errors, fallbacks + m.fallbacks
        # The device's own baseline when it predates the update, else the devices still running
        # the previous version, else (nobody left on it) its own report from during the update.
        own = m.prev_p95_ms
        prev = own if own is not None and not m.prev_after_send else None
        prev = prev or baseline.get(m.prev_version or "") or own
        if m.p95_ms is not None and prev:
            ratios.append(m.p95_ms / prev)
    return {
        LATENCY_P95_RATIO: statistics.median(ratios) if ratios else None,
        ERROR_RATE: errors / requests if requests else None,
        FALLBACK_RATE: fallbacks / requests if requests else None,
        SMOKE_FAILURE_RATE: smoke / sent if sent else None,
        DRIFT_PSI: drift_psi,
    }

"""Shadow canary, the fleet's half (issue 13): when a device's shadow of a release is promoted.

A shadow rollout sends manifests with mode "shadow": the agent installs the release beside its
active version, mirrors live requests to it and reports how the two agree (edgekit.protocol
ShadowStats). The promotion rule is `METRIC OP VALUE` clauses over those stats, parsed like the
health gates (fleet.gates.parse_gate), plus the requests a device must have compared first:

- top1_agreement (>= / >): share of mirrored requests whose top-1 class matches the active one
- cosine_mean (>= / >): mean cosine similarity of the two outputs
- max_abs (<= / <): largest absolute difference of any output element
- latency_ratio (<= / <): shadow p50 / active p50 over the same requests

Per device, `promotion` is pure: Promote when every clause holds over >= min_requests requests,
Breach when that many were compared and a clause fails, Hold otherwise (too few requests, or a
measure the agent could not compute: a model that cannot be shown good is not promoted). The
engine (fleet.rollouts) promotes with an active manifest of the same artifacts and aborts the
rollout on any breach, so a worse model is never activated anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fleet.errors import FleetError
from fleet.gates import MAX_GATES, Gate, parse_gate

TOP1_AGREEMENT, COSINE_MEAN, MAX_ABS, LATENCY_RATIO = (
    "top1_agreement",
    "cosine_mean",
    "max_abs",
    "latency_ratio",
)
METRICS = (TOP1_AGREEMENT, COSINE_MEAN, MAX_ABS, LATENCY_RATIO)
# The direction each measure is good in: a rule pointing the other way would promote worse models.
_HIGHER_IS_BETTER = {TOP1_AGREEMENT: True, COSINE_MEAN: True, MAX_ABS: False, LATENCY_RATIO: False}
MAX_MIN_REQUESTS = 10**9


@dataclass(frozen=True)
class Stats:
    """One device's latest comparison of the shadow with its active version (None: not measured)."""

    requests: int = 0
    top1_agreement: float | None = None
    cosine_mean: float | None = None
    max_abs: float | None = None
    latency_ratio: float | None = None

    def value(self, metric: str) -> float | None:
        return {
            TOP1_AGREEMENT: self.top1_agreement,
            COSINE_MEAN: self.cosine_mean,
            MAX_ABS: self.max_abs,
            LATENCY_RATIO: self.latency_ratio,
        }[metric]


@dataclass(frozen=True)
class Promote:
    """Every clause holds over enough requests: activate the shadow on this device."""


@dataclass(frozen=True)
class Hold:
    reason: str


@dataclass(frozen=True)
class Breach:
    reason: str


Verdict = Promote | Hold | Breach


def parse_rule_clause(text: str) -> Gate:
    """'top1_agreement>=0.98' -> Gate; FleetError with a one-line reason otherwise."""
    g = parse_gate(text, METRICS, "promotion rule")
    if g.op.startswith(">") != _HIGHER_IS_BETTER[g.metric]:
        good = ">= or >" if _HIGHER_IS_BETTER[g.metric] else "<= or <"
        raise FleetError(f"promotion rule {g} points the wrong way", hint=f"{g.metric} needs {good}")
    return g


def parse_rule(texts: Iterable[str]) -> tuple[Gate, ...]:
    rule = tuple(parse_rule_clause(t) for t in texts)
    if len(rule) > MAX_GATES:
        raise FleetError(f"at most {MAX_GATES} promotion rule clauses")
    return rule


def check(rule: Sequence[Gate], min_requests: int) -> None:
    """A shadow rollout's settings, refused in one line when they cannot promote anything."""
    if not rule:
        raise FleetError(
            "a shadow rollout needs a promotion rule", hint="e.g. --promote 'top1_agreement>=0.98'"
        )
    if not 1 <= min_requests <= MAX_MIN_REQUESTS:
        raise FleetError(f"--min-shadow-requests must be between 1 and {MAX_MIN_REQUESTS}")


def promotion(rule: Sequence[Gate], min_requests: int, stats: Stats | None) -> Verdict:
    """What to do with one device's shadow, given its latest stats (None: none reported)."""
    seen = stats.requests if stats is not None else 0
    if stats is None or seen < min_requests:
        return Hold(f"{seen}/{min_requests} requests compared")
    for g in rule:
        v = stats.value(g.metric)
        if v is None:
            return Hold(f"{g.metric} not measured")
        if not g.holds(v):
            return Breach(f"promotion rule {g} breached: {g.metric}={v:.3g} over {seen} requests")
    return Promote()


def judge(
    rule: Sequence[Gate], min_requests: int, members: Iterable[tuple[str, Stats | None]]
) -> tuple[list[str], str | None]:
    """(devices to promote, the first breach's reason naming its device, or None)."""
    promote: list[str] = []
    for device, stats in members:
        v = promotion(rule, min_requests, stats)
        if isinstance(v, Breach):
            return [], f"{v.reason} on {device}"
        if isinstance(v, Promote):
            promote.append(device)
    return promote, None

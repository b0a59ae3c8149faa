"""Drift scores: what devices were served (their heartbeats' `drift`, edgekit.protocol.VersionDrift)
against the release's baseline (the provenance `drift` of the signed manifest, edgekit.drift).
Pure: report dicts in, score rows out; fleet.devices stores the reports and reads them.

Devices are grouped into cohorts by a label (`site` unless asked otherwise; a device without it
is in cohort "-"), and each cohort's histograms are summed before scoring, so a cohort of many
devices that each served little still has a score. Per tensor, up to three distributions are
scored: the per-row mean's histogram in the baseline's quantile bins ("values"), and for a
classifier's first output the class and top-1 confidence histograms ("classes", "conf").

- PSI (population stability index): sum over bins of (o - e) * ln(o / e), with e and o the
  baseline's and the cohort's fractions, each floored at PSI_FLOOR so an empty bin scores high
  instead of infinite. Customary reading: < 0.1 stable, 0.1-0.2 some shift, > 0.2 shifted.
- KS: the largest distance between the two cumulative distributions over the bins (a binned
  Kolmogorov-Smirnov statistic, in [0, 1]).

A cohort that served fewer than MIN_ROWS rows of a tensor gets no score for it (a handful of
rows scores high by chance): None, which breaches no gate.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

PSI_FLOOR = 1e-4
MIN_ROWS = 100
GATE_LABEL = "site"  # the cohorts of the drift_psi gate (fleet.gates)
NO_LABEL = "-"
VALUES, CLASSES, CONF = "values", "classes", "conf"


def _fractions(xs: Sequence[float]) -> list[float] | None:
    total = float(sum(xs))
    return [x / total for x in xs] if total > 0 else None


def psi(expected: Sequence[float], observed: Sequence[float]) -> float | None:
    """PSI of `observed` (counts or fractions) against `expected`; None when either is empty or
    their bins differ."""
    e, o = _fractions(expected), _fractions(observed)
    if e is None or o is None or len(e) != len(o):
        return None
    total = 0.0
    for pe, po in zip(e, o, strict=True):
        pe, po = max(pe, PSI_FLOOR), max(po, PSI_FLOOR)
        total += (po - pe) * math.log(po / pe)
    return total


def ks(expected: Sequence[float], observed: Sequence[float]) -> float | None:
    """Largest distance between the two cumulative distributions over the bins."""
    e, o = _fractions(expected), _fractions(observed)
    if e is None or o is None or len(e) != len(o):
        return None
    ce = co = worst = 0.0
    for pe, po in zip(e, o, strict=True):
        ce, co = ce + pe, co + po
        worst = max(worst, abs(ce - co))
    return worst


@dataclass
class Pooled:
    """Several devices' summaries of one tensor, added up."""

    count: int = 0
    sum: float = 0.0
    sumsq: float = 0.0
    devices: int = 0
    hists: dict[str, list[int]] = field(default_factory=dict)  # kind -> counts

    def add(self, t: Mapping[str, Any]) -> None:
        n = int(t.get("count") or 0)
        self.devices += 1
        if n <= 0:
            return
        mean, std = t.get("mean"), t.get("std")
        if mean is not None and std is not None:
            self.count += n
            self.sum += n * mean
            self.sumsq += n * (std * std + mean * mean)
        for kind, key in ((VALUES, "hist"), (CLASSES, "classes"), (CONF, "conf")):
            counts = t.get(key) or []
            if not counts:
                continue
            have = self.hists.get(kind)
            if have is None:
                self.hists[kind] = list(counts)
            elif len(have) == len(counts):  # a report in other bins (another baseline) is skipped
                self.hists[kind] = [a + b for a, b in zip(have, counts, strict=True)]

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None


def pool(reports: Iterable[Sequence[Mapping[str, Any]]]) -> dict[tuple[str, str], Pooled]:
    """Per (io, tensor name), the sum of the devices' summaries (`reports`: each device's tensors)."""
    out: dict[tuple[str, str], Pooled] = {}
    for tensors in reports:
        for t in tensors:
            out.setdefault((t["io"], t["name"]), Pooled()).add(t)
    return out


def score(
    baseline: Sequence[Mapping[str, Any]], pooled: Mapping[tuple[str, str], Pooled]
) -> list[dict[str, Any]]:
    """One row per baseline tensor and distribution: count, means, PSI and KS (None below MIN_ROWS
    or when the cohort has no histogram in the baseline's bins)."""
    rows = []
    for b in baseline:
        p = pooled.get((b["io"], b["name"]))
        for kind, key in ((VALUES, "hist"), (CLASSES, "classes"), (CONF, "conf")):
            expected = b.get(key)
            if not expected:
                continue
            observed = p.hists.get(kind) if p else None
            enough = p is not None and observed is not None and sum(observed) >= MIN_ROWS
            rows.append(
                {
                    "io": b["io"],
                    "tensor": b["name"],
                    "kind": kind,
                    "devices": p.devices if p else 0,
                    "count": sum(observed) if observed else 0,
                    "mean": p.mean if p and kind == VALUES else None,
                    "baseline_mean": b.get("mean") if kind == VALUES else None,
                    "psi": psi(expected, observed) if enough else None,
                    "ks": ks(expected, observed) if enough else None,
                }
            )
    return rows


def cohort(labels: Mapping[str, str] | None, by: str) -> str:
    return (labels or {}).get(by) or NO_LABEL


def by_cohort(
    baseline: Sequence[Mapping[str, Any]],
    reports: Iterable[tuple[Mapping[str, str] | None, Sequence[Mapping[str, Any]]]],
    by: str = GATE_LABEL,
) -> list[dict[str, Any]]:
    """Score rows per cohort: `reports` are (device labels, device tensors); rows sorted by
    cohort, then in baseline order, each with its "cohort"."""
    groups: dict[str, list[Sequence[Mapping[str, Any]]]] = {}
    for labels, tensors in reports:
        groups.setdefault(cohort(labels, by), []).append(tensors)
    return [{"cohort": name, **row} for name in sorted(groups) for row in score(baseline, pool(groups[name]))]


def max_psi(rows: Iterable[Mapping[str, Any]]) -> float | None:
    """The drift_psi gate's value: the worst PSI among scored rows, None when none is scored."""
    scores = [r["psi"] for r in rows if r.get("psi") is not None]
    return max(scores) if scores else None

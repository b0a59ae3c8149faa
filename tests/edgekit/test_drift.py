"""Drift summaries (edgekit.drift), the agent's running summary (agent.drift) and the fleet's
scores (fleet.drift) on known distributions, seeded: the same distribution scores PSI < 0.05 at
n=2000, a normal shifted by one standard deviation scores PSI > 0.2. Pure: no I/O."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from agent.drift import DRIFT_BYTES, DriftRecorder
from edgekit import drift as D
from edgekit import provenance
from edgekit.protocol import MAX_MESSAGE_BYTES, Status
from edgekit.trust.manifest_schema import MAX_DRIFT_CLASSES
from fleet import drift as F

N = 2000


def normal(seed: int, shift: float = 0.0, n: int = N) -> np.ndarray:
    """n conversion samples of a request with one row of 8 features whose mean is ~N(shift, 1)."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(shift, 1.0, size=(n, 1, 1))
    return (centre + rng.normal(0, 0.01, size=(n, 1, 8))).astype(np.float32)


def spec(name: str, shape: list) -> SimpleNamespace:
    return SimpleNamespace(name=name, shape=shape)


def model(base: list[dict], version: str = "1", classifier: bool = True) -> SimpleNamespace:
    """What agent.drift reads of an agent.models.LoadedModel."""
    return SimpleNamespace(
        name="m",
        version=version,
        inputs=[spec("x", ["batch", 8])],
        outputs=[spec("y", ["batch", 3])],
        is_classifier=classifier,
        extra={"provenance": {"drift": base}},
    )


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def outputs_of(xs: np.ndarray) -> np.ndarray:
    """A fixed 3-class classifier: scores from the first two features."""
    w = np.array([[1.0, 0.0, -1.0]] + [[0.0, 0.5, 0.0]] + [[0.0, 0.0, 0.0]] * 6, dtype=np.float32)
    return softmax(xs @ w)


def serve(rec: DriftRecorder, m: SimpleNamespace, xs: np.ndarray, batch: int = 4) -> None:
    for i in range(0, len(xs), batch):
        feed = xs[i : i + batch].reshape(-1, 8)
        rec.observe_inputs(m, {"x": feed})
        rec.observe_outputs(m, {"y": outputs_of(feed)})


def scores(base: list[dict], report: list[dict]) -> dict[tuple[str, str, str], float]:
    rows = F.by_cohort(base, [({"site": "a"}, report[0]["tensors"])])
    return {(r["io"], r["tensor"], r["kind"]): r["psi"] for r in rows}


# ---- the summary's definitions ------------------------------------------------------------------
def test_rows_and_histogram_bins() -> None:
    assert D.rows(np.zeros((3, 2, 2))).shape == (3, 4)
    assert D.rows(np.zeros(5)).shape == (1, 5)  # no batch axis: the whole tensor is one row
    assert D.rows(np.float32(2)).shape == (1, 1)
    edges = np.array([0.0, 1.0])
    # open-ended outer bins; a value on an edge counts in the bin above it
    assert D.histogram(np.array([-5.0, 0.0, 0.5, 1.0, 9.0]), edges).tolist() == [1, 2, 2]
    cls, conf = D.top1(np.array([[2.0, 0.0, 0.0]]))  # logits: softmax first
    assert cls.tolist() == [0] and conf[0] == pytest.approx(np.exp(2) / (np.exp(2) + 2))
    cls, conf = D.top1(np.array([[0.1, 0.7, 0.2]]))  # already probabilities
    assert cls.tolist() == [1] and conf[0] == pytest.approx(0.7)
    assert D.top1(np.zeros((4, 1))) is None  # one score per row: not a classifier output
    assert D.class_counts(np.array([0, 40, 99]), D.class_bins(100)).tolist()[-1] == 2  # folded
    assert D.class_bins(100) == MAX_DRIFT_CLASSES


def test_row_means_of_wide_rows_use_spread_blocks() -> None:
    rng = np.random.default_rng(3)
    narrow = rng.standard_normal((4, D.MEAN_BLOCKS * D.MEAN_BLOCK)).astype(np.float32)
    np.testing.assert_allclose(D.row_means(narrow), narrow.astype(np.float64).mean(axis=1), rtol=1e-12)
    wide = rng.uniform(0, 1, (2, 3 * 224 * 224)).astype(np.float32)  # an image per row
    means = D.row_means(wide)
    # 4,096 samples spread over the row: within 4 standard errors of the full mean
    assert np.all(np.abs(means - wide.mean(axis=1)) < 4 * (1 / np.sqrt(12)) / np.sqrt(4096))
    # a global shift (brightness) moves the block mean by exactly that much
    np.testing.assert_allclose(D.row_means(wide + np.float32(0.25)) - means, 0.25, atol=1e-6)
    # the first and the last values are inside a block: the blocks span the whole row
    idx = D._block_index(wide.shape[1])
    assert idx[0] == 0 and idx[-1] == wide.shape[1] - 1 and len(np.unique(idx)) == idx.size


def test_baseline_is_deciles_and_bounded() -> None:
    xs = normal(1)
    base = D.baseline({"x": xs}, {"y": outputs_of(xs.reshape(-1, 8)).reshape(N, 1, 3)}, classifier=True)
    x, y = base
    assert (x["io"], x["name"], x["count"]) == ("input", "x", N)
    assert len(x["edges"]) == D.BINS - 1 and len(x["hist"]) == D.BINS
    assert all(abs(f - 0.1) < 0.002 for f in x["hist"])  # quantile bins: a tenth in each
    assert x["mean"] == pytest.approx(0.0, abs=0.1) and x["std"] == pytest.approx(1.0, abs=0.05)
    assert "classes" not in x and len(y["classes"]) == 3 and len(y["conf"]) == 10
    assert sum(y["classes"]) == pytest.approx(1.0) and sum(y["conf"]) == pytest.approx(1.0)
    # a constant input: one edge, two bins, nothing breaks
    const = D.tensor_baseline("c", "input", np.ones((50, 1, 4)))
    assert const is not None and len(const["edges"]) == 1 and const["hist"] == [0.0, 1.0]
    assert len(json.dumps(base)) < 2000  # a few hundred numbers at most


# ---- end to end through the three sides -------------------------------------------------------
def test_same_distribution_is_stable_and_a_shift_is_flagged() -> None:
    xs = normal(1)
    base = D.baseline({"x": xs}, {"y": outputs_of(xs.reshape(-1, 8)).reshape(N, 1, 3)}, classifier=True)
    same, shifted = DriftRecorder(share=1.0), DriftRecorder(share=1.0)
    serve(same, model(base), normal(2))
    serve(shifted, model(base), normal(3, shift=1.0))

    s = scores(base, same.report())
    assert s[("input", "x", "values")] < 0.05, s
    assert all(v < 0.05 for v in s.values()), s
    t = scores(base, shifted.report())
    assert t[("input", "x", "values")] > 0.2, t
    assert t[("output", "y", "classes")] > 0.2, t  # the shift moves the predicted classes too
    report = shifted.report()[0]["tensors"][0]
    assert report["count"] == N and report["mean"] == pytest.approx(1.0, abs=0.1)
    assert report["std"] == pytest.approx(1.0, abs=0.05)


def test_psi_and_ks_definitions() -> None:
    assert F.psi([0.5, 0.5], [50, 50]) == pytest.approx(0.0)
    assert F.psi([0.5, 0.5], [90, 10]) == pytest.approx(0.4 * np.log(1.8) - 0.4 * np.log(0.2))
    assert F.psi([0.5, 0.5], [100, 0]) == pytest.approx(0.5 * np.log(2) + (1e-4 - 0.5) * np.log(2e-4))
    assert F.ks([0.25] * 4, [0, 0, 50, 50]) == pytest.approx(0.5)
    assert F.psi([0.5, 0.5], [1, 1, 1]) is None and F.ks([1.0], []) is None  # other bins, no data
    rows = F.score([{"name": "x", "io": "input", "mean": 0, "hist": [0.5, 0.5]}], F.pool([]))
    assert rows[0]["psi"] is None and F.max_psi(rows) is None  # no data breaches no gate


def test_cohorts_are_pooled_and_small_ones_not_scored() -> None:
    base = [{"name": "x", "io": "input", "mean": 0.0, "hist": [0.5, 0.5]}]

    def dev(hist: list[int]) -> list[dict]:
        return [{"name": "x", "io": "input", "count": sum(hist), "mean": 0.0, "std": 1.0, "hist": hist}]

    reports = [
        ({"site": "a"}, dev([30, 30])),
        ({"site": "a"}, dev([30, 30])),
        ({"site": "b"}, dev([100, 0])),
        ({}, dev([5, 5])),  # no site label, too few rows to score
    ]
    rows = {r["cohort"]: r for r in F.by_cohort(base, reports, "site")}
    assert rows["a"]["devices"] == 2 and rows["a"]["count"] == 120 and rows["a"]["psi"] == 0
    assert rows["b"]["psi"] > 2 and rows["b"]["ks"] == pytest.approx(0.5)
    assert rows[F.NO_LABEL]["psi"] is None
    assert F.max_psi(rows.values()) == rows["b"]["psi"]


# ---- bounds ---------------------------------------------------------------------------------------
def test_report_fits_the_status_message_and_round_trips() -> None:
    rec = DriftRecorder(share=1.0)
    base = D.baseline({"x": normal(1, n=200)}, {}, classifier=False)
    for v in range(20):  # more versions than a report carries
        serve(rec, model(base, version=str(v)), normal(v, n=8))
    report = rec.report()
    assert report is not None and 1 <= len(report) <= 8
    assert report[0]["version"] == "19"  # most recently served first
    assert len(json.dumps(report)) <= DRIFT_BYTES
    msg = Status(device="d", state="active", drift=report).to_json()  # type: ignore[arg-type]
    assert len(msg) < MAX_MESSAGE_BYTES
    assert Status.from_json(msg).drift[0].tensors[0].count == 8
    assert rec.report(budget=10) is None  # nothing fits: no field rather than a cut one


def test_without_baseline_counts_but_no_histogram() -> None:
    rec = DriftRecorder(share=1.0)
    serve(rec, model([]), normal(1, n=40))
    x, y = rec.report()[0]["tensors"]
    assert x["count"] == 40 and x["hist"] == [] and x["mean"] is not None
    assert y["classes"] is not None and sum(y["classes"]) == 40  # class width from the model's output
    assert sum(y["conf"]) == 40


def test_provenance_carries_the_baseline_and_drops_one_that_does_not_fit() -> None:
    base = D.baseline({"x": normal(1, n=100)}, {}, classifier=False)
    doc = provenance.from_report({"drift": base}, {})
    assert doc["drift"] == base
    assert provenance.for_artifact(doc, "onnx")["drift"] == base  # what the agent reads
    assert any(line.startswith("drift baseline:") for line in provenance.lines(doc))
    bad = [{**base[0], "hist": [float("nan")] * 3}]
    assert "drift" not in provenance.from_report({"drift": bad}, {})


def test_budget_earns_a_share_of_time_and_spends_what_summaries_cost() -> None:
    from agent.drift import Budget

    now = [0.0]
    b = Budget(0.01, burst=0.005, clock=lambda: now[0])
    assert b.allow()  # starts with a full burst
    b.spend(0.006)  # one expensive summary overdraws it
    assert not b.allow()
    now[0] += 0.05  # 50 ms at 1% earns 0.5 ms: still 0.5 ms short
    assert not b.allow()
    now[0] += 0.1  # 1 ms more earned
    assert b.allow()
    now[0] += 1000.0  # an idle stretch saves up at most the burst
    b.allow()
    assert b.tokens == 0.005
    assert Budget(1.0, clock=lambda: now[0]).allow() and not Budget(0.0, clock=lambda: now[0]).allow()


def test_recorder_under_a_budget_summarises_a_sample_and_counts_the_rest() -> None:
    m = model([])
    r = DriftRecorder(share=0.0)
    for _ in range(10):
        r.observe_inputs(m, {"x": np.ones((2, 8), np.float32)})
    assert r.report() is None and r.skipped == 10

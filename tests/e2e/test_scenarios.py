"""`edgekit demo --scenario NAME` end to end over a real Mosquitto (started here, with the password
file and ACL `edgekit fleet mosquitto-config` renders for the enrolled agents), with the fleet
server and every agent as separate processes. Each scenario's own checks (from the fleet's API and
the agents' status) decide whether it returns; these tests then assert the summary's facts.
Conversions are cached for the module, so the scenarios convert each model once in all."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from edgekit.mqttwire import publish_packet, split_packets
from edgekit.scenarios import SCENARIOS, models, run_scenario
from edgekit.scenarios.harness import ExternalBroker
from edgekit.scenarios.mitm import rewrite_publish
from tests.support import mosquitto
from tests.support.mosquitto import Mosquitto
from tests.support.net import free_port

pytestmark = pytest.mark.timeout(400)
needs_mosquitto = pytest.mark.skipif(not mosquitto.available(), reason="mosquitto is not installed")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scenario-conversions")


@pytest.fixture
def broker() -> Iterator[tuple[ExternalBroker, list[Mosquitto]]]:
    """A Mosquitto the harness starts (through this hook) once the agents are enrolled."""
    started: list[Mosquitto] = []
    port = free_port()

    def start(conf_dir: Path) -> None:
        started.append(Mosquitto("demo", {}, port=port, include_dir=conf_dir).start())

    yield ExternalBroker(port, start), started
    for m in started:
        m.stop()


def run(name: str, work: Path, cache: Path, broker: tuple[ExternalBroker, list[Mosquitto]]) -> dict:
    out = io.StringIO()
    try:
        summary = run_scenario(name, work, Console(file=out, width=200), broker=broker[0], cache=cache)
    except BaseException:
        print(out.getvalue())  # the scenario's own narration, for the failure report
        raise
    assert len(broker[1]) == 1 and broker[1][0].proc.poll() is None  # it ran on that Mosquitto
    assert summary["scenario"] == name and summary["ok"] and summary["broker"] == "mosquitto"
    # Nothing the scenario started outlives it.
    leftover = subprocess.run(["pgrep", "-f", str(work / "run")], capture_output=True, text=True)
    assert leftover.stdout.strip() == ""
    json.dumps(summary)  # what --json prints
    return summary


@needs_mosquitto
def test_gate_abort_rolls_the_slow_release_back(tmp_path: Path, cache: Path, broker) -> None:
    s = run("gate-abort", tmp_path, cache, broker)
    assert s["rollout"]["state"] == "aborted"
    assert s["rollout"]["reason"].startswith("gate latency_p95_ratio<=1.2 breached")
    assert s["latency_p95_ratio"] > 1.2
    first, second = s["rollout"]["waves"]
    assert first["devices"] == first["rolled_back"] == 1 and second["skipped"] == 1
    ran_slow = [a for a in s["agents"] if "2.0.0" in a["served_versions"]]
    assert len(ran_slow) == 1  # wave 1 really served the slow release...
    assert all(a["active"] == "1.0.0" for a in s["agents"])  # ...and every agent is back on 1.0.0
    assert s["client_p50_ms"]["2.0.0"] > s["client_p50_ms"]["1.0.0"]


@needs_mosquitto
def test_delta_ships_the_finetuned_release_as_a_delta(tmp_path: Path, cache: Path, broker) -> None:
    s = run("delta", tmp_path, cache, broker)
    assert 0 < s["delta_bytes"] <= 0.3 * s["full_bytes"]
    assert s["delta_ratio"] == pytest.approx(s["delta_bytes"] / s["full_bytes"], abs=1e-4)
    assert s["from"]["sha256"] != s["to"]["sha256"]
    assert [a["delta"] for a in s["agents"]] == ["used", "used"]
    assert all(a["version"] == "1.1.0" and a["sha256"] == s["to"]["sha256"] for a in s["agents"])


@needs_mosquitto
def test_provenance_altered_report_is_refused(tmp_path: Path, cache: Path, broker) -> None:
    s = run("provenance", tmp_path, cache, broker)
    assert "provenance_mismatch" in s["fleet_refused"]  # the fleet would not sign the altered registry
    assert s["rollout"]["state"] == "aborted"
    in_transit, re_signed = s["agents"]
    assert in_transit["refused"] in ("bad_signature", "threshold")  # altered after signing
    assert re_signed["refused"] == "provenance_mismatch"  # signed, but the report names other bytes
    assert all(a["active"] == "1.0.0" for a in s["agents"])


@needs_mosquitto
def test_drift_shifted_cohort_pauses_the_rollout(tmp_path: Path, cache: Path, broker) -> None:
    s = run("drift", tmp_path, cache, broker)
    assert s["rollout"]["state"] == "paused"
    assert s["rollout"]["reason"].startswith("gate drift_psi<=0.2 breached")
    assert s["drift_psi_gate"] > 0.2
    assert s["psi_by_site"]["south"] > 0.2 > 0.1 > s["psi_by_site"]["north"]
    south_inputs = [r for r in s["drift"] if r["cohort"] == "south" and r["io"] == "input"]
    north_inputs = [r for r in s["drift"] if r["cohort"] == "north" and r["io"] == "input"]
    # what the devices reported is what was sent: south's pixels were brightened
    assert south_inputs[0]["mean"] > north_inputs[0]["mean"] + 0.05
    assert north_inputs[0]["mean"] == pytest.approx(north_inputs[0]["baseline_mean"], abs=0.01)


def test_drift_shift_stays_an_image() -> None:
    import numpy as np

    from edgekit.scenarios.drift import shifted
    from edgekit.scenarios.harness import eval_inputs

    x = eval_inputs(360)
    y = shifted(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert y.min() >= 0.0 and y.max() <= 1.0 and y.mean() > x.mean() + 0.05


@needs_mosquitto
def test_shadow_canary_promotes_only_the_agreeing_release(tmp_path: Path, cache: Path, broker) -> None:
    s = run("shadow-canary", tmp_path, cache, broker)
    worse, good = s["worse"]["rollout"], s["good"]["rollout"]
    assert worse["state"] == "aborted"
    assert worse["reason"].startswith("promotion rule top1_agreement>=0.9 breached")
    assert worse["waves"][0]["promoted"] == 0 and worse["waves"][0]["worst_agreement"] < 0.9
    assert any(a["worse_shadow_requests"] >= s["min_shadow_requests"] for a in s["agents"])
    assert good["state"] == "completed" and good["waves"][0]["promoted"] == len(s["agents"]) == 2
    assert good["waves"][0]["worst_agreement"] >= 0.9
    for a in s["agents"]:
        assert "1.1.0" not in a["served_versions"] and a["active"] == "1.2.0"
        if a["worse_shadow_requests"] >= s["min_shadow_requests"]:  # the rule judged it: below 0.9
            assert 0.5 < a["worse_top1_agreement"] < 0.9
        assert a["good_top1_agreement"] >= 0.9
        assert a["good_shadow_requests"] >= s["min_shadow_requests"]
        assert a["artifact_gets_for_good"] == 1  # the shadow's install; the promotion downloaded nothing


def test_mitm_reframes_only_desired_publishes() -> None:
    """The relay's framing: a QoS 1 PUBLISH on desired gets the new payload and remaining
    length (here crossing the 1-byte boundary); other packets and a split stream pass intact."""
    topic = "edgekit/demo/devices/d1/desired"
    ping, other = bytes([0xD0, 0]), publish_packet("edgekit/demo/roots", b"x" * 10, qos=1, pid=7)
    stream = ping + publish_packet(topic, b"{}", qos=1, pid=7) + other
    buf = bytearray(stream[:-3])
    first = split_packets(buf)
    assert [k for k, _f, _b in first] == [13, 3] and bytes(buf) == other[:-3]
    buf += stream[-3:]
    (last,) = split_packets(buf)
    assert not buf
    big = b"y" * 300
    relayed = [rewrite_publish(k, f, b, lambda _t, _p: big) for k, f, b in [*first, last]]
    assert relayed == [ping, publish_packet(topic, big, qos=1, pid=7), other]


def test_unknown_scenario_is_one_line_listing_the_names(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit.cli", "demo", "--scenario", "nope", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "unknown scenario 'nope'" in proc.stderr
    assert all(name in proc.stderr for name in SCENARIOS)
    assert not (tmp_path / "run").exists()  # refused before anything started


def test_model_variants(tmp_path: Path) -> None:
    """slow_variant predicts exactly what the source does; finetuned changes only the last layer,
    and changes it (so a delta has something to carry but little); perturbed_head disagrees
    with the source on a fifth to a third of the digits."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    x, y = models.training_split()
    slow = models.slow_variant(models.SOURCE, tmp_path / "slow.onnx", channels=16, layers=2)
    tuned = models.finetuned(models.SOURCE, tmp_path / "tuned.onnx", x, y)
    worse = models.perturbed_head(models.SOURCE, tmp_path / "worse.onnx")

    def run(path: Path) -> np.ndarray:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return sess.run(None, {"input": x})[0]

    np.testing.assert_allclose(run(slow), run(models.SOURCE), rtol=1e-5, atol=1e-5)
    weights = {
        p: {t.name: numpy_helper.to_array(t) for t in onnx.load(str(p)).graph.initializer}
        for p in (models.SOURCE, tuned, worse)
    }

    def changed(p: Path) -> set[str]:
        return {n for n, w in weights[models.SOURCE].items() if not np.array_equal(w, weights[p][n])}

    assert changed(tuned) == {models.HEAD_W, models.HEAD_B}
    assert (run(tuned).argmax(1) == y).mean() >= (
        run(models.SOURCE).argmax(1) == y
    ).mean()  # trained on these
    # The shadow canary's pair: the fine-tune agrees with the source (promoted), the perturbed
    # head on 60-85% (refused by top1_agreement>=0.9), with only the head's weights changed.
    source_top1 = run(models.SOURCE).argmax(1)
    assert (run(tuned).argmax(1) == source_top1).mean() >= 0.95
    assert 0.6 <= (run(worse).argmax(1) == source_top1).mean() <= 0.85
    assert changed(worse) == {models.HEAD_W}

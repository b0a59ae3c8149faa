"""Drift telemetry end to end on the fleet side: simulated devices over a real Mosquitto send
heartbeats whose `drift` summaries (built by agent.drift's recorder) are in-distribution for the
`north` cohort and shifted for `south`; `edgekit fleet drift` shows south's PSI high and north's
low, and a rollout gated on `drift_psi<=0.2` with `--on-breach pause` pauses."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter

from agent.drift import DriftRecorder
from edgekit import drift as D
from edgekit.protocol import VersionDrift
from tests.fleet.conftest import FLEET
from tests.fleet.helpers import fleet_pool, wait_for
from tests.support.convert_output import make_convert_output
from tests.support.devices import DevicePool, SimDevice

N = 20  # devices, alternating north / south so every wave has both cohorts
ROWS = 200  # rows each device served
SHIFT = {"north": 0.0, "south": 1.5}  # mean of the features' distribution, baseline N(0, 1)
W = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0  # tests/support/convert_output.tiny_onnx
_DRIFT = TypeAdapter(list[VersionDrift])


def tiny(x: np.ndarray) -> np.ndarray:
    z = x @ W
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def features(seed: int, n: int, shift: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(shift, 1.0, size=(n, 1)) + rng.normal(0, 0.1, size=(n, 4))).astype(np.float32)


def baseline() -> list[dict[str, Any]]:
    x = features(0, 2000, 0.0)
    return D.baseline({"x": x.reshape(-1, 1, 4)}, {"y": tiny(x).reshape(-1, 1, 3)}, classifier=True)


def served(base: list[dict[str, Any]], version: str, seed: int, shift: float) -> list[VersionDrift]:
    """What a device running tiny `version` reports after ROWS rows, from the agent's recorder."""
    model = SimpleNamespace(
        name="tiny",
        version=version,
        inputs=[SimpleNamespace(name="x", shape=["batch", 4])],
        outputs=[SimpleNamespace(name="y", shape=["batch", 3])],
        is_classifier=True,
        extra={"provenance": {"drift": base}},
    )
    rec = DriftRecorder(share=1.0)  # every request: the reports are built from known rows
    x = features(seed, ROWS, shift)
    for i in range(0, ROWS, 8):
        rec.observe_inputs(model, {"x": x[i : i + 8]})
        rec.observe_outputs(model, {"y": tiny(x[i : i + 8])})
    return _DRIFT.validate_python(rec.report())


def publish(srv: Any, tmp: Path, version: str, base: list[dict[str, Any]]) -> None:
    out = make_convert_output(tmp / version, scale=1.0)
    report = json.loads((out / "report.json").read_text())
    (out / "report.json").write_text(json.dumps({**report, "drift": base}))  # as `edgekit convert` writes it
    srv.registry.publish(out, "tiny", version)


@pytest.fixture
def fleet(fleet_env: dict[str, Any], tmp: Path) -> Iterator[tuple[Any, DevicePool]]:
    srv = fleet_env["server"]
    base = baseline()
    for v in ("1.0", "2.0"):
        publish(srv, tmp, v, base)
    site = {f"dev-{i:03d}": ("north", "south")[i % 2] for i in range(N)}
    reports = {
        (d, v): served(base, v, seed=i * 10 + k, shift=SHIFT[site[d]])
        for i, d in enumerate(site)
        for k, v in enumerate(("1.0", "2.0"))
    }

    def drift(d: SimDevice) -> list[VersionDrift] | None:
        return reports[(d.id, d.version)] if d.version else None

    pool = fleet_pool(fleet_env, heartbeat_s=0.2, drift=drift)
    for d, s in site.items():
        pool.add(d, {"site": s, "all": "yes"})
    pool.connect_all()
    wait_for(lambda: len(srv.devices.list()) == N, what="devices registered")
    yield srv, pool
    pool.stop()


def reported(srv: Any, version: str) -> int:
    return int(srv.db.query("SELECT COUNT(*) FROM device_drift WHERE version=?", (version,))[0][0])


def cli(srv: Any, tmp: Path, *args: str) -> str:
    cfg = tmp / "fleet.toml"
    cfg.write_text(
        f'[server]\nfleet = "{FLEET}"\nstate_dir = "{srv.state_dir}"\n[admin]\nport = {srv.cfg["admin"]["port"]}\n'
    )
    cmd = [sys.executable, "-m", "edgekit.cli", "fleet", "drift", *args, "--config", str(cfg)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


@pytest.mark.timeout(120)
@pytest.mark.parametrize("broker_kind", ["mosquitto"], indirect=True)
def test_shifted_cohort_scores_high_and_its_drift_gate_pauses_the_rollout(fleet, tmp: Path) -> None:
    srv, _pool = fleet
    rid = srv.engine.start("tiny", "1.0", {"all": "yes"}, [100], 0.95, 0.05, 20)
    wait_for(lambda: srv.engine.status(rid)["state"] == "completed", what="1.0 completed")
    wait_for(lambda: reported(srv, "1.0") == N, what="1.0 drift reported by every device")

    doc = json.loads(cli(srv, tmp, "tiny", "--version", "1.0", "--by", "site", "--json"))
    (v,) = doc["versions"]
    psi = {(r["cohort"], r["io"], r["kind"]): r["psi"] for r in v["rows"]}
    assert psi[("south", "input", "values")] > 0.2, psi
    assert psi[("north", "input", "values")] < 0.05, psi
    assert psi[("south", "output", "classes")] > psi[("north", "output", "classes")]
    rows = {(r["cohort"], r["io"], r["kind"]): r for r in v["rows"]}
    assert rows[("south", "input", "values")]["devices"] == N // 2
    assert rows[("south", "input", "values")]["count"] == N // 2 * ROWS
    table = cli(srv, tmp, "tiny", "--version", "1.0")
    assert "south" in table and "north" in table and "PSI" in table

    # 2.0 gated on drift: the first wave (both cohorts) reports, south breaches, the rollout pauses
    rid2 = srv.engine.start(
        "tiny",
        "2.0",
        {"all": "yes"},
        [50, 100],
        0.95,
        0.05,
        20,
        gates=["drift_psi<=0.2"],
        bake=1.0,
        on_breach="pause",
    )
    wait_for(lambda: srv.engine.status(rid2)["state"] == "paused", what="2.0 paused by its drift gate")
    st = srv.engine.status(rid2)
    assert "drift_psi<=0.2 breached" in st["reason"], st["reason"]
    assert st["waves"][0]["gates"]["drift_psi"] > 0.2
    assert st["waves"][1]["pending"] == N - st["waves"][0]["devices"]  # nothing more dispatched
    assert st["totals"]["rolled_back"] == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("broker_kind", ["mosquitto"], indirect=True)
def test_drift_gate_holds_for_an_in_distribution_cohort(fleet) -> None:
    srv, _pool = fleet
    rid = srv.engine.start(
        "tiny", "1.0", {"site": "north"}, [50, 100], 0.95, 0.05, 20, gates=["drift_psi<=0.2"], bake=0.5
    )
    wait_for(lambda: srv.engine.status(rid)["state"] != "running", what="1.0 on north ended")
    st = srv.engine.status(rid)
    assert st["state"] == "completed", st
    assert all(w["gates"]["drift_psi"] is not None and w["gates"]["drift_psi"] < 0.2 for w in st["waves"])

"""A real agent (in-process daemon, Mosquitto, HTTP server, artifact server) installs a signed
manifest whose provenance carries a drift baseline, answers OIP requests, and its heartbeat then
carries the drift summary of what it served, in the baseline's bins (agent.drift)."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from agent.daemon import Agent
from edgekit import drift as D
from edgekit import provenance
from edgekit.trust import build_manifest, dumps, sign
from fleet import drift as F
from tests.agent.brokers import Fleet, Mosquitto
from tests.agent.conftest import free_port
from tests.agent.support import Keys, card, expected_probs
from tests.agent.test_mqtt import agent_config

pytestmark = pytest.mark.timeout(90)
REQUESTS, ROWS = 60, 4  # rows per request: the summary counts rows, not requests


def features(seed: int, n: int, shift: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(shift, 1.0, size=(n, 1)) + rng.normal(0, 0.1, size=(n, 4))).astype(np.float32)


def signed_manifest(keys: Keys, files: Any, url: str, base: list[dict[str, Any]]) -> bytes:
    data = (files / "cls_v1.onnx").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    return dumps(
        sign(
            build_manifest(
                fleet="f",
                device="dev-1",
                model="cls",
                version="1.0",
                sequence=1,
                artifacts={
                    "onnx": {
                        "url": url,
                        "sha256": sha,
                        "size": len(data),
                        "file": "cls_v1.onnx",
                        "precision": "fp32",
                    }
                },
                model_card=card("cls"),
                # as the fleet builds it from report.json at publish (fleet.registry)
                provenance=provenance.from_report({"drift": base}, {"onnx": (sha, len(data), {})}),
            ),
            [keys.release],
        )
    )


def test_heartbeat_carries_the_drift_summary_of_served_requests(tmp_path, files, http) -> None:
    calib = features(0, 2000, 0.0)
    base = D.baseline(
        {"input": calib.reshape(-1, 1, 4)},
        {"probs": expected_probs(calib).reshape(-1, 1, 3)},
        classifier=True,
    )
    port = free_port()
    broker = Mosquitto(tmp_path / "mosq", port).start()
    keys = Keys.make()
    fleet = Fleet(port, protocol=mqtt.MQTTv5)
    cfg = agent_config(tmp_path, keys, port, "5")
    cfg["agent"]["heartbeat_s"] = 0.3
    cfg["agent"]["drift_share"] = 1.0  # every request: the test counts them (default: a sample under load)
    agent = Agent(cfg)
    agent.start()
    try:
        fleet.wait(lambda ms: any(m.get("online") is True for m in ms), which="online")
        fleet.publish_desired(signed_manifest(keys, files, http.url + "cls_v1.onnx", base))
        fleet.wait(lambda ms: any(m.get("state") == "active" and m.get("version") == "1.0" for m in ms))
        assert all("drift" not in m for m in fleet.status)  # nothing served yet: no field

        served = features(7, REQUESTS * ROWS, 1.5)  # shifted inputs
        assert agent.server is not None
        with httpx.Client(base_url=agent.server.url, timeout=10) as c:
            for i in range(REQUESTS):
                x = served[i * ROWS : (i + 1) * ROWS]
                body = {
                    "inputs": [
                        {"name": "input", "datatype": "FP32", "shape": [ROWS, 4], "data": x.ravel().tolist()}
                    ]
                }
                r = c.post("/v2/models/cls/infer", json=body)
                assert r.status_code == 200, r.text

        def summary(ms: list[dict]) -> bool:
            return any(
                m.get("heartbeat")
                and (m.get("drift") or [{}])[0].get("tensors", [{}])[0].get("count") == REQUESTS * ROWS
                for m in ms
            )

        fleet.wait(summary)  # a heartbeat with the drift of every served row
        beat = next(m for m in reversed(fleet.status) if m.get("drift"))
        (v,) = beat["drift"]
        assert (v["model"], v["version"]) == ("cls", "1.0")
        x, y = v["tensors"]
        assert (x["io"], x["name"], y["io"], y["name"]) == ("input", "input", "output", "probs")
        assert len(x["hist"]) == len(base[0]["edges"]) + 1 and sum(x["hist"]) == REQUESTS * ROWS
        assert x["mean"] == pytest.approx(float(served.mean()), rel=1e-4)
        assert sum(y["classes"]) == sum(y["conf"]) == REQUESTS * ROWS and len(y["classes"]) == 3
        # the fleet's score of this device's report: the shifted inputs stand out
        rows = {(r["io"], r["kind"]): r["psi"] for r in F.by_cohort(base, [({}, v["tensors"])])}
        assert rows[("input", "values")] > 0.2, rows
    finally:
        agent.stop()
        fleet.stop()
        broker.stop()

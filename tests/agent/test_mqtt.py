"""Updates over real MQTT brokers (amqtt embedded, Mosquitto), with a real artifact server."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from agent.config import DEFAULTS
from agent.daemon import Agent
from tests.agent.brokers import Fleet, Mosquitto
from tests.agent.conftest import free_port
from tests.agent.support import ArtifactServer, Keys, expected_probs, manifest

pytestmark = pytest.mark.timeout(90)
X = np.array([[2.0, 1.0, 0.0, 0.0]], np.float32)


def agent_config(tmp_path: Path, keys: Keys, port: int, protocol: str) -> dict:
    root = tmp_path / "root.json"
    root.write_bytes(keys.root_bytes())
    cfg = copy.deepcopy(DEFAULTS)
    cfg["agent"].update(
        device="dev-1", fleet="f", data_dir=str(tmp_path / "data"), root=str(root), heartbeat_s=0.5
    )
    cfg["server"].update(port=0)
    cfg["mqtt"].update(port=port, protocol=protocol, keepalive=5)
    return cfg


def _states(msgs: list[dict], version: str) -> list[str]:
    return [m["state"] for m in msgs if m.get("version") == version and not m.get("heartbeat")]


def _update_flow(tmp_path: Path, files: Path, http: ArtifactServer, port: int, protocol: str) -> None:
    keys = Keys.make()
    fleet = Fleet(port, protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
    agent = Agent(agent_config(tmp_path, keys, port, protocol))
    agent.start()
    try:
        fleet.wait(lambda ms: any(m.get("online") is True for m in ms), which="online")
        fleet.publish_desired(
            manifest(
                keys, file=files / "cls_v1.onnx", url=http.url + "cls_v1.onnx", sequence=1, version="1.0"
            )
        )
        fleet.wait(lambda ms: "active" in _states(ms, "1.0"))
        assert _states(fleet.status, "1.0") == [
            "downloading",
            "verifying",
            "staged",
            "smoke_tested",
            "active",
        ]
        out = agent.engine.infer("cls", {"input": X})
        assert out.served_by == "local" and out.model_version == "1.0"
        np.testing.assert_allclose(out.outputs["probs"], expected_probs(X), atol=1e-6)
        # a tampered manifest is refused and reported; the model stays
        bad = manifest(
            keys,
            file=files / "cls_v2.onnx",
            url=http.url + "cls_v2.onnx",
            sequence=2,
            version="2.0",
            smoke_bias=0.5,
        ).replace(b'"2.0"', b'"2.1"')
        fleet.publish_desired(bad)
        fleet.wait(lambda ms: any(m.get("reason") == "bad_signature" for m in ms))
        assert agent.registry.get("cls").version == "1.0"
        # heartbeat re-sends the current state
        fleet.wait(lambda ms: any(m.get("heartbeat") and m["state"] == "active" for m in ms))
    finally:
        agent.stop()
        fleet.wait(lambda ms: ms and ms[-1].get("online") is False, which="online")
        fleet.stop()


def test_update_over_embedded_amqtt(tmp_path, files, http) -> None:
    from fleet.broker import EmbeddedBroker

    port = free_port()
    broker = EmbeddedBroker("127.0.0.1", port, fleet="f")
    broker.start()
    try:
        _update_flow(tmp_path, files, http, port, "3.1.1")
    finally:
        broker.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_update_over_mosquitto(tmp_path, files, http, protocol) -> None:
    port = free_port()
    broker = Mosquitto(tmp_path / "mosq", port).start()
    try:
        _update_flow(tmp_path, files, http, port, protocol)
    finally:
        broker.stop()


def test_broker_restart_survived(tmp_path, files, http) -> None:
    """Mosquitto restarts; the agent reconnects on its own, its v5 session survives, and a
    manifest published while it is reconnecting is still applied."""
    port = free_port()
    keys = Keys.make()
    broker = Mosquitto(tmp_path / "mosq", port).start()
    cfg = agent_config(tmp_path, keys, port, "5")
    agent = Agent(cfg)
    agent.start()
    fleet = Fleet(port)
    try:
        assert agent.mqtt.connected.wait(10)
        fleet.publish_desired(
            manifest(
                keys, file=files / "cls_v1.onnx", url=http.url + "cls_v1.onnx", sequence=1, version="1.0"
            )
        )
        fleet.wait(lambda ms: "active" in _states(ms, "1.0"))
        fleet.stop()
        broker.stop()
        assert not agent.mqtt.connected.wait(0.1) or True
        broker = Mosquitto(tmp_path / "mosq", port).start()
        fleet = Fleet(port)
        fleet.publish_desired(
            manifest(
                keys,
                file=files / "cls_v2.onnx",
                url=http.url + "cls_v2.onnx",
                sequence=2,
                version="2.0",
                smoke_bias=0.5,
            )
        )
        fleet.wait(lambda ms: "active" in _states(ms, "2.0"), timeout=40)
        assert agent.registry.get("cls").version == "2.0"
        assert agent.mqtt.connected.is_set()
    finally:
        agent.stop()
        fleet.stop()
        broker.stop()


def test_password_auth_and_device_acl_on_embedded_broker(tmp_path, files, http) -> None:
    """username/password from config against the embedded broker with per-device ACLs."""
    from fleet.broker import EmbeddedBroker

    port = free_port()
    broker = EmbeddedBroker(
        "127.0.0.1",
        port,
        fleet="f",
        users={"dev-1": "s3cret", "srv": "x"},
        allow_anonymous=False,
        server_user="srv",
    )
    broker.start()
    keys = Keys.make()
    cfg = agent_config(tmp_path, keys, port, "3.1.1")
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    cfg["mqtt"].update(username="dev-1", password=pw.read_text().strip())
    agent = Agent(cfg)
    fleet = None
    try:
        fleet = Fleet(port, username="srv", password="x")
        agent.start()
        assert agent.mqtt.connected.wait(10)
        fleet.publish_desired(
            manifest(
                keys, file=files / "cls_v1.onnx", url=http.url + "cls_v1.onnx", sequence=1, version="1.0"
            )
        )
        fleet.wait(lambda ms: "active" in _states(ms, "1.0"))
    finally:
        agent.stop()
        if fleet:
            fleet.stop()
        broker.stop()
    # a wrong password never gets a session
    (tmp_path / "b").mkdir()
    cfg2 = agent_config(tmp_path / "b", keys, port, "3.1.1")
    broker = EmbeddedBroker("127.0.0.1", port, fleet="f", users={"dev-1": "s3cret"}, allow_anonymous=False)
    broker.start()
    cfg2["mqtt"].update(username="dev-1", password="wrong")
    bad = Agent(cfg2)
    try:
        bad.start()
        assert not bad.mqtt.connected.wait(2)
    finally:
        bad.stop()
        broker.stop()

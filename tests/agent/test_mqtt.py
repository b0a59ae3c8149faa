"""Updates over real MQTT brokers (amqtt embedded, Mosquitto), with a real artifact server."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from agent.config import DEFAULTS
from agent.daemon import Agent
from tests.agent.brokers import Fleet, Mosquitto
from tests.agent.conftest import free_port
from tests.agent.support import ArtifactServer, Keys, expected_probs, manifest
from tests.fleet.helpers import wait_for

pytestmark = pytest.mark.timeout(90)
X = np.array([[2.0, 1.0, 0.0, 0.0]], np.float32)
SRV, SRV_PW = "fleet-server", "server-secret"  # the fleet's own MQTT user on the embedded broker


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


def embedded_broker(tmp_path: Path, port: int, devices: tuple[str, ...] = ("dev-1",)) -> tuple[Any, dict]:
    """The embedded broker as the fleet runs it: enrolled devices and a server user only.
    Returns it and each device's password."""
    from fleet.broker import EmbeddedBroker
    from fleet.credentials import open_store

    store = open_store(tmp_path / "fleet-state")
    passwords = {d: store.issue(d) for d in devices}
    broker = EmbeddedBroker(
        "127.0.0.1",
        port,
        fleet="f",
        credentials=store,
        server_user=SRV,
        server_password=SRV_PW,
        close_credentials=True,
    )
    broker.start()
    return broker, passwords


def _update_flow(
    tmp_path: Path,
    files: Path,
    http: ArtifactServer,
    port: int,
    protocol: str,
    password: str | None = None,
) -> None:
    keys = Keys.make()
    creds = {"username": SRV, "password": SRV_PW} if password else {}
    fleet = Fleet(port, protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311, **creds)
    cfg = agent_config(tmp_path, keys, port, protocol)
    if password:
        cfg["mqtt"].update(username="dev-1", password=password)
    agent = Agent(cfg)
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
    port = free_port()
    broker, passwords = embedded_broker(tmp_path, port)
    try:
        _update_flow(tmp_path, files, http, port, "3.1.1", passwords["dev-1"])
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


def test_enrolment_bundle_auth_on_embedded_broker(tmp_path, files, http) -> None:
    """An agent configured from an enrolment bundle (`[agent] enrolment`) gets its update; with a
    wrong password it never gets a session and says why."""
    from agent.config import load_agent_config
    from edgekit.enrolment import BrokerAccess, Enrolment, write_bundle

    port = free_port()
    broker, passwords = embedded_broker(tmp_path, port)
    keys = Keys.make()

    def bundle_config(name: str, password: str) -> dict:
        e = Enrolment(
            fleet="f",
            device="dev-1",
            broker=BrokerAccess(url=f"mqtt://127.0.0.1:{port}", username="dev-1", protocol="3.1.1"),
        )
        write_bundle(tmp_path / name, e, root=keys.root_bytes(), password=password, ca=None)
        toml = tmp_path / f"{name}.toml"
        toml.write_text(
            f'[agent]\nenrolment = "{tmp_path / name}"\ndata_dir = "{tmp_path / name / "data"}"\n'
            "heartbeat_s = 0.5\n[server]\nenabled = false\n[mqtt]\nkeepalive = 5\n"
        )
        return load_agent_config(toml)

    agent = Agent(bundle_config("good", passwords["dev-1"]))
    fleet = None
    try:
        fleet = Fleet(port, username=SRV, password=SRV_PW)
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
    bad = Agent(bundle_config("bad", "wrong"))
    try:
        bad.start()
        wait_for(lambda: "refused" in (bad.mqtt.last_error or ""), what="the refusal recorded")
        assert "Bad user name or password" in bad.mqtt.last_error
        assert not bad.mqtt.connected.is_set()
    finally:
        bad.stop()
        broker.stop()

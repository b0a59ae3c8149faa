"""agent.toml as a typed model: the shipped sample loads, env values are typed by their field,
unknown keys and bad values are named, `agent check` and `agent run` fail in one line and
write nothing, `tls = false` is honoured, and an MQTT 5 agent facing the embedded 3.1.1 broker
says why it does not connect."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.config import DEFAULTS, load_agent_config
from agent.daemon import _policy
from agent.fallback import POLICIES
from edgekit.errors import ConfigError
from edgekit.settings import ConfigProblems

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "agent.toml"


def _edgekit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def _toml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_sample_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_MQTT__HOST", "broker.local")
    monkeypatch.setenv("EDGEKIT_CLOUD__TIMEOUT_MS", "500")
    cfg = load_agent_config(SAMPLE)
    assert cfg["agent"]["device"] == "store-042"
    assert cfg["mqtt"]["host"] == "broker.local" and cfg["cloud"]["timeout_ms"] == 500
    # the sample speaks the protocol every supported broker speaks (the embedded one: 3.1.1 only)
    assert cfg["mqtt"]["protocol"] == "3.1.1" == DEFAULTS["mqtt"]["protocol"]
    pol = _policy(cfg["models"]["digits"], cfg["fallback"])
    assert pol.mode == "local-first" and pol.confidence_threshold == 0.6 and pol.local_deadline_ms == 50


def test_env_values_typed_by_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_MQTT__PASSWORD", "123456")
    monkeypatch.setenv("EDGEKIT_AGENT__DEVICE", "1001")
    monkeypatch.setenv("EDGEKIT_MQTT__PORT", "8883")
    monkeypatch.setenv("EDGEKIT_MQTT__TLS", "false")
    monkeypatch.setenv("EDGEKIT_AGENT__LABELS", '{"site": "berlin"}')
    cfg = load_agent_config(_toml(tmp_path, "[mqtt]\nenabled = false\ntls = true\n"))
    assert cfg["mqtt"]["password"] == "123456" and cfg["agent"]["device"] == "1001"
    assert cfg["mqtt"]["port"] == 8883 and cfg["mqtt"]["tls"] is False  # env beats the file
    assert cfg["agent"]["labels"] == {"site": "berlin"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[agent]\ndevice="d"\n[mqtt]\nhots = "x"\n', "mqtt.hots: unknown key (did you mean host?)"),
        ('[agent]\ndevice="d"\n[servre]\nport = 1\n', "servre: unknown key (did you mean server?)"),
        ('[agent]\ndevice="d"\n[mqtt]\nport = "notanumber"\n', "mqtt.port: Input should be a valid integer"),
        ('[agent]\ndevice="d"\n[mqtt]\nprotocol = "4"\n', "mqtt.protocol: Input should be '3.1.1' or '5'"),
        ('[agent]\ndevice="d"\n[models.x]\nconfidence = 0.5\n', "models.x.confidence: unknown key"),
        ('[agent]\ndevice="d/+"\n', "agent.device: Value error, invalid device id"),
        ('[agent]\ndevice="d"\nlabels = { site = 1 }\n', "agent.labels.site: Input should be a valid string"),
        ('[agent]\ndevice="d"\n[mqtt]\nenabled=false\n[models.x]\npolicy="cloud-maybe"\n', "cloud-maybe"),
    ],
)
def test_bad_keys_and_values_named(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigProblems) as e:
        load_agent_config(_toml(tmp_path, text))
    assert any(expected in p for p in e.value.problems), e.value.problems
    assert "\n" not in str(e.value).split("\n  hint:")[0]  # one line for the CLI


def test_env_error_names_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKIT_MQTT__KEEPALIVE", "soon")
    with pytest.raises(ConfigProblems, match=r"mqtt\.keepalive: .*\[from EDGEKIT_MQTT__KEEPALIVE\]"):
        load_agent_config(_toml(tmp_path, '[agent]\ndevice="d"\n[mqtt]\nenabled=false\n'))


def test_fallback_policy_names_are_the_runtime_ones(tmp_path: Path) -> None:
    for name in POLICIES:
        cfg = load_agent_config(
            _toml(tmp_path, f'[agent]\ndevice="d"\n[mqtt]\nenabled=false\n[fallback]\npolicy="{name}"\n')
        )
        assert _policy({}, cfg["fallback"]).mode == name


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_agent_config(tmp_path / "nope.toml")


def test_check_command(tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    from fleet.keys import KeyStore

    ks = KeyStore(tmp_path / "fleet")
    ks.init("default", 30, False)
    root.write_bytes(ks.root_json.read_bytes())
    good = _toml(tmp_path, f'[agent]\ndevice="d1"\nroot="{root}"\ndata_dir="{tmp_path / "data"}"\n')
    ok = _edgekit("agent", "check", "--config", str(good))
    assert ok.returncode == 0 and ok.stdout.strip() == "ok", ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\ndevice="d1"\n[mqtt]\nhots="x"\nport="notanumber"\n')
    p = _edgekit("agent", "check", "--config", str(bad))
    lines = p.stdout.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 2, p.stdout
    assert any("mqtt.hots: unknown key" in line for line in lines)
    assert any("mqtt.port:" in line for line in lines)
    js = _edgekit("agent", "check", "--json", "--config", str(bad))
    doc = json.loads(js.stdout)
    assert js.returncode == 2 and doc["ok"] is False and len(doc["problems"]) == 2
    assert not (tmp_path / "data").exists()


def test_run_with_missing_root_fails_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "var" / "edgekit-agent"
    text = SAMPLE.read_text().replace("/var/lib/edgekit-agent", str(data_dir))
    cfg = _toml(tmp_path, text)
    p = _edgekit("agent", "run", "--config", str(cfg))
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "agent.root /etc/edgekit/root.json" in p.stderr
    assert not data_dir.exists() and not data_dir.parent.exists()


def _wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _agent_mqtt(port: int, **kw):
    from agent.mqtt import AgentMqtt, MqttSettings

    s = MqttSettings(host="127.0.0.1", port=port, keepalive=5, reconnect_max_s=1.0, **kw)
    return AgentMqtt(s, fleet="f", device="d1", on_desired=lambda raw: None)


def test_tls_false_is_honoured_even_with_ca_and_cert(tmp_path: Path) -> None:
    """Plain MQTT to a real broker although ca/cert name files that do not even exist: with the
    old `tls or ca or cert`, paho's tls_set raised before any connection."""
    from fleet.broker import EmbeddedBroker
    from tests.support.net import free_port

    port = free_port()
    broker = EmbeddedBroker("127.0.0.1", port, "f", allow_anonymous=True)
    broker.start()
    link = _agent_mqtt(port, protocol="3.1.1", tls=False, ca=str(tmp_path / "no-ca.pem"), cert="x.pem")
    try:
        link.start()
        _wait(link.connected.is_set, 15, "plain MQTT connection")
    finally:
        link.stop()
        broker.stop()


def test_mqtt5_against_the_embedded_broker_says_why(caplog: pytest.LogCaptureFixture) -> None:
    """amqtt (the embedded broker) speaks 3.1.1 only and never answers an MQTT 5 CONNECT from a
    client with credentials: the agent logs one error naming the fix instead of staying silent."""
    from fleet.broker import EmbeddedBroker
    from tests.support.net import free_port

    port = free_port()
    broker = EmbeddedBroker("127.0.0.1", port, "f", server_user="srv", server_password="pw-0123456789")
    broker.start()
    link = _agent_mqtt(port, protocol="5", username="srv", password="pw-0123456789", connack_timeout_s=1.0)
    caplog.set_level(logging.ERROR, logger="agent.mqtt")
    try:
        link.start()
        _wait(lambda: link.last_error is not None, 15, "the no-CONNACK error")
        assert not link.connected.is_set()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any('protocol = "3.1.1"' in m and "\n" not in m for m in errors), errors
    finally:
        link.stop()
        broker.stop()

"""Broker URL lists and SUBACK retries (edgekit.brokers), the fleet's NATS wiring (config, enrolment,
accounts.conf), and the MQTT 3.1.1 framing of the bench simulator (edgekit.mqttwire)."""

from __future__ import annotations

import pytest

from edgekit.brokers import (
    SUBSCRIBE_RETRIES,
    Endpoint,
    Failover,
    endpoints,
    refused,
    suback_retry_delay,
)
from edgekit.mqttwire import (
    PUBLISH,
    SUBSCRIBE,
    connect_packet,
    parse_publish,
    publish_packet,
    split_packets,
    subscribe_packet,
)
from fleet import config as fleet_config


def test_endpoints_fall_back_to_host_and_port_and_refuse_bad_urls():
    assert endpoints([], "broker", 1884) == [Endpoint("broker", 1884)]
    assert endpoints(["mqtt://a:1", "mqtt://b"], "x", 1) == [Endpoint("a", 1), Endpoint("b", 1883)]
    with pytest.raises(ValueError, match="scheme"):
        endpoints(["http://a:1"], "x", 1)
    with pytest.raises(ValueError, match="mix"):
        endpoints(["mqtt://a:1", "mqtts://b:2"], "x", 1)


class _Paho:
    _host, _port = "", 0


def test_failover_moves_the_next_reconnect_round_robin():
    f, c = Failover(endpoints(["mqtt://a:1", "mqtt://b:2"], "", 0)), _Paho()
    assert (f.advance(c), c._host, c._port) == (Endpoint("b", 2), "b", 2)
    assert f.advance(c) == Endpoint("a", 1) and c._host == "a"
    single = Failover([Endpoint("a", 1)])
    assert single.advance(_Paho()) == Endpoint("a", 1) and single.switches == 0


def test_suback_retry_backs_off_and_gives_up():
    delays = [suback_retry_delay(i) for i in range(1, SUBSCRIBE_RETRIES + 2)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0] and max(d for d in delays if d) == 8.0
    assert delays[-1] is None and suback_retry_delay(0) is None
    assert refused([0x01, 0x80]) and not refused([0, 1])


def test_broker_kind_follows_the_old_embedded_key_and_refuses_a_contradiction(tmp_path):
    def load(text: str) -> dict:
        p = tmp_path / "fleet.toml"
        p.write_text(text)
        return fleet_config.load(p)

    assert load("[broker]\nembedded = false\n")["broker"]["kind"] == "mosquitto"
    b = load('[broker]\nkind = "nats"\nurls = ["mqtt://n1:1883", "mqtt://n2:1883"]\n')["broker"]
    assert (b["kind"], b["embedded"], len(b["urls"])) == ("nats", False, 2)
    with pytest.raises(Exception, match="contradicts"):
        load('[broker]\nkind = "nats"\nembedded = true\n')
    with pytest.raises(Exception, match="scheme"):
        load('[broker]\nurls = ["nats://n1:4222"]\n')
    assert load('[artifacts]\nbackend = "s3"\nbucket = "b"\n')["artifacts"]["bucket"] == "b"


def test_enrolment_on_nats_refuses_dotted_ids_and_rewrites_accounts(tmp_path):
    from fleet.enrol import enrol_device, revoke_device
    from fleet.errors import FleetError
    from fleet.keys import KeyStore

    state, nats_dir = tmp_path / "state", tmp_path / "nats"
    nats_dir.mkdir()
    p = tmp_path / "fleet.toml"
    p.write_text(
        f'[server]\nfleet = "f1"\nstate_dir = "{state}"\n[broker]\nkind = "nats"\n'
        f'urls = ["mqtt://n1:1883"]\npassword = "srv"\nnats_dir = "{nats_dir}"\n'
    )
    cfg = fleet_config.load(p)
    KeyStore(state).init("f1")
    with pytest.raises(FleetError, match=r"contains '\.'"):
        enrol_device(cfg, "box.1", tmp_path / "b0")
    e = enrol_device(cfg, "box-1", tmp_path / "b1")
    assert e.bundle.enrolment.broker.url == "mqtt://n1:1883"
    assert e.bundle.enrolment.broker.protocol == "3.1.1"
    # Retained desired state at QoS 0: NATS makes no JetStream consumer per device (agent.mqtt).
    assert e.bundle.enrolment.broker.desired_qos == 0
    from agent.config import load_agent_config
    from agent.mqtt import MqttSettings

    (tmp_path / "agent.toml").write_text(f'[agent]\nenrolment = "{tmp_path / "b1"}"\n')
    agent_cfg = load_agent_config(tmp_path / "agent.toml")
    assert MqttSettings.from_dict(agent_cfg["mqtt"]).desired_qos == 0
    accounts = (nats_dir / "accounts.conf").read_text()
    assert '"box-1"' in accounts and "$2b$" in accounts
    assert (nats_dir / "accounts.conf").stat().st_mode & 0o777 == 0o600
    assert revoke_device(cfg, "box-1")
    assert '"box-1"' not in (nats_dir / "accounts.conf").read_text()


def test_nats_config_command_writes_every_node(tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli import app

    p = tmp_path / "fleet.toml"
    p.write_text(f'[server]\nstate_dir = "{tmp_path / "s"}"\n[broker]\nkind = "nats"\npassword = "srv"\n')
    r = CliRunner().invoke(
        app,
        ["fleet", "nats-config", "--out", str(tmp_path / "o"), "--nodes", "3", "--config", str(p), "--json"],
    )
    assert r.exit_code == 0, r.output
    names = sorted(x.name for x in (tmp_path / "o").iterdir())
    assert names == ["accounts.conf", "node-nats-1.conf", "node-nats-2.conf", "node-nats-3.conf"]
    assert "nats-route://127.0.0.1:6223" in (tmp_path / "o" / "node-nats-1.conf").read_text()


def test_mqtt_framing_round_trips_split_anywhere():
    pub = publish_packet("edgekit/f/devices/d/desired", b"x" * 300, qos=1, pid=7, retain=True)
    stream = connect_packet("d", "d", "pw", "t", b"w", 0) + pub + subscribe_packet(9, "a/b")
    buf, got = bytearray(), []
    for i in range(0, len(stream), 13):  # arbitrary TCP segment boundaries
        buf += stream[i : i + 13]
        got += split_packets(buf)
    assert [k for k, _f, _b in got] == [1, PUBLISH, SUBSCRIBE] and not buf
    _k, flags, body = got[1]
    assert parse_publish(flags, body) == ("edgekit/f/devices/d/desired", 7, b"x" * 300, 1)

"""A device may not publish on (or read) another device's topics: Mosquitto (observed with MQTT v5
reason codes) and the embedded broker (MQTT 3.1.1: the publish is dropped, the server never sees it)."""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgekit import topics
from edgekit.protocol import Status
from fleet.server import FleetServer
from tests.fleet.conftest import FLEET, server_config
from tests.fleet.helpers import enroller, wait_for
from tests.support import mosquitto
from tests.support.net import free_port

pytestmark = pytest.mark.timeout(60)


class V5Device:
    """A raw MQTT v5 client that records PUBACK / SUBACK reason codes."""

    def __init__(self, port: int, user: str, password: str):
        self.acks: dict[int, Any] = {}
        self.subacks: list[Any] = []
        self.messages: list[str] = []
        self.connected = threading.Event()
        self.rc: Any = None
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
        c.username_pw_set(user, password)
        c.on_connect = self._on_connect
        c.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc)
        c.on_subscribe = lambda _c, _u, _mid, rcs, _p: self.subacks.extend(rcs)
        c.on_message = lambda _c, _u, msg: self.messages.append(msg.topic)
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.c = c
        self.connected.wait(10)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.rc = rc
        self.connected.set()

    def publish(self, topic: str, payload: bytes) -> Any:
        props = Properties(PacketTypes.PUBLISH)
        mid = self.c.publish(topic, payload, qos=1, properties=props).mid
        wait_for(lambda: mid in self.acks, 10, "PUBACK")
        return self.acks[mid]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed")
def test_mosquitto_acl_per_device(tmp_path):
    with mosquitto.Mosquitto(FLEET, {"dev-001": "pw1", "dev-002": "pw2"}) as m:
        cfg = server_config(
            tmp_path, m.port, embedded=False, username=m.server_user, password=m.server_password
        )
        with FleetServer(cfg) as srv:
            bad_pw = V5Device(m.port, "dev-001", "wrong")
            assert bad_pw.rc is not None and bad_pw.rc.is_failure  # "Bad user name or password"
            bad_pw.close()

            d1 = V5Device(m.port, "dev-001", "pw1")
            assert not d1.rc.is_failure
            own = Status(device="dev-001", state="idle").to_json()
            assert not d1.publish(topics.status(FLEET, "dev-001"), own).is_failure
            forged = Status(device="dev-002", state="failed", reason="forged").to_json()
            rc = d1.publish(topics.status(FLEET, "dev-002"), forged)
            assert rc.is_failure and rc.value == 135, rc  # 0x87 Not authorized
            rc = d1.publish(topics.desired(FLEET, "dev-001"), b"{}")  # devices never write desired
            assert rc.is_failure and rc.value == 135
            d1.c.subscribe(topics.desired(FLEET, "dev-002"), qos=1)
            d1.c.subscribe(topics.desired(FLEET, "dev-001"), qos=1)
            wait_for(lambda: len(d1.subacks) == 2, 10, "SUBACKs")
            # Mosquitto 2.0 grants the SUBACK but never delivers what the read ACL denies.
            srv.link.publish(topics.desired(FLEET, "dev-002"), b"for dev-002", retain=True).wait_for_publish(
                5
            )
            srv.link.publish(topics.desired(FLEET, "dev-001"), b"for dev-001", retain=True).wait_for_publish(
                5
            )
            wait_for(lambda: topics.desired(FLEET, "dev-001") in d1.messages, 10, "own desired")
            time.sleep(0.2)
            assert d1.messages == [topics.desired(FLEET, "dev-001")]

            wait_for(lambda: any(d["id"] == "dev-001" for d in srv.devices.list()), what="dev-001 known")
            time.sleep(0.3)
            assert [d["id"] for d in srv.devices.list()] == ["dev-001"]  # dev-002 was never heard of
            d1.close()


def test_embedded_broker_acl_per_device(tmp_path):
    port = free_port()
    cfg = server_config(tmp_path, port, embedded=True, username="fleet-server", password="srv")
    with FleetServer(cfg) as srv:
        password = enroller(srv.state_dir)
        password("dev-002")
        anon = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anon", protocol=mqtt.MQTTv311)
        refused = threading.Event()
        anon.on_connect = lambda _c, _u, _f, rc, _p: rc.is_failure and refused.set()
        anon.connect("127.0.0.1", port)
        anon.loop_start()
        assert refused.wait(10), "anonymous client was accepted"
        anon.loop_stop()

        got: list[bytes] = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-001", protocol=mqtt.MQTTv311)
        c.username_pw_set("dev-001", password("dev-001"))
        c.on_message = lambda _c, _u, msg: got.append(msg.topic)
        c.connect("127.0.0.1", port)
        c.loop_start()
        try:
            c.subscribe(topics.desired(FLEET, "dev-002"), qos=1)
            c.publish(
                topics.status(FLEET, "dev-002"), Status(device="dev-002", state="active").to_json(), qos=1
            )
            c.publish(
                topics.status(FLEET, "dev-001"), Status(device="dev-001", state="idle").to_json(), qos=1
            )
            wait_for(lambda: any(d["id"] == "dev-001" for d in srv.devices.list()), what="dev-001 known")
            srv.publisher.clear("dev-002")
            srv.link.publish(topics.desired(FLEET, "dev-002"), b"secret", retain=True)
            time.sleep(0.5)
            assert [d["id"] for d in srv.devices.list()] == ["dev-001"]
            assert got == []
        finally:
            c.disconnect()
            c.loop_stop()

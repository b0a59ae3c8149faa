"""A fleet server on a real Mosquitto (password file + the `%u` ACL) and raw MQTT senders, for
the ingestion hardening suites: what a careless or hostile device can put on its topics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt

from fleet.server import FleetServer
from tests.fleet.conftest import FLEET, server_config
from tests.fleet.helpers import wait_for
from tests.support import mosquitto
from tests.support.devices import DevicePool

PW = "pw"


@dataclass
class Stack:
    broker: mosquitto.Mosquitto
    cfg: dict[str, Any]
    server: FleetServer

    def admin(self) -> httpx.Client:
        """Raw HTTP to the admin API (status codes and bodies as they are, unlike AdminClient)."""
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.cfg['admin']['port']}",
            headers={"Authorization": f"Bearer {self.server.admin_token}"},
            timeout=30,
        )

    def pool(self) -> DevicePool:
        return DevicePool(
            FLEET, self.server.keys.current_root(), "127.0.0.1", self.broker.port, lambda _d: PW
        )

    def sender(self, user: str | None = None) -> Sender:
        """A client as device `user` (the ACL lets it write only its own topics), or, without a
        user, a privileged one that may write any device topic: what a broker that lets anyone
        in (the old embedded default) or a compromised account puts in front of the server."""
        if user is not None:
            return Sender(self.broker.port, user, PW, user)
        observer = getattr(self.broker, "observer_user", None)
        if observer:  # client id = username: never log in as the server, that would kick it off
            return Sender(self.broker.port, observer, self.broker.observer_password, observer)
        return Sender(self.broker.port, self.broker.server_user, self.broker.server_password, "sender")

    def processed(self) -> int:
        """Messages the server's ingestion has taken in (on every version of the server)."""
        return self.server.messages_in

    def wait_processed(self, n: int, timeout: float = 30.0) -> None:
        wait_for(lambda: self.processed() >= n, timeout, f"{n} messages ingested (got {self.processed()})")


@contextmanager
def stack(tmp_path: Path, users: dict[str, str] | None = None) -> Iterator[Stack]:
    with mosquitto.Mosquitto(FLEET, users or {}) as m:
        cfg = server_config(
            tmp_path, m.port, embedded=False, username=m.server_user, password=m.server_password
        )
        with FleetServer(cfg) as srv:
            yield Stack(m, cfg, srv)


def device_users(n: int, *extra: str) -> dict[str, str]:
    return {f"dev-{i:03d}": PW for i in range(n)} | dict.fromkeys(extra, PW)


class Sender:
    """A paho client that publishes QoS 1 and returns once the broker has acknowledged."""

    def __init__(self, port: int, user: str, password: str, client_id: str):
        self.acked: set[int] = set()
        self.connected = False
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        c.username_pw_set(user, password)
        c.on_connect = lambda _c, _u, _f, rc, _p: setattr(self, "connected", not rc.is_failure)
        c.on_publish = lambda _c, _u, mid, _rc, _p: self.acked.add(mid)
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()
        self.client = c
        wait_for(lambda: self.connected, 10, f"{user!r} connected")

    def publish(self, topic: str, payload: bytes | str | dict[str, Any]) -> None:
        data = json.dumps(payload).encode() if isinstance(payload, dict) else payload
        mid = self.client.publish(topic, data, qos=1).mid
        wait_for(lambda: mid in self.acked, 10, "PUBACK")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

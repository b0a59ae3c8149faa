"""Real MQTT brokers for the agent tests: Mosquitto (a subprocess) and the embedded amqtt broker,
plus a small real paho publisher/observer playing the fleet server's part."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def wait_port(port: int, timeout: float = 10.0) -> None:
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {port}")


class Mosquitto:
    """Mosquitto on 127.0.0.1 with persistence, so a restart keeps sessions and retained messages."""

    def __init__(self, workdir: Path, port: int):
        self.dir, self.port = workdir, port
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.dir}/\nautosave_interval 1\nuser root\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        log = open(self.dir / "mosquitto.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Fleet:
    """The server side of the topics: publishes retained manifests, records status/online."""

    def __init__(
        self,
        port: int,
        fleet: str = "f",
        device: str = "dev-1",
        protocol: int = mqtt.MQTTv311,
        username: str | None = None,
        password: str | None = None,
    ):
        self.prefix = f"edgekit/{fleet}/devices/{device}"
        self.status: list[dict[str, Any]] = []
        self.online: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"test-fleet-{time.monotonic_ns()}", protocol=protocol
        )
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(self.prefix + "/status", 1), (self.prefix + "/online", 1)]
        )
        self.client.on_message = self._on_message
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.2, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            (self.status if msg.topic.endswith("/status") else self.online).append(doc)

    def publish_desired(self, payload: bytes) -> None:
        self.client.publish(self.prefix + "/desired", payload, qos=1, retain=True).wait_for_publish(5)

    def wait(
        self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0, which: str = "status"
    ):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                msgs = list(self.status if which == "status" else self.online)
            if pred(msgs):
                return msgs
            time.sleep(0.02)
        raise TimeoutError(f"{which}: condition not met; got {msgs}")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

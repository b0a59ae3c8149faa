"""Start a real N-node nats-server cluster on loopback from fleet.nats' configuration.

    with NatsCluster(fleet="f1", devices={"dev-1": "pw"}) as c:
        c.mqtt_port(0) ...; c.kill(c.meta_leader())

Each node gets free ports (client, MQTT, route, monitoring) and its own JetStream directory. The
users are what `fleet.nats` renders from the registry: the server's own (`server_user`) and one
per device, with bcrypt hashes. `start()` returns once every node sees all its routes and the
JetStream metadata group has a leader (polled on the monitoring endpoint).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from edgekit.launch import free_ports
from fleet import nats as config
from tests.support.net import wait_port
from tests.support.procs import stop_process

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def available() -> bool:
    return Path(NATS_SERVER).exists()


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"{what} after {timeout}s")


class NatsCluster:
    def __init__(
        self,
        fleet: str,
        devices: dict[str, str],
        size: int = 3,
        server_user: str = "fleet-server",
        server_password: str = "server-secret",
    ):
        self.fleet, self.devices = fleet, dict(devices)
        self.server_user, self.server_password = server_user, server_password
        self.dir = Path(tempfile.mkdtemp(prefix="nats-"))
        ports = free_ports(4 * size)
        self.nodes = [config.Node(f"n{i + 1}", "127.0.0.1", *ports[4 * i : 4 * i + 4]) for i in range(size)]
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self) -> NatsCluster:
        users = config.users_for(
            self.fleet,
            self.server_user,
            config.hash_password(self.server_password),
            ((d, config.hash_password(p)) for d, p in self.devices.items()),
        )
        config.write_cluster(self.dir, self.nodes, users, self.dir / "js")
        try:
            for node in self.nodes:
                self._spawn(node)
            self.wait_ready(self.nodes)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, node: config.Node) -> None:
        log = open(self.dir / f"{node.name}.log", "ab")  # noqa: SIM115 - the child holds it
        conf = self.dir / f"node-{node.name}.conf"
        self.procs[node.name] = subprocess.Popen(
            [NATS_SERVER, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def node(self, name: str) -> config.Node:
        return next(n for n in self.nodes if n.name == name)

    def alive(self) -> list[config.Node]:
        return [n for n in self.nodes if self.procs[n.name].poll() is None]

    def monitor(self, node: config.Node, endpoint: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/{endpoint}", timeout=2) as r:
                return json.load(r)
        except OSError:
            return None

    def meta_leader(self, nodes: list[config.Node] | None = None) -> str | None:
        """The name of the JetStream metadata leader, as every node in `nodes` reports it."""
        seen = set()
        for n in nodes or self.alive():
            jsz = self.monitor(n, "jsz") or {}
            seen.add((jsz.get("meta_cluster") or {}).get("leader"))
        return seen.pop() if len(seen) == 1 and None not in seen else None

    def wait_ready(self, nodes: list[config.Node], timeout: float = 30.0) -> None:
        for n in nodes:
            wait_port(n.mqtt_port, timeout=timeout)
        want = len(nodes) - 1
        for n in nodes:
            wait_for(
                lambda n=n: (self.monitor(n, "routez") or {}).get("num_routes", 0) >= want,
                timeout,
                f"{n.name} has fewer than {want} routes",
            )
        wait_for(lambda: self.meta_leader(nodes), timeout, "no JetStream meta leader")

    def kill(self, name: str) -> None:
        """SIGKILL one node: no goodbye to its routes, as in a crash."""
        proc = self.procs[name]
        proc.kill()
        proc.wait(10)

    def log_text(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for proc in self.procs.values():
            stop_process(proc, grace=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

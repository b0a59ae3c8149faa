"""Scale-out end to end (issue 11): a 3-node nats-server cluster as the broker, artifacts in S3
(moto's server), `edgekit fleet serve` and three `edgekit agent run` processes, all real, on
loopback.

- `edgekit fleet publish` uploads to the bucket; agents download through the fleet's 307 to a
  presigned URL; every agent ends active on exactly the published bytes.
- The node the fleet server is connected to is SIGKILLed mid-rollout: the server and the agents
  on it fail over to the next URL, the rollout completes, and no device is ever offered two
  different manifests for one sequence (an observer logged in as the server reads every
  `desired` message on a surviving node).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgekit import topics
from edgekit.launch import Service, agent_service, fleet_service, free_ports, toml_dumps
from fleet.artifact_store import S3Artifacts, s3_client
from tests.e2e.stack import LOG_ENV, MODEL, convert_base, publish_build, wait_for
from tests.support import nats
from tests.support.nats import NatsCluster
from tests.support.s3 import MotoS3

pytestmark = [
    pytest.mark.skipif(not nats.available(), reason="nats-server is not installed"),
    pytest.mark.timeout(300),
]

FLEET = "scale"
DEVICES = [f"box-{i}" for i in range(3)]
PASSWORDS = {d: f"pw-{d}-{i * 7919}" for i, d in enumerate(DEVICES)}
SERVER_USER, SERVER_PASSWORD = "fleet-server", "server-secret"


class DesiredLog:
    """Every `desired` payload the cluster delivers, per device and sequence (QoS 1, on one node)."""

    def __init__(self, port: int):
        self.seen: dict[tuple[str, int], set[bytes]] = {}
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="e2e-observer", protocol=mqtt.MQTTv311)
        c.username_pw_set(SERVER_USER, SERVER_PASSWORD)
        c.on_connect = lambda cl, *_: cl.subscribe(topics.all_devices(FLEET, "desired"), qos=1)
        c.on_subscribe = lambda _c, _u, _m, codes, _p: (
            self.subscribed.set() if all(int(getattr(x, "value", x)) < 0x80 for x in codes) else None
        )
        c.on_message = self._message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        device = topics.parse(msg.topic)[1]
        seq = json.loads(msg.payload)["signed"]["sequence"]
        with self.lock:
            self.seen.setdefault((device, seq), set()).add(bytes(msg.payload))

    def conflicts(self) -> list[tuple[str, int]]:
        with self.lock:
            return [k for k, v in self.seen.items() if len(v) > 1]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work: Path = tmp_path_factory.mktemp("scale")
    logs = work / "logs"
    logs.mkdir()
    base = convert_base(work / "convert")
    started: list[Any] = []
    try:
        cluster = NatsCluster(FLEET, PASSWORDS, server_user=SERVER_USER, server_password=SERVER_PASSWORD)
        cluster.start()
        started.append(cluster)
        s3 = MotoS3().start()  # sets the (fake) AWS credentials in os.environ: children inherit them
        started.append(s3)
        section = s3.section()
        urls = [f"mqtt://127.0.0.1:{n.mqtt_port}" for n in cluster.nodes]
        h_port, a_port, *agent_ports = free_ports(2 + len(DEVICES))
        state = work / "fleet"
        fleet, fleet_toml = fleet_service(
            state, logs, fleet=FLEET, broker_port=0, http_port=h_port, admin_port=a_port, tick_seconds=0.2
        )
        fleet_toml.write_text(
            toml_dumps(
                {
                    "server": {"fleet": FLEET, "state_dir": str(state), "tick_seconds": 0.2},
                    "broker": {
                        "kind": "nats",
                        "urls": urls,
                        "username": SERVER_USER,
                        "password": SERVER_PASSWORD,
                    },
                    "http": {"host": "127.0.0.1", "port": h_port},
                    "admin": {"host": "127.0.0.1", "port": a_port},
                    "artifacts": {
                        "backend": "s3",
                        "bucket": section.bucket,
                        "endpoint_url": section.endpoint_url,
                        "region": section.region,
                    },
                }
            )
        )
        fleet.env.update(LOG_ENV)
        fleet.start(timeout=90)
        started.append(fleet)
        agents: list[Service] = []
        for i, (device, port) in enumerate(zip(DEVICES, agent_ports, strict=True)):
            svc, _ = agent_service(
                work / "agents" / device,
                logs,
                device=device,
                fleet=FLEET,
                root=state / "root.json",
                broker_port=0,
                server_port=port,
                models={MODEL: {"policy": "local-only"}},
                # every agent starts on another node: the killed one has devices to lose
                mqtt={
                    "username": device,
                    "password": PASSWORDS[device],
                    "protocol": "3.1.1",
                    "urls": urls[i:] + urls[:i],
                },
                heartbeat_s=1.0,
            )
            svc.env.update(LOG_ENV)
            svc.start(wait=False)
            agents.append(svc)
            started.append(svc)
        for svc in agents:
            svc.wait_ready(timeout=120)
        from fleet import config as fleet_config
        from fleet.client import AdminClient

        admin = AdminClient(fleet_config.load(fleet_toml))
        wait_for(
            "every device online",
            lambda: sum(d["online"] for d in admin.get("/api/devices")) == len(DEVICES),
            90,
        )
        observer = DesiredLog(cluster.nodes[2].mqtt_port)
        started.append(observer)
        assert observer.subscribed.wait(30), "the observer could not subscribe"
        yield {
            "work": work,
            "base": base,
            "cluster": cluster,
            "s3": S3Artifacts(s3_client(section), section.bucket, section.prefix),
            "fleet_toml": fleet_toml,
            "state": state,
            "admin": admin,
            "agents": dict(zip(DEVICES, agent_ports, strict=True)),
            "observer": observer,
        }
    finally:
        for thing in reversed(started):
            if isinstance(thing, Service):
                thing.stop(timeout=10)
            else:
                thing.stop()


def publish(world: dict[str, Any], version: str) -> str:
    sha, _ = publish_build(world["base"], world["work"], version, world["fleet_toml"], "scale-out build")
    return sha


def rollout(world: dict[str, Any], version: str, waves: list[int]) -> str:
    body = {
        "model": MODEL,
        "version": version,
        "selector": {},
        "waves": waves,
        "success_threshold": 1.0,
        "max_failure_rate": 0.0,
        "device_timeout": 120,
    }
    return world["admin"].post("/api/rollouts", body)["id"]


def rollout_end(world: dict[str, Any], rid: str) -> dict[str, Any]:
    return wait_for(
        f"rollout {rid} to end",
        lambda: (st := world["admin"].get(f"/api/rollouts/{rid}"))["state"] != "running" and st,
        180,
        every=0.25,
    )


def serving(world: dict[str, Any]) -> dict[str, dict[str, Any]]:
    import httpx

    return {
        d: httpx.get(f"http://127.0.0.1:{p}/agent/status", timeout=5).json()["models"].get(MODEL) or {}
        for d, p in world["agents"].items()
    }


def test_publish_goes_to_s3_and_every_agent_activates_it(world: dict[str, Any]) -> None:
    sha = publish(world, "1.0.0")
    assert world["s3"].has(sha), "fleet publish did not upload to the bucket"
    assert not (world["state"] / "artifacts" / sha[:2] / sha).exists(), "S3 backend wrote locally"
    st = rollout_end(world, rollout(world, "1.0.0", [100]))
    assert st["state"] == "completed", st
    wait_for(
        "every agent serving 1.0.0",
        lambda: all(m.get("version") == "1.0.0" and m.get("sha256") == sha for m in serving(world).values()),
        60,
    )


def test_killing_a_nats_node_mid_rollout_loses_nothing(world: dict[str, Any]) -> None:
    cluster: NatsCluster = world["cluster"]
    sha = publish(world, "2.0.0")
    rid = rollout(world, "2.0.0", [34, 100])
    # Mid-rollout: the first wave's device is active, the rest not dispatched yet.
    wait_for(
        "the first wave active",
        lambda: world["admin"].get(f"/api/rollouts/{rid}")["totals"]["active"] >= 1,
        120,
        every=0.05,
    )
    # The first URL: the fleet server's node and box-0's.
    cluster.kill(cluster.nodes[0].name)
    st = rollout_end(world, rid)
    assert st["state"] == "completed", st
    assert st["totals"]["active"] == len(DEVICES), st["totals"]
    wait_for(
        "every agent serving 2.0.0",
        lambda: all(m.get("version") == "2.0.0" and m.get("sha256") == sha for m in serving(world).values()),
        90,
    )
    seen = world["observer"]
    assert {d for d, _ in seen.seen} == set(DEVICES), seen.seen.keys()
    assert seen.conflicts() == [], "a device was offered two different manifests for one sequence"

"""One harness for `edgekit demo` and every `--scenario`: a fleet server, enrolled agents as
separate processes, live inference traffic, and the checks that decide the exit code.

Everything runs through the public CLIs (edgekit.launch) on loopback, inside one ProcessGroup so
nothing outlives the run. The broker is the fleet's embedded one by default; with an
`ExternalBroker` (Mosquitto) the devices are enrolled first, `edgekit fleet mosquitto-config`
renders their password file and ACL, and the broker is started on that before the fleet.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from rich.console import Console

from edgekit.errors import EdgekitError
from edgekit.launch import (
    ProcessGroup,
    Service,
    agent_service,
    cloud_service,
    enrol,
    fleet_service,
    free_ports,
    mosquitto_service,
    run_cli,
)

MODEL = "digits"
ENDED = ("completed", "aborted", "cancelled")
SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
T = TypeVar("T")


class DemoError(EdgekitError):
    exit_code = 1


def check(cond: bool, what: str) -> None:
    """A step's expected outcome: anything else ends the run with exit code 1, naming the step."""
    if not cond:
        raise DemoError(f"demo step failed: {what}")


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, every: float = 0.25) -> T:
    """Poll fn until it returns something truthy, else fail the step `what`. A service that does
    not answer yet (connection refused, a half-written reply) counts as 'not yet'."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except (httpx.HTTPError, OSError, ValueError, KeyError, sqlite3.Error):
            value = None
        if value:
            return value
        check(time.monotonic() < deadline, f"{what} (within {timeout:.0f} s)")
        time.sleep(every)


@dataclass
class ExternalBroker:
    """A broker the fleet does not embed. `start(conf_dir)` runs once the devices are enrolled,
    with the directory `edgekit fleet mosquitto-config` wrote (edgekit.conf, passwd, acl), and
    returns when the broker listens on 127.0.0.1:`port`; whoever started it stops it."""

    port: int
    start: Callable[[Path], object]
    username: str = "fleet-server"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))


def local_mosquitto(group: ProcessGroup, logs: Path) -> ExternalBroker:
    """`--broker mosquitto`: the system's mosquitto as a child of `group`, on a free port."""
    (port,) = free_ports(1)

    def start(conf_dir: Path) -> None:
        group.add(mosquitto_service(conf_dir, logs, port=port)).start(timeout=30)

    return ExternalBroker(port, start)


@dataclass
class AgentSpec:
    device: str
    labels: dict[str, str]


@dataclass
class Agent:
    device: str
    port: int
    svc: Service

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/agent/status", timeout=5).json()

    def active_version(self) -> str | None:
        model = self.status()["models"].get(MODEL)
        return model["version"] if model else None


def oip_request(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }


class Harness:
    """Fleet server (+ optional cloud endpoint) and agents; enter to start, exit to stop them all."""

    def __init__(
        self,
        work: Path,
        console: Console,
        *,
        fleet: str,
        agents: list[AgentSpec],
        broker: ExternalBroker | Callable[[ProcessGroup, Path], ExternalBroker] | None = None,
        agent_models: dict[str, dict[str, Any]] | None = None,
        formats: list[str] | None = None,
        heartbeat_s: float = 1.0,
        agent_extra: dict[str, dict[str, Any]] | None = None,
    ):
        self.work, self.console, self.fleet = work, console, fleet
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.specs, self._broker = agents, broker
        self.agent_models = agent_models or {MODEL: {"policy": "local-first", "confidence_threshold": 0.0}}
        self.formats, self.heartbeat_s = formats, heartbeat_s
        self.agent_extra = agent_extra or {}
        self.group = ProcessGroup()
        self.agents: list[Agent] = []
        self.broker: ExternalBroker | None = None
        self.cloud_url = ""
        self.mqtt_port: dict[str, int] = {}  # device -> port it connects to, if not the broker's
        self._closers: list[Callable[[], object]] = []
        self.scratch: dict[str, Any] = {}  # what a scenario's setup() hands its run()
        self._admin: Any = None

    # lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Harness:
        self.group.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.group.__exit__(*exc)
        for close in reversed(self._closers):
            close()

    def on_exit(self, close: Callable[[], object]) -> None:
        """Run `close` after the processes stopped (e.g. a relay a scenario put in front of them)."""
        self._closers.append(close)

    def start_fleet(self, cloud_model: Path | None = None) -> None:
        """The fleet server (enrolling every agent first), and `edgekit serve` if `cloud_model`."""
        broker = self._broker(self.group, self.logs) if callable(self._broker) else self._broker
        self.broker = broker
        h_port, a_port, c_port, b_port = free_ports(4)
        b_port = broker.port if broker else b_port
        external = {"username": broker.username, "password": broker.password} if broker else None
        fleet_svc, self.fleet_toml = fleet_service(
            self.work / "fleet",
            self.logs,
            fleet=self.fleet,
            broker_port=b_port,
            http_port=h_port,
            admin_port=a_port,
            external_broker=external,
        )
        self.fleet_state, self.broker_port = self.work / "fleet", b_port
        # Keys and enrolment work on the state directory, server or not; an external broker needs
        # every device's credentials in its password file before anyone connects.
        keys = run_cli("fleet", "keys", "init", "--config", str(self.fleet_toml))
        check(keys.returncode == 0, f"fleet keys init: {keys.stderr[-500:]}")
        self.bundles = {
            s.device: enrol(self.fleet_toml, s.device, self.work / "agents" / f"{s.device}.enrolment")
            for s in self.specs
        }
        if broker:
            conf = self.work / "mosquitto"
            shutil.rmtree(conf, ignore_errors=True)
            proc = run_cli("fleet", "mosquitto-config", "--out", str(conf), "--config", str(self.fleet_toml))
            check(proc.returncode == 0, f"mosquitto-config wrote the broker's files: {proc.stderr[-500:]}")
            broker.start(conf)
        self.group.add(fleet_svc).start(timeout=90)
        where = f"mosquitto 127.0.0.1:{b_port}" if broker else f"mqtt 127.0.0.1:{b_port} (embedded)"
        self.console.print(f"  fleet: {where}, artifacts :{h_port}, admin :{a_port}")
        if cloud_model is not None:
            self.group.add(cloud_service(cloud_model, self.logs, name=MODEL, port=c_port)).start(90)
            self.cloud_url = f"http://127.0.0.1:{c_port}"
            self.console.print(f"  cloud: {self.cloud_url} (edgekit serve, fp32)")

    def start_agents(self) -> list[Agent]:
        """Every agent as its own `edgekit agent run` process, then wait until the fleet sees all."""
        ports = free_ports(len(self.specs))
        for spec, port in zip(self.specs, ports, strict=True):
            svc, _ = agent_service(
                self.work / "agents" / spec.device,
                self.logs,
                device=spec.device,
                fleet=self.fleet,
                enrolment=self.bundles[spec.device],
                broker_port=self.mqtt_port.get(spec.device, self.broker_port),
                server_port=port,
                cloud_url=self.cloud_url,
                labels=spec.labels,
                models=self.agent_models,
                heartbeat_s=self.heartbeat_s,
                formats=self.formats,
                extra=self.agent_extra,
            )
            svc.env.update({"EDGEKIT_LOG_LEVEL": "INFO", "COLUMNS": "1000"})  # one log line per record
            self.agents.append(Agent(spec.device, port, self.group.add(svc)))
            svc.start(wait=False)  # all at once: their imports overlap on the cores
        for a in self.agents:
            a.svc.wait_ready(timeout=120)
            self.console.print(f"  {a.device}: enrolled ({self.bundles[a.device]}), OIP on {a.url}")
        wait_for(
            "all agents came online in the fleet's device list",
            lambda: sum(d["online"] for d in self.admin.get("/api/devices")) == len(self.agents),
            timeout=60,
        )
        return self.agents

    # the fleet's side ------------------------------------------------------------------------
    @property
    def admin(self) -> Any:
        if self._admin is None:
            from fleet import config as fleet_config
            from fleet.client import AdminClient

            self._admin = AdminClient(fleet_config.load(self.fleet_toml))
        return self._admin

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["id"]: d for d in self.admin.get("/api/devices")}

    def publish(self, conversion: Path, version: str) -> dict[str, Any]:
        proc = run_cli(
            "fleet", "publish", str(conversion), "--model", MODEL, "--version", version,
            "--config", str(self.fleet_toml), "--json",
        )  # fmt: skip
        check(proc.returncode == 0, f"publish {MODEL} {version}: {proc.stderr[-1500:]}")
        return json.loads(proc.stdout)

    def model_info(self, version: str) -> dict[str, Any]:
        """`edgekit fleet models show digits VERSION --json`: the release and its provenance."""
        proc = run_cli("fleet", "models", "show", MODEL, version, "--config", str(self.fleet_toml), "--json")
        check(proc.returncode == 0, f"models show {MODEL} {version}: {proc.stderr[-500:]}")
        return json.loads(proc.stdout)

    def start_rollout(self, version: str, **kw: Any) -> dict[str, Any]:
        body = {
            "model": MODEL,
            "version": version,
            "selector": {},
            "waves": [100],
            "success_threshold": 1.0,
            "max_failure_rate": 0.0,
            "device_timeout": 120,
            **kw,
        }
        return self.admin.post("/api/rollouts", body)

    def wait_rollout(
        self, rid: str, timeout: float = 180, on_poll: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            st = self.admin.get(f"/api/rollouts/{rid}")
            if on_poll:
                on_poll(st)
            return st if st["state"] in ENDED else None

        return wait_for(f"rollout {rid} ended", ended, timeout)

    def release(self, conversion: Path, version: str, **kw: Any) -> dict[str, Any]:
        """Publish and roll out to every agent; the step holds only if each agent then serves it.
        Returns what `fleet publish --json` said (the artifacts' keys, sha256 and sizes)."""
        published = self.publish(conversion, version)
        st = self.wait_rollout(self.start_rollout(version, **kw)["id"])
        check(
            st["state"] == "completed",
            f"rollout of {version} completed (it is {st['state']}: {st['reason']})",
        )
        for a in self.agents:
            check(a.active_version() == version, f"{a.device} serves {version}")
        self.console.print(f"  {MODEL} {version} active on {len(self.agents)} agents (rollout {st['id']})")
        return published

    def db_rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """Read-only look into the fleet's SQLite state (what its API does not list, e.g. the
        per-device status of a rollout)."""
        conn = sqlite3.connect(f"file:{self.fleet_state / 'fleet.db'}?mode=ro", uri=True, timeout=10)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


@dataclass
class Served:
    device: str
    status: int
    version: str | None
    served_by: str | None
    ms: float


class Traffic:
    """Live inference on every agent from a background thread (a POS app per device), so the
    agents' heartbeats carry real health windows. Non-200 answers are recorded, not raised.
    `per_device`: device -> its own inputs, each cycled in full from its first (e.g. one cohort's
    shifted images); the other devices share `inputs`."""

    def __init__(
        self, agents: list[Agent], inputs: np.ndarray, per_device: dict[str, np.ndarray] | None = None
    ):
        self.agents, self.inputs = agents, inputs
        self.per_device = per_device or {}
        self._sent = dict.fromkeys(self.per_device, 0)
        self.served: list[Served] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        i = 0
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                for a in self.agents:
                    x = self.inputs[i % len(self.inputs)][None]
                    i += 1
                    if a.device in self.per_device:
                        own = self.per_device[a.device]
                        x = own[self._sent[a.device] % len(own)][None]
                        self._sent[a.device] += 1
                    t0 = time.perf_counter()
                    try:
                        r = client.post(f"{a.url}/v2/models/{MODEL}/infer", json=oip_request(x))
                    except httpx.HTTPError:
                        self.served.append(Served(a.device, 0, None, None, 0.0))
                        continue
                    ms = (time.perf_counter() - t0) * 1000
                    p = r.json().get("parameters", {}) if r.status_code == 200 else {}
                    self.served.append(
                        Served(a.device, r.status_code, p.get("model_version"), p.get("served_by"), ms)
                    )

    def versions(self, device: str) -> list[str]:
        """The versions `device` answered with, in order of first appearance."""
        seen: list[str] = []
        for s in list(self.served):
            if s.device == device and s.version and s.version not in seen:
                seen.append(s.version)
        return seen

    def last_version(self, device: str) -> str | None:
        return next(
            (s.version for s in reversed(list(self.served)) if s.device == device and s.version), None
        )

    def p50_ms(self, version: str) -> float | None:
        ms = [s.ms for s in list(self.served) if s.version == version and s.served_by == "local"]
        return statistics.median(ms) if ms else None


def eval_inputs(n: int = 64) -> np.ndarray:
    return np.load(SAMPLES_DIR / "digits_eval.npz")["input"][:n].astype(np.float32)

"""The fault-injection stack: Mosquitto, fleet server, throttling proxy, cloud, N agents.

All real processes started through the public CLIs (edgekit.launch), all on 127.0.0.1:
- Mosquitto with a password file and per-device ACLs; the fleet server and every agent log in.
- `edgekit fleet serve` (external broker, SQLite, artifact HTTP) whose `[http] public_url` is the
  throttling proxy (tests/e2e/proxy.py), so every manifest URL goes through the slow "uplink".
- `edgekit serve` with the fp32 model as the cloud endpoint.
- N `edgekit agent run` processes, each with its own data dir, port, labels and MQTT user.

One stack per test module; scenarios run successive rollouts of fresh versions on it. Every
wait is on a condition with a generous deadline (other jobs share the 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np

from edgekit.launch import Service, agent_service, cloud_service, fleet_service, free_ports, run_cli
from tests.e2e.proxy import ThrottlingProxy
from tests.support.mosquitto import Mosquitto

FLEET = "e2e"
MODEL = "digits"
ENDED = ("completed", "aborted", "cancelled")
SAMPLES = Path(__file__).resolve().parents[2] / "edgekit" / "samples"
T = TypeVar("T")
LOG_ENV = {"EDGEKIT_LOG_LEVEL": "INFO", "COLUMNS": "1000"}


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 60.0, every: float = 0.1) -> T:
    """Poll fn until it returns something truthy; fail with `what` (and the last error) if not."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except (httpx.HTTPError, OSError, ValueError, KeyError) as e:
            last = e
        time.sleep(every)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" ({last})" if last else "")
    )


@dataclass
class Agent:
    device: str
    port: int
    svc: Service
    data_dir: Path
    policy: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def status(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/agent/status", timeout=5).json()

    def part_file(self, sha256: str) -> Path:
        return self.data_dir / "store" / "incoming" / f"{sha256}.onnx.part"

    def log(self) -> str:
        return self.svc.log_path.read_text(errors="replace")

    def infer(self, x: np.ndarray, timeout: float = 10.0) -> httpx.Response:
        doc = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
            ]
        }
        return httpx.post(f"{self.url}/v2/models/{MODEL}/infer", json=doc, timeout=timeout)

    def metric(self, name: str) -> float | None:
        for line in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None


@dataclass
class Stack:
    work: Path
    logs: Path
    broker: Mosquitto
    proxy: ThrottlingProxy
    fleet: Service
    fleet_toml: Path
    fleet_state: Path
    cloud: Service
    agents: list[Agent]
    base: Path  # converted output dir (fp32 ONNX + report + card)
    published: dict[str, str] = field(default_factory=dict)  # version -> sha256 of the onnx artifact
    _admin: Any = None

    # fleet admin -----------------------------------------------------------------------------
    @property
    def admin(self) -> Any:
        if self._admin is None:
            from fleet import config as fleet_config
            from fleet.client import AdminClient

            self._admin = AdminClient(fleet_config.load(self.fleet_toml))
        return self._admin

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["id"]: d for d in self.admin.get("/api/devices")}

    def rollout(self, rid: str) -> dict[str, Any]:
        return self.admin.get(f"/api/rollouts/{rid}")

    def start_rollout(self, version: str, **kw: Any) -> dict[str, Any]:
        body = {
            "model": MODEL,
            "version": version,
            "selector": {},
            "waves": [100],
            "success_threshold": 1.0,
            "max_failure_rate": 0.0,
            "device_timeout": 90,
            **kw,
        }
        return self.admin.post("/api/rollouts", body)

    def wait_rollout_end(self, rid: str, timeout: float = 120.0) -> dict[str, Any]:
        def ended() -> dict[str, Any] | None:
            st = self.rollout(rid)
            return st if st["state"] in ENDED else None

        return wait_for(f"rollout {rid} to end", ended, timeout, every=0.25)

    # artifacts -------------------------------------------------------------------------------
    def artifact_path(self, sha256: str) -> Path:
        return self.fleet_state / "artifacts" / sha256[:2] / sha256

    def publish(self, version: str) -> str:
        """Publish a distinct artifact as `version`; returns that sha256."""
        sha, data = publish_build(
            self.base, self.work, version, self.fleet_toml, "edgekit e2e fault-injection build"
        )
        assert self.artifact_path(sha).stat().st_size == len(data)
        self.published[version] = sha
        return sha

    # checks after every scenario ------------------------------------------------------------
    def check_invariants(self, expected: dict[str, str] | None = None, timeout: float = 30.0) -> None:
        """No device runs an unverified model; no rollout open; fleet view == device view.

        `expected`: device -> version each one must be running (all devices must be listed)."""
        rollouts = self.admin.get("/api/rollouts")
        open_ = [(r["id"], r["state"]) for r in rollouts if r["state"] not in ENDED]
        assert not open_, f"rollouts left in progress: {open_}"

        for a in self.agents:
            st = a.status()
            model = st["models"].get(MODEL)
            assert model is not None, f"{a.device} serves no {MODEL}"
            # What it serves is exactly a published (version, sha256) pair...
            assert self.published.get(model["version"]) == model["sha256"], (
                f"{a.device} runs {model} which is not what was published as that version"
            )
            if expected is not None:
                assert model["version"] == expected[a.device], f"{a.device}: {model} != {expected[a.device]}"
            # ...and the bytes it loaded hash to that digest (the store was not handed bad bytes).
            blob = a.data_dir / "store" / "blobs" / f"{model['sha256']}.onnx"
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == model["sha256"], (
                f"{a.device}: blob damaged"
            )
            meta = httpx.get(f"{a.url}/v2/models/{MODEL}", timeout=5).json()
            assert model["version"] in json.dumps(meta), f"{a.device}: /v2/models says {meta}"

        def views_agree() -> bool:
            self._mismatch = []
            fleet = self.devices()
            for a in self.agents:
                st = a.status()
                upd = st["updates"]["models"][MODEL]
                mine = {
                    "online": st["mqtt_connected"],
                    "state": upd["state"],
                    "version": upd["version"],
                    "sequence": upd["sequence"],
                    "active_version": st["models"][MODEL]["version"],
                }
                d = fleet.get(a.device, {})
                theirs = {k: d.get(k) for k in mine}
                if mine != theirs:
                    self._mismatch.append((a.device, mine, theirs))
            return not self._mismatch

        try:
            wait_for("the fleet's device view to match the devices", views_agree, timeout, every=0.5)
        except AssertionError as e:
            raise AssertionError(f"{e}: (device, device says, fleet says): {self._mismatch}") from None

    _mismatch: list[Any] = field(default_factory=list)


def convert_base(out: Path) -> Path:
    from converters.pipeline import convert

    convert("sample:digits", targets=["onnx"], modes=["none"], out=str(out))
    assert (out / "onnx" / "model.onnx").exists() and (out / "report.json").exists()
    return out


def build_stack(work: Path, n_agents: int = 10, cloud_only: int = 1) -> Stack:
    """Start everything; the first `cloud_only` agents serve MODEL cloud-only, the rest local-first."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base = convert_base(work / "convert")
    devices = [f"dev-{i:02d}" for i in range(n_agents)]
    passwords = {d: f"pw-{d}-{i * 7919}" for i, d in enumerate(devices)}
    b_port, h_port, a_port, p_port, c_port, *agent_ports = free_ports(5 + n_agents)

    broker = Mosquitto(FLEET, passwords, server_user="fleet-server", server_password="srv-pw", port=b_port)
    broker.start()
    proxy = ThrottlingProxy(upstream_port=h_port, port=p_port, rate=5_000_000).start()
    fleet_state = work / "fleet"
    fleet, fleet_toml = fleet_service(
        fleet_state,
        logs,
        fleet=FLEET,
        broker_port=b_port,
        http_port=h_port,
        admin_port=a_port,
        external_broker={"username": "fleet-server", "password": "srv-pw"},
        public_url=f"http://127.0.0.1:{p_port}",
        tick_seconds=0.2,
    )
    fleet.env.update(LOG_ENV)
    # These fault tests cut and resume full downloads through the throttled uplink; a delta
    # (fleet.deltas, tested in tests/fleet/test_deltas.py) would make 2.0's download a 2 KB patch.
    fleet.env["EDGEKIT_SERVER__DELTAS"] = "false"
    cloud = cloud_service(base / "onnx" / "model.onnx", logs, name=MODEL, port=c_port)
    stack = Stack(work, logs, broker, proxy, fleet, fleet_toml, fleet_state, cloud, [], base)
    try:
        fleet.start(timeout=90)
        cloud.start(timeout=90, wait=False)
        root = fleet_state / "root.json"
        for i, (device, port) in enumerate(zip(devices, agent_ports, strict=True)):
            policy = "cloud-only" if i < cloud_only else "local-first"
            svc, _ = agent_service(
                work / "agents" / device,
                logs,
                device=device,
                fleet=FLEET,
                root=root,
                broker_port=b_port,
                server_port=port,
                cloud_url=f"http://127.0.0.1:{c_port}",
                labels={"site": f"site-{i % 3}", "kind": "arm-box" if i % 2 else "store-pc", "n": str(i)},
                # confidence_threshold 0: local-first agents answer locally, so "served locally"
                # is a clean signal while the cloud is down.
                models={MODEL: {"policy": policy, "confidence_threshold": 0.0}},
                mqtt={"username": device, "password": passwords[device], "protocol": "3.1.1"},
                heartbeat_s=1.0,
                # breaker_reset_s 5: long enough that "open" is still observable on a loaded
                # CI box right after the failures that opened it.
                extra={"download": {"retries": 6, "timeout_s": 10.0}, "cloud": {"breaker_reset_s": 5.0}},
            )
            # INFO logs, one line per record (rich wraps at 80 columns off a terminal): the
            # scenarios read the agents' logs for resume/retry/refusal evidence.
            svc.env.update(LOG_ENV)
            stack.agents.append(Agent(device, port, svc, work / "agents" / device, policy))
            svc.start(wait=False)  # start all, then wait: the imports overlap on both cores
        for a in stack.agents:
            a.svc.wait_ready(timeout=120)
        cloud.wait_ready(timeout=120)
        wait_for(
            f"{n_agents} devices online in the fleet",
            lambda: sum(d["online"] for d in stack.devices().values()) >= n_agents,
            timeout=90,
        )
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    for a in stack.agents:
        a.svc.stop(timeout=5)
    stack.cloud.stop(timeout=5)
    stack.fleet.stop(timeout=10)
    stack.proxy.stop()
    stack.broker.stop()


def eval_inputs(n: int = 20) -> np.ndarray:
    return np.load(SAMPLES / "digits_eval.npz")["input"][:n].astype(np.float32)


def publish_build(base: Path, work: Path, version: str, fleet_toml: Path, label: str) -> tuple[str, bytes]:
    """Copy the conversion at `base`, make its ONNX artifact distinct (the doc_string names the
    version, so every version has its own sha256), fix the report to match and `fleet publish`
    it as `version`; returns the artifact's sha256 and bytes."""
    import onnx

    src = work / "versions" / version
    shutil.copytree(base, src)
    model_path = src / "onnx" / "model.onnx"
    m = onnx.load(str(model_path))
    m.doc_string = f"{label} {version}"
    onnx.save(m, str(model_path))
    data = model_path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    report = json.loads((src / "report.json").read_text())
    for a in report["artifacts"]:
        if a["files"][0]["path"] == "onnx/model.onnx":
            a["sha256"] = a["files"][0]["sha256"] = sha
            a["bytes"] = a["files"][0]["bytes"] = len(data)
    (src / "report.json").write_text(json.dumps(report))
    proc = run_cli(
        "fleet", "publish", str(src), "--model", MODEL, "--version", version, "--config", str(fleet_toml)
    )
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    return sha, data

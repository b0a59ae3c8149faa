"""Run edgekit's own services as child processes: fleet server, agents, cloud endpoint.

Used by `edgekit demo` and the end-to-end suite. Everything is started through the public CLI
(`edgekit fleet serve`, `edgekit agent run`, `edgekit serve`) with generated TOML configs, so
what is exercised is exactly what a user runs. A `ProcessGroup` guarantees clean-up: every child
is terminated on exit, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

EDGEKIT = [sys.executable, "-m", "edgekit.cli"]


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (all sockets held open together, so no duplicates)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def toml_dumps(cfg: dict[str, dict[str, Any]]) -> str:
    """Enough TOML for our configs: sections of scalars, lists and inline tables (one level)."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(str(k))} = {val(x)}" for k, x in v.items()) + " }"
        return json.dumps(str(v))

    lines: list[str] = []
    for name, body in cfg.items():
        # [models.NAME] tables are one level deeper than every other section.
        tables = body.items() if name == "models" else [(None, body)]
        for sub, values in tables:
            lines.append(f"[{name}.{sub}]" if sub else f"[{name}]")
            lines.extend(f"{k} = {val(v)}" for k, v in values.items())
            lines.append("")
    return "\n".join(lines)


class Service:
    """One child process with its own log file; restartable, killable like a real crash."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_dir: Path,
        ready: Callable[[], bool] | None = None,
        env: dict[str, str] | None = None,
    ):
        self.name, self.argv, self.ready_check = name, argv, ready
        self.log_path = log_dir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0, wait: bool = True) -> Service:
        """Spawn the child; with wait=False return at once (start many, then wait_ready each)."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()
        if wait and self.ready_check is not None:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log:\n{self.tail()}")
            try:
                if self.ready_check():
                    return
            except (httpx.HTTPError, OSError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f}s; log:\n{self.tail()}")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: what a power loss looks like to the process."""
        if self.alive:
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, timeout: float = 30.0) -> Service:
        self.stop()
        return self.start(timeout)

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def http_ok(url: str, headers: dict[str, str] | None = None) -> Callable[[], bool]:
    return lambda: httpx.get(url, timeout=1.0, headers=headers).status_code == 200


class ProcessGroup:
    """Owns services; stops them all on exit, Ctrl-C or SIGTERM (the demo's 'one process tree')."""

    def __init__(self) -> None:
        self.services: list[Service] = []
        self._old_term = None

    def add(self, svc: Service) -> Service:
        self.services.append(svc)
        return svc

    def __enter__(self) -> ProcessGroup:
        def on_term(signum, frame):
            raise KeyboardInterrupt

        try:
            self._old_term = signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread (e.g. inside a test runner thread)
            self._old_term = None
        return self

    def __exit__(self, *exc) -> None:
        for svc in reversed(self.services):
            try:
                svc.stop(timeout=5)
            except Exception:
                svc.kill()
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)


# --- the three services, configured through their public CLIs ---------------------------------


def fleet_service(
    state_dir: Path,
    log_dir: Path,
    *,
    fleet: str,
    broker_port: int,
    http_port: int,
    admin_port: int,
    external_broker: dict[str, Any] | None = None,
    public_url: str = "",
    tick_seconds: float = 0.2,
) -> tuple[Service, Path]:
    broker: dict[str, Any] = {"embedded": True, "host": "127.0.0.1", "port": broker_port}
    if external_broker:
        broker = {"embedded": False, "host": "127.0.0.1", "port": broker_port, **external_broker}
    cfg = {
        "server": {"fleet": fleet, "state_dir": str(state_dir), "tick_seconds": tick_seconds},
        "broker": broker,
        "http": {"host": "127.0.0.1", "port": http_port, "public_url": public_url},
        "admin": {"host": "127.0.0.1", "port": admin_port},
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir.parent / f"{state_dir.name}.fleet.toml"
    path.write_text(toml_dumps(cfg))

    def ready() -> bool:
        token = (state_dir / "admin.token").read_text().strip()
        return http_ok(f"http://127.0.0.1:{admin_port}/api/health", {"Authorization": f"Bearer {token}"})()

    return Service("fleet", [*EDGEKIT, "fleet", "serve", "--config", str(path)], log_dir, ready), path


def enrol(fleet_toml: Path, device: str, out: Path) -> Path:
    """`edgekit fleet devices enroll`: the device's bundle (MQTT credentials, root.json, broker
    URL) in `out`, for `agent_service(enrolment=out)`."""
    proc = run_cli(
        "fleet", "devices", "enroll", device, "--out", str(out), "--config", str(fleet_toml), timeout=120
    )
    if proc.returncode != 0:
        raise RuntimeError(f"enrolling {device} failed:\n{proc.stderr[-2000:]}")
    return out


def agent_service(
    data_dir: Path,
    log_dir: Path,
    *,
    device: str,
    fleet: str,
    root: Path | None = None,
    broker_port: int,
    server_port: int,
    cloud_url: str = "",
    labels: dict[str, str] | None = None,
    models: dict[str, dict[str, Any]] | None = None,
    mqtt: dict[str, Any] | None = None,
    heartbeat_s: float = 5.0,
    extra: dict[str, dict[str, Any]] | None = None,
    formats: list[str] | None = None,
    enrolment: Path | None = None,
) -> tuple[Service, Path]:
    """An agent enrolled with `root` (and `mqtt` credentials), or with an enrolment bundle."""
    cfg: dict[str, Any] = {
        "agent": {
            "device": device,
            "fleet": fleet,
            "data_dir": str(data_dir),
            **({"root": str(root)} if root else {}),
            **({"enrolment": str(enrolment)} if enrolment else {}),
            "formats": formats or ["onnx"],  # artifact keys in preference order, e.g. "onnx-int8-static"
            "heartbeat_s": heartbeat_s,
            "labels": labels or {},
        },
        "server": {"host": "127.0.0.1", "port": server_port},
        "mqtt": {"host": "127.0.0.1", "port": broker_port, "protocol": "3.1.1", **(mqtt or {})},
        "cloud": {
            "url": cloud_url,
            "timeout_ms": 2000,
            "retries": 1,
            "breaker_failures": 3,
            "breaker_reset_s": 2,
        },
        "fallback": {"policy": "local-first"},
    }
    for section, values in (extra or {}).items():
        cfg.setdefault(section, {}).update(values)
    if models:
        cfg["models"] = models
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir.parent / f"{device}.agent.toml"
    path.write_text(toml_dumps(cfg))
    svc = Service(
        device,
        [*EDGEKIT, "agent", "run", "--config", str(path)],
        log_dir,
        http_ok(f"http://127.0.0.1:{server_port}/v2/health/live"),
    )
    return svc, path


def cloud_service(
    model: Path, log_dir: Path, *, name: str, port: int, version: str = "cloud-fp32"
) -> Service:
    return Service(
        "cloud",
        [*EDGEKIT, "serve", str(model), "--name", name, "--port", str(port), "--model-version", version],
        log_dir,
        http_ok(f"http://127.0.0.1:{port}/v2/health/ready"),
    )


def mosquitto_service(conf_dir: Path, log_dir: Path, *, port: int) -> Service:
    """Mosquitto on 127.0.0.1:`port` with the files `edgekit fleet mosquitto-config` wrote in
    `conf_dir` (its edgekit.conf: no anonymous clients, password file, ACL)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        raise FileNotFoundError("mosquitto is not installed (apt-get install mosquitto)")
    # Beside conf_dir, not in it: include_dir would load the main file again.
    conf = conf_dir.parent / f"{conf_dir.name}.conf"
    # `user root`: run as root, Mosquitto would switch to user mosquitto, who cannot read the 0600
    # password file; as anyone else the line is ignored.
    conf.write_text(f"listener {port} 127.0.0.1\npersistence false\nuser root\ninclude_dir {conf_dir}\n")

    def ready() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    return Service("mosquitto", [binary, "-c", str(conf)], log_dir, ready)


def run_cli(
    *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`edgekit ARGS` in a subprocess (env: extra variables), output captured."""
    return subprocess.run(
        [*EDGEKIT, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )

"""systemd Type=notify: a real AF_UNIX datagram socket stands in for systemd's NOTIFY_SOCKET and
receives what real `edgekit agent run` / `edgekit fleet serve` processes send: READY=1 once they
serve, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgekit.launch import EDGEKIT, fleet_service, free_ports
from edgekit.sdnotify import Watchdog, notify, socket_address, watchdog_period
from tests.agent.conftest import REPO
from tests.support.procs import stop_process

pytestmark = pytest.mark.timeout(120)


class NotifySocket:
    """What systemd listens on: one datagram per notification."""

    def __init__(self, path: Path | None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:  # abstract namespace: NOTIFY_SOCKET=@name
            name = f"edgekit-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            self.sock.bind(str(path))
            self.env_value = str(path)
        self.messages: list[str] = []

    def wait_for(self, line: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> list[str]:
        """Messages received until one carrying `line` (each message is newline-separated lines)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if proc is not None and proc.poll() is not None and proc.returncode != 0:
                raise AssertionError(f"process exited with {proc.returncode}")
            self.sock.settimeout(max(0.05, min(1.0, end - time.monotonic())))
            try:
                msg = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self.messages.append(msg)
            if line in msg.splitlines():
                return self.messages
        raise AssertionError(f"no {line!r} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path / "notify.sock" if request.param == "path" else None)
    yield ns
    ns.close()


def test_socket_address() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abc") == "\0abc"
    assert socket_address("") is None and socket_address("@") is None
    assert socket_address("vsock:2:1234") is None


def test_watchdog_period() -> None:
    assert watchdog_period({"WATCHDOG_USEC": "30000000"}, 7) == 15.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 7) == 15.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "8"}, 7) is None
    assert watchdog_period({}, 7) is None
    assert watchdog_period({"WATCHDOG_USEC": "soon"}, 7) is None
    assert watchdog_period({"WATCHDOG_USEC": "0"}, 7) is None


def test_notify_without_systemd_is_a_no_op() -> None:
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify.sock"}) is False


def test_watchdog_pings_only_while_healthy(notify_socket: NotifySocket) -> None:
    healthy = True
    env = {"NOTIFY_SOCKET": notify_socket.env_value}
    dog = Watchdog(0.05, lambda: healthy, env).start()
    try:
        notify_socket.wait_for("WATCHDOG=1", timeout=10)
        healthy = False
        time.sleep(0.1)  # let a ping already past its health check land before draining
        notify_socket.sock.setblocking(False)
        try:
            while notify_socket.sock.recv(4096):
                pass
        except BlockingIOError:
            pass
        # Ten periods of an unhealthy daemon: not a single ping (systemd would restart it).
        notify_socket.sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            notify_socket.sock.recv(4096)
        healthy = True
        notify_socket.wait_for("WATCHDOG=1", timeout=10)
    finally:
        dog.stop()


def _agent_config(tmp_path: Path, model: Path, port: int) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
[agent]
device = "dev-1"
fleet = "f"
data_dir = "{tmp_path / "data"}"

[server]
port = {port}

[mqtt]
enabled = false

[models.cls]
path = "{model}"
version = "1"
"""
    )
    return cfg


def test_agent_run_notifies_ready_watchdog_and_stopping(
    tmp_path: Path, model_dir: Path, notify_socket: NotifySocket
) -> None:
    (port,) = free_ports(1)
    cfg = _agent_config(tmp_path, model_dir / "cls_v1.onnx", port)
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        NOTIFY_SOCKET=notify_socket.env_value,
        WATCHDOG_USEC="300000",  # a ping every 0.15 s
    )
    env.pop("WATCHDOG_PID", None)
    log = (tmp_path / "agent.log").open("wb")
    proc = subprocess.Popen(
        [*EDGEKIT, "agent", "run", "--config", str(cfg)], cwd=REPO, env=env, stdout=log, stderr=log
    )
    try:
        msgs = notify_socket.wait_for("READY=1", proc=proc)
        # READY=1 comes after the OIP server listens and the model is loaded: it answers at once.
        r = httpx.get(f"http://127.0.0.1:{port}/v2/models/cls/ready", timeout=5)
        assert r.status_code == 200
        assert not any("WATCHDOG=1" in m for m in msgs)  # no ping before ready
        notify_socket.wait_for("WATCHDOG=1", timeout=10, proc=proc)
        notify_socket.wait_for("WATCHDOG=1", timeout=10, proc=proc)
        proc.terminate()
        notify_socket.wait_for("STOPPING=1", timeout=30)
        assert proc.wait(30) == 0
    finally:
        stop_process(proc)
        log.close()


def test_fleet_serve_notifies_ready(tmp_path: Path, notify_socket: NotifySocket) -> None:
    b, h, a = free_ports(3)
    svc, _toml = fleet_service(
        tmp_path / "fleet", tmp_path, fleet="f", broker_port=b, http_port=h, admin_port=a
    )
    env = dict(
        os.environ, PYTHONPATH=str(REPO), NOTIFY_SOCKET=notify_socket.env_value, WATCHDOG_USEC="300000"
    )
    env.pop("WATCHDOG_PID", None)
    log = (tmp_path / "fleet.log").open("wb")
    proc = subprocess.Popen(svc.argv, cwd=REPO, env=env, stdout=log, stderr=log)
    try:
        notify_socket.wait_for("READY=1", proc=proc)
        token = (tmp_path / "fleet" / "admin.token").read_text().strip()
        r = httpx.get(f"http://127.0.0.1:{a}/api/health", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200  # ready means the admin API answers
        notify_socket.wait_for("WATCHDOG=1", timeout=10, proc=proc)
        proc.terminate()
        notify_socket.wait_for("STOPPING=1", timeout=30)
        assert proc.wait(30) == 0
    finally:
        stop_process(proc)
        log.close()

"""kill -9 in the middle of a download, then restart: the download resumes (Range) and the old
version keeps serving until the new one is verified and smoke-tested. Real subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.agent.brokers import Fleet, Mosquitto
from tests.agent.conftest import REPO, free_port
from tests.agent.support import ArtifactServer, Keys, manifest
from tests.support.procs import stop_process

pytestmark = pytest.mark.timeout(120)


def write_config(tmp_path: Path, keys: Keys, mqtt_port: int, http_port: int) -> Path:
    root = tmp_path / "root.json"
    root.write_bytes(keys.root_bytes())
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f"""
[agent]
device = "dev-1"
fleet = "f"
data_dir = "{tmp_path / "data"}"
root = "{root}"
heartbeat_s = 60

[server]
port = {http_port}

[mqtt]
port = {mqtt_port}
protocol = "5"

[download]
retries = 0
timeout_s = 10
"""
    )
    return cfg


def start_agent(cfg: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), EDGEKIT_LOG_LEVEL="INFO")
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "edgekit.cli", "agent", "run", "--config", str(cfg)],
            cwd=REPO,
            env=env,
            stdout=f,
            stderr=f,
        )


def wait_for(pred, timeout: float = 30.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise TimeoutError(what)


def test_kill9_mid_download_resumes(tmp_path: Path, model_dir: Path) -> None:
    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(model_dir / "slow.onnx", www / "big.onnx")
    data = (www / "big.onnx").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    http = ArtifactServer(www, delay=0.05).start()  # ~1.3 MB/s: seconds to download
    port = free_port()
    broker = Mosquitto(tmp_path / "mosq", port).start()
    keys = Keys.make()
    cfg = write_config(tmp_path, keys, port, free_port())
    part = tmp_path / "data" / "store" / "incoming" / f"{sha}.onnx.part"
    state_file = tmp_path / "data" / "state" / "cls.json"
    fleet = Fleet(port)
    proc = start_agent(cfg, tmp_path / "agent.log")
    try:
        fleet.publish_desired(
            manifest(
                keys,
                file=www / "big.onnx",
                url=http.url + "big.onnx",
                sequence=1,
                version="big-1",
                smoke_bias=None,
            )
        )
        wait_for(lambda: part.exists() and part.stat().st_size > 200_000, what="download started")
        fleet.wait(lambda ms: ms and ms[-1].get("online") is True, which="online")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # the broker publishes the Last Will: the fleet sees the device go offline
        fleet.wait(lambda ms: ms and ms[-1].get("online") is False, which="online", timeout=20)
        had = part.stat().st_size
        assert 0 < had < len(data)
        assert json.loads(state_file.read_text())["state"] == "downloading"
        http.delay = 0.0
        proc = start_agent(cfg, tmp_path / "agent.log")
        wait_for(
            lambda: state_file.exists() and json.loads(state_file.read_text())["state"] == "active",
            timeout=60,
            what="active after restart",
        )
        ranges = [r for p, r in http.requests if p == "big.onnx"]
        assert ranges[0] is None  # first run: from zero
        resumed_at = int(ranges[-1].removeprefix("bytes=").rstrip("-"))
        assert resumed_at >= had  # verified-by-hash bytes on disk were not fetched again
        blob = tmp_path / "data" / "store" / "blobs" / f"{sha}.onnx"
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == sha
        assert not part.exists()
        # the resumed update was reported; the replayed retained manifest did not start another one
        fleet.wait(lambda ms: any(m["state"] == "active" and m.get("version") == "big-1" for m in ms))
        assert len(ranges) == 2
    finally:
        stop_process(proc)
        fleet.stop()
        broker.stop()
        http.stop()


def test_kill9_after_swap_pointer_is_whole(tmp_path: Path, model_dir: Path) -> None:
    """Crash between the pointer rename and the `active` state write: restart finishes, no re-download."""
    from agent.models import ModelRegistry
    from agent.state import StateStore
    from agent.store import ModelStore
    from agent.updater import Updater
    from edgekit.trust import load_trusted_root

    www = tmp_path / "www"
    www.mkdir()
    shutil.copy(model_dir / "cls_v1.onnx", www / "cls_v1.onnx")
    http = ArtifactServer(www).start()
    keys = Keys.make()

    def updater() -> Updater:
        return Updater(
            store=ModelStore(tmp_path / "s"),
            states=StateStore(tmp_path / "st"),
            registry=ModelRegistry(),
            root=load_trusted_root(keys.root_bytes()),
            fleet="f",
            device="dev-1",
            trust_file=tmp_path / "trust.json",
        )

    u = updater()
    payload = manifest(keys, file=www / "cls_v1.onnx", url=http.url + "cls_v1.onnx", sequence=1, version="1")
    # simulate the crash: run the pipeline but stop right after the pointer swap
    orig = u._go

    def crash_on_active(model, new, **kw):
        if new == "active":
            raise SystemExit("power loss")
        return orig(model, new, **kw)

    u._go = crash_on_active  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        u.handle(payload)
    assert u.store.active("cls").version == "1"  # pointer already swapped
    assert u.states.get("cls").state == "smoke_tested"
    n = len(http.requests)
    u2 = updater()
    assert u2.recover() == ["cls:active"]
    assert u2.states.get("cls").state == "active"
    assert len(http.requests) == n
    http.stop()

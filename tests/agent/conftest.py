"""Fixtures for the agent suite: tiny real ONNX models, real servers on 127.0.0.1, a real cloud process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent import models as tm
from tests.agent.support import ArtifactServer, Keys

REPO = Path(__file__).resolve().parents[2]
EDGEKIT = [sys.executable, "-m", "edgekit.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("models")
    tm.classifier(d / "cls_v1.onnx", scale=1.0, bias=0.0)
    tm.classifier(d / "cls_v2.onnx", scale=1.0, bias=0.5)
    tm.classifier(d / "fragile.onnx", fixed_batch=1)
    tm.slow_classifier(d / "slow.onnx")
    return d


class ServeProcess:
    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_serve(files: list[Path], names: list[str], version: str = "cloud-1") -> ServeProcess:
    port = free_port()
    cmd = [*EDGEKIT, "serve", *map(str, files), "--port", str(port), "--model-version", version]
    for n in names:
        cmd += ["--name", n]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sp = ServeProcess(proc, port)
    try:
        wait_http(f"{sp.url}/v2/health/ready", proc=proc)
    except Exception:
        sp.stop()
        raise
    return sp


@pytest.fixture(scope="session")
def cloud(model_dir: Path) -> Iterator[ServeProcess]:
    """A real second `edgekit serve` process: the cloud endpoint, serving every model name the tests use."""
    v1 = model_dir / "cls_v1.onnx"
    sp = start_serve([v1, v1, v1, v1], ["cls", "fragile", "slow", "cloudonly"])
    yield sp
    sp.stop()


@pytest.fixture
def files(tmp_path: Path, model_dir: Path) -> Path:
    """A web root with the test models, served by `http` as update artifacts."""
    import shutil

    d = tmp_path / "www"
    d.mkdir()
    for n in ("cls_v1.onnx", "cls_v2.onnx", "slow.onnx"):
        shutil.copy(model_dir / n, d / n)
    return d


@pytest.fixture
def http(files: Path) -> Iterator[ArtifactServer]:
    srv = ArtifactServer(files).start()
    yield srv
    srv.stop()


@pytest.fixture
def keys() -> Keys:
    return Keys.make()

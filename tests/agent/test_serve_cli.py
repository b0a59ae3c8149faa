"""`edgekit serve` as a real process on the trained digits sample, called with tritonclient; its
name in server metadata, --model-version (versions side by side), and a port already in use."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.agent.conftest import REPO, ServeProcess, free_port, start_serve, wait_http
from tests.agent.models import CONFIDENT

pytestmark = pytest.mark.timeout(60)
SAMPLES = Path(__file__).resolve().parents[2] / "edgekit" / "samples"
# The serve command itself, run on its own (`edgekit serve` registers the same function).
SERVE = [sys.executable, "-m", "agent.serve_cli"]
ENV = dict(os.environ, PYTHONPATH=str(REPO))


@pytest.mark.skipif(not (SAMPLES / "digits_cnn.onnx").exists(), reason="digits sample not present")
def test_edgekit_serve_digits_with_tritonclient() -> None:
    import tritonclient.http as th

    data = np.load(SAMPLES / "digits_eval.npz")
    x, y = data["input"][:64], data["labels"][:64]
    sp = start_serve([SAMPLES / "digits_cnn.onnx"], ["digits"], version="7")
    try:
        client = th.InferenceServerClient(url=f"127.0.0.1:{sp.port}")
        assert client.get_server_metadata()["name"] == "edgekit-serve"
        assert client.is_model_ready("digits")
        name = client.get_model_metadata("digits")["outputs"][0]["name"]
        inp = th.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer("digits", [inp], outputs=[th.InferRequestedOutput(name)])
        pred = res.as_numpy(name).argmax(axis=1)
        assert (pred == y).mean() > 0.9
        assert res.get_response()["model_version"] == "7"
        client.close()
    finally:
        sp.stop()


def test_model_version_serves_versions_side_by_side(model_dir: Path) -> None:
    import tritonclient.http as th

    port = free_port()
    files = [model_dir / "cls_v1.onnx", model_dir / "cls_v2.onnx"]
    cmd = [*SERVE, *map(str, files), "--name", "cls", "--name", "cls", "--port", str(port)]
    cmd += ["--model-version", "1", "--model-version", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sp = ServeProcess(proc, port)
    try:
        wait_http(f"{sp.url}/v2/health/ready", proc=proc)
        client = th.InferenceServerClient(url=f"127.0.0.1:{port}")
        assert client.get_server_metadata()["name"] == "edgekit-serve"
        assert client.get_model_metadata("cls")["versions"] == ["1", "2"]
        inp = th.InferInput("input", [1, 4], "FP32")
        inp.set_data_from_numpy(CONFIDENT)
        p1 = client.infer("cls", [inp], model_version="1").as_numpy("probs")
        p2 = client.infer("cls", [inp], model_version="2").as_numpy("probs")
        latest = client.infer("cls", [inp])
        assert not np.allclose(p1, p2)
        assert latest.get_response()["model_version"] == "2"  # the last one listed is the active one
        np.testing.assert_allclose(latest.as_numpy("probs"), p2)
        client.close()
    finally:
        sp.stop()


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*SERVE, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=30)


def test_port_in_use_is_one_line_and_exit_2(model_dir: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        out = _run([str(model_dir / "cls_v1.onnx"), "--port", str(port)])
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == [f"error: port {port} on 127.0.0.1 is already in use (pick another with --port)"]
    assert "Traceback" not in out.stdout + out.stderr


def test_version_option_is_now_model_version(model_dir: Path) -> None:
    out = _run([str(model_dir / "cls_v1.onnx"), "--version", "3", "--port", str(free_port())])
    assert out.returncode == 2 and "--version" in out.stderr  # click: "No such option: --version"
    files = [str(model_dir / "cls_v1.onnx"), str(model_dir / "cls_v2.onnx")]
    out = _run([*files, "--name", "cls", "--name", "cls", "--model-version", "1", "--port", str(free_port())])
    assert out.returncode == 2 and "version '1' is given twice" in out.stderr

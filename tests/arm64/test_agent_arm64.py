"""The agent on aarch64 Linux: a Debian arm64 rootfs under QEMU user mode, driven from the host.

`make test-arm64` prepares (and caches) the rootfs with the agent installed from aarch64 wheels
(scripts/arm64/), then runs this module: on the host, `edgekit fleet serve` (embedded broker)
and `edgekit serve` as the cloud endpoint; in the rootfs, `edgekit agent run` enrolled with that
fleet. The agent first answers from the cloud (no local model yet), then installs two signed
updates, an .onnx and a .tflite, and serves both with aarch64 ONNX Runtime and LiteRT, whose
answers must match the host's x86 runtimes on the same files.

Deselected from the default run (pyproject addopts); `pytest -m arm64 tests/arm64` runs it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgekit.config import home
from edgekit.launch import (
    Service,
    agent_service,
    cloud_service,
    enrol,
    fleet_service,
    free_ports,
    http_ok,
    run_cli,
)
from tests.e2e.stack import ENDED, LOG_ENV, SAMPLES, Agent, eval_inputs, wait_for

pytestmark = [pytest.mark.arm64, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
ENTER = REPO / "scripts" / "arm64" / "enter.sh"
ROOTFS = home() / "arm64" / "rootfs"
VENV_BIN = "/opt/venv/bin"
FLEET = "arm"
DEVICE = "arm-box-1"
ONNX_MODEL, TFLITE_MODEL = "digits", "digits-lite"
EM_AARCH64 = 183  # ELF e_machine of AArch64
# Everything inside is emulated: imports alone take tens of seconds on a loaded 2-core box.
SLOW = 600.0


def in_arm64(*argv: str, timeout: float = SLOW) -> str:
    """Run argv inside the rootfs (scripts/arm64/enter.sh); return stdout, fail with stderr."""
    cmd = ["bash", str(ENTER), str(ROOTFS), "--", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{argv} in the arm64 rootfs exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(head[18:20], "little")


@dataclass
class Host:
    """What runs on the host: the fleet (embedded broker), the cloud, and their configs."""

    work: Path
    fleet: Service
    fleet_toml: Path
    cloud: Service
    broker_port: int
    cloud_port: int
    onnx_dir: Path
    tflite_dir: Path

    @property
    def admin(self) -> Any:
        from fleet import config as fleet_config
        from fleet.client import AdminClient

        return AdminClient(fleet_config.load(self.fleet_toml))


def infer(url: str, model: str, x: np.ndarray) -> dict[str, Any]:
    doc = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }
    r = httpx.post(f"{url}/v2/models/{model}/infer", json=doc, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def logits(body: dict[str, Any]) -> np.ndarray:
    out = body["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


@pytest.fixture(scope="module")
def prepared() -> Path:
    if not (ROOTFS / VENV_BIN.lstrip("/") / "edgekit").exists():
        # Only reachable by selecting the marker by hand: `make test-arm64` prepares first and
        # stops if that fails.
        pytest.skip(f"no agent in {ROOTFS}: `make test-arm64` prepares it (scripts/arm64/prepare.sh)")
    return ROOTFS


@pytest.fixture(scope="module")
def host(tmp_path_factory, prepared: Path) -> Iterator[Host]:
    from converters.pipeline import convert

    work = tmp_path_factory.mktemp("arm64")
    logs = work / "logs"
    logs.mkdir()
    onnx_dir, tflite_dir = work / "convert-onnx", work / "convert-tflite"
    for out, target in ((onnx_dir, "onnx"), (tflite_dir, "tflite")):
        report = convert("sample:digits", targets=[target], modes=["none"], out=str(out))
        assert report.ok, [(a.mode, a.error) for a in report.artifacts]
    b_port, h_port, a_port, c_port = free_ports(4)
    fleet, fleet_toml = fleet_service(
        work / "fleet", logs, fleet=FLEET, broker_port=b_port, http_port=h_port, admin_port=a_port
    )
    fleet.env.update(LOG_ENV)
    cloud = cloud_service(onnx_dir / "onnx" / "model.onnx", logs, name=ONNX_MODEL, port=c_port)
    try:
        fleet.start(timeout=120)
        cloud.start(timeout=120)
        yield Host(work, fleet, fleet_toml, cloud, b_port, c_port, onnx_dir, tflite_dir)
    finally:
        cloud.stop(timeout=5)
        fleet.stop(timeout=10)


@pytest.fixture(scope="module")
def agent(host: Host) -> Iterator[Agent]:
    """`edgekit agent run` inside the rootfs, enrolled with the host's fleet like any device."""
    bundle = enrol(host.fleet_toml, DEVICE, host.work / "agents" / f"{DEVICE}.enrolment")
    svc, config = agent_service(
        host.work / "agents" / DEVICE,
        host.work / "logs",
        device=DEVICE,
        fleet=FLEET,
        enrolment=bundle,
        broker_port=host.broker_port,
        # Port 0: the agent binds a free port itself and announces it. A port picked beforehand
        # would sit free through the emulated start-up (tens of seconds) for anyone to take.
        server_port=0,
        cloud_url=f"http://127.0.0.1:{host.cloud_port}",
        labels={"arch": "aarch64"},
        models={
            ONNX_MODEL: {"policy": "local-first", "confidence_threshold": 0.0},
            TFLITE_MODEL: {"policy": "local-only"},
        },
        heartbeat_s=2.0,
        formats=["onnx", "tflite"],
    )
    # The same CLI and config, run by the rootfs' venv; the work dir is bound at the same path,
    # so the config, the enrolment bundle and the data dir mean the same inside and out.
    assert svc.argv[-4:] == ["agent", "run", "--config", str(config)]
    svc.argv = [
        "bash",
        str(ENTER),
        str(ROOTFS),
        "-b",
        str(host.work),
        "--",
        f"{VENV_BIN}/edgekit",
        *svc.argv[-4:],
    ]
    svc.env.update(LOG_ENV)
    announced = re.compile(rf"edgekit agent {DEVICE}: OIP on http://127\.0\.0\.1:(\d+)")
    ports: list[int] = []

    def ready() -> bool:
        m = announced.search(svc.log_path.read_text(errors="replace"))
        if m and not ports:
            ports.append(int(m.group(1)))
        return bool(ports) and http_ok(f"http://127.0.0.1:{ports[0]}/v2/health/live")()

    svc.ready_check = ready
    try:
        svc.start(timeout=SLOW)
        a = Agent(DEVICE, ports[0], svc, host.work / "agents" / DEVICE, "local-first")
        wait_for(
            f"{DEVICE} online in the fleet",
            lambda: any(d["id"] == DEVICE and d["online"] for d in host.admin.get("/api/devices")),
            timeout=SLOW,
            every=1.0,
        )
        yield a
    finally:
        svc.stop(timeout=30)
        print(f"--- {DEVICE} log (tail) ---\n{svc.tail(40)}")


def test_the_rootfs_runs_aarch64_builds(prepared: Path) -> None:
    assert in_arm64("uname", "-m").strip() == "aarch64"
    probe = (
        "import json, platform, numpy, onnxruntime, ai_edge_litert.interpreter as lt, edgekit;"
        "import numpy._core._multiarray_umath as mu, onnxruntime.capi.onnxruntime_pybind11_state as ortc;"
        "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(),"
        " 'numpy': mu.__file__, 'ort': ortc.__file__, 'litert': lt.__file__, 'edgekit': edgekit.__file__,"
        " 'ort_run': onnxruntime.get_available_providers()}))"
    )
    info = json.loads(in_arm64(f"{VENV_BIN}/python", "-c", probe).strip().splitlines()[-1])
    assert info["machine"] == "aarch64"
    assert info["python"].startswith("3.11.")
    assert "CPUExecutionProvider" in info["ort_run"]
    assert info["edgekit"].startswith("/opt/venv/"), "the agent must be the rootfs' install, not the repo"
    # The compiled extensions that were imported are AArch64 code, not x86 ones that happen to load.
    for key in ("numpy", "ort"):
        assert elf_machine(prepared / info[key].lstrip("/")) == EM_AARCH64, info[key]
    litert_libs = list((prepared / Path(info["litert"]).parent.as_posix().lstrip("/")).glob("*.so"))
    assert litert_libs and all(elf_machine(p) == EM_AARCH64 for p in litert_libs)


def test_answers_from_the_host_cloud_before_any_update(host: Host, agent: Agent) -> None:
    # The agent's process is an emulated aarch64 program: the kernel ran it through QEMU (binfmt).
    exe = os.readlink(f"/proc/{agent.svc.proc.pid}/exe")
    assert "qemu" in exe or "aarch64" in exe, exe
    x = eval_inputs(4)
    body = infer(agent.url, ONNX_MODEL, x)
    assert body["parameters"]["served_by"] == "cloud"
    assert body["parameters"]["fallback_reason"] == "missing_model"
    cloud = infer(f"http://127.0.0.1:{host.cloud_port}", ONNX_MODEL, x)
    np.testing.assert_array_equal(logits(body), logits(cloud))


def roll_out(host: Host, model: str, src: Path, version: str) -> dict[str, Any]:
    proc = run_cli(
        "fleet", "publish", str(src), "--model", model, "--version", version, "--config", str(host.fleet_toml)
    )
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    rid = host.admin.post(
        "/api/rollouts",
        {
            "model": model,
            "version": version,
            "selector": {"arch": "aarch64"},
            "waves": [100],
            "success_threshold": 1.0,
            "max_failure_rate": 0.0,
            "device_timeout": SLOW,
        },
    )["id"]

    def ended() -> dict[str, Any] | None:
        st = host.admin.get(f"/api/rollouts/{rid}")
        return st if st["state"] in ENDED else None

    return wait_for(f"rollout of {model} {version} to end", ended, timeout=SLOW, every=1.0)


def test_installs_signed_onnx_and_tflite_updates_and_serves_both(host: Host, agent: Agent) -> None:
    from targets.runtimes.litert import LiteRTRuntime
    from targets.runtimes.onnxrt import OnnxRuntime

    for model, src in ((ONNX_MODEL, host.onnx_dir), (TFLITE_MODEL, host.tflite_dir)):
        st = roll_out(host, model, src, "1.0.0")
        assert st["state"] == "completed", st
    status = agent.status()
    assert {m: v["version"] for m, v in status["models"].items()} == {
        ONNX_MODEL: "1.0.0",
        TFLITE_MODEL: "1.0.0",
    }
    blobs = {p.suffix for p in (agent.data_dir / "store" / "blobs").iterdir()}
    assert {".onnx", ".tflite"} <= blobs, blobs

    x = eval_inputs(16)
    labels = np.load(SAMPLES / "digits_eval.npz")["labels"][:16]
    (tfl,) = (host.tflite_dir / "tflite").glob("*.tflite")
    references = {
        ONNX_MODEL: next(
            iter(OnnxRuntime(host.onnx_dir / "onnx" / "model.onnx", threads=1).run({"input": x}).values())
        ),
        TFLITE_MODEL: next(iter(LiteRTRuntime(tfl, threads=1).run({"input": x}).values())),
    }
    for model, ref in references.items():
        body = infer(agent.url, model, x)
        assert body["parameters"]["served_by"] == "local", (model, body["parameters"])
        assert body["parameters"]["model_version"] == "1.0.0"
        got = logits(body)
        # aarch64 kernels (NEON) against x86 ones (AVX) on the same file: same answer, float noise apart.
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4, err_msg=model)
        assert (got.argmax(axis=1) == labels).mean() >= 0.9, model

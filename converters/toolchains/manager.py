"""Isolated, pinned, cached converter environments, and running worker scripts inside them.

The heavy stacks cannot share an environment with each other or with the user's (onnx2tf pins
tensorflow, onnx, onnxruntime and numpy exactly; tensorflowjs's declared deps break those pins;
the Core ML route needs torch without torchvision). Each toolchain is a venv built from a lock file
shipped with edgekit, installed with `--no-deps` so pip never re-resolves it, and keyed by the
lock's hash so a changed lock gets a fresh environment. Workers talk to us through files: a JSON
request in, a JSON response out; conversion never touches the network once installed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.config import home
from edgekit.errors import BackendError, EdgekitError, ToolchainMissingError

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
LOCKS = HERE / "locks"
WORKERS = HERE / "workers"
NODE_DIR = HERE / "node"


@dataclass(frozen=True)
class Toolchain:
    name: str
    lock: str
    provides: tuple[str, ...]  # targets / sources this environment serves
    smoke_import: str  # python statement that proves the env works
    npm: bool = False  # also install the Node packages in NODE_DIR (TF.js validation)
    description: str = ""

    @property
    def lock_path(self) -> Path:
        return LOCKS / self.lock

    def digest(self) -> str:
        h = hashlib.sha256(self.lock_path.read_bytes())
        if self.npm:
            h.update((NODE_DIR / "package-lock.json").read_bytes())
        return h.hexdigest()[:12]

    @property
    def root(self) -> Path:
        return toolchains_dir() / f"{self.name}-{self.digest()}"

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def node_modules(self) -> Path:
        return self.root / "node" / "node_modules"

    def installed(self) -> bool:
        return (self.root / ".complete").exists()


TOOLCHAINS: dict[str, Toolchain] = {
    "tensorflow": Toolchain(
        name="tensorflow",
        lock="tensorflow.txt",
        provides=("tflite", "tfjs", "keras"),
        smoke_import="import onnx2tf, tensorflow, tf2onnx, ai_edge_litert",
        npm=True,
        description="onnx2tf + TensorFlow + tensorflowjs (--no-deps) + tf2onnx; Node @tensorflow/tfjs",
    ),
    "coreml": Toolchain(
        name="coreml",
        lock="coreml.txt",
        provides=("coreml", "torch"),
        smoke_import="import coremltools, torch, onnx, sklearn.cluster",
        description="coremltools + CPU torch + onnx2torch (no torchvision)",
    ),
}

# What users type -> the environment that provides it.
ALIASES = {"tflite": "tensorflow", "tfjs": "tensorflow", "keras": "tensorflow", "coreml": "coreml"}


def toolchains_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_TOOLCHAINS", home() / "toolchains"))


def resolve(name: str) -> Toolchain:
    key = ALIASES.get(name, name)
    if key not in TOOLCHAINS:
        raise EdgekitError(
            f"unknown toolchain {name!r}", hint=f"choose from {', '.join(sorted(ALIASES))}, all"
        )
    return TOOLCHAINS[key]


def require(name: str) -> Toolchain:
    tc = resolve(name)
    if not tc.installed():
        raise ToolchainMissingError(name)
    return tc


def _run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    log.info("running %s", " ".join(map(str, cmd)))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise EdgekitError(f"toolchain install step failed: {' '.join(map(str, cmd[:4]))} ...\n{tail}")


def install(name: str, force: bool = False) -> Toolchain:
    """Create the environment from its lock (idempotent: an installed one is kept).

    Built in place under its final name (venv scripts hard-code their interpreter path, and
    onnx2tf runs the `onnxsim` script); `.complete` is written last, so an interrupted install
    is never mistaken for a good one and is rebuilt from scratch next time.
    """
    tc = resolve(name)
    if tc.installed() and not force:
        return tc
    root = tc.root
    if root.exists():
        shutil.rmtree(root)
    _ensure(root.parent)
    try:
        _run([sys.executable, "-m", "venv", str(root / "venv")])
        pip = [str(tc.python), "-m", "pip", "--disable-pip-version-check", "-q"]
        _run([*pip, "install", "--no-deps", "-r", str(tc.lock_path)])
        _run([str(tc.python), "-c", tc.smoke_import], env=worker_env(root))
        if tc.npm:
            node = _ensure(root / "node")
            for f in ("package.json", "package-lock.json"):
                shutil.copy(NODE_DIR / f, node / f)
            _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=node)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    (root / ".complete").write_text(json.dumps({"lock": tc.digest(), "installed_at": time.time()}))
    return tc


def _ensure(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def worker_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    # onnx2tf runs `onnxsim` by name: without this env's bin/ first on PATH it silently skips
    # simplification and the input-shape override.
    env["PATH"] = f"{root / 'venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["TF_ENABLE_ONEDNN_OPTS"] = "0"  # else MatMul+Tanh fuses into an op tfjs lacks
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env["PYTHONNOUSERSITE"] = "1"
    env.pop("PYTHONPATH", None)
    return env


@dataclass
class WorkerResult:
    data: dict[str, Any]
    seconds: float
    log_tail: str = field(repr=False, default="")


def run_worker(toolchain: str, script: str, request: dict[str, Any], timeout: float = 1800) -> WorkerResult:
    """Run WORKERS/script in the toolchain's interpreter with a JSON request; return its JSON reply.

    A worker reports expected failures (unsupported op, bad input) in its reply as
    {"ok": false, "error": {...}}; a crash or sys.exit without a reply becomes BackendError.
    """
    tc = require(toolchain)
    with tempfile.TemporaryDirectory(prefix="edgekit-worker-") as tmp:
        req = Path(tmp) / "request.json"
        resp = Path(tmp) / "response.json"
        req.write_text(json.dumps(request))
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [str(tc.python), str(WORKERS / script), str(req), str(resp)],
                env=worker_env(tc.root),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise BackendError(f"{script} timed out after {timeout:.0f}s") from e
        seconds = time.perf_counter() - t0
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        if not resp.exists():
            raise BackendError(
                f"{script} exited with code {proc.returncode} without a result; last output:\n{tail}"
            )
        return WorkerResult(json.loads(resp.read_text()), seconds, tail)


def status() -> list[dict[str, Any]]:
    rows = []
    for tc in TOOLCHAINS.values():
        rows.append(
            {
                "name": tc.name,
                "provides": list(tc.provides),
                "installed": tc.installed(),
                "path": str(tc.root),
                "lock": tc.lock,
                "description": tc.description,
            }
        )
    return rows

"""Isolated, pinned, cached converter environments, and running worker scripts inside them.

The heavy stacks cannot share an environment with each other or with the user's (onnx2tf pins
tensorflow, onnx, onnxruntime and numpy exactly; tensorflowjs's declared deps break those pins;
the Core ML route needs torch without torchvision). Each toolchain is a venv built from a lock file
shipped with edgekit, installed with `--no-deps` so pip never re-resolves it, and keyed by the
lock's hash so a changed lock gets a fresh environment. Workers talk to us through files: a JSON
request in, a JSON response out; conversion never touches the network once installed.

By default each `run_worker` call is a fresh interpreter. Under `persistent_workers()` one
long-lived process per (toolchain, script) serves the calls instead (the TensorFlow import alone
costs ~5-8 s per call on a small machine); a worker that times out or crashes is killed and the
next call starts a new one. `time_limit()` bounds every worker call inside it by one deadline
(a per-target timeout), in either mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters.toolchains.install_lock import held, lock_path
from edgekit.config import home
from edgekit.errors import BackendError, EdgekitError, ToolchainMissingError

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
LOCKS = HERE / "locks"
WORKERS = HERE / "workers"
NODE_DIR = HERE / "node"
HASH_OPTION = re.compile(r" \\\n\s*--hash=sha256:[0-9a-f]{64}")  # as written by toolchains/hashlock.py


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
        # The pins make the environment; the --hash lines only vouch for the files, so adding
        # or refreshing them keeps an installed toolchain valid.
        h = hashlib.sha256(HASH_OPTION.sub("", self.lock_path.read_text()).encode())
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
    with held(lock_path(root)):
        # Another process may have built it while this one waited for the lock.
        if tc.installed() and not force:
            return tc
        _build(tc, root)
    return tc


def _build(tc: Toolchain, root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    _ensure(root.parent)
    try:
        _run([sys.executable, "-m", "venv", str(root / "venv")])
        pip = [str(tc.python), "-m", "pip", "--disable-pip-version-check", "-q"]
        # Every file must match a hash in the lock (toolchains/hashlock.py writes them).
        _run([*pip, "install", "--no-deps", "--require-hashes", "-r", str(tc.lock_path)])
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


class WorkerTimeoutError(BackendError):
    """A worker ran past its time limit and was killed."""


SERVE_FLAG = "--serve"  # workers/_worker.py: keep serving requests from stdin
_DEADLINE: ContextVar[float | None] = ContextVar("edgekit_worker_deadline", default=None)


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Every worker call inside shares one deadline `seconds` from now (None: no limit).

    Nested limits keep the earlier deadline. A call past it raises WorkerTimeoutError.
    """
    if seconds is None:
        yield
        return
    outer = _DEADLINE.get()
    mine = time.monotonic() + seconds
    token = _DEADLINE.set(mine if outer is None else min(outer, mine))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _effective_timeout(script: str, timeout: float) -> float:
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise WorkerTimeoutError(f"{script} timed out: the time limit was reached before it started")
    return min(timeout, left)


def _secs(t: float) -> str:
    return f"{t:.0f}s" if t >= 10 else f"{t:.1f}s"


def run_worker(toolchain: str, script: str, request: dict[str, Any], timeout: float = 1800) -> WorkerResult:
    """Run WORKERS/script in the toolchain's interpreter with a JSON request; return its JSON reply.

    A worker reports expected failures (unsupported op, bad input) in its reply as
    {"ok": false, "error": {...}}; a crash or sys.exit without a reply becomes BackendError,
    running out of time WorkerTimeoutError (a BackendError).
    """
    tc = require(toolchain)
    timeout = _effective_timeout(script, timeout)
    pool = _POOL
    if pool is not None and script not in pool.one_shot:
        return pool.get(tc, script).call(request, timeout)
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
            raise WorkerTimeoutError(f"{script} timed out after {_secs(timeout)}") from e
        seconds = time.perf_counter() - t0
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        if not resp.exists():
            raise BackendError(
                f"{script} exited with code {proc.returncode} without a result; last output:\n{tail}"
            )
        return WorkerResult(json.loads(resp.read_text()), seconds, tail)


class PersistentWorker:
    """One long-lived `python SCRIPT --serve` process answering requests one at a time.

    Requests and responses are files (as in the one-shot mode); a line on stdin says where they
    are and a line back says the response is written. The worker's output goes to a log file that
    is cut at each request, so a failure's tail is that request's output. On a timeout or crash
    the whole process group (the worker and anything it spawned, e.g. onnxsim) is killed; the
    next call starts a fresh process. After `max_requests` calls the process is recycled, bounding
    what a leaky tool can accumulate.
    """

    def __init__(
        self,
        python: Path | str,
        script: Path | str,
        env: dict[str, str] | None = None,
        max_requests: int | None = None,
    ):
        self.python, self.script, self.env = str(python), Path(script), env
        self.max_requests = max_requests
        self.name = self.script.name
        self._dir = Path(tempfile.mkdtemp(prefix=f"edgekit-{self.script.stem}-"))
        self._log = self._dir / "worker.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._served = 0
        self._lock = threading.Lock()
        self.starts = 0  # processes started so far (tests and the coverage runner read it)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self) -> subprocess.Popen[bytes]:
        with open(self._log, "ab") as log:  # O_APPEND: cutting the file from here stays safe
            self._proc = subprocess.Popen(
                [self.python, str(self.script), SERVE_FLAG],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=self.env,
                start_new_session=True,  # its own process group, killed as a whole
            )
        self._served = 0
        self.starts += 1
        return self._proc

    def call(self, request: dict[str, Any], timeout: float) -> WorkerResult:
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                proc = self._start()
            os.truncate(self._log, 0)
            req, resp = self._dir / "request.json", self._dir / "response.json"
            resp.unlink(missing_ok=True)
            req.write_text(json.dumps(request))
            t0 = time.perf_counter()
            try:
                assert proc.stdin is not None
                proc.stdin.write((json.dumps({"request": str(req), "response": str(resp)}) + "\n").encode())
                proc.stdin.flush()
                answered = self._wait_reply(proc, time.monotonic() + timeout)
            except BrokenPipeError:  # died before reading the request
                answered = False
            except TimeoutError:
                self.kill()
                raise WorkerTimeoutError(f"{self.name} timed out after {_secs(timeout)}") from None
            seconds = time.perf_counter() - t0
            tail = self._tail()
            if not answered or not resp.exists():
                try:
                    code: int | None = proc.wait(5)
                except subprocess.TimeoutExpired:  # closed its stdout but lingers
                    code = None
                self.kill()
                raise BackendError(
                    f"{self.name} exited with code {code} without a result; last output:\n{tail}"
                )
            self._served += 1
            if self.max_requests and self._served >= self.max_requests:
                self.close()
            return WorkerResult(json.loads(resp.read_text()), seconds, tail)

    @staticmethod
    def _wait_reply(proc: subprocess.Popen[bytes], deadline: float) -> bool:
        """True once the worker's reply line arrives, False if it died; TimeoutError past the deadline."""
        assert proc.stdout is not None
        fd, buf = proc.stdout.fileno(), b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return False
                buf += chunk
        return True

    def _tail(self, lines: int = 20) -> str:
        try:
            text = self._log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _close_pipes(proc)

    def close(self, grace: float = 10.0) -> None:
        """Ask the worker to finish (EOF on stdin); kill it if it does not within `grace` s."""
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        self.kill()

    def shutdown(self) -> None:
        self.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


class WorkerPool:
    """The persistent workers of one `persistent_workers()` block, one per (toolchain, script).

    Scripts in `one_shot` keep a fresh process per call (a handler not safe to call twice).
    """

    def __init__(self, max_requests: int | None = None, one_shot: Iterable[str] = ()):
        self.max_requests = max_requests
        self.one_shot = frozenset(one_shot)
        self.workers: dict[tuple[str, str], PersistentWorker] = {}
        self._lock = threading.Lock()

    def get(self, tc: Toolchain, script: str) -> PersistentWorker:
        with self._lock:
            key = (tc.name, script)
            if key not in self.workers:
                self.workers[key] = PersistentWorker(
                    tc.python, WORKERS / script, worker_env(tc.root), self.max_requests
                )
            return self.workers[key]

    def shutdown(self) -> None:
        for w in self.workers.values():
            w.shutdown()
        self.workers.clear()


_POOL: WorkerPool | None = None
_POOL_LOCK = threading.Lock()


@contextlib.contextmanager
def persistent_workers(max_requests: int | None = None, one_shot: Iterable[str] = ()) -> Iterator[WorkerPool]:
    """Inside, `run_worker` reuses one live process per (toolchain, script); all end on exit.

    `max_requests`: recycle a process after that many calls; `one_shot`: scripts that keep one
    process per call. Process-wide (backends may run in threads); a nested block reuses the outer
    pool.
    """
    global _POOL
    with _POOL_LOCK:
        outer = _POOL
        pool = outer or WorkerPool(max_requests, one_shot)
        _POOL = pool
    try:
        yield pool
    finally:
        if outer is None:
            with _POOL_LOCK:
                _POOL = None
            pool.shutdown()


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

"""Run ONNX models in ONNX Runtime as another x86 CPU class runs them, under QEMU user-mode emulation.

ONNX Runtime picks its integer kernels from CPUID at start-up (AVX-512 VNNI, AVX2, SSE4.1...), and
they do not all compute the same numbers (see INT8_STATIC in onnx.py). `qemu-x86_64 -cpu Haswell`
runs this same Python with an emulated CPUID and instruction set, so ORT takes that class's code
path for real. QEMU 7.2's TCG emulates up to AVX2 (no AVX-512, no AVX-VNNI), which covers the classes
that differ from a VNNI build machine.

The parent (`run`) writes a job file and starts this file as a script, under QEMU or natively; the
child (`_child`) imports only numpy and onnxruntime, so emulated start-up stays a few seconds.
"""

from __future__ import annotations

import functools
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QEMU_BINARIES = ("qemu-x86_64-static", "qemu-x86_64")  # Debian: qemu-user-static / qemu-user


@dataclass(frozen=True)
class CpuClass:
    name: str
    qemu_cpu: str | None  # QEMU -cpu model; None: this host, natively
    description: str
    # CPUID flags (numpy's names) the emulated CPU must report, so a QEMU that silently drops or
    # adds a feature cannot pass for this class.
    expect: tuple[tuple[str, bool], ...] = ()


CPU_CLASSES = {
    c.name: c
    for c in (
        CpuClass("host", None, "this machine"),
        CpuClass(
            "avx2",
            "Haswell-noTSX",
            "AVX2 without VNNI (Haswell..Zen 3): U8S8 GEMM on VPMADDUBSW, int16 pair sums saturate",
            # numpy does not report AVX-VNNI (VEX); QEMU 7.2 has none, and the saturation probe in
            # tests/converters/test_int8_cpu_classes.py shows at kernel level that no VNNI runs.
            (("AVX2", True), ("AVX512F", False), ("AVX512BW", False), ("AVX512VNNI", False)),
        ),
        CpuClass(
            "avx",
            "SandyBridge",
            "AVX without AVX2: ORT's SSE4.1 integer kernels (widen to int16, no saturation)",
            (("AVX", True), ("AVX2", False), ("AVX512F", False)),
        ),
    )
}


@dataclass
class Run:
    cpu: CpuClass
    features: dict[str, bool]  # CPUID flags as the child process saw them
    outputs: list[dict[str, np.ndarray]]  # per model, output name -> array

    def mismatched_features(self) -> list[str]:
        return [
            f"{k}={self.features.get(k)} (want {v})" for k, v in self.cpu.expect if self.features.get(k) != v
        ]


def qemu() -> str | None:
    """The QEMU user-mode binary, or None where it cannot emulate these classes (see `unavailable`)."""
    return None if unavailable() else next(p for b in QEMU_BINARIES if (p := shutil.which(b)))


@functools.cache
def unavailable() -> str | None:
    """Why the emulated classes cannot run here, or None."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"host is {platform.machine()}: this Python is not an x86-64 binary QEMU could run"
    binary = next((p for b in QEMU_BINARIES if (p := shutil.which(b))), None)
    if binary is None:
        return "no qemu-x86_64-static (Debian qemu-user-static; `make system-deps` installs it)"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    if not m or (int(m[1]), int(m[2])) < (7, 2):
        return f"{binary} is {m[0] if m else 'of unknown version'}; TCG emulates AVX2 only since QEMU 7.2"
    return None


def run(
    cpu: CpuClass,
    jobs: list[tuple[Path, dict[str, np.ndarray]]],
    session_config: dict[str, str] | None = None,
    batch: int = 64,
    timeout: float = 600,
) -> Run:
    """Run each (model, feeds) job on `cpu`, one ORT thread; feeds are batches along axis 0."""
    cmd: list[str] = []
    if cpu.qemu_cpu:
        binary = qemu()
        if binary is None:
            raise RuntimeError(
                f"no QEMU user-mode emulator ({' or '.join(QEMU_BINARIES)}) for class {cpu.name}"
            )
        cmd = [binary, "-cpu", cpu.qemu_cpu]
    with tempfile.TemporaryDirectory(prefix="edgekit-cpu-") as tmp:
        d = Path(tmp)
        spec = []
        for i, (model, feeds) in enumerate(jobs):
            np.savez(d / f"in{i}.npz", **feeds)
            spec.append(
                {"model": str(model), "inputs": str(d / f"in{i}.npz"), "outputs": str(d / f"out{i}.npz")}
            )
        job = d / "job.json"
        job.write_text(json.dumps({"jobs": spec, "session_config": session_config or {}, "batch": batch}))
        proc = subprocess.run(
            [*cmd, sys.executable, str(Path(__file__).resolve()), str(job)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            # QEMU prints one "TCG doesn't support requested feature" line per absent flag: noise.
            err = [ln for ln in proc.stderr.splitlines() if "TCG doesn't support" not in ln]
            raise RuntimeError(f"class {cpu.name}: child exited {proc.returncode}: {' | '.join(err[-5:])}")
        features = json.loads((d / "features.json").read_text())
        outputs = []
        for s in spec:
            with np.load(s["outputs"]) as z:
                outputs.append({k: z[k] for k in z.files})
    return Run(cpu, features, outputs)


def _cpu_features() -> dict[str, bool]:
    """CPUID as this process sees it (under QEMU: the emulated CPU); numpy reads it at import."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return {k: bool(v) for k, v in __cpu_features__.items()}


def _child(job_path: Path) -> None:
    import onnxruntime as ort

    job = json.loads(job_path.read_text())
    (job_path.parent / "features.json").write_text(json.dumps(_cpu_features()))
    for spec in job["jobs"]:
        opts = ort.SessionOptions()
        # One thread, sequential: the outputs must not depend on how work is split between cores.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        for k, v in job["session_config"].items():
            opts.add_session_config_entry(k, v)
        sess = ort.InferenceSession(spec["model"], opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        with np.load(spec["inputs"]) as z:
            feeds = {k: z[k] for k in z.files}
        n = len(next(iter(feeds.values())))
        step = job["batch"]
        parts = [sess.run(names, {k: v[i : i + step] for k, v in feeds.items()}) for i in range(0, n, step)]
        np.savez(
            spec["outputs"], **{name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(names)}
        )


if __name__ == "__main__":
    _child(Path(sys.argv[1]))

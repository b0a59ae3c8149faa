"""Core ML target: mlprogram `.mlpackage` (iOS 16+) per mode, built in the isolated 'coreml' toolchain.

The route is ONNX -> onnx2torch -> TorchScript -> coremltools (coremltools has no ONNX frontend
since 6.0); the work happens in `toolchains/workers/coreml_worker.py`, one subprocess for all
modes. Core ML cannot predict on Linux, so each result carries static checks of the saved
package and *simulated* outputs (the package's weights, decompressed, run in the torch
intermediate), labelled as such in `runtime_note` -- never presented as Core ML runtime numerics.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from converters.backends.base import ExportJob, ExportResult, timeout_of
from converters.toolchains import manager
from edgekit.errors import EdgekitError, ToolchainMissingError
from edgekit.formats import TARGETS

log = logging.getLogger(__name__)

TOOLCHAIN = "coreml"
WORKER = "coreml_worker.py"


class CoreMLBackend:
    target = "coreml"

    def export(self, job: ExportJob) -> list[ExportResult]:
        try:
            reply = manager.run_worker(TOOLCHAIN, WORKER, self.request(job), timeout=timeout_of(job))
        except EdgekitError as e:  # toolchain missing (hint names the install command), crash, timeout
            kind = (
                "toolchain_missing"
                if isinstance(e, ToolchainMissingError)
                else "timeout"
                if "timed out" in str(e)
                else "backend_crash"
            )
            return [ExportResult(m, error=str(e), error_kind=kind) for m in job.modes]
        data = reply.data
        if not data.get("ok"):
            return _failed_all(job.modes, data.get("error") or {}, reply.log_tail)
        versions = {k: str(v) for k, v in data.get("versions", {}).items()}
        by_mode = {r["mode"]: _result(r, versions) for r in data.get("results", [])}
        return [
            by_mode.get(m)
            or ExportResult(m, error=f"coreml: worker returned nothing for {m}", error_kind="backend_crash")
            for m in job.modes
        ]

    @staticmethod
    def request(job: ExportJob) -> dict[str, Any]:
        """The worker's JSON request: paths, the card's I/O and the per-target options."""
        sim_dir = Path(job.options.get("work_dir") or job.out_dir) / "coreml-simulated"
        return {
            "model": str(job.model_path),
            "out_dir": str(job.out_dir),
            "sim_dir": str(sim_dir),
            "name": _safe_name(job.card.name),
            "modes": list(job.modes),
            "mode_args": {m: dict(TARGETS["coreml"].modes[m].args) for m in job.modes},
            "io_dtypes": dict(TARGETS["coreml"].io_dtypes),
            "inputs_npz": str(job.inputs_npz),
            # dims as this target takes them: ints, None (dynamic batch) or [lo, hi] ranges
            "inputs": [_tensor(t, job.options.get("input_shapes", {}).get(t.name)) for t in job.card.inputs],
            "batchable": bool(job.options.get("batchable")),
            "outputs": [_tensor(t) for t in job.card.outputs],
            "options": {k: job.options[k] for k in ("max_batch", "weight_threshold") if k in job.options},
        }


def _tensor(spec: Any, dims: list | None = None) -> dict[str, Any]:
    d = asdict(spec)
    return {"name": d["name"], "shape": dims if dims is not None else d["shape"], "dtype": d["dtype"]}


def _safe_name(name: str) -> str:
    # the package name becomes a directory and an Xcode class name: keep it plain
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"


def _result(r: dict[str, Any], versions: dict[str, str]) -> ExportResult:
    if r.get("error"):
        return ExportResult(
            r["mode"], error=r["error"], error_kind=r.get("error_kind") or "backend_crash", versions=versions
        )
    checks = r.get("checks", {})
    # a package whose I/O differs from the card would break every app that trusts the card
    mismatch = None if checks.get("io_matches_card", True) else "; ".join(checks.get("io_mismatches", []))
    return ExportResult(
        r["mode"],
        files=[Path(r["path"])],
        error=f"coreml {r['mode']}: spec does not match the model card: {mismatch}" if mismatch else None,
        error_kind="spec_mismatch" if mismatch else None,
        simulated_outputs=Path(r["simulated_outputs"]),
        runtime_note=r.get("runtime_note"),
        checks=checks,
        versions=versions,
        seconds=float(r.get("seconds", 0.0)),
    )


def _failed_all(modes: list[str], err: dict[str, Any], log_tail: str) -> list[ExportResult]:
    """A whole-model failure (unsupported op, crash) fails every mode with the same message."""
    kind = err.get("kind", "backend_crash")
    msg = err.get("message") or "coreml worker failed"
    if kind == "backend_crash":
        log.debug("coreml worker crashed: %s\n%s", err.get("traceback", ""), log_tail)
    checks = {k: err[k] for k in ("op", "node", "target", "all") if k in err}
    return [ExportResult(m, error=msg, error_kind=kind, checks=dict(checks)) for m in modes]

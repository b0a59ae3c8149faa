"""TFLite (LiteRT) backend: onnx2tf in the isolated tensorflow toolchain, all precisions in one run.

onnx2tf's run also writes the TensorFlow SavedModel the TF.js backend converts, so the run is
cached in the pipeline's work_dir keyed by the model's sha256 and the input layout: a run that asks
for tflite and tfjs converts once (tflite first, asking for every precision it needs; tfjs then
finds the SavedModel).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converters.backends.base import ExportJob, ExportResult, timeout_of
from converters.toolchains import manager
from edgekit.errors import BackendError, UnsupportedOperatorError
from edgekit.formats import TARGETS
from edgekit.trust.artifact import sha256_file

TARGET = TARGETS["tflite"]  # mode -> args {"onnx2tf": precision to ask for, "suffix": file suffix}


@dataclass
class Onnx2tfRun:
    """What one onnx2tf run produced (possibly found in the cache)."""

    data: dict[str, Any]  # the worker's reply: files, saved_model, output_names, probe, versions
    seconds: float  # wall time spent here (0 when served from the cache)
    error: dict[str, Any] | None = None  # the worker's structured error when it failed

    @property
    def ok(self) -> bool:
        return self.error is None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    # Backends of one run are called in order, but two runs may share a work_dir.
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def layout_of(job: ExportJob) -> str:
    return "nhwc" if str(job.options.get("layout", "nchw")).lower() == "nhwc" else "nchw"


def run_onnx2tf(job: ExportJob, precisions: set[str], work_dir: Path) -> Onnx2tfRun:
    """onnx2tf for `job.model_path`, reusing a cached run in work_dir when it has what is asked."""
    layout = layout_of(job)
    cache = work_dir / "onnx2tf" / f"{sha256_file(job.model_path)[:20]}-{layout}"
    calib_sha = (
        sha256_file(job.calibration_npz) if job.calibration_npz and "full_integer" in precisions else None
    )
    manifest = cache / "manifest.json"
    with _locked(cache):
        old = json.loads(manifest.read_text()) if manifest.exists() else None
        if old and old.get("ok"):
            have = set(old["precisions"])
            calib_ok = calib_sha is None or old.get("calib_sha") == calib_sha
            if precisions <= have and calib_ok:
                return Onnx2tfRun(old["data"], 0.0)
            # Convert again with the union, so the cache keeps serving earlier askers.
            precisions = precisions | (have if calib_ok else have - {"full_integer"})
        if "full_integer" in precisions and not job.calibration_npz:
            raise BackendError("tflite int8 needs calibration data (job.calibration_npz)")
        request = {
            "model": str(job.model_path),
            "out_dir": str(cache / "out"),
            "precisions": sorted(precisions),
            "layout": layout,
            "input_layouts": {t.name: t.layout for t in job.card.inputs},
            "calibration_npz": str(job.calibration_npz) if "full_integer" in precisions else None,
            "probe_npz": str(job.inputs_npz) if job.inputs_npz and Path(job.inputs_npz).exists() else None,
            "batchable": bool(job.options.get("batchable")),
        }
        try:
            res = manager.run_worker("tensorflow", "onnx2tf_worker.py", request, timeout=timeout_of(job))
        except BackendError as e:  # the worker died (TF's int8 calibrator can segfault) or timed out
            manifest.unlink(missing_ok=True)
            kind = "timeout" if "timed out" in str(e) else "backend_crash"
            return Onnx2tfRun({}, 0.0, error={"kind": kind, "message": str(e).splitlines()[0]})
        data = res.data
        if not data.get("ok"):
            manifest.unlink(missing_ok=True)
            return Onnx2tfRun(
                {}, res.seconds, error=data.get("error") or {"kind": "backend_crash", "message": res.log_tail}
            )
        manifest.write_text(
            json.dumps({"ok": True, "precisions": sorted(precisions), "calib_sha": calib_sha, "data": data})
        )
        return Onnx2tfRun(data, res.seconds)


def error_message(err: dict[str, Any], target: str) -> tuple[str, str]:
    """(message, error_kind) for a worker error, naming op, node and target for unsupported ops."""
    kind = err.get("kind", "backend_crash")
    if kind == "unsupported_op":
        detail = err.get("message", "")
        return str(
            UnsupportedOperatorError(err.get("op") or "?", err.get("node") or "?", target, detail)
        ), kind
    msg = err.get("message", "conversion failed")
    return f"{target}: {msg}", kind


@contextlib.contextmanager
def work_dir_for(job: ExportJob) -> Iterator[Path]:
    """The pipeline's shared work_dir, or a private temporary one when called alone."""
    wd = job.options.get("work_dir")
    if wd:
        yield Path(wd)
        return
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-onnx2tf-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def artifact_stem(job: ExportJob) -> str:
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in (job.card.name or "model"))
    return name or "model"


class TFLiteBackend:
    target = "tflite"

    def export(self, job: ExportJob) -> list[ExportResult]:
        modes = [m for m in job.modes if m in TARGET.modes]
        results = {m: ExportResult(mode=m) for m in job.modes}
        for m in job.modes:
            if m not in TARGET.modes:
                results[m].error, results[m].error_kind = f"tflite: unknown mode {m}", "unsupported_mode"
        if not modes:
            return list(results.values())
        precisions = {TARGET.modes[m].args["onnx2tf"] for m in modes}
        with work_dir_for(job) as wd:
            run = run_onnx2tf(job, precisions, wd)
            int8_error = None
            if not run.ok and "full_integer" in precisions and len(precisions) > 1:
                # full-integer calibration fails on its own (int64 inputs, loops, a crashing
                # calibrator): it costs only the int8 row, the float files are converted again
                int8_error = error_message(run.error or {}, self.target)
                if (run.error or {}).get("kind") != "timeout":
                    precisions = precisions - {"full_integer"}
                    run = run_onnx2tf(job, precisions, wd)
            share = run.seconds / len(modes)
            if not run.ok:
                msg, kind = error_message(run.error or {}, self.target)
                for m in modes:
                    results[m].error, results[m].error_kind, results[m].seconds = msg, kind, share
                return list(results.values())
            job.out_dir.mkdir(parents=True, exist_ok=True)
            data = run.data
            onnx_outputs = list(data["outputs"])
            for m in modes:
                r = results[m]
                p = TARGET.modes[m].args["onnx2tf"]
                if p not in data["files"] and int8_error:
                    r.error, r.error_kind, r.seconds = f"int8: {int8_error[0]}", int8_error[1], share
                    continue
                dest = job.out_dir / f"{artifact_stem(job)}_{TARGET.modes[m].args['suffix']}.tflite"
                shutil.copyfile(data["files"][p], dest)
                r.files = [dest]
                r.seconds = share
                r.versions = dict(data.get("versions", {}))
                names = data["output_names"][p]
                r.output_names = names
                r.output_perms = dict(data.get("probe", {}).get("output_perms") or {})
                r.checks = {
                    "layout": layout_of(job).upper(),
                    "onnx2tf_probe": data.get("probe", {}),
                    "output_order": names if names != onnx_outputs else "onnx",
                    "output_perms": r.output_perms,
                }
                if data.get("probe", {}).get("fixed_batch"):
                    r.checks["fixed_batch"] = data["probe"]["fixed_batch"]
        return list(results.values())

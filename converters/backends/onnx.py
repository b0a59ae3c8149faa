"""ONNX target: fp32 / fp16 / int8-dynamic / int8-static `.onnx`, each also in ORT format."""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
from pathlib import Path

from converters.backends.base import ExportJob, ExportResult
from converters.data import load_stack
from converters.quantize import onnx as q
from edgekit.formats import precision

log = logging.getLogger(__name__)


class OnnxBackend:
    target = "onnx"

    def export(self, job: ExportJob) -> list[ExportResult]:
        return [self._one(job, mode) for mode in job.modes]

    def _one(self, job: ExportJob, mode: str) -> ExportResult:
        dest = job.out_dir / precision("onnx", mode).args["file"]
        t0 = time.perf_counter()
        try:
            if mode == "none":
                shutil.copyfile(job.model_path, dest)
            elif mode == "fp16":
                q.to_fp16(job.model_path, dest)
            elif mode == "int8-dynamic":
                q.to_int8_dynamic(job.model_path, dest)
            elif mode == "int8":
                assert job.calibration_npz is not None  # the pipeline refuses int8 without it
                q.to_int8_static(job.model_path, dest, load_stack(job.calibration_npz))
            seconds = time.perf_counter() - t0  # the raw tool's job; the ORT companion is extra
            ort = _to_ort_format(dest)
        except Exception as e:
            log.debug("onnx %s failed", mode, exc_info=True)
            return ExportResult(
                mode,
                error=f"onnx {mode}: {type(e).__name__}: {e}",
                error_kind="backend_crash",
                seconds=time.perf_counter() - t0,
            )
        return ExportResult(
            mode,
            files=[dest],
            companions=[ort] if ort else [],
            versions=_versions(),
            seconds=seconds,
            checks={"companion_seconds": round(time.perf_counter() - t0 - seconds, 3)},
        )


def _to_ort_format(model: Path) -> Path | None:
    """ORT format for onnxruntime mobile / minimal builds; a failure here does not sink the .onnx."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    staging = model.parent / f".ort-{model.stem}"
    staging.mkdir(exist_ok=True)
    try:
        tmp_model = staging / model.name
        shutil.copyfile(model, tmp_model)
        # The converter prints progress to stdout, which would corrupt `--json` output.
        with contextlib.redirect_stdout(io.StringIO()), _quiet("ort_format_model"):
            convert_onnx_models_to_ort(
                tmp_model, output_dir=staging, optimization_styles=[OptimizationStyle.Fixed]
            )
        produced = staging / f"{model.stem}.ort"
        if not produced.exists():
            return None
        dest = model.with_suffix(".ort")
        shutil.move(produced, dest)
        return dest
    except Exception as e:
        log.warning("ORT format conversion failed for %s: %s", model.name, e)
        return None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _quiet(logger_name: str):
    lg = logging.getLogger(logger_name)
    old = lg.level
    lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lg.setLevel(old)


def _versions() -> dict[str, str]:
    import onnx
    import onnxconverter_common
    import onnxruntime

    return {
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxconverter-common": onnxconverter_common.__version__,
    }

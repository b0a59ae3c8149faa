"""TF.js backend: the SavedModel onnx2tf writes -> tensorflowjs graph models (one folder per mode).

ONNX -> TF goes through the same cached onnx2tf run as the TFLite backend (see tflite.py), so a
run asking for both converts once. Modes: fp32, float16 and uint8 affine weight quantization;
compute stays float32 in TF.js. Weights are sharded (default 4 MB, browser-cache friendly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from converters.backends.base import ExportJob, ExportResult, timeout_of
from converters.backends.tflite import error_message, layout_of, run_onnx2tf, work_dir_for
from converters.toolchains import manager
from edgekit.errors import BackendError
from edgekit.formats import TARGETS

TARGET = TARGETS["tfjs"]  # mode -> args {"quantize": tensorflowjs weight quantization, "folder"}
DEFAULT_SHARD_BYTES = 4 * 1024 * 1024


def signature_output_names(model_json: Path, onnx_outputs: list[str]) -> list[str]:
    """ONNX output names in the order TF.js lists the model's outputs (signature order).

    tensorflowjs keeps the SavedModel signature keys, which onnx2tf sets to the ONNX names or to
    `output_<k>` (the k-th ONNX output).
    """
    sig = json.loads(model_json.read_text()).get("signature", {}).get("outputs", {})
    names = []
    for key in sig:
        if key in onnx_outputs:
            names.append(key)
        elif key.startswith("output_") and key[7:].isdigit() and int(key[7:]) < len(onnx_outputs):
            names.append(onnx_outputs[int(key[7:])])
        else:
            return list(onnx_outputs)
    return names if len(names) == len(onnx_outputs) else list(onnx_outputs)


def rename_signature_outputs(model_json: Path, names: list[str]) -> None:
    """Key the signature outputs by their ONNX names, so TF.js (browser or Node) reports
    `model.outputs` as `logits` rather than `output_0`: the artifact carries its own mapping."""
    manifest = json.loads(model_json.read_text())
    sig = manifest.get("signature", {}).get("outputs")
    if not sig or len(sig) != len(names) or list(sig) == names:
        return
    manifest["signature"]["outputs"] = dict(zip(names, sig.values(), strict=True))
    model_json.write_text(json.dumps(manifest))


class TfjsBackend:
    target = "tfjs"

    def export(self, job: ExportJob) -> list[ExportResult]:
        results = {m: ExportResult(mode=m) for m in job.modes}
        modes = [m for m in job.modes if m in TARGET.modes]
        for m in job.modes:
            if m not in TARGET.modes:
                results[m].error, results[m].error_kind = f"tfjs: unsupported mode {m}", "unsupported_mode"
        if not modes:
            return list(results.values())
        with work_dir_for(job) as wd:
            run = run_onnx2tf(job, {"float32"}, wd)
            if not run.ok:
                msg, kind = error_message(run.error or {}, self.target)
                for m in modes:
                    r = results[m]
                    r.error, r.error_kind, r.seconds = msg, kind, run.seconds / len(modes)
                return list(results.values())
            self._convert(job, run.data, run.seconds, modes, results)
        return list(results.values())

    def _convert(
        self,
        job: ExportJob,
        o2t: dict[str, Any],
        o2t_seconds: float,
        modes: list[str],
        results: dict[str, ExportResult],
    ) -> None:
        shard = int(job.options.get("shard_bytes", DEFAULT_SHARD_BYTES))
        request = {
            "saved_model": o2t["saved_model"],
            "shard_bytes": shard,
            "jobs": {
                m: {
                    "out_dir": str(job.out_dir / TARGET.modes[m].args["folder"]),
                    "quantize": TARGET.modes[m].args["quantize"],
                }
                for m in modes
            },
        }
        try:
            res = manager.run_worker("tensorflow", "tfjs_worker.py", request, timeout=timeout_of(job))
        except BackendError as e:
            for m in modes:
                kind = "timeout" if "timed out" in str(e) else "backend_crash"
                results[m].error, results[m].error_kind = f"tfjs: {e}", kind
            return
        if not res.data.get("ok"):
            err = res.data.get("error", {})
            msg, kind = error_message(err, self.target)
            for m in modes:
                results[m].error, results[m].error_kind = msg, kind
            return
        versions = {**o2t.get("versions", {}), **res.data.get("versions", {})}
        # Worker start-up (TensorFlow import) and a fresh onnx2tf run are shared by the modes.
        per_mode = {m: v.get("seconds", 0.0) for m, v in res.data["results"].items()}
        overhead = (res.seconds - sum(per_mode.values()) + o2t_seconds) / len(modes)
        for m in modes:
            r, out = results[m], res.data["results"].get(m, {})
            r.seconds = per_mode.get(m, 0.0) + overhead
            if "error" in out:
                r.error, r.error_kind = error_message(out["error"], self.target)
                continue
            r.files = [Path(f) for f in out["files"]]
            r.versions = versions
            r.output_names = signature_output_names(r.files[0], list(o2t["outputs"]))
            rename_signature_outputs(r.files[0], r.output_names)
            r.output_perms = dict(o2t.get("probe", {}).get("output_perms") or {})
            r.checks = {
                "format": "tfjs_graph_model",
                "weight_quantization": TARGET.modes[m].args["quantize"] or "none",
                "shards": len(r.files) - 1,
                "shard_bytes": shard,
                "layout": layout_of(job).upper(),
                "onnx2tf_probe": o2t.get("probe", {}),
                "output_perms": r.output_perms,
            }
            if o2t.get("probe", {}).get("fixed_batch"):
                r.checks["fixed_batch"] = o2t["probe"]["fixed_batch"]

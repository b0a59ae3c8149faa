"""TensorFlow SavedModel (written by onnx2tf) -> TF.js graph models, one per mode (tensorflow toolchain).

Request: {"saved_model": dir, "jobs": {mode: {"out_dir": dir, "quantize": null|"float16"|"uint8"}},
          "shard_bytes": int}
Reply:   {"results": {mode: {"files": [model.json, shards...], "seconds": float} | {"error": {...}}},
          "versions": {...}}

tensorflowjs is installed with --no-deps: its SavedModel path never uses tensorflow_decision_forests
or the JAX converter, but imports both unconditionally, so they are stubbed when absent. `jax`
itself is not stubbed: Keras 3 probes for it and a fake module would confuse it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any

from _worker import WorkerError, captured, main, tail, versions


def _stub_unused_imports() -> None:
    # sys.modules first: find_spec raises on a module without __spec__ (our stub, on a second
    # request in a persistent worker)
    if (
        "tensorflow_decision_forests" not in sys.modules
        and importlib.util.find_spec("tensorflow_decision_forests") is None
    ):
        sys.modules["tensorflow_decision_forests"] = types.ModuleType("tensorflow_decision_forests")
    try:
        import tensorflowjs.converters.jax_conversion  # noqa: F401
    except ImportError:
        stub = types.ModuleType("tensorflowjs.converters.jax_conversion")

        def convert_jax(*_a: Any, **_k: Any) -> None:
            raise RuntimeError("JAX conversion is not available in the edgekit toolchain")

        stub.convert_jax = convert_jax  # type: ignore[attr-defined]
        sys.modules["tensorflowjs.converters.jax_conversion"] = stub


def _files(out: Path) -> list[str]:
    manifest = json.loads((out / "model.json").read_text())
    shards = [p for group in manifest.get("weightsManifest", []) for p in group["paths"]]
    return [str(out / "model.json"), *(str(out / s) for s in shards)]


def _error(exc: BaseException, log: str) -> dict[str, Any]:
    text = f"{exc}"
    m = re.search(r"Unsupported Ops in the model[^\n]*\n\s*(.+)", text + "\n" + log)
    if m:
        ops = [o.strip() for o in m.group(1).split(",") if o.strip()]
        return {
            "kind": "unsupported_op",
            "message": f"tfjs: TensorFlow.js has no kernel for TensorFlow op(s) {', '.join(ops)} "
            "(produced by onnx2tf from the ONNX graph)",
            "op": ops[0] if ops else None,
            "log": tail(log),
        }
    return {
        "kind": "backend_crash",
        "message": f"tensorflowjs failed: {type(exc).__name__}: {text}"[:2000],
        "log": tail(log),
    }


def handle(req: dict[str, Any]) -> dict[str, Any]:
    _stub_unused_imports()
    from tensorflowjs.converters.tf_saved_model_conversion_v2 import convert_tf_saved_model

    saved = req["saved_model"]
    if not Path(saved, "saved_model.pb").exists():
        raise WorkerError("bad_input", f"no SavedModel in {saved}")
    results: dict[str, Any] = {}
    for mode, job in req["jobs"].items():
        out = Path(job["out_dir"])
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        qmap = {job["quantize"]: ["*"]} if job.get("quantize") else None
        t0 = time.perf_counter()
        with captured() as log:
            try:
                convert_tf_saved_model(
                    saved,
                    str(out),
                    signature_def="serving_default",
                    saved_model_tags="serve",
                    quantization_dtype_map=qmap,
                    weight_shard_size_bytes=int(req.get("shard_bytes", 4 * 1024 * 1024)),
                )
                results[mode] = {"files": _files(out), "seconds": time.perf_counter() - t0}
            except (Exception, SystemExit) as e:
                results[mode] = {"error": _error(e, log.getvalue())}
    return {"results": results, "versions": versions("tensorflowjs", "tensorflow")}


if __name__ == "__main__":
    main(handle)

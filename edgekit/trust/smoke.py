"""The on-device smoke test carried in a manifest: a golden input and the expected outputs.

A digest of the outputs alone cannot work: float outputs differ in the last bits between
runtimes, and an int8 artifact differs by ~1e-2 from the fp32 reference. So the manifest
carries the reference outputs themselves plus a tolerance per artifact precision:

smoke_test = {
  "inputs":  {name: {"dtype": "float32", "shape": [1, 1, 8, 8], "data_b64": "..."}},
  "outputs": {name: {"dtype": ..., "shape": ..., "data_b64": ...}},   # the fp32 reference
  "outputs_sha256": hex,   # digest of the canonical "outputs" object, for logs and identity
  "tolerance": {"default": {"atol": 1e-3, "min_cosine": 0.99999},
                "int8-static": {...}, "full-int8": {...}, ...}       # keyed by precision label
}

An output passes when its shape matches and (max |a - b| <= atol OR cosine >= min_cosine):
atol catches near-zero outputs where cosine is meaningless, cosine tolerates the uniform scale
error of quantization. Everything is signed with the manifest, so the reference is trusted.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

from edgekit.formats import smoke_tolerances
from edgekit.trust.canonical import canonical_json

# label -> {atol, min_cosine}: the conversion's parity table (edgekit/formats.py), so an artifact
# that passed `edgekit convert` is judged on the box by the same numbers.
DEFAULT_TOLERANCE: dict[str, dict[str, float]] = smoke_tolerances()


def encode_tensor(array: Any) -> dict[str, Any]:
    import numpy as np

    a = np.ascontiguousarray(array)
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data_b64": base64.b64encode(a.tobytes()).decode()}


def decode_tensor(doc: dict[str, Any]) -> Any:
    import numpy as np

    data = base64.b64decode(doc["data_b64"])
    return np.frombuffer(data, dtype=np.dtype(doc["dtype"])).reshape(doc["shape"]).copy()


def build_smoke_test(
    inputs: dict[str, Any], outputs: dict[str, Any], tolerance: dict[str, dict[str, float]] | None = None
) -> dict[str, Any]:
    enc_out = {k: encode_tensor(v) for k, v in outputs.items()}
    return {
        "inputs": {k: encode_tensor(v) for k, v in inputs.items()},
        "outputs": enc_out,
        "outputs_sha256": hashlib.sha256(canonical_json(enc_out)).hexdigest(),
        "tolerance": tolerance or DEFAULT_TOLERANCE,
    }


def smoke_inputs(smoke: dict[str, Any]) -> dict[str, Any]:
    """The golden inputs as numpy arrays, ready for the runtime."""
    return {k: decode_tensor(v) for k, v in smoke["inputs"].items()}


@dataclass
class SmokeResult:
    ok: bool
    max_abs_error: float
    min_cosine: float
    detail: str = ""


def check_smoke_outputs(
    smoke: dict[str, Any], outputs: dict[str, Any], precision: str = "fp32"
) -> SmokeResult:
    """Compare what the artifact produced on the golden input with the signed reference.

    `outputs` is keyed by output name; quantized files that lost their names (TFLite's
    `output_0`...) may be passed in reference order under any names when counts match.
    """
    import numpy as np

    tol_table = smoke.get("tolerance") or DEFAULT_TOLERANCE
    tol = tol_table.get(precision) or tol_table.get("default") or DEFAULT_TOLERANCE["default"]
    expected = {k: decode_tensor(v) for k, v in smoke["outputs"].items()}
    if set(outputs) != set(expected):
        if len(outputs) != len(expected):
            return SmokeResult(False, float("inf"), -1.0, f"expected outputs {sorted(expected)}")
        outputs = dict(zip(expected, outputs.values(), strict=True))
    worst_err, worst_cos = 0.0, 1.0
    for name, ref in expected.items():
        got = np.asarray(outputs[name])
        if got.shape != ref.shape:
            return SmokeResult(False, float("inf"), -1.0, f"{name}: shape {got.shape} != {ref.shape}")
        a, b = got.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
        err = float(np.max(np.abs(a - b))) if a.size else 0.0
        na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
        cos = float(a @ b / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
        if not np.all(np.isfinite(a)):
            return SmokeResult(False, float("inf"), -1.0, f"{name}: non-finite output")
        worst_err, worst_cos = max(worst_err, err), min(worst_cos, cos)
        if not (err <= tol["atol"] or cos >= tol["min_cosine"]):
            return SmokeResult(False, worst_err, worst_cos, f"{name}: max abs {err:.3g}, cosine {cos:.6f}")
    return SmokeResult(True, worst_err, worst_cos)

"""A hand-made `edgekit convert` output directory: tiny ONNX model, model_card.json, report.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def tiny_onnx(path: Path, scale: float = 1.0) -> None:
    """y = softmax(x @ W * scale): input x float32 [N, 4], output y float32 [N, 3]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0) * scale
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["y"], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def make_convert_output(dest: Path, name: str = "tiny", scale: float = 1.0) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    onnx_file = dest / f"{name}.onnx"
    tiny_onnx(onnx_file, scale)
    # A second, multi-file artifact (like TF.js): packed into one tar by `fleet publish`.
    tfjs = dest / "tfjs"
    tfjs.mkdir(exist_ok=True)
    (tfjs / "model.json").write_text(json.dumps({"format": "graph-model", "scale": scale}))
    (tfjs / "group1-shard1of1.bin").write_bytes(np.float32(scale).tobytes() * 16)
    card = {
        "name": name,
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4], "layout": None}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 3], "layout": None}],
        "task": "classification",
        "labels": ["a", "b", "c"],
        "preprocessing": {},
        "source": {},
        "opset": 17,
    }
    (dest / "model_card.json").write_text(json.dumps(card, indent=2))
    data = onnx_file.read_bytes()

    def entry(rel: str) -> dict:
        blob = (dest / rel).read_bytes()
        return {"path": rel, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}

    artifacts = [
        {
            "target": "onnx",
            "precision": "fp32",
            "files": [entry(onnx_file.name)],
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "status": "ok",
        },
        {
            "target": "browser",
            "precision": "fp32",
            "files": [entry("tfjs/model.json"), entry("tfjs/group1-shard1of1.bin")],
            "sha256": None,
            "bytes": None,
            "status": "ok",
        },
        {"target": "ios", "precision": "int8", "files": [], "status": "failed"},
    ]
    # The shape `edgekit convert` writes (converters/report.py): an object with "artifacts".
    report = {"model": name, "ok": False, "artifacts": artifacts}
    (dest / "report.json").write_text(json.dumps(report, indent=2))
    return dest

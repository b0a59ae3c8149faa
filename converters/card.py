"""Build the model card from the ONNX graph plus what the user (or the bundled sample) says."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from converters.sources import Source
from edgekit.modelcard import ModelCard, TensorSpec, guess_layout


def _spec(value: onnx.ValueInfoProto, layout: str | None = None) -> TensorSpec:
    t = value.type.tensor_type
    dims: list[int | str | None] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    dtype = (
        helper.tensor_dtype_to_np_dtype(t.elem_type).name
        if t.elem_type != TensorProto.UNDEFINED
        else "float32"
    )
    return TensorSpec(name=value.name, dtype=dtype, shape=dims, layout=layout)


def build_card(
    model_path: Path,
    source: Source,
    name: str | None = None,
    labels: list[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    task: str | None = None,
) -> ModelCard:
    model = onnx.load(str(model_path))
    inits = {i.name for i in model.graph.initializer}
    inputs = []
    for v in model.graph.input:
        if v.name in inits:
            continue
        spec = _spec(v)
        spec.layout = guess_layout(spec.shape)
        inputs.append(spec)
    outputs = [_spec(v) for v in model.graph.output]
    extra: dict[str, Any] = {}
    if source.sample:
        extra = json.loads(source.sample_file("card").read_text())
    if task is None:
        # A single 2-D float output is what classifiers emit; that enables top-1 and confidence routing.
        task = extra.get("task") or (
            "classification" if len(outputs) == 1 and len(outputs[0].shape) == 2 else "generic"
        )
    from converters.optimize import opset_of

    return ModelCard(
        name=name or extra.get("name") or source.name,
        inputs=inputs,
        outputs=outputs,
        task=task,
        labels=labels or extra.get("labels"),
        preprocessing=preprocessing or extra.get("preprocessing", {}),
        source={"format": source.format, "origin": source.origin, "sha256": source.sha256},
        opset=opset_of(model),
    )

"""Seeded validation inputs for when the user gave no data: only values the model can take.

Floats: standard normal. Bools: either value (their whole domain). Integers (token ids, indices,
lengths): a range the graph states -- the input indexes a table (Gather / GatherElements /
GatherND, an embedding) or is a OneHot index -- else we refuse and name the input: random ids
outside a vocabulary are not a test, they are a crash or a meaningless pass.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from converters.data import Dataset
from edgekit.errors import DataError
from edgekit.modelcard import ModelCard

# Ops that pass an integer tensor through without changing its values.
_PASS_THROUGH = {
    "Cast",
    "Identity",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "Expand",
    "Transpose",
    "Slice",
}
SAMPLES = 8


def _shape_of(model: onnx.ModelProto, name: str) -> list[int | None] | None:
    for coll in (model.graph.input, model.graph.value_info, model.graph.output):
        for vi in coll:
            if vi.name == name and vi.type.tensor_type.HasField("shape"):
                return [
                    d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim
                ]
    for init in model.graph.initializer:
        if init.name == name:
            return list(init.dims)
    return None


def _const(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def index_range(model: onnx.ModelProto, name: str) -> tuple[int, int] | None:
    """[lo, hi) that the graph allows for integer tensor `name`, from the tables it indexes."""
    bounds: list[int] = []
    frontier, seen = [name], set()
    while frontier:
        cur = frontier.pop()
        if cur in seen:
            continue
        seen.add(cur)
        for node in model.graph.node:
            for pos, inp in enumerate(node.input):
                if inp != cur:
                    continue
                if node.op_type in _PASS_THROUGH and pos == 0:
                    frontier.extend(node.output)
                elif node.op_type in ("Gather", "GatherElements") and pos == 1:
                    shape = _shape_of(model, node.input[0])
                    axis = _attr(node, "axis", 0)
                    if shape and -len(shape) <= axis < len(shape) and shape[axis]:
                        bounds.append(int(shape[axis]))
                elif node.op_type == "GatherND" and pos == 1:
                    shape = _shape_of(model, node.input[0])
                    if shape and shape[_attr(node, "batch_dims", 0)]:
                        bounds.append(int(shape[_attr(node, "batch_dims", 0)]))
                elif node.op_type == "OneHot" and pos == 0:
                    depth = _const(model, node.input[1])
                    if depth is not None and depth.size == 1:
                        bounds.append(int(depth.reshape(())))
    return (0, min(bounds)) if bounds else None


def synthesize(card: ModelCard, model_path, run_shapes: Mapping[str, list[int]], seed: int = 0) -> Dataset:
    """SAMPLES seeded samples shaped `run_shapes`; refuses integer inputs the graph says nothing about."""
    model = onnx.load(str(model_path), load_external_data=False)
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    refused = []
    for spec in card.inputs:
        shape = (SAMPLES, *run_shapes[spec.name])
        dt = np.dtype(spec.dtype)
        if dt.kind == "f":
            inputs[spec.name] = rng.standard_normal(shape).astype(dt)
        elif dt.kind == "b":
            inputs[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            rng_ = index_range(model, spec.name)
            if rng_ is None:
                refused.append(f"{spec.name} ({spec.dtype})")
                continue
            inputs[spec.name] = rng.integers(rng_[0], rng_[1], size=shape).astype(dt)
    if refused:
        raise DataError(
            f"no valid values known for integer input(s) {', '.join(refused)}: the graph does not say "
            "what range they take",
            hint="pass --eval EVAL.npz or --calibration CALIB.npz with real inputs",
        )
    return Dataset(inputs, None, None, SAMPLES)

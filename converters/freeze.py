"""`--freeze-input NAME`: a graph input that is really a parameter becomes a constant.

Exporters sometimes leave parameters as graph inputs: axes, pads, a target shape, resize scales,
even weights (ONNX's own node tests do this for every parameter). Runtimes with dynamic inputs
take that; converters for static targets (onnx2tf, coremltools) need them constant, and fail or
fall back to ops the edge runtime lacks (Flex). Freezing takes the value from the user's
--eval/--calibration data, which must hold one and the same value in every sample (a value
that varies is data, not a parameter, and is refused). The frozen model computes exactly what
the original computes on that value; it has one input fewer, and its card says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from converters.data import Dataset
from edgekit.errors import DataError


def values(names: Sequence[str], data: Dataset | None) -> dict[str, np.ndarray]:
    """The one value of each named input in `data`, or a DataError naming what is wrong."""
    if not names:
        return {}
    if data is None:
        raise DataError(
            f"--freeze-input {' '.join(names)}: the values come from the data",
            hint="pass --eval or --calibration data holding the input(s)",
        )
    unknown = [n for n in names if n not in data.inputs]
    if unknown:
        raise DataError(f"--freeze-input: no model input {unknown} (inputs: {sorted(data.inputs)})")
    out = {}
    for name in names:
        stack = data.inputs[name]
        first = stack[0]
        if not all(np.array_equal(first, s, equal_nan=first.dtype.kind in "fc") for s in stack[1:]):
            raise DataError(
                f"--freeze-input {name}: its value differs between samples, so it is data, not a parameter"
            )
        out[name] = np.asarray(first)
    return out


def freeze(src: Path, dst: Path, frozen: dict[str, np.ndarray]) -> None:
    """Write `src` with each frozen input replaced by an initializer of the given value."""
    model = onnx.load(str(src))
    graph = model.graph
    declared = {v.name: v for v in graph.input}
    for name, value in frozen.items():
        vi = declared[name]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        graph.input.remove(vi)
        graph.initializer.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
    onnx.save(model, str(dst))

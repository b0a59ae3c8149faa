"""The runtime adapter contract: open an artifact file, describe its tensors, run numpy feeds.

Converter validation and the agent's inference server use the very same adapters, so what was
validated on the laptop is what runs on the box.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.modelcard import TensorSpec


class RuntimeUnavailableError(EdgekitError):
    """The runtime library for an artifact is not installed in this environment."""


class Runtime(Protocol):
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def versions(self) -> dict[str, str]: ...


RUNTIME_BY_SUFFIX = {".onnx": "onnxruntime", ".ort": "onnxruntime", ".tflite": "litert"}


def open_runtime(
    path: str | Path, threads: int | None = None, output_names: list[str] | None = None
) -> Runtime:
    """Open an artifact with the runtime its file type needs.

    `output_names` (from the model card) name the outputs of files whose converter renamed them
    (quantized .tflite files say `Identity`, `output_0`, ...); ONNX keeps its own names.
    """
    p = Path(path)
    kind = RUNTIME_BY_SUFFIX.get(p.suffix)
    if kind == "onnxruntime":
        from targets.runtimes.onnxrt import OnnxRuntime

        return OnnxRuntime(p, threads=threads)
    if kind == "litert":
        from targets.runtimes.litert import LiteRTRuntime

        return LiteRTRuntime(p, threads=threads, output_names=output_names)
    raise EdgekitError(f"no runtime for {p.name}: expected one of {sorted(RUNTIME_BY_SUFFIX)}")

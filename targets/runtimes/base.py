"""The runtime adapter contract: open an artifact file, describe its tensors, run numpy feeds.

Converter validation and the agent's inference server use the very same adapters, so what was
validated on the laptop is what runs on the box.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.formats import runtime_for
from edgekit.modelcard import TensorSpec


class RuntimeUnavailableError(EdgekitError):
    """The runtime library for an artifact is not installed in this environment."""


class Runtime(Protocol):
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def versions(self) -> dict[str, str]: ...


def _plain(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").lower()


def match_names(public: list[str], artifact: list[str]) -> dict[str, str]:
    """artifact tensor name -> the model's public (ONNX) name.

    Converters rename tensors their format cannot spell (`input.1` -> `input_1`, `x::y` -> `x__y`,
    `403` -> `var_403`): match exactly, then by the alphanumeric skeleton, then by position when
    the counts agree. Names nothing can match map to themselves.
    """
    mapping = {a: a for a in artifact if a in public}
    rest_pub = [p for p in public if p not in mapping.values()]
    rest_art = [a for a in artifact if a not in mapping]
    by_plain = {_plain(p): p for p in rest_pub}
    for a in list(rest_art):
        for cand in (_plain(a), _plain(re.sub(r"^var_", "", a))):
            if cand in by_plain:
                mapping[a] = by_plain.pop(cand)
                rest_art.remove(a)
                break
    rest_pub = [p for p in public if p not in mapping.values()]
    if len(rest_pub) == len(rest_art):
        mapping.update(zip(rest_art, rest_pub, strict=True))
    for a in artifact:
        mapping.setdefault(a, a)
    return mapping


def restore_layout(outputs: dict[str, np.ndarray], perms: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Transpose outputs a converter left in its own layout back to the model's (see ExportResult)."""
    for name, perm in perms.items():
        if name in outputs and np.ndim(outputs[name]) == len(perm):
            outputs[name] = np.transpose(outputs[name], perm)
    return outputs


def open_runtime(
    path: str | Path,
    threads: int | None = None,
    output_names: list[str] | None = None,
    input_names: list[str] | None = None,
    output_perms: dict[str, list[int]] | None = None,
    inter_op_threads: int | None = None,
    memory_arena: bool = True,
) -> Runtime:
    """Open an artifact with the runtime its file type needs.

    `output_names` (from the model card) name the outputs of files whose converter renamed them
    (quantized .tflite files say `Identity`, `output_0`, ...); ONNX keeps its own names.
    `inter_op_threads` and `memory_arena` tune onnxruntime only.
    """
    p = Path(path)
    kind = runtime_for(p)
    if kind == "onnxruntime":
        from targets.runtimes.onnxrt import OnnxRuntime

        return OnnxRuntime(p, threads=threads, inter_op_threads=inter_op_threads, memory_arena=memory_arena)
    if kind == "litert":
        from targets.runtimes.litert import LiteRTRuntime

        return LiteRTRuntime(
            p, threads=threads, output_names=output_names, input_names=input_names, output_perms=output_perms
        )
    raise EdgekitError(
        f"no in-process runtime for {p.name} ({kind or 'unknown file type'}): expected .onnx, .ort or .tflite"
    )

"""LiteRT (TFLite) adapter: ai-edge-litert, or tflite-runtime where that is what the box has.

Fully-quantized models take and return int8/uint8 tensors; this adapter quantizes float feeds and
dequantizes outputs with each tensor's own scale/zero point, so callers always speak float.
onnx2tf may rename outputs of quantized files (`Identity`, `output_0`, ...): when names do not
match the model card, outputs are mapped by order and the map is recorded in `output_map`.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from edgekit.errors import DataError
from edgekit.modelcard import TensorSpec
from targets.runtimes.base import RuntimeUnavailableError, match_names, restore_layout


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite-runtime"
    except ImportError as e:
        raise RuntimeUnavailableError(
            "no LiteRT runtime installed to run .tflite files",
            hint="pip install 'edgekit[litert]'  (ai-edge-litert)",
        ) from e


def _clean_name(name: str) -> str:
    # TFLite tensor names carry signature prefixes like "serving_default_x:0".
    name = name.split(":")[0]
    for prefix in ("serving_default_",):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def _dims(d) -> list[int | None]:
    """shape_signature keeps -1 for dynamic dims (the batch); `shape` is only the allocated one."""
    sig = d.get("shape_signature")
    dims = [int(x) for x in (sig if sig is not None and len(sig) else d["shape"])]
    return [x if x >= 0 else None for x in dims]


class LiteRTRuntime:
    name = "litert"

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        output_names: list[str] | None = None,
        input_names: list[str] | None = None,
        output_perms: dict[str, list[int]] | None = None,
    ):
        self._perms = dict(output_perms or {})
        cls, self.package = _interpreter_class()
        self.interpreter = cls(model_path=str(path), num_threads=threads or 1)
        self.interpreter.allocate_tensors()
        self._lock = threading.Lock()  # an Interpreter is not thread-safe
        self._in = self.interpreter.get_input_details()
        self._out = self.interpreter.get_output_details()
        raw = [_clean_name(d["name"]) for d in self._in]
        # converters may respell names (`input.1`, `x::y`); callers feed the model's public names
        public = match_names(input_names, raw) if input_names else {n: n for n in raw}
        self._public = {r: public[r] for r in raw}
        self.inputs = [self._spec(d) for d in self._in]
        for spec in self.inputs:
            spec.name = self._public[spec.name]
        names = [_clean_name(d["name"]) for d in self._out]
        if output_names and len(output_names) == len(names) and set(names) != set(output_names):
            self.output_map = dict(zip(names, output_names, strict=True))
            names = list(output_names)
        else:
            self.output_map = {n: n for n in names}
        self.outputs = [
            TensorSpec(name=n, dtype="float32", shape=_dims(d)) for n, d in zip(names, self._out, strict=True)
        ]

    @staticmethod
    def _spec(d) -> TensorSpec:
        dtype = np.dtype(d["dtype"])
        if dtype in (np.int8, np.uint8) and d["quantization"][0]:
            dtype = np.dtype(np.float32)  # callers feed floats; we quantize
        return TensorSpec(name=_clean_name(d["name"]), dtype=dtype.name, shape=_dims(d))

    def _resize_if_needed(self, feeds: dict[str, np.ndarray]) -> None:
        changed = False
        for d in self._in:
            arr = feeds[self._public[_clean_name(d["name"])]]
            if tuple(arr.shape) != tuple(d["shape"]):
                self.interpreter.resize_tensor_input(d["index"], list(arr.shape))
                changed = True
        if changed:
            self.interpreter.allocate_tensors()
            self._in = self.interpreter.get_input_details()
            self._out = self.interpreter.get_output_details()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [s.name for s in self.inputs if s.name not in feeds]
        if missing:
            raise DataError(f"missing inputs {missing}; model takes {[s.name for s in self.inputs]}")
        with self._lock:
            self._resize_if_needed(feeds)
            for d in self._in:
                x = np.asarray(feeds[self._public[_clean_name(d["name"])]])
                dtype = np.dtype(d["dtype"])
                scale, zero = d["quantization"]
                if dtype in (np.int8, np.uint8) and scale:
                    info = np.iinfo(dtype)
                    x = np.clip(np.round(x / scale + zero), info.min, info.max)
                self.interpreter.set_tensor(d["index"], x.astype(dtype))
            self.interpreter.invoke()
            out = {}
            for spec, d in zip(self.outputs, self._out, strict=True):
                y = self.interpreter.get_tensor(d["index"])
                scale, zero = d["quantization"]
                if np.dtype(d["dtype"]) in (np.int8, np.uint8) and scale:
                    y = (y.astype(np.float32) - zero) * scale
                out[spec.name] = np.asarray(y, dtype=np.float32)
        return restore_layout(out, self._perms)

    def versions(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return {self.package: version(self.package)}
        except PackageNotFoundError:
            return {self.package: "unknown"}

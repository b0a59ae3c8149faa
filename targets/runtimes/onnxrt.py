"""ONNX Runtime adapter (CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import InvalidModelError
from edgekit.modelcard import TensorSpec

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _spec(arg) -> TensorSpec:
    shape = [d if isinstance(d, int) else (d or None) for d in arg.shape]
    return TensorSpec(name=arg.name, dtype=_ORT_TYPES.get(arg.type, arg.type), shape=shape)


# onnxruntime's pool threads spin (busy-wait) after each run for the next one by default. Between
# requests that burns cores a server's HTTP thread, other processes and a hot swap's model load
# need. Measured on a shared 2-core box (bench/agent.py --ab default,spin, 3 runs each): bare
# MobileNetV2 session.run p50 8.8-10.2 ms parked vs 16.2-20.0 ms spinning, steady HTTP p99 about
# 3x lower. The bench's A/B flips this.
ALLOW_SPINNING = False


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(
        self,
        path: Path,
        threads: int | None = None,
        inter_op_threads: int | None = None,
        memory_arena: bool = True,
    ):
        """`threads`: intra-op threads (None = one per core); `inter_op_threads` > 1 also runs
        independent graph branches in parallel; `memory_arena=False` returns activation memory
        after each run (lower RSS between requests, some speed lost on large models)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if inter_op_threads:
            opts.inter_op_num_threads = inter_op_threads
            if inter_op_threads > 1:
                opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        opts.enable_cpu_mem_arena = memory_arena
        opts.log_severity_level = 3
        spin = "1" if ALLOW_SPINNING else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for bad files
            raise InvalidModelError(f"onnxruntime cannot load {Path(path).name}: {e}") from e
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        self._out_names = [o.name for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self._out_names, feeds)
        return dict(zip(self._out_names, results, strict=True))

    def versions(self) -> dict[str, str]:
        import onnxruntime as ort

        return {"onnxruntime": ort.__version__}

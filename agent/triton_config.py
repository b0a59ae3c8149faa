"""A loaded model's Triton model configuration (`GET /v2/models/{m}/config`), as JSON.

Triton clients (tritonclient's `get_model_config`, perf_analyzer, model_analyzer) read it to learn
the platform, the batching contract and each tensor's TYPE_* and dims.

Unbatched, `max_batch_size` is 0 and `dims` are the model's full shapes, -1 where a dim is dynamic
(the batch axis included). That is the honest reading of an ONNX graph: a dynamic leading dim may
be a batch axis or not (state inputs, sequence-first models), and declaring max_batch_size > 0 would
make clients drop the first dim and batch requests the model may not accept. A model the agent
batches dynamically (agent/batcher.py: it has a batch axis, checked) is described as Triton
describes one: `max_batch_size` from its batching config, `dims` without the batch dim, and a
`dynamic_batching` block.
"""

from __future__ import annotations

from typing import Any

from agent.batcher import BatchingConfig
from agent.oip_types import datatype_of
from agent.versions import VersionPolicy
from edgekit.modelcard import TensorSpec

# runtime name -> (Triton platform, Triton backend)
_PLATFORMS = {
    "onnxruntime": ("onnxruntime_onnx", "onnxruntime"),
    "litert": ("tensorflow_lite", "tflite"),
}


def _dims(spec: TensorSpec) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in spec.shape]


def model_config(
    name: str,
    runtime: str,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    policy: VersionPolicy,
    batching: BatchingConfig | None = None,
) -> dict[str, Any]:
    platform, backend = _PLATFORMS.get(runtime, (runtime, runtime))
    cut = 1 if batching is not None else 0  # Triton's dims leave out the batch dim of a batched model
    cfg = {
        "name": name,
        "platform": platform,
        "backend": backend,
        "version_policy": policy.describe(),
        "max_batch_size": batching.max_batch_size if batching is not None else 0,
        "input": [
            {
                "name": s.name,
                "data_type": f"TYPE_{datatype_of(s.dtype)}",
                "format": "FORMAT_NONE",
                "dims": _dims(s)[cut:],
            }
            for s in inputs
        ],
        "output": [
            {"name": s.name, "data_type": f"TYPE_{datatype_of(s.dtype)}", "dims": _dims(s)[cut:]}
            for s in outputs
        ],
    }
    if batching is not None:
        cfg["dynamic_batching"] = {
            "max_queue_delay_microseconds": batching.max_queue_delay_us,
            "preferred_batch_size": list(batching.preferred_batch_sizes),
        }
    return cfg

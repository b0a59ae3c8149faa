"""TF.js adapter: runs a graph model (model.json + shards) with @tensorflow/tfjs in a Node process.

One long-lived `node tfjs_node.mjs` per model, spoken to with JSON lines (tensors as base64), so
startup (~1 s to load tfjs) is paid once and latency numbers are about inference. The pure-JS CPU
backend is the default: the wasm backend is ~10x faster but was seen failing on a fused MatMul with
a rank-2 bias; pass backend="wasm" to use it anyway. `@tensorflow/tfjs-node` is not used: it
downloads libtensorflow at install time.

tensorflowjs names outputs by the SavedModel signature (`output_0`, ...): like the LiteRT adapter,
`output_names` (ONNX names, in the model's output order) renames them positionally.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import DataError, EdgekitError
from edgekit.modelcard import TensorSpec
from targets.runtimes.base import RuntimeUnavailableError, match_names, restore_layout

SCRIPT = Path(__file__).with_name("tfjs_node.mjs")
_FEED_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.uint8}


class TfjsNodeRuntime:
    name = "tfjs-node"

    def __init__(
        self,
        model_json: Path,
        node_modules: Path,
        output_names: list[str] | None = None,
        backend: str = "cpu",
        input_names: list[str] | None = None,
        threads: int | None = None,  # accepted for interface parity; tfjs-cpu is single-threaded
        output_perms: dict[str, list[int]] | None = None,
    ):
        self._perms = dict(output_perms or {})
        node = shutil.which("node")
        if node is None:
            raise RuntimeUnavailableError(
                "Node.js is not installed; TF.js models run in Node", hint="install nodejs (>= 18)"
            )
        if not (Path(node_modules) / "@tensorflow" / "tfjs").is_dir():
            raise RuntimeUnavailableError(
                f"@tensorflow/tfjs not found under {node_modules}", hint="run: edgekit toolchain install tfjs"
            )
        self.model_json = Path(model_json)
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [node, str(SCRIPT), str(self.model_json), str(node_modules), backend],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        hello = self._read()
        if not hello.get("ready"):
            self.close()
            raise EdgekitError(f"TF.js cannot load {self.model_json}: {hello.get('error', hello)}")
        self.backend = hello["backend"]
        self._tfjs_version = hello["tfjs"]
        raw_inputs = [self._spec(t) for t in hello["inputs"]]
        # tensorflowjs spells `input.1` as `input_1`: callers feed the model's public names
        names_in = match_names(input_names, [t.name for t in raw_inputs]) if input_names else {}
        self._feed_key = {names_in.get(t.name, t.name): t.name for t in raw_inputs}
        for t in raw_inputs:
            t.name = names_in.get(t.name, t.name)
        self.inputs = raw_inputs
        names = [t["name"] for t in hello["outputs"]]
        self._raw_output_names = names
        if output_names and len(output_names) == len(names):
            names = list(output_names)
        self.output_map = dict(zip(self._raw_output_names, names, strict=True))
        self.outputs = [
            TensorSpec(name=n, dtype="float32", shape=self._spec(t).shape)
            for n, t in zip(names, hello["outputs"], strict=True)
        ]
        self.last_ms: float | None = None  # time inside Node for the last run (no IPC)

    @staticmethod
    def _spec(t: dict[str, Any]) -> TensorSpec:
        shape = [None if (d is None or d < 0) else int(d) for d in (t.get("shape") or [])]
        return TensorSpec(name=t["name"], dtype=t.get("dtype") or "float32", shape=shape)

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            err = self._proc.stderr.read() if self._proc.stderr else ""
            raise EdgekitError(f"the TF.js Node process exited: {err.strip()[-1500:]}")
        return json.loads(line)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [s.name for s in self.inputs if s.name not in feeds]
        if missing:
            raise DataError(f"missing inputs {missing}; model takes {[s.name for s in self.inputs]}")
        payload = {}
        for spec in self.inputs:
            dtype = np.dtype(_FEED_DTYPES.get(spec.dtype, np.float32))
            x = np.ascontiguousarray(feeds[spec.name], dtype=dtype)
            payload[self._feed_key.get(spec.name, spec.name)] = {
                "dtype": spec.dtype if spec.dtype in _FEED_DTYPES else "float32",
                "shape": list(x.shape),
                "data": base64.b64encode(x.tobytes()).decode(),
            }
        with self._lock:
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps({"feeds": payload}) + "\n")
            self._proc.stdin.flush()
            reply = self._read()
        if "error" in reply:
            raise EdgekitError(f"TF.js inference failed: {reply['error'][:1500]}")
        self.last_ms = reply.get("ms")
        out = {}
        for o in reply["outputs"]:
            dt = np.float32 if o["dtype"] == "float32" else np.int32 if o["dtype"] == "int32" else np.uint8
            arr = np.frombuffer(base64.b64decode(o["data"]), dtype=dt).reshape(o["shape"])
            out[self.output_map.get(o["name"], o["name"])] = arr.astype(np.float32, copy=False)
        return restore_layout(out, self._perms)

    def versions(self) -> dict[str, str]:
        return {"@tensorflow/tfjs": self._tfjs_version, "tfjs-backend": self.backend}

    def close(self) -> None:
        if self._proc.poll() is None:
            if self._proc.stdin:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> TfjsNodeRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

"""Open Inference Protocol (KServe V2) tensors: JSON and the binary-data extension.

Decoding turns a request body into numpy arrays; encoding does the reverse. The binary
extension (used by default by tritonclient) puts a JSON header of `Inference-Header-Content-Length`
bytes first and the raw little-endian tensor bytes after it, in input/output order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HEADER_LENGTH = "Inference-Header-Content-Length"

DATATYPE_TO_NUMPY: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
NUMPY_TO_DATATYPE = {v: k for k, v in DATATYPE_TO_NUMPY.items()}


class OIPError(Exception):
    """An error that becomes an OIP error body `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def datatype_of(dtype: str | np.dtype) -> str:
    name = np.dtype(dtype).name
    try:
        return NUMPY_TO_DATATYPE[name]
    except KeyError:
        raise OIPError(400, f"unsupported tensor dtype {name}") from None


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # requested outputs: name -> wants binary; None = all outputs
    outputs: dict[str, bool] | None = None
    binary_default: bool = False


def _as_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise OIPError(400, f"{what} must be a JSON object")
    return value


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise OIPError(400, f"{HEADER_LENGTH} {header_length} exceeds the body ({len(body)} bytes)")
        head, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        head, binary = body, memoryview(b"")
    try:
        doc = _as_dict(json.loads(head), "request")
    except (ValueError, UnicodeDecodeError) as e:
        raise OIPError(400, f"request body is not valid JSON: {e}") from None
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise OIPError(400, "request has no 'inputs' list")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(raw_inputs):
        t = _as_dict(t, f"inputs[{i}]")
        name, dt, shape = t.get("name"), t.get("datatype"), t.get("shape")
        if not isinstance(name, str):
            raise OIPError(400, f"inputs[{i}] has no name")
        if dt not in DATATYPE_TO_NUMPY:
            raise OIPError(400, f"input {name!r}: unsupported datatype {dt!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise OIPError(400, f"input {name!r}: shape must be a list of non-negative integers")
        if name in inputs:
            raise OIPError(400, f"input {name!r} given twice")
        dtype = np.dtype(DATATYPE_TO_NUMPY[dt])
        count = int(np.prod(shape)) if shape else 1
        params = t.get("parameters") or {}
        nbytes = params.get("binary_data_size") if isinstance(params, dict) else None
        if nbytes is not None:
            if not isinstance(nbytes, int) or nbytes != count * dtype.itemsize:
                raise OIPError(
                    400, f"input {name!r}: binary_data_size {nbytes} != {count} x {dtype.itemsize}"
                )
            if offset + nbytes > len(binary):
                raise OIPError(400, f"input {name!r}: binary data is truncated")
            arr = np.frombuffer(binary[offset : offset + nbytes], dtype=dtype.newbyteorder("<"))
            offset += nbytes
        else:
            if "data" not in t:
                raise OIPError(400, f"input {name!r} has no data")
            try:
                arr = np.asarray(t["data"], dtype=dtype)
            except (ValueError, TypeError) as e:
                raise OIPError(400, f"input {name!r}: data is not {dt}: {e}") from None
            if arr.size != count:
                raise OIPError(400, f"input {name!r}: {arr.size} values for shape {shape}")
        inputs[name] = arr.reshape(shape)
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise OIPError(400, "'parameters' must be a JSON object")
    binary_default = bool(params.get("binary_data_output", False))
    outputs = None
    if isinstance(doc.get("outputs"), list):
        outputs = {}
        for o in doc["outputs"]:
            o = _as_dict(o, "outputs[]")
            op = o.get("parameters") or {}
            outputs[str(o.get("name"))] = bool(op.get("binary_data", binary_default))
    rid = doc.get("id")
    return InferRequest(inputs, str(rid) if rid is not None else None, params, outputs, binary_default)


def _append_tensor(
    items: list[dict[str, Any]], blobs: list[bytes], name: str, arr: Any, binary: bool
) -> None:
    """One V2 tensor: JSON `data`, or the binary extension (little-endian bytes after the JSON)."""
    arr = np.asarray(arr)
    item: dict[str, Any] = {"name": name, "datatype": datatype_of(arr.dtype), "shape": list(arr.shape)}
    if binary:
        raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        item["parameters"] = {"binary_data_size": len(raw)}
        blobs.append(raw)
    else:
        item["data"] = arr.ravel().tolist()
    items.append(item)


def encode_response(
    model_name: str,
    model_version: str | None,
    outputs: dict[str, np.ndarray],
    *,
    request: InferRequest | None = None,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Return (body, json_header_length). header length is None for a pure JSON body."""
    wanted = request.outputs if request and request.outputs is not None else None
    binary_default = request.binary_default if request else False
    if wanted is not None:
        unknown = [n for n in wanted if n not in outputs]
        if unknown:
            raise OIPError(400, f"unknown outputs requested: {unknown}; model has {list(outputs)}")
    items: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr in outputs.items():
        if wanted is not None and name not in wanted:
            continue
        _append_tensor(items, blobs, name, arr, wanted[name] if wanted is not None else binary_default)
    doc: dict[str, Any] = {"model_name": model_name, "outputs": items}
    if model_version is not None:
        doc["model_version"] = str(model_version)
    if request and request.id is not None:
        doc["id"] = request.id
    if parameters:
        doc["parameters"] = parameters
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def encode_request(
    inputs: dict[str, np.ndarray], *, binary: bool = False, request_id: str | None = None
) -> tuple[bytes, int | None]:
    """Client side (cloud fallback): a V2 infer request for `inputs`."""
    items: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr in inputs.items():
        _append_tensor(items, blobs, name, arr, binary)
    doc: dict[str, Any] = {"inputs": items}
    if request_id:
        doc["id"] = request_id
    if binary:
        doc["parameters"] = {"binary_data_output": True}
    head = json.dumps(doc, separators=(",", ":")).encode()
    return (head + b"".join(blobs), len(head)) if binary else (head, None)


def decode_response(body: bytes, header_length: int | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Client side: parse a V2 infer response into (json doc, outputs)."""
    head = body[:header_length] if header_length is not None else body
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    doc = json.loads(head)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for t in doc.get("outputs", []):
        dtype = np.dtype(DATATYPE_TO_NUMPY[t["datatype"]])
        params = t.get("parameters") or {}
        if "binary_data_size" in params:
            n = int(params["binary_data_size"])
            arr = np.frombuffer(binary[offset : offset + n], dtype=dtype.newbyteorder("<")).astype(dtype)
            offset += n
        else:
            arr = np.asarray(t["data"], dtype=dtype)
        out[t["name"]] = arr.reshape(t["shape"])
    return doc, out

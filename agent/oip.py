"""Open Inference Protocol (KServe V2) tensors: JSON and the binary-data extension.

Decoding turns a request body into numpy arrays; encoding does the reverse. The binary
extension (used by default by tritonclient) puts a JSON header of `Inference-Header-Content-Length`
bytes first and the raw little-endian tensor bytes after it, in input/output order.

A request is checked against a typed schema with explicit bounds (`InferRequestDoc`; unknown
fields are ignored) before any numpy work, and element counts are Python ints bounded by the bytes
that carry them: whatever a client sends, the answer is an inference or an OIPError(400) naming
the problem. JSON outputs spell NaN/Infinity as strings (see agent/tensor_data.py): the body is
always strict JSON.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints, ValidationError

from agent.oip_types import DATATYPE_TO_NUMPY, NUMPY_TO_DATATYPE, OIPError, datatype_of
from agent.tensor_data import from_json_data, to_json_list
from edgekit import boundedjson

__all__ = [
    "DATATYPE_TO_NUMPY",
    "HEADER_LENGTH",
    "NUMPY_TO_DATATYPE",
    "InferRequest",
    "OIPError",
    "datatype_of",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "parse_header_length",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

# Bounds on a request's structure. The body size (the server's max_body) bounds the rest: a
# tensor cannot hold more elements than the bytes that carry them.
MAX_RANK = 32  # numpy stops at 64; the models served here have a handful
MAX_DIM = 2**63 - 1  # ONNX dims are int64
MAX_TENSORS = 1024  # inputs, and requested outputs, per request
MAX_NAME = 256
MAX_ID = 1024
_MAX_HEADER_DIGITS = 19  # a longer byte count is beyond any body we accept


class _Wire(BaseModel):
    # Unknown fields are ignored: they belong to a newer protocol version or an extension we lack.
    model_config = ConfigDict(extra="ignore", frozen=True)


_Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
_Dim = Annotated[StrictInt, Field(ge=0, le=MAX_DIM)]


class TensorParameters(_Wire):
    binary_data_size: Annotated[StrictInt, Field(ge=0)] | None = None
    binary_data: StrictBool | None = None


class InputTensor(_Wire):
    name: _Name
    datatype: Literal[tuple(DATATYPE_TO_NUMPY)]  # type: ignore[valid-type]
    shape: Annotated[list[_Dim], Field(max_length=MAX_RANK)]
    parameters: TensorParameters | None = None
    data: Any = None  # checked by agent.tensor_data against datatype and shape


class OutputParameters(_Wire):
    binary_data: StrictBool | None = None
    # The classification extension (agent/classification.py): top k instead of the scores.
    classification: Annotated[StrictInt, Field(ge=1)] | None = None


class RequestedOutput(_Wire):
    name: _Name
    parameters: OutputParameters | None = None


class RequestParameters(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)  # other parameters are the caller's business
    binary_data_output: StrictBool = False


_NO_PARAMETERS = RequestParameters()


class InferRequestDoc(_Wire):
    id: Annotated[str, StringConstraints(max_length=MAX_ID)] | None = None
    inputs: Annotated[list[InputTensor], Field(min_length=1, max_length=MAX_TENSORS)]
    outputs: Annotated[list[RequestedOutput], Field(max_length=MAX_TENSORS)] | None = None
    parameters: RequestParameters | None = None


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # requested outputs: name -> wants binary; None = all outputs
    outputs: dict[str, bool] | None = None
    binary_default: bool = False
    # requested output name -> k, for outputs asked for as top-k classes
    classification: dict[str, int] = field(default_factory=dict)


def parse_header_length(value: str | None) -> int | None:
    """The `Inference-Header-Content-Length` header as a byte count (None when absent), or OIPError(400)."""
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_HEADER_DIGITS:
        raise OIPError(400, f"invalid {HEADER_LENGTH} header {value[:40]!r}: expected a byte count")
    return int(text)


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """A request body (JSON, or JSON + binary tensors) as numpy inputs, or OIPError(400) naming the fault."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise OIPError(400, f"{HEADER_LENGTH} {header_length} exceeds the body ({len(body)} bytes)")
    view = memoryview(body)
    head = view[:header_length] if header_length is not None else view
    binary = view[header_length:] if header_length is not None else memoryview(b"")
    doc = _validated(_parse_json(head))
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for t in doc.inputs:
        if t.name in inputs:
            raise OIPError(400, f"input {t.name!r} given twice")
        inputs[t.name], used = _decode_tensor(t, binary[offset:], len(head))
        offset += used
    if offset != len(binary):
        raise OIPError(400, f"{len(binary) - offset} bytes of binary data follow the last binary input")
    params = doc.parameters or _NO_PARAMETERS
    outputs = None
    classification: dict[str, int] = {}
    if doc.outputs is not None:
        outputs = {}
        for o in doc.outputs:
            wants = o.parameters.binary_data if o.parameters else None
            outputs[o.name] = params.binary_data_output if wants is None else wants
            if o.parameters and o.parameters.classification is not None:
                classification[o.name] = o.parameters.classification
    return InferRequest(
        inputs, doc.id, params.model_dump(), outputs, params.binary_data_output, classification
    )


def _parse_json(head: memoryview) -> Any:
    # Depth is bounded on the raw bytes before json.loads recurses: the structure takes 4 levels
    # (request, inputs, tensor, data) and nested data one more per dimension.
    raw = bytes(head)
    if raw.count(b"[") + raw.count(b"{") <= MAX_RANK + 4:
        # No deeper than its opening brackets: within the bound without measuring it (the
        # measuring is a regex pass and a Python loop, 10+ us of a tiny request's path).
        # A body json.loads refuses goes the long way for boundedjson's error.
        try:
            return json.loads(raw)
        except ValueError:
            pass
    try:
        return boundedjson.loads(raw, max_bytes=len(raw), max_depth=MAX_RANK + 4)
    except boundedjson.JsonLimitError as e:
        if e.reason == boundedjson.TOO_DEEP:
            raise OIPError(400, f"request JSON is nested too deeply ({e.detail})") from None
        raise OIPError(400, f"request body is not valid JSON: {e.detail}") from None


def _validated(raw: Any) -> InferRequestDoc:
    if not isinstance(raw, dict):
        raise OIPError(400, "the request must be a JSON object with an 'inputs' list")
    try:
        return InferRequestDoc.model_validate(raw)
    except ValidationError as e:
        # Location and rule only: echoing the offending value could echo megabytes.
        errors = e.errors(include_url=False, include_input=False, include_context=False)
        parts = [f"{'.'.join(map(str, err['loc'])) or 'request'}: {err['msg']}" for err in errors[:3]]
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise OIPError(400, "invalid inference request: " + "; ".join(parts) + more) from None


def _decode_tensor(t: InputTensor, binary: memoryview, json_bytes: int) -> tuple[np.ndarray, int]:
    """One input as an array of its shape, and how many bytes of `binary` it took."""
    what = f"input {t.name!r}"
    dtype = np.dtype(DATATYPE_TO_NUMPY[t.datatype])
    count = math.prod(t.shape)  # Python ints: np.prod wraps [2**62, 4] to 0
    nbytes = t.parameters.binary_data_size if t.parameters else None
    if nbytes is not None:
        if t.data is not None:
            raise OIPError(400, f"{what} has both 'data' and binary_data_size")
        if nbytes != count * dtype.itemsize:
            raise OIPError(
                400, f"{what}: binary_data_size {nbytes} != {count} elements x {dtype.itemsize} bytes"
            )
        if nbytes > len(binary):
            raise OIPError(400, f"{what}: binary data is truncated ({len(binary)} of {nbytes} bytes left)")
        if dtype.kind == "b":  # any non-zero byte is true; never reinterpret arbitrary bytes as bool
            flat = np.frombuffer(binary[:nbytes], dtype=np.uint8) != 0
        else:
            flat = np.frombuffer(binary[:nbytes], dtype=dtype.newbyteorder("<"))
        used = nbytes
    else:
        if t.data is None:
            raise OIPError(400, f"{what} has no data")
        if count > json_bytes:  # each JSON value takes at least one byte
            raise OIPError(400, f"{what}: shape {t.shape} has {count} elements, more than the request holds")
        flat, used = from_json_data(t.data, dtype, count, what), 0
    try:
        return flat.reshape(t.shape), used
    except ValueError:  # a zero-size shape whose other dims overflow numpy's size
        raise OIPError(400, f"{what}: shape {t.shape} is too large for an array") from None


def _append_tensor(
    items: list[dict[str, Any]], blobs: list[bytes], name: str, arr: Any, binary: bool
) -> None:
    """One V2 tensor: JSON `data`, or the binary extension (little-endian bytes after the JSON)."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "O":  # BYTES: the classification extension's strings
        _append_bytes(items, blobs, name, arr, binary)
        return
    item: dict[str, Any] = {"name": name, "datatype": _datatype(arr.dtype), "shape": list(arr.shape)}
    if binary:
        raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
        item["parameters"] = {"binary_data_size": len(raw)}
        blobs.append(raw)
    else:
        item["data"] = to_json_list(arr)
    items.append(item)


_DATATYPES: dict[np.dtype, str] = {}  # dtype.name is a slow numpy property: once per dtype


def _datatype(dtype: np.dtype) -> str:
    found = _DATATYPES.get(dtype)
    if found is None:
        found = _DATATYPES[dtype] = datatype_of(dtype)
    return found


def _append_bytes(
    items: list[dict[str, Any]], blobs: list[bytes], name: str, arr: np.ndarray, binary: bool
) -> None:
    """A BYTES tensor: JSON strings, or in binary each element as a 4-byte little-endian length and
    its bytes (the serialization tritonclient's `deserialize_bytes_tensor` reads)."""
    values = [v if isinstance(v, bytes) else str(v).encode() for v in arr.ravel().tolist()]
    item: dict[str, Any] = {"name": name, "datatype": "BYTES", "shape": list(arr.shape)}
    if binary:
        raw = b"".join(len(v).to_bytes(4, "little") + v for v in values)
        item["parameters"] = {"binary_data_size": len(raw)}
        blobs.append(raw)
    else:
        item["data"] = [v.decode("utf-8", "replace") for v in values]
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
    head = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
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
    head = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    return (head + b"".join(blobs), len(head)) if binary else (head, None)


def decode_response(body: bytes, header_length: int | None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Client side: parse a V2 infer response into (json doc, outputs)."""
    head = body[:header_length] if header_length is not None else body
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    doc = json.loads(head)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for t in doc.get("outputs", []):
        params = t.get("parameters") or {}
        if t["datatype"] == "BYTES":
            n = int(params.get("binary_data_size", 0))
            arr = _read_bytes(binary[offset : offset + n]) if n else np.array(t["data"], dtype=object)
            offset += n
            out[t["name"]] = arr.reshape(t["shape"])
            continue
        dtype = np.dtype(DATATYPE_TO_NUMPY[t["datatype"]])
        if "binary_data_size" in params:
            n = int(params["binary_data_size"])
            arr = np.frombuffer(binary[offset : offset + n], dtype=dtype.newbyteorder("<")).astype(dtype)
            offset += n
        else:
            arr = np.asarray(t["data"], dtype=dtype)
        out[t["name"]] = arr.reshape(t["shape"])
    return doc, out


def _read_bytes(raw: memoryview) -> np.ndarray:
    values: list[bytes] = []
    i = 0
    while i + 4 <= len(raw):
        n = int.from_bytes(raw[i : i + 4], "little")
        values.append(bytes(raw[i + 4 : i + 4 + n]))
        i += 4 + n
    return np.array(values, dtype=object)

"""The JSON `data` of an OIP tensor <-> numpy, with the checks a request needs.

Non-finite floats: strict JSON has no NaN or Infinity, and a bare `NaN` token breaks
`JSON.parse`, Go's and Java's decoders, jq, and Python's `json` once `parse_constant` is strict.
So JSON output writes them as the strings "NaN", "Infinity" and "-Infinity". That is lossless
(null would merge NaN with both infinities) and decodes back without special code:
`np.array(data, dtype=np.float32)` (what tritonclient's `as_numpy` does) and JavaScript's
`Number(x)` both read those strings. Clients that want raw IEEE values use the binary-data
extension, which carries them bit-exact. On input, the same strings (case-insensitive, also
"Inf"/"-Inf"), and the bare tokens Triton's parser also accepts, are read for FP types only.

Everything else is checked, not coerced: a value out of the datatype's range, a string where a
number belongs, true/false for a number (or a number for BOOL), ragged nesting - each is an
OIPError(400) naming the tensor, never a silent wrap-around or cast.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from agent.oip_types import NUMPY_TO_DATATYPE, OIPError

_NAN, _INF = "NaN", "Infinity"
_SPELLINGS = {
    "nan": math.nan,
    "+nan": math.nan,
    "-nan": math.nan,
    "inf": math.inf,
    "+inf": math.inf,
    "infinity": math.inf,
    "+infinity": math.inf,
    "-inf": -math.inf,
    "-infinity": -math.inf,
}


def to_json_list(arr: np.ndarray) -> list[Any]:
    """`arr` flattened in row-major order as JSON-safe values (non-finite floats as strings)."""
    flat = arr.ravel()
    if flat.dtype.kind != "f" or np.isfinite(flat).all():
        return flat.tolist()
    out = flat.astype(object)
    bad = ~np.isfinite(flat)
    out[bad] = [_NAN if math.isnan(v) else (_INF if v > 0 else "-" + _INF) for v in flat[bad].tolist()]
    return out.tolist()


def from_json_data(data: Any, dtype: np.dtype, count: int, what: str) -> np.ndarray:
    """The values of `data` (flat or nested row-major) as a flat array of `dtype`, or OIPError(400)."""
    if not isinstance(data, list):
        raise OIPError(400, f"{what}: 'data' must be a JSON array, not {_json_type(data)}")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise OIPError(
            400, f"{what}: 'data' is ragged or nested too deeply (not one regular array)"
        ) from None
    if raw.size != count:
        raise OIPError(400, f"{what}: {raw.size} values for {count} elements of its shape")
    if count == 0:  # `[]` parses as float64: an empty tensor of any datatype has no values to check
        return np.empty(0, dtype=dtype)
    if raw.dtype.kind in "biuf":
        return _from_numbers(raw.ravel(), dtype, what)
    # Strings, None, objects, integers beyond 64 bits: the rare path, value by value.
    return _from_objects(np.asarray(data, dtype=object).ravel(), dtype, what)


def _from_numbers(raw: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    if dtype.kind == "b":
        if raw.dtype.kind != "b":
            raise OIPError(400, f"{what}: {_datatype_name(dtype)} data must be true/false")
        return raw
    if raw.dtype.kind == "b":
        raise OIPError(400, f"{what}: {_datatype_name(dtype)} data must be numbers, not true/false")
    if dtype.kind in "iu":
        if raw.dtype.kind == "f":
            raise OIPError(400, f"{what}: {_datatype_name(dtype)} data must be integers")
        info = np.iinfo(dtype)
        if raw.size and (int(raw.min()) < info.min or int(raw.max()) > info.max):
            raise OIPError(
                400, f"{what}: a value is out of the {_datatype_name(dtype)} range [{info.min}, {info.max}]"
            )
        return raw.astype(dtype)
    if raw.dtype.kind == "f" and raw.dtype.itemsize > dtype.itemsize:  # a narrowing cast can overflow
        with np.errstate(over="ignore", invalid="ignore"):
            out = raw.astype(dtype)
    else:
        out = raw.astype(dtype)
    finite = np.isfinite(out)
    if not finite.all() and (np.isfinite(raw) & ~finite).any():
        raise OIPError(400, f"{what}: a value is out of the {_datatype_name(dtype)} range")
    return out


def _from_objects(values: np.ndarray, dtype: np.dtype, what: str) -> np.ndarray:
    items = values.tolist()
    if dtype.kind == "b":
        if not all(isinstance(v, bool) for v in items):
            raise OIPError(400, f"{what}: {_datatype_name(dtype)} data must be true/false")
        return np.array(items, dtype=dtype)
    if dtype.kind in "iu":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
            raise OIPError(400, f"{what}: {_datatype_name(dtype)} data must be integers")
        info = np.iinfo(dtype)
        if items and (min(items) < info.min or max(items) > info.max):
            raise OIPError(
                400, f"{what}: a value is out of the {_datatype_name(dtype)} range [{info.min}, {info.max}]"
            )
        return np.array(items, dtype=dtype)
    name = _datatype_name(dtype)
    return _from_numbers(np.array([_float_value(v, name, what) for v in items], np.float64), dtype, what)


def _float_value(v: Any, name: str, what: str) -> float:
    if isinstance(v, str):
        f = _SPELLINGS.get(v.lower())
        if f is None:
            raise OIPError(400, f'{what}: {name} data must be numbers (or "NaN"/"Infinity"), found a string')
        return f
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise OIPError(400, f"{what}: {name} data must be numbers, found {_json_type(v)}")
    try:
        return float(v)
    except OverflowError:
        raise OIPError(400, f"{what}: a value is out of the {name} range") from None


def _datatype_name(dtype: np.dtype) -> str:
    # Only for messages: dtype.name costs more than converting a small tensor.
    return NUMPY_TO_DATATYPE.get(dtype.name, dtype.name)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true/false"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(v), "a number")

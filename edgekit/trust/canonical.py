"""Canonical JSON: the exact bytes that get signed.

Sorted keys, no whitespace, UTF-8 (not ASCII-escaped). NaN/Infinity are refused (not JSON).
Floats are allowed because model cards carry them (preprocessing mean/std); the verifier
re-serializes the parsed document with the same rules, so Python's shortest-repr float text is
stable. Tensors (the smoke test) travel as base64, never as float lists.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _check(value: Any, path: str = "$") -> None:
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"{path}: NaN/Infinity cannot be signed")
        return
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check(v, f"{path}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{path}: keys must be strings")
            _check(v, f"{path}.{k}")
        return
    raise ValueError(f"{path}: unsupported type {type(value).__name__}")


def canonical_json(value: Any) -> bytes:
    _check(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

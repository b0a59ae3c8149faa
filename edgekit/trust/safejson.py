"""JSON from the network, bounded: size, nesting depth, numbers.

`json.loads` recurses once per nesting level, so 1 MiB of `[` raises RecursionError, and
everything that walks the result later (canonical JSON, pydantic) recurses again. The depth is
therefore measured on the bytes before anything parses them. NaN/Infinity literals and floats
that overflow to infinity are refused too: they cannot be signed (`canonical_json`). Integers
longer than Python's 4300-digit limit already fail inside `json.loads` with a ValueError.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from edgekit.trust.errors import MALFORMED, OVERSIZED, VerificationError

# A manifest is envelope -> signed -> smoke_test -> inputs -> tensor -> shape (6 levels) and a
# model card nests a few more; 32 leaves room for richer cards and refuses a hostile depth long
# before the interpreter's recursion limit (1000).
MAX_JSON_DEPTH = 32

# A JSON string: quote, then any run of non-quote/non-backslash bytes or escape pairs, then quote.
# Disjoint alternatives, so the scan is linear even on hostile input.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_depth(raw: bytes, stop_above: int = MAX_JSON_DEPTH) -> int:
    """Deepest `[`/`{` nesting outside strings; stops counting once past `stop_above`."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for b in brackets:
        depth += 1 if b in b"[{" else -1
        if depth > deepest:
            deepest = depth
            if deepest > stop_above:
                break
    return deepest


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:32]!r} overflows")
    return value


def loads(raw: bytes | str, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse untrusted JSON. Refusals: `oversized` (bytes), `malformed` (not UTF-8 JSON, too
    deep, NaN/Infinity, numbers out of range)."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > max_bytes:
        raise VerificationError(OVERSIZED, f"{len(raw)} bytes > limit {max_bytes}")
    depth = nesting_depth(raw, max_depth)
    if depth > max_depth:
        raise VerificationError(MALFORMED, f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # RecursionError cannot happen below MAX_JSON_DEPTH; caught anyway so a caller that
        # raises the limit still only ever sees a named refusal.
        raise VerificationError(MALFORMED, f"not JSON: {_short(e)}") from None


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) <= 200 else text[:200] + "..."

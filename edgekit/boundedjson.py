"""JSON from untrusted peers, parsed only within a size and a nesting bound.

`json.loads` recurses once per nesting level and raises RecursionError (not ValueError) past
about a thousand levels, so a few kilobytes of `[[[[...` escape every `except ValueError` and
can unwind a whole batch. The size is checked before anything is parsed; the depth is measured
on the raw bytes (string contents removed, brackets counted) before `json.loads` sees them.
Every refusal is a JsonLimitError with a stable `reason` for logs, counters and responses.
"""

from __future__ import annotations

import json
import re
from typing import Any

TOO_LARGE, TOO_DEEP, NOT_JSON = "too_large", "too_deep", "not_json"

# A JSON string: quote, then any run of non-quote/non-backslash bytes or escape pairs, then quote.
# The alternatives start with disjoint bytes, so matching is linear in the input.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class JsonLimitError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def depth(raw: bytes) -> int:
    """The deepest bracket nesting in `raw`, ignoring brackets inside strings."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    level = peak = 0
    for b in brackets:
        if b in b"[{":
            level += 1
            peak = max(peak, level)
        else:
            level -= 1
    return peak


def loads(raw: bytes | str, max_bytes: int, max_depth: int) -> Any:
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if len(data) > max_bytes:
        raise JsonLimitError(TOO_LARGE, f"{len(data)} bytes, the limit is {max_bytes}")
    if depth(data) > max_depth:
        raise JsonLimitError(TOO_DEEP, f"nested deeper than {max_depth} levels")
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise JsonLimitError(NOT_JSON, _first_line(e)) from None


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:200]

"""ISO 8601 beside the epoch seconds in the admin API's JSON.

The fleet stores times as epoch seconds (cheap to compare in SQL). Its JSON carries each one twice:
the number, for scripts that already read it, and `<key>_iso` ("2026-06-01T12:00:00Z") for people
and for tools that expect ISO 8601. The server adds them (fleet.http), so every client sees them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from edgekit.trust.timeutil import iso

TIME_KEYS = ("created", "ended", "bake_started")


def with_iso(obj: Any) -> Any:
    """`obj` with `<key>_iso` next to each epoch-second field of TIME_KEYS, at any depth (idempotent)."""
    if isinstance(obj, list):
        return [with_iso(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out = {k: with_iso(v) for k, v in obj.items()}
    for k in TIME_KEYS:
        if k not in obj:
            continue
        v = obj[k]
        ok = isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 253402300800  # year 10000
        out[f"{k}_iso"] = iso(datetime.fromtimestamp(v, UTC)) if ok else None
    return out

"""ISO 8601 UTC timestamps as used in signed documents ("2026-01-01T00:00:00Z")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    """ISO 8601 with a timezone -> aware UTC datetime; ValueError for anything else."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"timestamp without timezone: {text[:64]!r}")
    try:
        return dt.astimezone(UTC)
    except OverflowError as e:  # "0001-01-01T00:00:00+01:00" has no UTC equivalent
        raise ValueError(f"timestamp out of range: {text[:64]!r}") from e


def in_future(delta: timedelta, now: datetime | None = None) -> str:
    return iso((now or utcnow()) + delta)

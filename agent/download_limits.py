"""How long and how slowly an artifact download may run, and the pure decision that enforces it.

A per-read timeout alone cannot stop a server that trickles one byte per second: every read
succeeds, so the single update thread would stay in that download for days while newer (or
rollback) manifests queue behind it. Two bounds close that: an overall deadline for the whole
download (retries included) and a minimum transfer rate averaged over a window (curl's
`--speed-limit`/`--speed-time`), so a stalled link is named `too_slow` long before the deadline.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# DownloadError reasons (also what the updater reports, see agent.updater)
DOWNLOAD_TIMEOUT = "download_timeout"
TOO_SLOW = "too_slow"
CANCELLED = "cancelled"
TOO_MANY_REDIRECTS = "too_many_redirects"


class DownloadLimits(BaseModel):
    """`[download]` limits in agent.toml. Defaults fit a model of a few hundred MB on a poor link."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    deadline_s: float = Field(3600.0, gt=0, le=7 * 86400)
    # 0 disables the rate check; the deadline still holds
    min_bytes_per_s: float = Field(1024.0, ge=0, le=1 << 40)
    slow_window_s: float = Field(60.0, gt=0, le=86400)
    max_redirects: int = Field(5, ge=0, le=30)

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> DownloadLimits:
        """The limits among `[download]`'s keys (the section also holds timeout, retries, TLS...)."""
        return cls.model_validate({k: v for k, v in section.items() if k in cls.model_fields})


def judge(
    limits: DownloadLimits, *, now: float, deadline: float, window_start: float, window_bytes: int
) -> str | None:
    """Why a running download must stop now (DOWNLOAD_TIMEOUT | TOO_SLOW), or None.

    `window_bytes` arrived since `window_start`; the caller starts a new window once one has
    lasted `slow_window_s` at an acceptable rate."""
    if now >= deadline:
        return DOWNLOAD_TIMEOUT
    elapsed = now - window_start
    slow = window_bytes < limits.min_bytes_per_s * elapsed
    if limits.min_bytes_per_s and elapsed >= limits.slow_window_s and slow:
        return TOO_SLOW
    return None

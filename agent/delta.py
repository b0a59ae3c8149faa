"""Install an artifact from a binary delta against a blob the device already holds.

The manifest's artifact entry may list deltas (edgekit.trust.manifest_schema.DeltaEntry), each
from one base blob. `pick` chooses the one whose base is in the store (pure); `install` fetches
it with the same resumable downloader as full artifacts (its own bytes checked against the
delta's signed sha256 and size), applies it (edgekit.delta) and checks the RESULT against the
artifact's signed sha256 and size before anything reaches the store. Only a verified result is
moved to the artifact's `.part` path; every failure raises DeltaFailed and leaves no partial
output, so the caller downloads the full artifact instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from edgekit.delta import ALGORITHM, DeltaError, apply_delta
from edgekit.errors import EdgekitError
from edgekit.trust import Artifact, VerificationError, verify_artifact
from edgekit.trust.manifest_schema import DeltaEntry

log = logging.getLogger(__name__)

USED = "used"
MISSING_BASE = "missing_base"  # deltas offered, none from a blob this device holds
UNSUPPORTED = "unsupported_algorithm"

# (url, part path, size, sha256) -> None: the updater's resumable, bounded download
Fetch = Callable[[str, Path, int, str], None]


class DeltaFailed(EdgekitError):
    """The delta route did not produce the artifact; `reason` goes into `fallback:<reason>`."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def fallback(reason: str) -> str:
    return f"fallback:{reason}"


def pick(art: Artifact, held: Mapping[str, Path]) -> DeltaEntry | str | None:
    """The delta to use: one whose base blob is in `held` (sha256 -> path) and whose algorithm
    this agent applies. None when the manifest offers no delta; a reason string when it offers
    some but none fits."""
    if not art.delta:
        return None
    ours = [d for d in art.delta if d.from_sha256 in held]
    if not ours:
        return MISSING_BASE
    for d in ours:
        if d.algorithm == ALGORITHM:
            return d
    return UNSUPPORTED


def install(
    art: Artifact,
    delta: DeltaEntry,
    base: Path,
    delta_part: Path,
    result_part: Path,
    fetch: Fetch,
) -> None:
    """Fetch `delta` into `delta_part` (resuming), apply it to `base`, verify the result against
    `art`, and leave it at `result_part`. Raises DeltaFailed when the delta cannot give the
    artifact; what `fetch` raises (a dead link, a cancel, a delta whose own digest is wrong and
    which the downloader already deleted) propagates for the caller to judge."""
    fetch(delta.url, delta_part, delta.size, delta.sha256)
    applying = result_part.with_name(result_part.name + ".applying")
    try:
        apply_delta(base, delta_part, applying, max_size=art.size)
        verify_artifact(applying, art.size, art.sha256)
    except DeltaError as e:
        applying.unlink(missing_ok=True)
        delta_part.unlink(missing_ok=True)  # it cannot produce the artifact: never resume it
        raise DeltaFailed(e.reason, str(e)) from None
    except VerificationError as e:
        applying.unlink(missing_ok=True)
        delta_part.unlink(missing_ok=True)
        raise DeltaFailed(e.reason, f"delta result: {e.detail}") from None
    os.replace(applying, result_part)
    delta_part.unlink(missing_ok=True)
    log.info("%s: installed from a %d-byte delta (full artifact %d bytes)", art.file, delta.size, art.size)

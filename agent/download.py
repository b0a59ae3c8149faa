"""Resumable HTTP(S) artifact download into a `.part` file, verified by size and sha256.

Resume uses `Range: bytes=N-`: the bytes already on disk are hashed once (not re-fetched), then
the rest is appended. A server that ignores Range (answers 200) restarts the file from zero
instead of appending a second copy (seen with python's http.server). Nothing here moves a file
into the store: the caller does that only after `download` returned, i.e. after verification.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from edgekit.errors import EdgekitError

log = logging.getLogger(__name__)

FSYNC_EVERY = 4 << 20  # bytes: bound what a power loss can take back from a long download


class DownloadError(EdgekitError):
    """The artifact could not be fetched or does not match its manifest.

    `reason` is "size_mismatch", "sha256_mismatch" or "unreachable"."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def _hash_existing(part: Path, h: hashlib._Hash) -> int:
    n = 0
    with open(part, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return n


def download(
    url: str,
    part: Path,
    *,
    size: int,
    sha256: str,
    timeout: float = 30.0,
    retries: int = 3,
    headers: dict[str, str] | None = None,
    verify: bool | str = True,
    cert: tuple[str, str] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Fetch `url` into `part` (resuming), check size + sha256, return `part`.

    Raises DownloadError; on a size/digest mismatch the `.part` is deleted so the next attempt
    starts clean instead of resuming from bad bytes."""
    part = Path(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    with httpx.Client(timeout=timeout, verify=verify, cert=cert, follow_redirects=True) as client:
        while True:
            h = hashlib.sha256()
            have = _hash_existing(part, h) if part.exists() else 0
            if have > size:
                log.warning("%s: %d bytes on disk but artifact is %d: restarting", part.name, have, size)
                part.unlink()
                continue
            try:
                if have < size:
                    have, h = _fetch(client, url, part, have, size, h, headers or {}, on_progress)
                break
            except (httpx.TransportError, httpx.HTTPStatusError) as e:
                attempt += 1
                if attempt > retries:
                    raise DownloadError("unreachable", f"{url}: {e}") from e
                log.info("download of %s interrupted (%s); resuming (attempt %d)", url, e, attempt)
                time.sleep(min(0.2 * 2**attempt, 5.0))
    if have != size:
        part.unlink(missing_ok=True)
        raise DownloadError("size_mismatch", f"{url}: got {have} bytes, manifest says {size}")
    digest = h.hexdigest()
    if digest != sha256:
        part.unlink(missing_ok=True)
        raise DownloadError("sha256_mismatch", f"{url}: sha256 {digest}, manifest says {sha256}")
    return part


def _fetch(
    client: httpx.Client,
    url: str,
    part: Path,
    have: int,
    size: int,
    h: hashlib._Hash,
    headers: dict[str, str],
    on_progress: Callable[[int, int], None] | None,
) -> tuple[int, hashlib._Hash]:
    req_headers = dict(headers)
    if have:
        req_headers["Range"] = f"bytes={have}-"
    with client.stream("GET", url, headers=req_headers) as r:
        if r.status_code == 416 and have:
            return have, h  # nothing left to send; the caller's size/sha check decides
        r.raise_for_status()
        mode = "ab"
        if have and r.status_code != 206:
            # Range ignored: the body is the whole file again. Start over rather than append.
            log.info("%s ignored Range; downloading from zero", url)
            h = hashlib.sha256()
            have, mode = 0, "wb"
        synced = have
        with open(part, mode) as f:
            # iter_bytes() without a chunk size hands over what each socket read returned.
            # iter_bytes(256 KiB) would buffer up to 256 KiB in memory first: a kill -9 or a
            # dropped link then lost everything since the last boundary, and a slow download
            # of an artifact smaller than that never had a byte on disk to resume from.
            for chunk in r.iter_bytes():
                if have + len(chunk) > size:
                    # More bytes than the manifest allows: stop before filling the disk.
                    f.write(chunk[: size + 1 - have])
                    have = size + 1
                    break
                f.write(chunk)
                h.update(chunk)
                have += len(chunk)
                if have - synced >= FSYNC_EVERY:
                    f.flush()
                    os.fsync(f.fileno())
                    synced = have
                if on_progress:
                    on_progress(have, size)
            f.flush()
            os.fsync(f.fileno())
    return have, h

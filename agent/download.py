"""Resumable HTTP(S) artifact download into a `.part` file, verified by size and sha256.

Resume uses `Range: bytes=N-`: the bytes already on disk are hashed once (not re-fetched), then
the rest is appended. A server that ignores Range (answers 200) restarts the file from zero
instead of appending a second copy (seen with python's http.server). Nothing here moves a file
into the store: the caller does that only after `download` returned, i.e. after verification.

Every download is bounded (agent.download_limits): an overall deadline, a minimum rate and a
redirect limit, and it can be cancelled from another thread. A side thread enforces the time
bounds and the cancel by shutting the connection's socket down, because a read blocked on a
trickling or silent server only returns when its socket does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from agent.download_limits import (
    CANCELLED,
    DOWNLOAD_TIMEOUT,
    TOO_MANY_REDIRECTS,
    TOO_SLOW,
    DownloadLimits,
    judge,
)
from edgekit.errors import EdgekitError

log = logging.getLogger(__name__)

FSYNC_EVERY = 4 << 20  # bytes: bound what a power loss can take back from a long download
UNREACHABLE = "unreachable"
BAD_URL = "bad_url"


class DownloadError(EdgekitError):
    """The artifact could not be fetched or does not match its manifest.

    `reason` is "size_mismatch", "sha256_mismatch", "unreachable", "bad_url", or one of
    agent.download_limits' "download_timeout", "too_slow", "too_many_redirects", "cancelled"."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class _Stopped(Exception):
    """The watchdog stopped this attempt (its reason says why)."""


class _Watchdog:
    """Guards one HTTP attempt from a side thread: cancel, deadline and minimum rate."""

    TICK = 0.1  # seconds between checks; a cancel is seen at once (it wakes the wait)

    def __init__(self, limits: DownloadLimits, deadline: float, cancel: threading.Event | None):
        self.limits, self.deadline, self.cancel = limits, deadline, cancel
        self.received = 0  # bytes of this attempt, written by the reader thread only
        self.reason: str | None = None
        self._stream: Any = None
        self._lock = threading.Lock()
        self._done = threading.Event()

    def __enter__(self) -> _Watchdog:
        threading.Thread(target=self._run, name="edgekit-download-watchdog", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpx trace hook: remember the newest connection (TLS wraps TCP, a redirect opens a new one)."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            with self._lock:
                self._stream = info.get("return_value")
                stopped = self.reason is not None
            if stopped:  # stopped while connecting: do not let the new connection run
                self._shutdown()

    def _run(self) -> None:
        window_start, window_base = time.monotonic(), 0
        waiter = self.cancel or self._done
        while not self._done.is_set():
            if self.cancel is not None and self.cancel.is_set():
                self._stop(CANCELLED)
                return
            now, received = time.monotonic(), self.received
            reason = judge(
                self.limits,
                now=now,
                deadline=self.deadline,
                window_start=window_start,
                window_bytes=received - window_base,
            )
            if reason:
                self._stop(reason)
                return
            if now - window_start >= self.limits.slow_window_s:
                window_start, window_base = now, received
            waiter.wait(min(self.TICK, max(0.0, self.deadline - now)))

    def _stop(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
        self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            stream = self._stream
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is None:
            return
        try:
            # The base-class method: on a TLS socket it shuts the transport without touching the
            # SSL object the reader thread is using; close() would not wake the blocked read.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # already closed: the attempt is over anyway


def _hash_existing(part: Path, h: Any) -> int:
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
    limits: DownloadLimits | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Fetch `url` into `part` (resuming), check size + sha256, return `part`.

    `timeout` bounds each network read; `limits` bound the whole download; setting `cancel`
    stops it promptly (reason "cancelled"). Raises DownloadError. On a size/digest mismatch
    the `.part` is deleted so the next attempt starts clean instead of resuming from bad bytes;
    otherwise the bytes received stay in `.part` for a later resume."""
    part = Path(part)
    part.parent.mkdir(parents=True, exist_ok=True)
    limits = limits or DownloadLimits()
    deadline = time.monotonic() + limits.deadline_s
    attempt = 0
    with httpx.Client(
        timeout=timeout,
        verify=verify,
        cert=cert,
        follow_redirects=True,
        max_redirects=limits.max_redirects,
        # A fresh connection per request, so the watchdog's trace hook always sees the socket.
        limits=httpx.Limits(max_keepalive_connections=0),
    ) as client:
        while True:
            if cancel is not None and cancel.is_set():
                raise DownloadError(CANCELLED, f"{url}: cancelled")
            h = hashlib.sha256()
            have = _hash_existing(part, h) if part.exists() else 0
            if have > size:
                log.warning("%s: %d bytes on disk but artifact is %d: restarting", part.name, have, size)
                part.unlink()
                continue
            if have == size:
                break
            wd = _Watchdog(limits, deadline, cancel)
            try:
                with wd:
                    have, h = _fetch(client, url, part, have, size, h, headers or {}, on_progress, wd)
                if wd.reason == CANCELLED:
                    raise _Stopped  # finished in the same instant: the caller still asked to stop
                break
            except httpx.TooManyRedirects:
                raise DownloadError(
                    TOO_MANY_REDIRECTS, f"{url}: more than {limits.max_redirects} redirects"
                ) from None
            except (httpx.TransportError, httpx.HTTPStatusError, _Stopped) as e:
                reason = wd.reason or UNREACHABLE
                detail = _describe(reason, limits, e)
                if reason in (CANCELLED, DOWNLOAD_TIMEOUT):
                    raise DownloadError(reason, f"{url}: {detail}") from None
                attempt += 1
                if attempt > retries:
                    raise DownloadError(reason, f"{url}: {detail}") from None
                log.info("download of %s interrupted (%s); resuming (attempt %d)", url, detail, attempt)
                _backoff(url, attempt, deadline, cancel)
            except httpx.InvalidURL as e:
                raise DownloadError(BAD_URL, f"{url}: {e}") from None
            except httpx.HTTPError as e:  # e.g. a body that cannot be decoded: retrying would not help
                raise DownloadError(UNREACHABLE, f"{url}: {type(e).__name__}: {e}") from None
    if have != size:
        part.unlink(missing_ok=True)
        raise DownloadError("size_mismatch", f"{url}: got {have} bytes, manifest says {size}")
    digest = h.hexdigest()
    if digest != sha256:
        part.unlink(missing_ok=True)
        raise DownloadError("sha256_mismatch", f"{url}: sha256 {digest}, manifest says {sha256}")
    return part


def _describe(reason: str, limits: DownloadLimits, e: BaseException) -> str:
    if reason == TOO_SLOW:
        return f"under {limits.min_bytes_per_s:g} bytes/s for {limits.slow_window_s:g} s"
    if reason == DOWNLOAD_TIMEOUT:
        return f"not done within {limits.deadline_s:g} s"
    if reason == CANCELLED:
        return "cancelled"
    return str(e) or type(e).__name__


def _backoff(url: str, attempt: int, deadline: float, cancel: threading.Event | None) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DownloadError(DOWNLOAD_TIMEOUT, f"{url}: deadline passed before attempt {attempt + 1}")
    pause = min(0.2 * 2**attempt, 5.0, left)
    if cancel is not None:
        if cancel.wait(pause):
            raise DownloadError(CANCELLED, f"{url}: cancelled")
    else:
        time.sleep(pause)


def _fetch(
    client: httpx.Client,
    url: str,
    part: Path,
    have: int,
    size: int,
    h: Any,
    headers: dict[str, str],
    on_progress: Callable[[int, int], None] | None,
    wd: _Watchdog,
) -> tuple[int, Any]:
    req_headers = dict(headers)
    if have:
        req_headers["Range"] = f"bytes={have}-"
    with client.stream("GET", url, headers=req_headers, extensions={"trace": wd.trace}) as r:
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
            try:
                for chunk in r.iter_bytes():
                    if have + len(chunk) > size:
                        # More bytes than the manifest allows: stop before filling the disk.
                        f.write(chunk[: size + 1 - have])
                        have = size + 1
                        break
                    f.write(chunk)
                    f.flush()  # to the OS now: a kill -9 then loses nothing received
                    h.update(chunk)
                    have += len(chunk)
                    wd.received += len(chunk)
                    if have - synced >= FSYNC_EVERY:
                        f.flush()
                        os.fsync(f.fileno())
                        synced = have
                    if on_progress:
                        on_progress(have, size)
                    if wd.reason:
                        raise _Stopped(wd.reason)
            finally:
                # What arrived stays durable whatever ended the attempt: a resume starts from it.
                f.flush()
                os.fsync(f.fileno())
    return have, h

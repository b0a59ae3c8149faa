"""One installer per toolchain at a time, across processes.

Two `edgekit toolchain install` runs (two terminals, parallel CI jobs, a conversion that installs
on demand) would otherwise build the same venv in the same directory, each deleting the other's
half-built tree. An advisory `flock` on `<toolchain dir>.lock` serializes them; the kernel drops
it when the holder exits, however it exits (kill -9 included), so a stale lock never blocks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from edgekit.errors import EdgekitError


class LockBusyError(EdgekitError):
    """Another process holds the lock (non-blocking attempt, or the wait timed out)."""


def lock_path(root: Path) -> Path:
    """The lock file sits next to the toolchain directory (which an install deletes and rebuilds)."""
    return root.with_name(root.name + ".lock")


@contextlib.contextmanager
def held(path: Path, timeout: float | None = None, poll: float = 0.1) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block. timeout=None waits as long as it takes,
    0 does not wait; LockBusyError names the holder's pid when it cannot be had."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            end = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= end:
                        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                        raise LockBusyError(
                            f"{path} is held by another install (pid {holder})",
                            hint="wait for it to finish; it is released when that process exits",
                        ) from None
                    time.sleep(poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the message above, not for locking
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock

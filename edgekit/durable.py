"""Crash-safe file writes: write a temp file, fsync it, rename over the target, fsync the directory.

A reader (or a restart after kill -9 / power loss) sees either the old or the new content,
never a torn file: os.replace is atomic on POSIX and the directory fsync makes the rename durable.
Shared by the agent (state, pointers) and the fleet (keys, root.json).
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o666) -> None:
    """Replace `path` with `data`. `mode` applies from the file's creation (0o600 for a private
    key is never world-readable, even as a temp file); the umask still narrows the default."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        if mode != 0o666:
            os.fchmod(f.fileno(), mode)  # exact, whatever the umask or a leftover temp file had
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)

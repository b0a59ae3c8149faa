"""Crash-safe file writes: write a temp file, fsync it, rename over the target, fsync the directory.

A reader (or a restart after kill -9 / power loss) sees either the old or the new content,
never a torn file: os.replace is atomic on POSIX and the directory fsync makes the rename durable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# One implementation, shared with the fleet (keys, root.json): edgekit.durable.
from edgekit.durable import atomic_write_bytes, fsync_dir

__all__ = ["atomic_write_bytes", "atomic_write_json", "fsync_dir", "read_json"]


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default

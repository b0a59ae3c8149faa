"""A cached venv holding KServe's Python SDK, for testing the agent against KServe's own client.

kserve cannot share edgekit's environment (every release pins psutil/protobuf against ours and
pulls kubernetes, grpcio, fastapi), so it gets its own venv under $EDGEKIT_HOME/test-venvs, built
once (about 2 minutes) and reused; concurrent test processes wait on a lock instead of racing.
"""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.config import home

KSERVE = "kserve==0.21.0"


def client_python() -> Path:
    """The venv's python; the test is skipped (with pip's reason) where PyPI cannot be reached."""
    root = home() / "test-venvs" / f"kserve-{hashlib.sha256(KSERVE.encode()).hexdigest()[:12]}"
    py, stamp = root / "bin" / "python", root / ".installed"
    if stamp.exists():
        return py
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return py
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True)
        p = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", KSERVE], capture_output=True, text=True, timeout=1200
        )
        if p.returncode != 0:
            pytest.skip(f"cannot install {KSERVE} into its own venv: {p.stderr.strip()[-300:]}")
        stamp.touch()
    return py

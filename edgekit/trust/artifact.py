"""Check a downloaded artifact against the size and sha256 its manifest promised."""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgekit.trust.errors import SHA256_MISMATCH, SIZE_MISMATCH, VerificationError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_artifact(path: str | Path, expected_size: int, expected_sha256: str) -> None:
    """Raises VerificationError(size_mismatch | sha256_mismatch). Size first: it is free."""
    size = Path(path).stat().st_size
    if size != expected_size:
        raise VerificationError(SIZE_MISMATCH, f"{path}: {size} bytes, manifest says {expected_size}")
    digest = sha256_file(Path(path))
    if digest != expected_sha256.lower():
        raise VerificationError(SHA256_MISMATCH, f"{path}: sha256 {digest}, manifest says {expected_sha256}")

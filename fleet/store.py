"""Content-addressed artifact store: each file lives at <root>/<sha256[:2]>/<sha256>.

Same bytes, same name: publishing twice costs nothing, a URL never changes meaning, and any
static server, CDN or S3 bucket can serve the directory as it is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

_HEX = set("0123456789abcdef")


class ArtifactStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not set(sha256) <= _HEX:
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        try:
            return self.path(sha256).is_file()
        except ValueError:
            return False

    def put(self, src: Path) -> tuple[str, int]:
        """Copy `src` in (hashing while copying); returns (sha256, size)."""
        h = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
                    out.write(block)
                    size += len(block)
            digest = h.hexdigest()
            dest = self.path(digest)
            dest.parent.mkdir(exist_ok=True)
            if dest.exists():
                os.unlink(tmp)
            else:
                os.chmod(tmp, 0o644)
                os.replace(tmp, dest)
            return digest, size
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def copy_out(self, sha256: str, dest: Path) -> None:
        shutil.copyfile(self.path(sha256), dest)

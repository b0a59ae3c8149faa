"""Install a pinned npm package set (package.json + package-lock.json shipped with edgekit) once,
into a cache directory keyed by the lock's hash, and reuse it offline afterwards.

Used for the browser runtimes vendored into bundles and for the browser-test tools. `npm ci`
installs exactly the lock; `--ignore-scripts` because only static files are taken from these
packages (and install scripts of transitive deps are the usual supply-chain risk). The install
goes to a temporary sibling and is renamed into place, so a crash or a concurrent build never
leaves a half-installed cache that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from edgekit.config import home
from edgekit.errors import EdgekitError


def lock_digest(package_dir: Path) -> str:
    h = hashlib.sha256()
    for f in ("package.json", "package-lock.json"):
        h.update((package_dir / f).read_bytes())
    return h.hexdigest()[:12]


def npm_cache_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_NPM_CACHE", home() / "npm"))


def install_locked(package_dir: Path, kind: str) -> Path:
    """node_modules of `package_dir`'s lock, installed under the cache (idempotent)."""
    root = npm_cache_dir() / f"{kind}-{lock_digest(package_dir)}"
    if (root / ".complete").exists():
        return root / "node_modules"
    npm = shutil.which("npm")
    if npm is None:
        raise EdgekitError(
            f"npm is needed once to fetch the pinned {kind} packages",
            hint="install Node.js and npm (Debian: apt-get install nodejs npm), then retry",
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=root.parent))
    try:
        for f in ("package.json", "package-lock.json"):
            shutil.copy(package_dir / f, tmp / f)
        proc = subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise EdgekitError(f"npm ci for {kind} failed:\n{tail}", hint="check access to the npm registry")
        (tmp / ".complete").write_text(lock_digest(package_dir) + "\n")
        try:
            tmp.rename(root)
        except OSError:
            if not (root / ".complete").exists():  # lost a race to a complete install: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / "node_modules"

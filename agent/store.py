"""Content-addressed model store with an atomically swapped pointer per model.

Layout under `root`:
  blobs/<sha256><ext>          verified artifacts, immutable, named by their digest
  incoming/<sha256><ext>.part  downloads in progress (never loaded); at most one per artifact,
                               and failed ones are capped (prune_parts) so they cannot pile up
  models/<name>/pointer.json   {"active": entry, "previous": entry, "shadow": entry?};
                               replaced atomically

A blob only enters `blobs/` after its size and sha256 were checked, so whatever a pointer names
is whole. Activation rewrites one small JSON file with os.replace: a crash leaves the old or the
new pointer, never a mix. The previous entry is kept so rollback is one more pointer write.
The optional shadow entry names a verified, smoke-tested version installed beside the active
one for comparison (agent.shadow); it never serves, and activation or rollback leave it alone.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.durable import atomic_write_json, fsync_dir, read_json
from edgekit.trust.artifact import sha256_file

__all__ = ["KEEP_FAILED_PARTS", "Entry", "ModelStore", "parts_to_drop", "sha256_file"]

# Partial downloads no update in progress wants that are kept, newest first. One lets the next
# manifest for the same artifact (a fleet re-issuing a release after a network failure) resume;
# every older one is dead weight on a small disk.
KEEP_FAILED_PARTS = 1


def _digest_of(file_name: str) -> str:
    return file_name.split(".")[0]


def parts_to_drop(parts: Iterable[tuple[str, float]], keep: set[str], keep_failed: int) -> list[str]:
    """Which `.part` files (name, mtime) to delete: those whose digest is not in `keep`,
    beyond the `keep_failed` most recently written."""
    stale = sorted((p for p in parts if _digest_of(p[0]) not in keep), key=lambda p: p[1], reverse=True)
    return [name for name, _ in stale[keep_failed:]]


@dataclass
class Entry:
    """One installed model version, as named by a pointer."""

    version: str
    sha256: str
    format: str  # "onnx" | "tflite" | "ort"
    sequence: int = 0
    card: dict[str, Any] | None = None
    smoke: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        return "." + self.format

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Entry | None:
        if not d:
            return None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


class ModelStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.incoming = self.root / "incoming"
        self.models = self.root / "models"
        for d in (self.blobs, self.incoming, self.models):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # blobs ---------------------------------------------------------------------------------
    def blob_path(self, sha256: str, fmt: str) -> Path:
        return self.blobs / f"{sha256}.{fmt}"

    def part_path(self, sha256: str, fmt: str) -> Path:
        return self.incoming / f"{sha256}.{fmt}.part"

    def has_blob(self, sha256: str, fmt: str, size: int | None = None) -> bool:
        p = self.blob_path(sha256, fmt)
        return p.is_file() and (size is None or p.stat().st_size == size)

    def commit_blob(self, part: Path, sha256: str, fmt: str) -> Path:
        """Move a verified `.part` into the blob store (caller has checked size + sha256)."""
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        dest = self.blob_path(sha256, fmt)
        os.replace(part, dest)
        fsync_dir(self.blobs)
        return dest

    def add_file(self, src: Path, fmt: str | None = None) -> tuple[str, Path]:
        """Copy a local file into the store (used for models installed from config)."""
        src = Path(src)
        fmt = fmt or src.suffix.lstrip(".")
        digest = sha256_file(src)
        if not self.has_blob(digest, fmt):
            part = self.part_path(digest, fmt)
            shutil.copyfile(src, part)
            self.commit_blob(part, digest, fmt)
        return digest, self.blob_path(digest, fmt)

    # pointers ------------------------------------------------------------------------------
    def _pointer_file(self, name: str) -> Path:
        return self.models / name / "pointer.json"

    def pointer(self, name: str) -> tuple[Entry | None, Entry | None]:
        data = read_json(self._pointer_file(name), {}) or {}
        return Entry.from_dict(data.get("active")), Entry.from_dict(data.get("previous"))

    def active(self, name: str) -> Entry | None:
        return self.pointer(name)[0]

    def model_names(self) -> list[str]:
        return sorted(p.parent.name for p in self.models.glob("*/pointer.json"))

    def activate(self, name: str, entry: Entry) -> None:
        """Point `name` at `entry`; the old active becomes `previous`. Idempotent."""
        if not self.has_blob(entry.sha256, entry.format):
            raise FileNotFoundError(f"blob {entry.sha256}{entry.suffix} is not in the store")
        with self._lock:
            active, _previous = self.pointer(name)
            if active and active.sha256 == entry.sha256 and active.version == entry.version:
                return  # already active (e.g. resuming after a crash right after the swap)
            self._write(name, entry, active, self.shadow(name))

    def rollback(self, name: str) -> Entry | None:
        """Make `previous` active again. Returns the entry now active (None if there was none)."""
        with self._lock:
            active, previous = self.pointer(name)
            if previous is None:
                return active
            self._write(name, previous, active, self.shadow(name))
            return previous

    def shadow(self, name: str) -> Entry | None:
        data = read_json(self._pointer_file(name), {}) or {}
        return Entry.from_dict(data.get("shadow"))

    def set_shadow(self, name: str, entry: Entry | None) -> None:
        """Name `entry` as the model's shadow (one per model), or drop the shadow (None)."""
        if entry is not None and not self.has_blob(entry.sha256, entry.format):
            raise FileNotFoundError(f"blob {entry.sha256}{entry.suffix} is not in the store")
        with self._lock:
            active, previous = self.pointer(name)
            if entry is None and self.shadow(name) is None:
                return
            self._write(name, active, previous, entry)

    def _write(self, name: str, active: Entry | None, previous: Entry | None, shadow: Entry | None) -> None:
        doc: dict[str, Any] = {
            "active": asdict(active) if active else None,
            "previous": asdict(previous) if previous else None,
        }
        if shadow is not None:  # absent rather than null: pointers without one stay as they were
            doc["shadow"] = asdict(shadow)
        atomic_write_json(self._pointer_file(name), doc)

    def prune_parts(self, keep: set[str], keep_failed: int = KEEP_FAILED_PARTS) -> list[Path]:
        """Bound partial downloads: keep those of `keep` digests plus `keep_failed` others."""
        parts = []
        for p in self.incoming.iterdir():
            try:
                parts.append((p.name, p.stat().st_mtime))
            except FileNotFoundError:
                continue
        removed = [self.incoming / name for name in parts_to_drop(parts, keep, keep_failed)]
        for p in removed:
            p.unlink(missing_ok=True)
        return removed

    def gc(self, keep: set[str] | None = None) -> list[Path]:
        """Delete blobs no pointer names (and stale parts not in `keep`)."""
        referenced = set(keep or ())
        for name in self.model_names():
            for e in (*self.pointer(name), self.shadow(name)):
                if e:
                    referenced.add(e.sha256)
        removed = []
        for p in [*self.blobs.iterdir(), *self.incoming.iterdir()]:
            if _digest_of(p.name) not in referenced:
                p.unlink(missing_ok=True)
                removed.append(p)
        return removed

"""Delta updates: when devices run version N of a model and the release is N+1, each artifact of
the release also offers binary deltas (edgekit.delta) from the blobs those devices hold.

At dispatch, `attach(registry, release)` looks up which versions of the model devices report
active (the devices table keeps the last one each reported), takes the same-key artifact of
each as a base, and adds a signed `delta` entry per base to the release's artifacts. Deltas are
made once and cached: the bytes content-addressed in the artifact store (served by the same
`/artifacts/{sha256}` route, with Range), the pair -> delta mapping in the `deltas` table. A
delta not clearly smaller than the full artifact is remembered as not worth shipping.

The agent picks the delta whose `from_sha256` it holds, verifies the result against the
artifact's signed sha256 and falls back to the full download on any failure (agent.delta), so
nothing here can break an update: a delta that cannot be made is logged and left out.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from edgekit.delta import ALGORITHM, DeltaError, make_delta
from edgekit.trust.manifest_schema import MAX_DELTAS
from fleet.errors import NotFoundError

log = logging.getLogger(__name__)

MAX_BASES = 4  # versions per model that get a delta: the ones most devices run
WORTH = 0.8  # ship a delta only below this fraction of the full artifact's size


def plan(
    artifacts: Iterable[Any], bases: Mapping[str, Iterable[Any]], limit: int = MAX_DELTAS
) -> dict[str, list[str]]:
    """Artifact key -> base sha256s to make deltas from: the same key in each base version,
    when its bytes differ (pure; artifacts are StoredArtifact-like: .key, .sha256)."""
    out: dict[str, list[str]] = {}
    for a in artifacts:
        froms = []
        for base_arts in bases.values():
            for b in base_arts:
                if b.key == a.key and b.sha256 != a.sha256 and b.sha256 not in froms:
                    froms.append(b.sha256)
        if froms:
            out[a.key] = froms[:limit]
    return out


def base_versions(db: Any, model: str, version: str, limit: int = MAX_BASES) -> list[str]:
    """Other versions of `model` that devices report active, most devices first."""
    rows = db.query(
        "SELECT active_version, COUNT(*) AS n FROM devices"
        " WHERE active_model=? AND active_version IS NOT NULL AND active_version<>?"
        " GROUP BY active_version ORDER BY n DESC, active_version LIMIT ?",
        (model, version, limit),
    )
    return [r["active_version"] for r in rows]


class DeltaCache:
    """Deltas between stored blobs, made once: bytes in the artifact store, the pair in `deltas`."""

    def __init__(self, db: Any, store: Any, worth: float = WORTH):
        self.db, self.store, self.worth = db, store, worth

    def lookup(self, base: str, target: str) -> tuple[str, int] | bool | None:
        """(sha256, size) of a cached delta; None if known not worth shipping; False if unknown."""
        rows = self.db.query(
            "SELECT sha256, size FROM deltas WHERE base=? AND target=? AND algorithm=?",
            (base, target, ALGORITHM),
        )
        if not rows:
            return False
        sha, size = rows[0]["sha256"], rows[0]["size"]
        if sha is None:
            return None
        return (sha, int(size)) if self.store.has(sha) else False  # store lost it: make it again

    def get(self, base: str, target: str, target_size: int) -> tuple[str, int] | None:
        """The delta base -> target, made now if it never was; None when not worth shipping."""
        known = self.lookup(base, target)
        if known is not False:
            return known  # type: ignore[return-value]
        with tempfile.TemporaryDirectory(prefix="edgekit-delta-") as tmp:
            old, new, out = Path(tmp, "base"), Path(tmp, "target"), Path(tmp, "delta")
            self.store.copy_out(base, old)
            self.store.copy_out(target, new)
            try:
                size = make_delta(old, new, out)
            except DeltaError as e:
                log.info("no delta %s -> %s: %s", base[:12], target[:12], e)
                size = None
            made = (
                self.store.put(out) if size is not None and size <= self.worth * max(target_size, 1) else None
            )
        with self.db.tx() as c:
            c.execute(
                "INSERT INTO deltas (base, target, algorithm, sha256, size) VALUES (?,?,?,?,?)"
                " ON CONFLICT (base, target, algorithm) DO UPDATE SET sha256=excluded.sha256,"
                " size=excluded.size",
                (base, target, ALGORITHM, made[0] if made else None, made[1] if made else None),
            )
        log.info(
            "delta %s -> %s: %s",
            base[:12],
            target[:12],
            f"{made[1]} B for {target_size} B" if made else "not worth shipping",
        )
        return made


def attach(registry: Any, release: dict[str, Any], cache: DeltaCache | None = None) -> dict[str, Any]:
    """`release` (Registry.version) with deltas on its artifacts from the versions devices run.
    Never raises for a delta: a release without deltas is always a valid release."""
    model, version = release["model"], release["version"]
    cache = cache or DeltaCache(registry.db, registry.store)
    try:
        bases: dict[str, list[Any]] = {}
        for v in base_versions(registry.db, model, version):
            try:
                bases[v] = registry.version(model, v)["artifacts"]
            except NotFoundError:
                continue  # a device reports a version this registry never published
        wanted = plan(release["artifacts"], bases)
    except Exception:
        log.exception("%s %s: cannot plan deltas; shipping full artifacts", model, version)
        return release
    arts = []
    for a in release["artifacts"]:
        deltas = []
        for base in wanted.get(a.key, []):
            try:
                made = cache.get(base, a.sha256, a.size)
            except Exception:
                log.exception(
                    "delta %s -> %s failed; devices get the full artifact", base[:12], a.sha256[:12]
                )
                continue
            if made is not None:
                deltas.append((base, made[0], made[1], ALGORITHM))
        arts.append(dataclasses.replace(a, deltas=tuple(deltas)) if deltas else a)
    return {**release, "artifacts": arts}

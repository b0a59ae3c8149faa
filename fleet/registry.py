"""The model registry: versions, their artifacts (in the content-addressed store), model cards.

`publish(dir)` takes an `edgekit convert` output directory:
    DIR/model_card.json   ModelCard.to_dict()
    DIR/report.json       a list (or {"artifacts": [...]}) of
                          {target, precision, files: [relative paths], sha256, bytes, status, format?}
Only artifacts with status "ok" are published (conversion validated them). A multi-file
artifact (TF.js model.json + shards, a Core ML .mlpackage directory) is packed into one
deterministic tar so that it has one sha256 and one URL.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit import provenance
from edgekit.formats import format_for, smoke_tolerances
from edgekit.trust import VerificationError, iso, sha256_file, utcnow
from fleet.artifact_store import ArtifactStore
from fleet.db import BaseDatabase
from fleet.errors import FleetError, NotFoundError

log = logging.getLogger(__name__)


@dataclass
class StoredArtifact:
    key: str  # manifest artifacts key: "onnx", "tflite", "onnx-int8", ...
    format: str
    sha256: str
    size: int
    file: str
    precision: str
    target: str | None
    # Binary deltas from blobs devices run, to this artifact (fleet.deltas attaches them at
    # dispatch): (from_sha256, sha256, size, algorithm) each.
    deltas: tuple[tuple[str, str, int, str], ...] = ()

    def manifest_entry(self, base_url: str) -> dict[str, Any]:
        base = base_url.rstrip("/")
        entry: dict[str, Any] = {
            "url": f"{base}/artifacts/{self.sha256}",
            "sha256": self.sha256,
            "size": self.size,
            "file": self.file,
            "precision": self.precision,
        }
        if self.deltas:
            entry["delta"] = [
                {"from_sha256": f, "url": f"{base}/artifacts/{d}", "sha256": d, "size": n, "algorithm": alg}
                for f, d, n, alg in self.deltas
            ]
        return entry


def _format_of(entry: dict[str, Any], files: list[Path]) -> str:
    if entry.get("format"):
        return str(entry["format"])
    first = files[0]
    if any(f.name == "model.json" for f in files):
        return "tfjs"
    if format_for(first):
        return str(format_for(first))
    return str(entry.get("target") or first.suffix.lstrip(".") or "bin")


def _pack(base: Path, files: list[Path], dest: Path) -> None:
    """A reproducible tar: sorted names, zero mtimes/owners, so equal content -> equal sha256."""
    members: list[Path] = []
    for f in files:
        members.extend(sorted(p for p in f.rglob("*") if p.is_file()) if f.is_dir() else [f])
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(set(members)):
            data = p.read_bytes()
            info = tarfile.TarInfo(str(p.relative_to(base)))
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))


def _read_report(path: Path) -> tuple[Any, list[dict[str, Any]]]:
    """report.json as parsed (for provenance) and its artifact rows."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise FleetError(f"{path} not found", hint="pass the output directory of `edgekit convert`") from e
    except ValueError as e:
        raise FleetError(f"{path}: invalid JSON: {e}") from e
    items = doc.get("artifacts") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise FleetError(f"{path}: expected a list of artifacts")
    return doc, items


def _smoke_test(card: dict[str, Any], onnx_path: Path | None, golden: Path) -> dict[str, Any] | None:
    """Golden input + fp32 reference outputs, computed with onnxruntime on the ONNX artifact.

    The input is the real sample `edgekit convert` wrote (golden_input.npz); a seeded random
    tensor only when there is none (a quantized artifact may legitimately fail on noise)."""
    if onnx_path is None:
        return None
    import onnxruntime as ort

    from edgekit.modelcard import ModelCard
    from edgekit.trust import build_smoke_test

    try:
        mc = ModelCard.from_dict(card)
        if golden.exists():
            import numpy as np

            with np.load(golden) as npz:
                inputs = {t.name: npz[t.name] for t in mc.inputs}
        else:
            inputs = mc.sample_inputs(batch=1, seed=0)
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        outs = sess.run(names, inputs)
    except Exception as e:  # a model the card does not describe: publish without a smoke test
        log.warning("no smoke test for %s: %s", onnx_path, e)
        return None
    # the conversion's own parity tolerances, per precision label: an artifact that passed
    # `edgekit convert` passes its signed smoke test on the box by the same numbers
    return build_smoke_test(inputs, dict(zip(names, outs, strict=True)), tolerance=smoke_tolerances())


class Registry:
    def __init__(self, db: BaseDatabase, store: ArtifactStore):
        self.db, self.store = db, store

    def publish(self, src: Path, model: str, version: str, force: bool = False) -> list[StoredArtifact]:
        src = Path(src)
        card_path = src / "model_card.json"
        if not card_path.exists():
            raise FleetError(f"{card_path} not found", hint="pass the output directory of `edgekit convert`")
        card = json.loads(card_path.read_text())
        if (
            self.db.query("SELECT 1 FROM versions WHERE model=? AND version=?", (model, version))
            and not force
        ):
            raise FleetError(f"{model} {version} is already published", hint="publish a new version")
        stored: list[StoredArtifact] = []
        used: set[str] = set()
        local: dict[str, Path] = {}  # sha256 -> the file it was read from (the store may be remote)
        report, items = _read_report(src / "report.json")
        described: dict[str, tuple[str, int, dict[str, Any]]] = {}  # key -> provenance input
        with tempfile.TemporaryDirectory() as tmp:
            for entry in items:
                if entry.get("status", "ok") != "ok":
                    continue
                # report.json lists files as {path, bytes, sha256} (edgekit convert); plain paths also work.
                files = [src / (f["path"] if isinstance(f, dict) else f) for f in entry.get("files") or []]
                if not files:
                    continue
                for f in files:
                    if not f.exists():
                        raise FleetError(f"artifact file missing: {f}")
                fmt = _format_of(entry, files)
                precision = str(entry.get("precision") or "fp32")
                if len(files) == 1 and files[0].is_file():
                    path, name = files[0], files[0].name
                    # Guard against a report that does not match its files.
                    if entry.get("sha256") and sha256_file(path) != entry["sha256"]:
                        raise FleetError(f"{path}: sha256 differs from report.json")
                    if isinstance(entry.get("bytes"), int) and path.stat().st_size != entry["bytes"]:
                        raise FleetError(f"{path}: size differs from report.json")
                else:
                    name = f"{files[0].stem}.{fmt}.tar"
                    path = Path(tmp) / name
                    _pack(src, files, path)
                digest, size = self.store.put(path)
                local[digest] = path
                key = fmt if fmt not in used and precision == "fp32" else f"{fmt}-{precision}"
                n = 2
                while key in used:
                    key, n = f"{fmt}-{precision}-{n}", n + 1
                used.add(key)
                stored.append(StoredArtifact(key, fmt, digest, size, name, precision, entry.get("target")))
                described[key] = (digest, size, entry)
            if not stored:
                raise FleetError(f"{src}/report.json lists no artifact with status ok")
            onnx = next((a for a in stored if a.format == "onnx" and a.precision == "fp32"), None)
            smoke = _smoke_test(card, local[onnx.sha256] if onnx else None, src / "golden_input.npz")
        try:
            prov = provenance.from_report(report, described, iso(utcnow()))
        except VerificationError as e:  # a report the manifest could not carry: say which field
            raise FleetError(f"{src}/report.json: {e.detail}") from None
        with self.db.tx() as c:
            c.execute("DELETE FROM artifacts WHERE model=? AND version=?", (model, version))
            c.execute(
                "INSERT INTO versions (model, version, model_card, smoke_test, created) VALUES (?,?,?,?,?)"
                " ON CONFLICT (model, version) DO UPDATE SET model_card=excluded.model_card,"
                " smoke_test=excluded.smoke_test, created=excluded.created",
                (model, version, json.dumps(card), json.dumps(smoke) if smoke else None, time.time()),
            )
            for a in stored:
                c.execute(
                    "INSERT INTO artifacts (model, version, format, sha256, size, file, precision, target)"
                    " VALUES (?,?,?,?,?,?,?,?)",
                    (model, version, a.key, a.sha256, a.size, a.file, a.precision, a.target),
                )
            c.execute("DELETE FROM provenance WHERE model=? AND version=?", (model, version))
            c.execute(
                "INSERT INTO provenance (model, version, doc) VALUES (?,?,?)",
                (model, version, json.dumps(prov, sort_keys=True)),
            )
        return stored

    def version(self, model: str, version: str) -> dict[str, Any]:
        rows = self.db.query("SELECT * FROM versions WHERE model=? AND version=?", (model, version))
        if not rows:
            raise NotFoundError(
                f"{model} {version} is not published", hint="run: edgekit fleet publish DIR ..."
            )
        arts = self.db.query(
            "SELECT * FROM artifacts WHERE model=? AND version=? ORDER BY format", (model, version)
        )
        prov = self.db.query("SELECT doc FROM provenance WHERE model=? AND version=?", (model, version))
        return {
            "model": model,
            "version": version,
            "model_card": json.loads(rows[0]["model_card"]),
            "smoke_test": json.loads(rows[0]["smoke_test"]) if rows[0]["smoke_test"] else None,
            # None for versions published before provenance existed
            "provenance": json.loads(prov[0]["doc"]) if prov else None,
            "artifacts": [
                StoredArtifact(
                    r["format"],
                    r["format"].split("-")[0],
                    r["sha256"],
                    r["size"],
                    r["file"],
                    r["precision"],
                    r["target"],
                )
                for r in arts
            ],
        }

    def list(self) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT model, version, created FROM versions ORDER BY model, created")
        return [dict(r) for r in rows]

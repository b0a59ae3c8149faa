"""What every bundle shares: reading a conversion output dir, picking an artifact, sample inputs
with their fp32 reference outputs, tolerances, and the bundle manifest with sizes.

A conversion dir (from `edgekit convert`) has `report.json` (which files each (target, mode)
produced and whether they validated) and `model_card.json`. Bundles only take artifacts whose
report row is "ok": a bundle never ships an export that failed validation.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit.errors import EdgekitError
from edgekit.formats import tolerance_for_label
from edgekit.modelcard import ModelCard

SAMPLES_DIR = Path(edgekit.__file__).parent / "samples"
SAMPLE_COUNT = 8  # samples shipped with a bundle: enough to pick from, small on disk
MANIFEST = "edgekit-bundle.json"


def tolerance(precision: str) -> dict[str, float]:
    """{min_cosine, atol} of a precision label: the conversion's own parity bound (edgekit/formats.py).
    A bundle's self-check passes an output when cosine >= min_cosine or max abs <= atol, the rule
    the on-device smoke test uses, so a bundle accepts exactly what `edgekit convert` validated."""
    tol = tolerance_for_label(precision)
    if tol is None:
        raise EdgekitError(f"unknown precision {precision!r} in the conversion report")
    return tol.to_dict()


@dataclass
class Converted:
    """A conversion output dir: the card, and the report rows that validated."""

    root: Path
    card: ModelCard
    card_raw: dict[str, Any]
    rows: list[dict[str, Any]]

    def ok_rows(self, target: str) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["target"] == target and r["status"] == "ok" and r.get("files")]

    def pick(self, target: str, mode: str | None, prefer: tuple[str, ...]) -> dict[str, Any]:
        """The report row for `target` in `mode`, or the first validated mode in `prefer` order."""
        rows = {r["mode"]: r for r in self.ok_rows(target)}
        if mode is not None:
            if mode not in rows:
                raise EdgekitError(
                    f"{self.root} has no validated {target} artifact in mode {mode!r}",
                    hint=f"available: {', '.join(rows) or 'none'}; convert with -t {target} -q {mode}",
                )
            return rows[mode]
        for m in (*prefer, *rows):
            if m in rows:
                return rows[m]
        raise EdgekitError(
            f"{self.root} has no validated {target} artifact",
            hint=f"edgekit convert MODEL -t {target} --out {self.root}",
        )


def load_converted(path: Path) -> Converted:
    root = Path(path)
    report, card = root / "report.json", root / "model_card.json"
    if not report.is_file() or not card.is_file():
        raise EdgekitError(
            f"{root} is not an `edgekit convert` output (needs report.json and model_card.json)",
            hint="edgekit convert MODEL --out DIR, then bundle DIR",
        )
    card_raw = json.loads(card.read_text())
    return Converted(
        root, ModelCard.from_dict(card_raw), card_raw, json.loads(report.read_text())["artifacts"]
    )


def main_path(conv: Converted, row: dict[str, Any], suffix: str) -> Path:
    """The artifact's main file or directory (for .mlpackage: the package dir, not a file in it)."""
    for f in row["files"]:
        p = Path(f["path"])
        for cand in (p, *p.parents):
            if cand.suffix == suffix:
                return conv.root / cand
    raise EdgekitError(f"report row {row['target']} {row['mode']} lists no {suffix} file")


def copy_tree_or_file(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True)
    else:
        shutil.copyfile(src, dest)


def sample_inputs(
    card: ModelCard, sample_npz: Path | None = None, n: int = SAMPLE_COUNT
) -> tuple[dict[str, np.ndarray], np.ndarray | None, str]:
    """(inputs [n, ...] per name, labels or None, where they came from).

    Order: an explicit .npz; the eval set shipped for a built-in sample model; else seeded random
    inputs from the card (still useful: the reference outputs make them a parity check).
    """
    origin = str(card.source.get("origin", ""))
    if sample_npz is None and origin.startswith("sample:"):
        cand = SAMPLES_DIR / f"{origin.split(':', 1)[1]}_eval.npz"
        sample_npz = cand if cand.is_file() else None
    if sample_npz is not None:
        data = np.load(sample_npz)
        missing = [t.name for t in card.inputs if t.name not in data.files]
        if missing:
            raise EdgekitError(
                f"{sample_npz} lacks inputs {missing}", hint="keys must be the card's input names"
            )
        inputs = {t.name: np.asarray(data[t.name][:n]).astype(t.dtype) for t in card.inputs}
        labels = np.asarray(data["labels"][:n]) if "labels" in data.files else None
        return inputs, labels, str(sample_npz.name)
    return card.sample_inputs(batch=n, seed=0), None, "random (seed 0)"


def reference_outputs(conv: Converted, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """onnxruntime fp32 outputs for `inputs`, when the conversion dir has the fp32 ONNX model."""
    fp32 = conv.root / "onnx" / "model.onnx"
    if not fp32.is_file():
        return None
    from targets.runtimes.onnxrt import OnnxRuntime

    return OnnxRuntime(fp32).run(inputs)


def tensor_json(arr: np.ndarray) -> dict[str, Any]:
    a = np.asarray(arr)
    data = a.astype(np.float64).ravel().tolist() if a.dtype.kind == "f" else a.ravel().tolist()
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": data}


def write_sample_json(
    path: Path,
    inputs: dict[str, np.ndarray],
    labels: np.ndarray | None,
    source: str,
    expected: dict[str, np.ndarray] | None,
    tol: dict[str, float],
) -> None:
    doc: dict[str, Any] = {
        "source": source,
        "inputs": {k: tensor_json(v) for k, v in inputs.items()},
        "labels": None if labels is None else [int(x) for x in labels],
    }
    if expected is not None:
        doc["expected"] = {k: tensor_json(v) for k, v in expected.items()}
        doc["expected_from"] = "onnxruntime fp32 (onnx/model.onnx of the conversion)"
        doc["tolerance"] = tol
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")


@dataclass
class BundleInfo:
    kind: str  # browser | ios | android
    out: str
    model: str
    target: str
    mode: str
    precision: str
    runtime: str
    sizes: dict[str, int] = field(default_factory=dict)  # model / runtime / app / total, bytes
    files: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    artifact_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def finish(info: BundleInfo, out: Path, groups: dict[str, list[str]]) -> BundleInfo:
    """Fill sizes (by group of relative path prefixes) and the file list; write the manifest.

    Idempotent: callers run it again after writing files (a README quoting the sizes)."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST)
    info.files = []
    sizes = dict.fromkeys(groups, 0)
    sizes["app"] = 0
    for f in files:
        rel = f.relative_to(out).as_posix()
        size = f.stat().st_size
        info.files.append({"path": rel, "bytes": size})
        group = next((g for g, prefixes in groups.items() if any(rel.startswith(p) for p in prefixes)), "app")
        sizes[group] += size
    sizes["total"] = sum(e["bytes"] for e in info.files)
    info.sizes = sizes
    (out / MANIFEST).write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    return info


def prepare_out(out: Path, force: bool) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force and not (out / MANIFEST).is_file():
            raise EdgekitError(
                f"{out} exists and is not an edgekit bundle; refusing to overwrite",
                hint="pick an empty --out dir",
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def bundle_card(conv: Converted, extra: dict[str, Any]) -> dict[str, Any]:
    """The conversion's card plus a `bundle` section (artifact, precision, layout as shipped)."""
    card = dict(conv.card_raw)
    card["bundle"] = extra
    return card
